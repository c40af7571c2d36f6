//! The S3 client both connectors use: `object_store`'s S3 store configured from the params and
//! the environment, driven from blocking threads through a small runtime of its own, with every
//! failure classified ([`S3Error`]).
//!
//! The client retries transient failures itself (with backoff, as `params.retry` says); what
//! it gives up on comes out as a retryable [`S3Error::Request`]. A missing bucket and refused
//! credentials are told apart from other failures, so that the message names the parameter
//! (`bucket`) or the environment variables (`AWS_ACCESS_KEY_ID`) to fix.

use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart,
};
use tokio::runtime::Runtime;

use super::error::{is_no_such_bucket, is_refusal, is_transient, S3Error};
use super::params::Location;

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object's key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its entity tag, as the server gave it (a multipart upload's ends in `-` and its number
    /// of parts).
    pub e_tag: Option<String>,
}

/// A connection to one bucket, used from blocking threads.
pub struct S3Store {
    store: Arc<AmazonS3>,
    /// The client's runtime (one worker thread); shut down without blocking on drop, so a
    /// store may be dropped anywhere, also inside another runtime.
    runtime: Option<Runtime>,
    location: Location,
    endpoint: String,
}

impl S3Store {
    /// Connects to `location` with credentials (and, where the params do not say, region and
    /// endpoint) from the process's environment, as the AWS tools read them.
    pub fn open(location: &Location) -> Result<Self, S3Error> {
        Self::open_with_env(location, std::env::vars())
    }

    /// Connects to `location` with `env` in place of the process's environment (the `AWS_*`
    /// variables are read from it).
    pub fn open_with_env(
        location: &Location,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, S3Error> {
        let mut builder = AmazonS3Builder::new();
        let mut region_set = false;
        for (key, value) in env {
            if !key.starts_with("AWS_") {
                continue;
            }
            if let Ok(config_key) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                region_set |= matches!(
                    config_key,
                    AmazonS3ConfigKey::Region | AmazonS3ConfigKey::DefaultRegion
                );
                builder = builder.with_config(config_key, value);
            }
        }
        if let Some(region) = &location.region {
            builder = builder.with_region(region);
        } else if !region_set {
            builder = builder.with_region("us-east-1");
        }
        if let Some(endpoint) = &location.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        let endpoint = builder
            .get_config_value(&AmazonS3ConfigKey::Endpoint)
            .unwrap_or_else(|| "AWS S3".to_owned());
        if endpoint.starts_with("http://") {
            builder = builder.with_allow_http(true);
        }
        let retry = &location.retry;
        let store = builder
            .with_bucket_name(&location.bucket)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(retry.first_delay_ms),
                    max_backoff: Duration::from_millis(retry.max_delay_ms),
                    base: 2.0,
                },
                max_retries: retry.max_retries as usize,
                retry_timeout: Duration::from_millis(retry.max_elapsed_ms),
            })
            .build()
            .map_err(|source| S3Error::Configuration {
                bucket: location.bucket.clone(),
                source,
            })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("s3-client")
            .enable_all()
            .build()
            .map_err(|e| S3Error::Configuration {
                bucket: location.bucket.clone(),
                source: object_store::Error::Generic {
                    store: "S3",
                    source: Box::new(e),
                },
            })?;
        Ok(S3Store {
            store: Arc::new(store),
            runtime: Some(runtime),
            location: location.clone(),
            endpoint,
        })
    }

    /// Where this store reads and writes.
    pub fn location(&self) -> &Location {
        &self.location
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime
            .as_ref()
            .expect("present until dropped")
            .block_on(f)
    }

    /// Classifies a failure of `context` (a missing bucket and refused credentials have errors
    /// of their own).
    pub(crate) fn error(
        &self,
        context: impl FnOnce() -> String,
        source: object_store::Error,
    ) -> S3Error {
        let bucket = self.location.bucket.clone();
        if is_no_such_bucket(&source) {
            S3Error::BucketNotFound {
                bucket,
                endpoint: self.endpoint.clone(),
                source,
            }
        } else if is_refusal(&source) {
            S3Error::CredentialsRefused { bucket, source }
        } else {
            S3Error::Request {
                context: context(),
                retryable: is_transient(&source),
                source,
            }
        }
    }

    /// Every object whose key starts with the folder `folder` (ending in `/`, or empty for the
    /// whole bucket), in key order.
    pub fn list(&self, folder: &str) -> Result<Vec<ObjectInfo>, S3Error> {
        let trimmed = folder.trim_end_matches('/');
        let path = (!trimmed.is_empty()).then(|| Path::from(trimmed));
        let listed: Vec<_> = self.block_on(self.store.list(path.as_ref()).collect());
        let mut out = Vec::with_capacity(listed.len());
        for item in listed {
            let meta = item.map_err(|e| {
                self.error(
                    || format!("listing s3://{}/{folder}", self.location.bucket),
                    e,
                )
            })?;
            out.push(ObjectInfo {
                key: meta.location.to_string(),
                size: meta.size,
                e_tag: meta.e_tag,
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Opens object `key` for reading as a stream.
    pub fn get(&self, key: &str) -> Result<ObjectBody, S3Error> {
        let path = Path::from(key);
        let context = || format!("reading s3://{}/{key}", self.location.bucket);
        let result = self
            .block_on(self.store.get(&path))
            .map_err(|e| self.error(context, e))?;
        Ok(ObjectBody {
            stream: result.into_stream(),
            chunk: Bytes::new(),
            handle: self
                .runtime
                .as_ref()
                .expect("present until dropped")
                .handle()
                .clone(),
        })
    }

    /// Reads object `key` whole.
    pub fn get_bytes(&self, key: &str) -> Result<Bytes, S3Error> {
        let path = Path::from(key);
        let context = || format!("reading s3://{}/{key}", self.location.bucket);
        self.block_on(async { self.store.get(&path).await?.bytes().await })
            .map_err(|e| self.error(context, e))
    }

    /// Writes object `key` whole: with one PUT up to `part_bytes`, else as a multipart upload of
    /// parts of `part_bytes` completed at the end. Either way the object appears only complete
    /// (an upload that fails is aborted).
    pub fn put(&self, key: &str, body: Bytes, part_bytes: u64) -> Result<(), S3Error> {
        let path = Path::from(key);
        let context = || format!("writing s3://{}/{key}", self.location.bucket);
        let part_bytes = usize::try_from(part_bytes).unwrap_or(usize::MAX);
        let result = self.block_on(async {
            if body.len() <= part_bytes {
                return self
                    .store
                    .put(&path, PutPayload::from(body))
                    .await
                    .map(drop);
            }
            let upload = self.store.put_multipart(&path).await?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, part_bytes);
            writer.put(body);
            writer.finish().await.map(drop)
        });
        result.map_err(|e| self.error(context, e))
    }

    /// Deletes object `key` (deleting a missing object is no error).
    pub fn delete(&self, key: &str) -> Result<(), S3Error> {
        let path = Path::from(key);
        let context = || format!("deleting s3://{}/{key}", self.location.bucket);
        match self.block_on(self.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(context, e)),
        }
    }
}

impl S3Store {
    /// Deletes the objects `keys` with S3's bulk delete (one request per 1000 keys); missing
    /// objects are no error.
    pub fn delete_all(&self, keys: &[String]) -> Result<(), S3Error> {
        if keys.is_empty() {
            return Ok(());
        }
        let paths: Vec<object_store::Result<Path>> =
            keys.iter().map(|k| Ok(Path::from(k.as_str()))).collect();
        let results: Vec<_> = self.block_on(
            self.store
                .delete_stream(futures::stream::iter(paths).boxed())
                .collect(),
        );
        for r in results {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    return Err(self.error(
                        || {
                            format!(
                                "deleting {} objects of s3://{}",
                                keys.len(),
                                self.location.bucket
                            )
                        },
                        e,
                    ))
                }
            }
        }
        Ok(())
    }
}

impl Drop for S3Store {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// An object's body as a blocking reader (the client's stream, pulled chunk by chunk). A
/// transfer failure is an [`io::Error`] whose inner error is the client's
/// [`object_store::Error`].
pub struct ObjectBody {
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    chunk: Bytes,
    handle: tokio::runtime::Handle,
}

impl Read for ObjectBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.handle.block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(e)) => return Err(io::Error::other(e)),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}
