//! The connectors by the plugin names job files use: `kafka` (input and output), `postgres`
//! (output), `http` (input) and `sardonyx/s3` (input and output). The engine registers these; this module only maps names to the
//! connectors' `validate` functions and constructors.

use serde_json::Value;

use crate::{http, kafka, postgres, s3, ConnectorError, Positions, Problems, Sink, Source};

/// The Kafka plugin (input and output).
pub const KAFKA: &str = "kafka";
/// The PostgreSQL plugin (output).
pub const POSTGRES: &str = "postgres";
/// The HTTP ingestion plugin (input).
pub const HTTP: &str = "http";
/// The object storage plugin (input and output).
pub const S3: &str = "sardonyx/s3";

/// Which output peer a sink is opened for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutputPeer {
    /// The peer's index among the task's peers (S3 names its objects by it).
    pub peer: usize,
    /// True when the job resumes earlier state: keep what earlier runs wrote.
    pub resuming: bool,
}

/// A connector's params problems as one fatal error naming every field.
fn params_error(plugin: &str, problems: &Problems) -> ConnectorError {
    ConnectorError::fatal(
        format!("{plugin} params"),
        crate::params::describe(problems),
    )
}

/// Checks the params of input plugin `name` without contacting anything; `None` when this crate
/// has no such input plugin.
pub fn validate_input(name: &str, params: &Value) -> Option<Problems> {
    match name {
        KAFKA => Some(kafka::validate_source(params)),
        HTTP => Some(http::validate(params)),
        S3 => Some(s3::params::validate_source(params)),
        _ => None,
    }
}

/// Checks the params of output plugin `name` without contacting anything; `None` when this crate
/// has no such output plugin. ([`postgres::PostgresSink::check_table`] also checks the table.)
pub fn validate_output(name: &str, params: &Value) -> Option<Problems> {
    match name {
        KAFKA => Some(kafka::validate_sink(params)),
        POSTGRES => Some(postgres::validate(params)),
        S3 => Some(s3::params::validate_sink(params)),
        _ => None,
    }
}

/// Opens peer `peer` (of `n_peers`) of input plugin `name`, resuming from `positions` (every
/// position the task has; each peer keeps its own partitions'). `Ok(None)` when this peer has
/// nothing to read: HTTP listens on peer 0 only (one address), and Kafka splits partitions among
/// peers (peers beyond the partition count read nothing). S3 splits objects among all peers.
pub fn open_input(
    name: &str,
    params: &Value,
    peer: usize,
    n_peers: usize,
    positions: &Positions,
) -> Result<Option<Box<dyn Source>>, ConnectorError> {
    match name {
        KAFKA => {
            let params = crate::params::parse(KAFKA, params, kafka::validate_source)?;
            let source = kafka::KafkaSource::open_peer(params, peer, n_peers, positions)?;
            Ok((!source.partitions().is_empty()).then(|| Box::new(source) as Box<dyn Source>))
        }
        HTTP if peer == 0 => {
            let mut source = http::HttpSource::from_params(params)?;
            if let Some(offset) = positions.get(0) {
                source.seek(crate::Position {
                    partition: 0,
                    offset,
                })?;
            }
            Ok(Some(Box::new(source)))
        }
        HTTP => Ok(None),
        S3 => {
            let params = s3::params::source_params(params).map_err(|p| params_error(S3, &p))?;
            let source = s3::S3Source::open(params, peer, n_peers, positions)?;
            Ok(Some(Box::new(source)))
        }
        _ => Err(ConnectorError::fatal(
            "opening an input",
            format!("unknown input plugin {name:?}"),
        )),
    }
}

/// Opens output plugin `name` for output peer `at`.
pub fn open_output(
    name: &str,
    params: &Value,
    at: OutputPeer,
) -> Result<Box<dyn Sink>, ConnectorError> {
    match name {
        KAFKA => Ok(Box::new(kafka::KafkaSink::from_params(params)?)),
        POSTGRES => Ok(Box::new(postgres::PostgresSink::from_params(params)?)),
        S3 => {
            let params = s3::params::sink_params(params).map_err(|p| params_error(S3, &p))?;
            Ok(Box::new(s3::S3Sink::open(params, at.peer, at.resuming)?))
        }
        _ => Err(ConnectorError::fatal(
            "opening an output",
            format!("unknown output plugin {name:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_map_to_their_checks() {
        assert!(validate_input(KAFKA, &json!({})).is_some_and(|p| !p.is_empty()));
        assert!(validate_input(POSTGRES, &json!({})).is_none());
        assert!(validate_output(HTTP, &json!({})).is_none());
        assert!(validate_output(POSTGRES, &json!({})).is_some_and(|p| !p.is_empty()));
        assert!(validate_input(S3, &json!({"bucket": "bkt"})).is_some_and(|p| p.is_empty()));
        assert!(validate_output(S3, &json!({})).is_some_and(|p| !p.is_empty()));
        let bad = open_output(
            S3,
            &json!({"bucket": "bkt", "nope": 1}),
            OutputPeer::default(),
        );
        assert!(bad.is_err_and(|e| e.to_string().contains("nope: unknown field")));
        assert!(open_input("nope", &json!({}), 0, 1, &Positions::new()).is_err());
        assert!(open_input(
            HTTP,
            &json!({"listen": "127.0.0.1:0"}),
            1,
            2,
            &Positions::new()
        )
        .unwrap()
        .is_none());
    }
}
