//! Kafka: a source over a topic's partitions with per-partition offsets, and a keyed sink.
//!
//! The source assigns itself partitions (no consumer-group rebalancing): the engine owns the
//! positions (they are checkpointed with its exactly-once state) and hands them back on open or
//! through [`Source::seek`]. A record's position is `{partition, offset: kafka offset + 1}`, the
//! offset to resume from, which is exactly what Kafka itself commits. With a `group_id`,
//! [`Source::commit`] also stores positions in the broker (for monitoring tools, and as the resume
//! point of partitions the engine has no position for).
//!
//! Each record carries its partition, so the engine can keep one watermark per partition and let
//! an idle partition stop holding the watermark back (DESIGN §4); [`Source::partitions`] lists all
//! of them, including those that have produced nothing yet.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, DefaultConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, ToBytes};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::params::{self, Fields, Problems};
use crate::{ConnectorError, Position, Positions, Record, Sink, Source, SourceBatch};

/// How long metadata requests and synchronous commits may take before failing (retryable).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`KafkaSink::flush`] waits for every write to be acknowledged.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);
/// librdkafka properties the connectors set themselves; `config` may not override them.
const RESERVED: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "enable.partition.eof",
    "auto.offset.reset",
];

/// Where a partition without a known position starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// The oldest record still in the partition (the default).
    #[default]
    Earliest,
    /// Only records produced after the source opened.
    Latest,
}

/// Params of the `kafka` input plugin.
///
/// ```json
/// {"bootstrap_servers": "localhost:9092", "topic": "votes", "group_id": "vote-count",
///  "partitions": [0, 1], "start": "earliest", "stop_at_end": false,
///  "config": {"fetch.min.bytes": "1"}}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceParams {
    /// Comma-separated `host:port` list of brokers.
    pub bootstrap_servers: String,
    /// The topic to read.
    pub topic: String,
    /// A consumer group to store committed offsets under (optional: the engine keeps positions).
    #[serde(default)]
    pub group_id: Option<String>,
    /// The partitions to read (default: all of the topic's), e.g. to split a topic among peers.
    #[serde(default)]
    pub partitions: Option<Vec<u32>>,
    /// Where partitions without a position (given or committed) start.
    #[serde(default)]
    pub start: StartFrom,
    /// Finish ([`SourceBatch::Done`]) once every partition has been read to its end (a bounded
    /// read of what the topic holds); by default the source never finishes.
    #[serde(default)]
    pub stop_at_end: bool,
    /// Extra librdkafka properties (security, fetch tuning, ...), all as strings.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

/// Params of the `kafka` output plugin.
///
/// ```json
/// {"bootstrap_servers": "localhost:9092", "topic": "tallies", "key_field": "candidate",
///  "config": {"linger.ms": "5"}}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkParams {
    /// Comma-separated `host:port` list of brokers.
    pub bootstrap_servers: String,
    /// The topic to write.
    pub topic: String,
    /// A top-level field of each JSON record used as the message key (strings as they are, other
    /// values as JSON text), so that one key always lands in one partition. Without it records
    /// are written without a key.
    #[serde(default)]
    pub key_field: Option<String>,
    /// Extra librdkafka properties, all as strings.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// How the writer of this sink retries a batch whose write or delivery failed with a
    /// retryable error ([`crate::retry`]).
    #[serde(default)]
    pub retry: crate::RetryPolicy,
}

fn check_common(f: &mut Fields<'_>) {
    if let Some(servers) = f.string("bootstrap_servers", true) {
        for server in servers.split(',').map(str::trim) {
            let ok = server
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                f.problem(
                    "bootstrap_servers",
                    format!("{server:?} is not host:port (e.g. \"localhost:9092\")"),
                );
            }
        }
    }
    if let Some(topic) = f.string("topic", true) {
        let legal = topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !legal || topic.len() > 249 || topic == "." || topic == ".." {
            f.problem(
                "topic",
                format!("{topic:?} is not a legal Kafka topic name (letters, digits, '.', '_', '-'; at most 249)"),
            );
        }
    }
    let config = f.string_map("config");
    let mut client = ClientConfig::new();
    for (key, value) in config {
        if RESERVED.contains(&key) {
            f.problem(
                format!("config.{key}"),
                "is set by the connector from its own params and cannot be overridden",
            );
        } else {
            client.set(key, value);
        }
    }
    client.set_log_level(RDKafkaLogLevel::Emerg);
    if let Err(e) = client.create_native_config() {
        f.problem("config", e.to_string());
    }
}

/// Checks the params of the `kafka` input plugin without contacting a broker; reports every
/// problem.
pub fn validate_source(params: &Value) -> Problems {
    let mut f = match Fields::new(params) {
        Ok(f) => f,
        Err(p) => return p,
    };
    check_common(&mut f);
    f.string("group_id", false);
    match f.value("partitions", false) {
        None => {}
        Some(Value::Array(items)) => {
            let mut seen = BTreeSet::new();
            if items.is_empty() {
                f.problem("partitions", "must not be empty (leave it out to read all)");
            }
            for item in items {
                match item.as_u64().filter(|&p| p <= i32::MAX as u64) {
                    Some(p) if !seen.insert(p) => {
                        f.problem("partitions", format!("partition {p} is listed twice"))
                    }
                    Some(_) => {}
                    None => f.problem(
                        "partitions",
                        format!("{item} is not a partition number (a non-negative integer)"),
                    ),
                }
            }
        }
        Some(other) => f.problem(
            "partitions",
            format!(
                "must be a list of partition numbers, got {}",
                params::kind(other)
            ),
        ),
    }
    if let Some(v) = f.value("start", false) {
        if !matches!(v.as_str(), Some("earliest" | "latest")) {
            f.problem(
                "start",
                format!("must be \"earliest\" or \"latest\", got {v}"),
            );
        }
    }
    f.boolean("stop_at_end");
    f.finish()
}

/// Checks the params of the `kafka` output plugin without contacting a broker; reports every
/// problem.
pub fn validate_sink(params: &Value) -> Problems {
    let mut f = match Fields::new(params) {
        Ok(f) => f,
        Err(p) => return p,
    };
    check_common(&mut f);
    f.string("key_field", false);
    crate::retry::check(&mut f);
    f.finish()
}

/// Classifies a Kafka error: transient broker and network conditions are retryable.
pub(crate) fn classify(context: impl Into<String>, err: &KafkaError) -> ConnectorError {
    use RDKafkaErrorCode as C;
    let retryable = match err {
        KafkaError::MessageConsumptionFatal(_)
        | KafkaError::ClientConfig(..)
        | KafkaError::ClientCreation(_)
        | KafkaError::Nul(_) => false,
        _ => matches!(
            err.rdkafka_error_code(),
            Some(
                C::BrokerTransportFailure
                    | C::Resolve
                    | C::MessageTimedOut
                    | C::AllBrokersDown
                    | C::OperationTimedOut
                    | C::QueueFull
                    | C::WaitingForCoordinator
                    | C::InProgress
                    | C::PreviousInProgress
                    | C::TimedOutQueue
                    | C::Retry
                    | C::WaitCache
                    | C::LeaderNotAvailable
                    | C::NotLeaderForPartition
                    | C::RequestTimedOut
                    | C::BrokerNotAvailable
                    | C::ReplicaNotAvailable
                    | C::NetworkException
                    | C::CoordinatorLoadInProgress
                    | C::CoordinatorNotAvailable
                    | C::NotCoordinator
                    | C::NotEnoughReplicas
                    | C::NotEnoughReplicasAfterAppend
                    | C::RebalanceInProgress
                    | C::KafkaStorageError
                    | C::FencedLeaderEpoch
                    | C::UnknownLeaderEpoch
                    | C::OffsetNotAvailable
                    | C::PreferredLeaderNotAvailable
                    | C::ThrottlingQuotaExceeded
                    | C::UnstableOffsetCommit
            )
        ),
    };
    let context = context.into();
    let message = err.to_string();
    if retryable {
        ConnectorError::Retryable { context, message }
    } else {
        ConnectorError::Fatal { context, message }
    }
}

fn client_config(bootstrap_servers: &str, extra: &BTreeMap<String, String>) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (k, v) in extra {
        config.set(k, v);
    }
    config.set("bootstrap.servers", bootstrap_servers);
    config
}

/// Reads a Kafka topic's partitions as records with per-partition resumable positions.
pub struct KafkaSource {
    consumer: BaseConsumer,
    params: KafkaSourceParams,
    partitions: Vec<u32>,
    /// The next offset of each partition, where known (read, sought, or given at open).
    next: BTreeMap<u32, u64>,
    /// Partitions read to their end since they last produced a record (`stop_at_end` only).
    at_end: BTreeSet<u32>,
    /// An error met after some records were already taken, returned by the next poll.
    deferred: Option<ConnectorError>,
}

impl KafkaSource {
    /// Opens the source from the plugin's params JSON, resuming from `positions`.
    pub fn from_params(params: &Value, positions: &Positions) -> Result<Self, ConnectorError> {
        Self::open(params::parse("kafka", params, validate_source)?, positions)
    }

    /// Opens the source: learns the topic's partitions and assigns them, each starting at its
    /// position in `positions`, else at the group's committed offset (with a `group_id`), else
    /// at `start`.
    pub fn open(params: KafkaSourceParams, positions: &Positions) -> Result<Self, ConnectorError> {
        Self::open_peer(params, 0, 1, positions)
    }

    /// Opens the share of peer `peer` of `n_peers` reading one topic: the partitions (of
    /// `params.partitions`, else all) at indices `peer`, `peer + n_peers`, ... A peer with no
    /// partition reads nothing (idle forever, or done at once with `stop_at_end`).
    pub fn open_peer(
        params: KafkaSourceParams,
        peer: usize,
        n_peers: usize,
        positions: &Positions,
    ) -> Result<Self, ConnectorError> {
        let context = format!("opening Kafka topic {:?}", params.topic);
        let mut config = client_config(&params.bootstrap_servers, &params.config);
        config
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", params.stop_at_end.to_string())
            .set(
                "auto.offset.reset",
                match params.start {
                    StartFrom::Earliest => "earliest",
                    StartFrom::Latest => "latest",
                },
            );
        // librdkafka wants a group even for assigned partitions; without a `group_id` nothing is
        // ever committed to it, so a fixed name is harmless.
        config.set(
            "group.id",
            params.group_id.as_deref().unwrap_or("sardonyx-uncommitted"),
        );
        let consumer: BaseConsumer<DefaultConsumerContext> =
            config.create().map_err(|e| classify(&context, &e))?;
        let metadata = consumer
            .fetch_metadata(Some(&params.topic), REQUEST_TIMEOUT)
            .map_err(|e| classify(&context, &e))?;
        let topic = metadata
            .topics()
            .iter()
            .find(|t| t.name() == params.topic)
            .ok_or_else(|| {
                ConnectorError::fatal(&context, "the broker did not describe the topic")
            })?;
        if let Some(err) = topic.error() {
            let err = KafkaError::MetadataFetch(err.into());
            return Err(classify(&context, &err));
        }
        let all: Vec<u32> = topic.partitions().iter().map(|p| p.id() as u32).collect();
        if all.is_empty() {
            return Err(ConnectorError::Retryable {
                context,
                message: "the topic has no partitions yet".into(),
            });
        }
        let partitions = match &params.partitions {
            None => all.clone(),
            Some(wanted) => {
                if let Some(p) = wanted.iter().find(|p| !all.contains(p)) {
                    return Err(ConnectorError::fatal(
                        context,
                        format!("partition {p} does not exist (the topic has {})", all.len()),
                    ));
                }
                wanted.clone()
            }
        };

        for p in positions.iter() {
            if !partitions.contains(&p.partition) {
                return Err(ConnectorError::fatal(
                    context,
                    format!(
                        "a position names partition {}, which this source does not read",
                        p.partition
                    ),
                ));
            }
        }
        // Positions of other peers' partitions are theirs: keep only this peer's.
        let n_peers = n_peers.max(1);
        let partitions: Vec<u32> = partitions
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % n_peers == peer)
            .map(|(_, p)| p)
            .collect();
        let next = positions
            .iter()
            .filter(|p| partitions.contains(&p.partition))
            .map(|p| (p.partition, p.offset))
            .collect();
        let source = KafkaSource {
            consumer,
            params,
            partitions,
            next,
            at_end: BTreeSet::new(),
            deferred: None,
        };
        source.assign()?;
        Ok(source)
    }

    /// (Re)assigns every partition at its next offset, or at the default start.
    fn assign(&self) -> Result<(), ConnectorError> {
        let mut tpl = TopicPartitionList::new();
        for &p in &self.partitions {
            let offset = match self.next.get(&p) {
                Some(&o) => Offset::Offset(o as i64),
                None if self.params.group_id.is_some() => Offset::Stored,
                None => match self.params.start {
                    StartFrom::Earliest => Offset::Beginning,
                    StartFrom::Latest => Offset::End,
                },
            };
            tpl.add_partition_offset(&self.params.topic, p as i32, offset)
                .map_err(|e| classify("assigning Kafka partitions", &e))?;
        }
        self.consumer
            .assign(&tpl)
            .map_err(|e| classify("assigning Kafka partitions", &e))
    }

    /// The next offset of every partition that has one (read, sought or given at open).
    pub fn positions(&self) -> Positions {
        self.next
            .iter()
            .map(|(&partition, &offset)| Position { partition, offset })
            .collect()
    }

    /// The params the source was opened with.
    pub fn params(&self) -> &KafkaSourceParams {
        &self.params
    }

    fn all_at_end(&self) -> bool {
        self.partitions.iter().all(|p| self.at_end.contains(p))
    }
}

impl Source for KafkaSource {
    fn poll_batch(&mut self, max: usize, timeout: Duration) -> Result<SourceBatch, ConnectorError> {
        if let Some(err) = self.deferred.take() {
            return Err(err);
        }
        let bounded = self.params.stop_at_end;
        if bounded && self.all_at_end() {
            return Ok(SourceBatch::Done);
        }
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(max.min(4096));
        while out.len() < max {
            // Wait for the first record up to the deadline; after that take only what is ready.
            let wait = if out.is_empty() {
                deadline.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            match self.consumer.poll(wait) {
                Some(Ok(msg)) => {
                    let partition = msg.partition() as u32;
                    let offset = msg.offset() as u64 + 1;
                    self.next.insert(partition, offset);
                    self.at_end.remove(&partition);
                    // A record without a payload (a tombstone) is no document: skip it, its
                    // offset is covered by the next record's position.
                    if let Some(payload) = msg.payload() {
                        out.push(Record {
                            position: Position { partition, offset },
                            index: offset,
                            payload: payload.to_vec(),
                            fault: None,
                        });
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    self.at_end.insert(p as u32);
                    if bounded && self.all_at_end() {
                        break;
                    }
                }
                Some(Err(e)) => {
                    let err = classify(format!("reading Kafka topic {:?}", self.params.topic), &e);
                    if out.is_empty() {
                        return Err(err);
                    }
                    self.deferred = Some(err);
                    break;
                }
                None => {
                    if !out.is_empty() || Instant::now() >= deadline {
                        break;
                    }
                }
            }
        }
        Ok(if !out.is_empty() {
            SourceBatch::Records(out)
        } else if bounded && self.all_at_end() {
            SourceBatch::Done
        } else {
            SourceBatch::Idle
        })
    }

    fn seek(&mut self, position: Position) -> Result<(), ConnectorError> {
        self.seek_all(&Positions::from_iter([position]))
    }

    fn seek_all(&mut self, positions: &Positions) -> Result<(), ConnectorError> {
        for p in positions.iter() {
            if !self.partitions.contains(&p.partition) {
                return Err(ConnectorError::fatal(
                    format!("seeking Kafka topic {:?}", self.params.topic),
                    format!("partition {} is not read by this source", p.partition),
                ));
            }
        }
        for p in positions.iter() {
            self.next.insert(p.partition, p.offset);
            self.at_end.remove(&p.partition);
        }
        self.deferred = None;
        self.assign()
    }

    fn commit(&mut self, position: Position) -> Result<(), ConnectorError> {
        self.commit_all(&Positions::from_iter([position]))
    }

    /// Stores the positions as the group's committed offsets (synchronously, one request);
    /// does nothing without a `group_id`.
    fn commit_all(&mut self, positions: &Positions) -> Result<(), ConnectorError> {
        if self.params.group_id.is_none() || positions.is_empty() {
            return Ok(());
        }
        let context = format!("committing offsets of Kafka topic {:?}", self.params.topic);
        let mut tpl = TopicPartitionList::new();
        for p in positions.iter() {
            tpl.add_partition_offset(
                &self.params.topic,
                p.partition as i32,
                Offset::Offset(p.offset as i64),
            )
            .map_err(|e| classify(&context, &e))?;
        }
        self.consumer
            .commit(&tpl, CommitMode::Sync)
            .map_err(|e| classify(&context, &e))
    }

    fn partitions(&self) -> Vec<u32> {
        self.partitions.clone()
    }
}

/// Remembers the first failed delivery so that [`KafkaSink::flush`] can report it.
#[derive(Default)]
struct DeliveryWatch {
    failure: Mutex<Option<KafkaError>>,
}

impl ClientContext for DeliveryWatch {}

impl ProducerContext for DeliveryWatch {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((err, _)) = result {
            let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
            failure.get_or_insert_with(|| err.clone());
        }
    }
}

/// Writes JSON records to a Kafka topic, keyed by a field of each record.
///
/// `write_batch` hands records to the producer (which sends them in the background);
/// `flush` waits until the brokers have acknowledged all of them (`acks=all`, idempotent
/// producer, so internal retries write no duplicates) and reports any that failed.
pub struct KafkaSink {
    producer: ThreadedProducer<DeliveryWatch>,
    watch: Arc<DeliveryWatch>,
    params: KafkaSinkParams,
}

impl KafkaSink {
    /// Opens the sink from the plugin's params JSON.
    pub fn from_params(params: &Value) -> Result<Self, ConnectorError> {
        Self::open(params::parse("kafka", params, validate_sink)?)
    }

    /// Opens the sink (connections are made lazily, on the first write).
    pub fn open(params: KafkaSinkParams) -> Result<Self, ConnectorError> {
        let mut config = client_config(&params.bootstrap_servers, &params.config);
        config.set("enable.idempotence", "true").set("acks", "all");
        let producer: ThreadedProducer<DeliveryWatch> = config
            .create_with_context(DeliveryWatch::default())
            .map_err(|e| classify(format!("opening Kafka producer for {:?}", params.topic), &e))?;
        let watch = producer.context().clone();
        Ok(KafkaSink {
            producer,
            watch,
            params,
        })
    }

    /// The key of one record: the configured field, strings as their bytes, other values as JSON.
    fn key_of(&self, field: &str, n: usize, payload: &[u8]) -> Result<Vec<u8>, ConnectorError> {
        let context = || format!("writing to Kafka topic {:?}", self.params.topic);
        let doc: Value = serde_json::from_slice(payload).map_err(|e| {
            ConnectorError::fatal(
                context(),
                format!("record {n} of the batch is not JSON: {e}"),
            )
        })?;
        match doc.get(field) {
            Some(Value::String(s)) => Ok(s.as_bytes().to_vec()),
            Some(Value::Null) | None => Err(ConnectorError::fatal(
                context(),
                format!("record {n} of the batch has no key field {field:?}"),
            )),
            Some(other) => Ok(other.to_string().into_bytes()),
        }
    }

    fn send(&self, key: Option<&[u8]>, payload: &[u8]) -> Result<(), ConnectorError> {
        let deadline = Instant::now() + FLUSH_TIMEOUT;
        loop {
            let mut record: BaseRecord<'_, [u8], [u8]> =
                BaseRecord::to(&self.params.topic).payload(payload);
            if let Some(key) = key {
                record = record.key(key);
            }
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                // The local queue is full: let deliveries drain it, then try again (bounded).
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if Instant::now() < deadline =>
                {
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => {
                    return Err(classify(
                        format!("writing to Kafka topic {:?}", self.params.topic),
                        &e,
                    ))
                }
            }
        }
    }
}

impl Sink for KafkaSink {
    fn write_batch(&mut self, records: &[Vec<u8>]) -> Result<(), ConnectorError> {
        // Find every key first, so that a bad record fails the batch before any of it is sent.
        let keys = match &self.params.key_field {
            Some(field) => records
                .iter()
                .enumerate()
                .map(|(n, r)| self.key_of(field, n, r).map(Some))
                .collect::<Result<Vec<_>, _>>()?,
            None => vec![None; records.len()],
        };
        for (record, key) in records.iter().zip(&keys) {
            self.send(key.as_deref(), record.to_bytes())?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ConnectorError> {
        let context = format!("flushing Kafka topic {:?}", self.params.topic);
        self.producer
            .flush(FLUSH_TIMEOUT)
            .map_err(|e| classify(&context, &e))?;
        let failure = self
            .watch
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        match failure {
            Some(err) => Err(classify(context, &err)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(problems: &Problems) -> Vec<&str> {
        problems.iter().map(|(f, _)| f.as_str()).collect()
    }

    #[test]
    fn source_params_report_every_problem() {
        let problems = validate_source(&json!({
            "bootstrap_servers": "localhost, broker:x", "topic": "a b", "partitions": [0, 0, -1],
            "start": "middle", "config": {"group.id": "g", "no.such.property": "1"}, "grup_id": "g"
        }));
        assert_eq!(
            fields(&problems),
            [
                "bootstrap_servers",
                "bootstrap_servers",
                "topic",
                "config.group.id",
                "config",
                "partitions",
                "partitions",
                "start",
                "grup_id"
            ],
            "{problems:?}"
        );
        assert!(problems[0].1.contains("\"localhost\" is not host:port"));
        assert!(problems[4].1.contains("no.such.property"), "{problems:?}");
        let missing = validate_source(&json!({"bootstrap_servers": "localhost:9092"}));
        assert_eq!(
            missing,
            vec![("topic".to_string(), "is required".to_string())]
        );
        let ok = json!({"bootstrap_servers": "a:1,b:2", "topic": "votes", "group_id": "g",
                        "partitions": [2, 0], "start": "latest", "stop_at_end": true,
                        "config": {"fetch.min.bytes": "1"}});
        assert!(validate_source(&ok).is_empty());
        let parsed: KafkaSourceParams = serde_json::from_value(ok).unwrap();
        assert_eq!(parsed.start, StartFrom::Latest);
    }

    #[test]
    fn sink_params_and_error_classes() {
        assert_eq!(
            fields(&validate_sink(&json!({"topic": "t", "key_field": 3}))),
            ["bootstrap_servers", "key_field"]
        );
        let transient = KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull);
        assert!(classify("x", &transient).is_retryable());
        let broker = KafkaError::MetadataFetch(RDKafkaErrorCode::BrokerTransportFailure);
        assert!(classify("x", &broker).is_retryable());
        let denied = KafkaError::MetadataFetch(RDKafkaErrorCode::TopicAuthorizationFailed);
        assert!(!classify("x", &denied).is_retryable());
        let too_big = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert!(!classify("x", &too_big).is_retryable());
    }
}
