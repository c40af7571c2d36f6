//! Object storage: the `sardonyx/s3` input ([`S3Source`]) and output ([`S3Sink`]) over any
//! S3-compatible server, through Apache Arrow's `object_store` client.
//!
//! The input reads JSON-lines objects under a bucket's prefix in key order, split among its
//! peers, and its committed position is *(object, byte offset)* ([`position`]); the output
//! writes objects rolled by size and age, each batch durable before it is acknowledged, objects
//! visible only complete, under names a replay reuses ([`layout`]). Params are in [`params`];
//! credentials come from the environment as the AWS tools read them.

pub mod error;
pub mod layout;
pub mod params;
pub mod position;
pub mod sink;
pub mod source;
pub mod store;

pub use error::S3Error;
pub use params::{S3SinkParams, S3SourceParams};
pub use sink::S3Sink;
pub use source::S3Source;
pub use store::S3Store;
