//! The connectors of `sardonyx-connectors` as plugins: inputs `kafka`, `http` and `sardonyx/s3`,
//! outputs `kafka`, `postgres` and `sardonyx/s3`, and the sync functions `postgres` (firings
//! upserted into a table) and `sardonyx/s3` (firings as JSON lines in objects). The connectors
//! know nothing of segments and block (some on a tokio runtime of their own), so this module
//! turns segments and firings into JSON documents and opens, writes and drops every connector
//! on a thread of its own, away from the threads that drive the job's runtime.

use std::sync::Arc;

use sardonyx_connectors::plugins::{self, OutputPeer};
use sardonyx_connectors::{ConnectorError, RetryPolicy, Sink};

use crate::plugin::{
    to_json, InputPlugin, InputReader, OutputPlugin, PluginFamily, SegmentSink, SyncPlugin,
    SyncSink,
};
use crate::segment::{Map, Segment};

/// The connectors' plugins: inputs `kafka`, `http` and `sardonyx/s3`, outputs `kafka`,
/// `postgres` and `sardonyx/s3`, and the sync functions `postgres` and `sardonyx/s3` (firings
/// as rows, or as JSON lines in objects).
pub(crate) fn family() -> PluginFamily {
    let mut family = PluginFamily::default();
    for name in [plugins::KAFKA, plugins::HTTP, plugins::S3] {
        family.inputs.push((
            name,
            InputPlugin {
                check: Arc::new(move |p| {
                    plugins::validate_input(name, &to_json(p)).unwrap_or_default()
                }),
                open: Arc::new(move |ctx| {
                    let params = to_json(&ctx.task.params);
                    let (peer, n_peers, positions) = (ctx.peer, ctx.n_peers, ctx.positions);
                    match off_runtime(|| {
                        plugins::open_input(name, &params, peer, n_peers, positions)
                    }) {
                        Ok(Some(source)) => Ok(InputReader::Records(source)),
                        Ok(None) => Ok(InputReader::Nothing),
                        Err(e) => Err(e.to_string()),
                    }
                }),
            },
        ));
    }
    for name in [plugins::KAFKA, plugins::POSTGRES, plugins::S3] {
        family.outputs.push((
            name,
            OutputPlugin {
                check: Arc::new(move |p| {
                    plugins::validate_output(name, &to_json(p)).unwrap_or_default()
                }),
                open: Arc::new(move |ctx| {
                    let params = to_json(&ctx.task.params);
                    let at = OutputPeer {
                        peer: ctx.peer,
                        resuming: ctx.resuming,
                    };
                    off_runtime(|| plugins::open_output(name, &params, at))
                        .map(|sink| {
                            Box::new(JsonOutput(OffRuntime(Some(sink)))) as Box<dyn SegmentSink>
                        })
                        .map_err(|e| e.to_string())
                }),
            },
        ));
    }
    for name in [plugins::POSTGRES, plugins::S3] {
        family.syncs.push((
            name,
            SyncPlugin {
                check: Arc::new(move |p| {
                    plugins::validate_output(name, &to_json(p)).unwrap_or_default()
                }),
                open: Arc::new(move |ctx| {
                    let params = to_json(ctx.params);
                    let retry = RetryPolicy::from_params(&params).map_err(|e| e.to_string())?;
                    // One sink per trigger, shared by the task's peers: it writes as peer 0.
                    let at = OutputPeer {
                        peer: 0,
                        resuming: ctx.resuming,
                    };
                    off_runtime(|| plugins::open_output(name, &params, at))
                        .map(|sink| {
                            Box::new(BufferedSync {
                                sink: OffRuntime(Some(sink)),
                                pending: Vec::new(),
                                retry,
                            }) as Box<dyn SyncSink>
                        })
                        .map_err(|e| e.to_string())
                }),
            },
        ));
    }
    family
}

/// Runs `f` on a thread of its own: connectors block, some on a runtime of their own, which
/// must not happen on a thread that drives the job's runtime.
fn off_runtime<T: Send>(
    f: impl FnOnce() -> Result<T, ConnectorError> + Send,
) -> Result<T, ConnectorError> {
    std::thread::scope(|s| {
        s.spawn(f).join().unwrap_or_else(|_| {
            Err(ConnectorError::fatal(
                "connector",
                "a connector panicked while opening",
            ))
        })
    })
}

/// Writes segments as JSON documents to a connector sink.
struct JsonOutput(OffRuntime);

/// Owns a connector sink and drops it on a thread of its own: a connector sink may own a tokio
/// runtime (PostgreSQL), and dropping one on a thread that drives the job's runtime panics (as
/// when a job fails and its peers end).
struct OffRuntime(Option<Box<dyn Sink>>);

impl std::ops::Deref for OffRuntime {
    type Target = Box<dyn Sink>;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("present until dropped")
    }
}

impl std::ops::DerefMut for OffRuntime {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0.as_mut().expect("present until dropped")
    }
}

impl Drop for OffRuntime {
    fn drop(&mut self) {
        if let Some(sink) = self.0.take() {
            let _ = std::thread::spawn(move || drop(sink)).join();
        }
    }
}

impl SegmentSink for JsonOutput {
    fn write(&mut self, segments: &[Segment]) -> Result<(), ConnectorError> {
        let records: Vec<Vec<u8>> = segments
            .iter()
            .map(|s| crate::segment::to_json_string(s).into_bytes())
            .collect();
        self.0.write_batch(&records)
    }
    fn flush(&mut self) -> Result<(), ConnectorError> {
        self.0.flush()
    }
}

/// A sync function over a connector sink: firings are gathered and written at each flush (the
/// end of every batch), one write per batch, on a thread of their own since connector sinks
/// block (and may run their own runtime). A retryable failure is retried with backoff (the
/// trigger's `params.retry`); the firings stay pending until written.
struct BufferedSync {
    sink: OffRuntime,
    pending: Vec<Vec<u8>>,
    retry: RetryPolicy,
}

impl SyncSink for BufferedSync {
    fn sync(&mut self, firing: &Map) -> Result<(), String> {
        self.pending
            .push(crate::segment::to_json_string(firing).into_bytes());
        Ok(())
    }

    fn flush(&mut self) -> Result<(), String> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let (records, sink, retry) = (&self.pending, &mut self.sink, &self.retry);
        std::thread::scope(|s| {
            s.spawn(move || {
                retry.run("syncing firings", || {
                    sink.write_batch(records)?;
                    sink.flush()
                })
            })
            .join()
            .unwrap_or_else(|_| Err(ConnectorError::fatal("sync", "the writer thread panicked")))
        })
        .map_err(|e| e.to_string())?;
        self.pending.clear();
        Ok(())
    }
}
