//! Errors of the S3 connectors, classified where they arise: what S3 answered (a missing bucket,
//! refused credentials, a transient failure the client gave up retrying) or what an object held
//! (a body that is not valid gzip or zstd). Causes are kept typed, as `#[source]`.

use std::io;

/// An error of the S3 input or output.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// The bucket named by `params.bucket` does not exist at the endpoint.
    #[error("bucket: no bucket named {bucket:?} at {endpoint}")]
    BucketNotFound {
        /// The bucket asked for.
        bucket: String,
        /// The endpoint asked (`params.endpoint`, else AWS's default for the region).
        endpoint: String,
        /// What the server answered.
        #[source]
        source: object_store::Error,
    },
    /// The server refused the credentials (read from the environment as the AWS tools read
    /// them: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, ...).
    #[error(
        "credentials: the server refused the credentials for bucket {bucket:?} (AWS_ACCESS_KEY_ID \
         and AWS_SECRET_ACCESS_KEY from the environment)"
    )]
    CredentialsRefused {
        /// The bucket asked for.
        bucket: String,
        /// What the server answered.
        #[source]
        source: object_store::Error,
    },
    /// The client could not be configured from the params and the environment.
    #[error("configuring the S3 client for bucket {bucket:?}")]
    Configuration {
        /// The bucket asked for.
        bucket: String,
        /// The client's complaint.
        #[source]
        source: object_store::Error,
    },
    /// A request failed: retryable when the failure was transient (a timeout, a connection
    /// refused or reset, a 5xx answer) after the client's own retries.
    #[error("{context}")]
    Request {
        /// What was being done (`listing s3://bucket/prefix`, `writing s3://bucket/key`).
        context: String,
        /// True when trying again may work.
        retryable: bool,
        /// The client's error.
        #[source]
        source: object_store::Error,
    },
    /// An object's body could not be read or decompressed.
    #[error("reading object s3://{bucket}/{key}")]
    Body {
        /// The bucket.
        bucket: String,
        /// The object's key.
        key: String,
        /// True when the failure was in the transfer (the object may be read again), false
        /// when the data is bad (not gzip, not zstd).
        retryable: bool,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// A committed position cannot be resumed from (objects were removed, or the task's peer
    /// count changed since the position was committed).
    #[error("resuming the S3 input of s3://{bucket}/{prefix}: {reason}")]
    Resume {
        /// The bucket.
        bucket: String,
        /// The prefix.
        prefix: String,
        /// Why not.
        reason: String,
    },
}

impl S3Error {
    /// True when the operation may succeed if tried again.
    pub fn is_retryable(&self) -> bool {
        match self {
            S3Error::Request { retryable, .. } | S3Error::Body { retryable, .. } => *retryable,
            _ => false,
        }
    }
}

/// True when `err` is worth trying again: a transfer failure or a server error, as opposed to a
/// refusal (4xx) or a bad request.
pub(crate) fn is_transient(err: &object_store::Error) -> bool {
    use object_store::Error as E;
    match err {
        E::NotFound { .. }
        | E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::AlreadyExists { .. }
        | E::Precondition { .. }
        | E::NotModified { .. }
        | E::NotImplemented { .. }
        | E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::UnknownConfigurationKey { .. } => false,
        // A generic error carries the status the server answered, if any: 4xx are refusals.
        other => !mentions_client_error(other),
    }
}

/// Whether `err`'s chain holds an HTTP 4xx answer that the client left generic (400, 405,
/// ...: 401, 403, 404, 409 and 412 have variants of their own). The client's retry error is not
/// public, so its text is read: `... non-2xx status code: 400 Bad Request ...`.
fn mentions_client_error(err: &(dyn std::error::Error + 'static)) -> bool {
    chain(err).any(|text| {
        text.split("status code: ")
            .skip(1)
            .any(|rest| rest.starts_with('4'))
    })
}

/// True when `err`'s chain says the bucket does not exist (S3's `NoSuchBucket` code).
pub(crate) fn is_no_such_bucket(err: &object_store::Error) -> bool {
    chain(err).any(|text| text.contains("NoSuchBucket"))
}

/// The texts of `err` and of each of its causes.
fn chain<'e>(err: &'e (dyn std::error::Error + 'static)) -> impl Iterator<Item = String> + 'e {
    std::iter::successors(Some(err), |e| e.source()).map(|e| e.to_string())
}

/// True when `err` is S3 refusing who is asking (401 or 403: unknown key, bad signature,
/// expired token, access denied) rather than what is asked. A listing's refusal arrives as a
/// generic error, so S3's error codes are looked for in the chain too.
pub(crate) fn is_refusal(err: &object_store::Error) -> bool {
    const CODES: [&str; 6] = [
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "ExpiredToken",
        "InvalidToken",
        "status code: 401",
    ];
    matches!(
        err,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
    ) || chain(err).any(|text| CODES.iter().any(|code| text.contains(code)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(message: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: message.to_owned().into(),
        }
    }

    #[test]
    fn refusals_are_fatal_and_transfers_retryable() {
        let denied = object_store::Error::PermissionDenied {
            path: "k".into(),
            source: "403".into(),
        };
        assert!(!is_transient(&denied));
        assert!(is_refusal(&denied));
        assert!(is_transient(&generic("connection reset")));
        assert!(is_transient(&generic(
            "non-2xx status code: 503 Service Unavailable"
        )));
        assert!(!is_transient(&generic(
            "non-2xx status code: 400 Bad Request"
        )));
        assert!(is_no_such_bucket(&generic("<Code>NoSuchBucket</Code>")));
        assert!(is_refusal(&generic(
            "403 Forbidden: <Code>InvalidAccessKeyId</Code>"
        )));
        assert!(!is_refusal(&generic("<Code>NoSuchKey</Code>")));
        assert!(!is_no_such_bucket(&generic("<Code>NoSuchKey</Code>")));
        let e = S3Error::Request {
            context: "x".into(),
            retryable: true,
            source: generic("timeout"),
        };
        assert!(e.is_retryable());
    }
}
