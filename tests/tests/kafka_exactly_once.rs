//! Exactly-once from Kafka: votes produced to a 3-partition topic on librdkafka's mock cluster
//! (hosted by this test process, a real Kafka-protocol cluster on loopback) are counted by
//! `sardonyx run` processes, the first two killed with SIGKILL mid-way; the restarted runs resume
//! every partition from its committed offset and the final counts are exact. The input ledgers
//! and the consumer group's committed offsets end at every partition's last offset.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use sardonyx_state_log::EmbeddedLog;
use serde_json::json;

const TOPIC: &str = "votes";
const PARTITIONS: u32 = 3;
const GROUP: &str = "kafka-eo-votes";

/// Not a test: the entry point of the `sardonyx` processes the tests start.
#[test]
fn child_process() {
    child_main();
}

/// Produces `n` votes, vote `i` to partition `i % 3` (so each partition holds its share, in
/// order); returns the expected count per candidate and the record count per partition.
fn produce_votes(bootstrap: &str, n: u64) -> (BTreeMap<String, i64>, BTreeMap<u32, u64>) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .expect("a producer");
    let candidates = ["ada", "grace", "edsger", "barbara", "alan"];
    let mut counts = BTreeMap::new();
    let mut per_partition = BTreeMap::new();
    for i in 0..n {
        // Skewed, deterministic choice.
        let c = candidates[((i * 7 + i / 13) % 11 % 5) as usize];
        *counts.entry(c.to_owned()).or_insert(0) += 1;
        let partition = (i % u64::from(PARTITIONS)) as u32;
        *per_partition.entry(partition).or_insert(0) += 1;
        let payload = json!({"vote_id": i, "candidate": c, "event_time": 1_700_000_000_000_i64 + i as i64 * 10})
            .to_string();
        let key = i.to_string();
        let mut record = BaseRecord::to(TOPIC)
            .payload(&payload)
            .key(&key)
            .partition(partition as i32);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, r)) => {
                    // Queue full: let deliveries drain.
                    assert!(
                        matches!(
                            e.rdkafka_error_code(),
                            Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                        ),
                        "producing: {e}"
                    );
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(30))
        .expect("every vote delivered");
    (counts, per_partition)
}

/// The job: two input peers over the topic's partitions (peer 0 reads 0 and 2, peer 1 reads 1),
/// a total per candidate (global window, count, accumulating, a timer trigger synced to
/// `totals.jsonl`), dedup on `vote_id`; every vote goes on to the output `out.jsonl`.
fn kafka_job(dir: &Path, bootstrap: &str) -> String {
    let job = json!({
        "id": "kafka-votes",
        "workflow": [["read-votes","count-votes"],["count-votes","done"]],
        "catalog": [
            {"name":"read-votes","type":"input","plugin":"kafka","n_peers":2,
             "params":{"bootstrap_servers": bootstrap, "topic": TOPIC, "group_id": GROUP,
                       "stop_at_end": true},
             "batch_size": 200},
            {"name":"count-votes","type":"function","fn":"sardonyx/identity",
             "group_by_key":"candidate","uniqueness_key":"vote_id","n_peers":2},
            {"name":"done","type":"output","plugin":"sardonyx/jsonl",
             "params":{"path": dir.join("out.jsonl").display().to_string()}}
        ],
        "windows": [
            {"id":"totals","task":"count-votes","type":"global","aggregation":"count"}
        ],
        "triggers": [
            {"window":"totals","id":"standings","on":"timer","period":[100,"milliseconds"],
             "refinement":"accumulating","sync":"sardonyx/jsonl",
             "params":{"path": dir.join("totals.jsonl").display().to_string()}}
        ]
    });
    let path = dir.join("job.json");
    std::fs::write(&path, serde_json::to_string_pretty(&job).unwrap()).unwrap();
    path.display().to_string()
}

/// The positions each input peer's ledger ends at, merged (the peers read disjoint partitions).
fn ledger_positions(log_dir: &Path) -> BTreeMap<u32, u64> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let log = EmbeddedLog::open(log_dir)
            .await
            .expect("the job's embedded log");
        let mut merged = BTreeMap::new();
        for peer in 0..2 {
            let ledger = format!("kafka-votes/g0/read-votes/{peer}/input");
            let read = log
                .read(&ledger, 0)
                .await
                .expect("reading the input ledger");
            let last = read
                .entries
                .last()
                .map(|(_, b)| b.clone())
                .or(read.snapshot.map(|(_, b)| b))
                .unwrap_or_else(|| panic!("{ledger} is empty"));
            let (ps, _): (BTreeMap<u32, u64>, usize) =
                bincode::serde::decode_from_slice(&last, bincode::config::standard())
                    .expect("a positions record");
            for (p, o) in ps {
                assert!(
                    merged.insert(p, o).is_none(),
                    "partition {p} in two peers' ledgers"
                );
            }
        }
        log.close().await.expect("closing the log");
        merged
    })
}

/// The consumer group's committed offset of every partition.
fn group_offsets(bootstrap: &str) -> BTreeMap<u32, u64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", GROUP)
        .create()
        .expect("a consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(TOPIC, p as i32);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("the group's committed offsets");
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition() as u32, o as u64)),
            _ => None,
        })
        .collect()
}

/// A mock cluster with `n` votes in the topic, and a scratch folder with the job file.
struct Setup {
    /// Kept alive for the test's duration.
    _cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    bootstrap: String,
    expected: BTreeMap<String, i64>,
    per_partition: BTreeMap<u32, u64>,
    tmp: tempfile::TempDir,
    job: String,
}

impl Setup {
    fn new(brokers: i32, n: u64) -> Setup {
        let cluster = MockCluster::new(brokers).expect("a mock Kafka cluster");
        cluster
            .create_topic(TOPIC, PARTITIONS as i32, 1)
            .expect("creating the topic");
        let bootstrap = cluster.bootstrap_servers();
        let (expected, per_partition) = produce_votes(&bootstrap, n);
        let tmp = tempfile::tempdir().unwrap();
        let job = kafka_job(tmp.path(), &bootstrap);
        Setup {
            _cluster: cluster,
            bootstrap,
            expected,
            per_partition,
            tmp,
            job,
        }
    }
}

#[test]
fn killed_twice_the_counts_are_exact_and_every_partition_resumes() {
    const N: u64 = 20_000;
    let setup = Setup::new(3, N);
    let (bootstrap, job) = (setup.bootstrap.clone(), setup.job.clone());
    let (expected, per_partition) = (setup.expected.clone(), setup.per_partition.clone());
    let dir = setup.tmp.path();
    let data = dir.join("data");
    let data_s = data.display().to_string();
    let args = ["run", &job, "--data", &data_s, "--progress-ms", "20"];

    // Each run reads on from its resume point; kill it once it has committed this many records
    // (their positions are in the state log: the next run resumes after them).
    let mut committed = 0;
    for (i, threshold) in [3_000, 2_500].into_iter().enumerate() {
        let mut p = Proc::start(&args, dir);
        let hit = p.wait_until_count("committed", threshold, Duration::from_secs(60));
        p.kill9();
        eprintln!("run {i} killed after: {hit}");
        committed += threshold;
    }
    let (status, lines) = Proc::start(&args, dir).finish(Duration::from_secs(60));
    let out = lines.join("\n");
    assert!(status.success(), "final run failed:\n{out}");
    // The last run resumed: it read no more than what the killed runs left uncommitted, and
    // more than nothing (they were killed long before the end of the topic).
    let read: u64 = lines
        .iter()
        .filter(|l| l.contains(" records, wrote "))
        .find_map(|l| {
            let rest = &l[l.find(": read ")? + ": read ".len()..];
            rest.split(' ').next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no summary line:\n{out}"));
    eprintln!("final run read {read} records");
    assert!(
        read > 0 && read <= N - committed,
        "the final run read {read} of {N} records, {committed} of them committed before: it did \
         not resume:\n{out}"
    );

    // Exact totals: no vote lost, none counted twice.
    let reported = reported(dir);
    assert_eq!(reported["totals"], expected, "per-candidate totals");

    // Every partition's committed position is its end (Kafka positions are offset + 1).
    assert_eq!(ledger_positions(&data.join("log")), per_partition);
    assert_eq!(group_offsets(&bootstrap), per_partition);

    // Every vote reached the output at least once (the runs append to it), and nothing else.
    let text = std::fs::read_to_string(dir.join("out.jsonl")).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("out.jsonl: {e}: {line:?}"));
        let id = v["vote_id"].as_u64().unwrap();
        assert!(id < N, "vote {id} is not in the input");
        seen.insert(id);
    }
    assert_eq!(seen.len() as u64, N, "votes missing from out.jsonl");
}

/// Sets the consumer group's committed offset of every partition to `offset`.
fn set_group_offsets(bootstrap: &str, offset: i64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", GROUP)
        .create()
        .expect("a consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(TOPIC, p as i32, Offset::Offset(offset))
            .unwrap();
    }
    consumer
        .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
        .expect("committing the group's offsets");
}

/// A run killed after its ledger commit but before the source commit leaves the group's offsets
/// behind the ledger; when nothing is left to read, no later batch would commit them again. The
/// next run brings the group up to its resume point at start, and counts nothing twice.
#[test]
fn a_lagging_group_offset_is_brought_up_to_the_resume_point() {
    let setup = Setup::new(1, 3_000);
    let (bootstrap, job) = (setup.bootstrap.clone(), setup.job.clone());
    let (expected, per_partition) = (setup.expected.clone(), setup.per_partition.clone());
    let dir = setup.tmp.path();
    let data = dir.join("data");
    let data_s = data.display().to_string();
    let args = ["run", &job, "--data", &data_s];

    let (status, lines) = Proc::start(&args, dir).finish(Duration::from_secs(60));
    assert!(status.success(), "first run failed:\n{}", lines.join("\n"));
    assert_eq!(group_offsets(&bootstrap), per_partition);

    // The lag a kill between the two commits leaves behind.
    set_group_offsets(&bootstrap, 0);
    assert_eq!(
        group_offsets(&bootstrap),
        (0..PARTITIONS).map(|p| (p, 0)).collect()
    );

    let (status, lines) = Proc::start(&args, dir).finish(Duration::from_secs(60));
    let out = lines.join("\n");
    assert!(status.success(), "second run failed:\n{out}");
    assert!(
        lines.iter().any(|l| l.contains(": read 0 records, wrote ")),
        "the second run read something again:\n{out}"
    );
    assert_eq!(reported(dir)["totals"], expected, "per-candidate totals");
    assert_eq!(group_offsets(&bootstrap), per_partition);
}
