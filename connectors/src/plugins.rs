//! The connectors by the plugin names job files use: `kafka` (input and output), `postgres`
//! (output) and `http` (input). The engine registers these; this module only maps names to the
//! connectors' `validate` functions and constructors.

use serde_json::Value;

use crate::{http, kafka, postgres, ConnectorError, Positions, Problems, Sink, Source};

/// The Kafka plugin (input and output).
pub const KAFKA: &str = "kafka";
/// The PostgreSQL plugin (output).
pub const POSTGRES: &str = "postgres";
/// The HTTP ingestion plugin (input).
pub const HTTP: &str = "http";

/// Checks the params of input plugin `name` without contacting anything; `None` when this crate
/// has no such input plugin.
pub fn validate_input(name: &str, params: &Value) -> Option<Problems> {
    match name {
        KAFKA => Some(kafka::validate_source(params)),
        HTTP => Some(http::validate(params)),
        _ => None,
    }
}

/// Checks the params of output plugin `name` without contacting anything; `None` when this crate
/// has no such output plugin. ([`postgres::PostgresSink::check_table`] also checks the table.)
pub fn validate_output(name: &str, params: &Value) -> Option<Problems> {
    match name {
        KAFKA => Some(kafka::validate_sink(params)),
        POSTGRES => Some(postgres::validate(params)),
        _ => None,
    }
}

/// Opens peer `peer` (of `n_peers`) of input plugin `name`, resuming from `positions` (every
/// position the task has; each peer keeps its own partitions'). `Ok(None)` when this peer has
/// nothing to read: HTTP listens on peer 0 only (one address), and Kafka splits partitions among
/// peers (peers beyond the partition count read nothing).
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
        _ => Err(ConnectorError::fatal(
            "opening an input",
            format!("unknown input plugin {name:?}"),
        )),
    }
}

/// Opens output plugin `name`.
pub fn open_output(name: &str, params: &Value) -> Result<Box<dyn Sink>, ConnectorError> {
    match name {
        KAFKA => Ok(Box::new(kafka::KafkaSink::from_params(params)?)),
        POSTGRES => Ok(Box::new(postgres::PostgresSink::from_params(params)?)),
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
