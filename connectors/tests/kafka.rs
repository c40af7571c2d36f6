//! Kafka source and sink against librdkafka's in-process mock cluster (a real Kafka-protocol
//! cluster of 3 brokers, no fake of our own).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use sardonyx_connectors::kafka::{KafkaSink, KafkaSource, KafkaSourceParams};
use sardonyx_connectors::{Positions, Record, Sink, Source, SourceBatch};
use serde_json::{json, Value};

const N: usize = 300;

fn cluster(topic: &str) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(3).expect("mock cluster");
    cluster.create_topic(topic, 3, 1).expect("topic");
    cluster
}

/// Writes N votes through the sink, keyed by voter.
fn produce(servers: &str, topic: &str) {
    let mut sink = KafkaSink::from_params(&json!({
        "bootstrap_servers": servers, "topic": topic, "key_field": "voter_id"
    }))
    .unwrap();
    let records: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            json!({"vote_id": i, "voter_id": format!("voter-{}", i % 37)})
                .to_string()
                .into_bytes()
        })
        .collect();
    for chunk in records.chunks(64) {
        sink.write_batch(chunk).unwrap();
    }
    sink.flush().unwrap();
}

fn vote_id(r: &Record) -> u64 {
    let v: Value = serde_json::from_slice(&r.payload).unwrap();
    v["vote_id"].as_u64().unwrap()
}

/// Polls until `want` records arrived (or the source is done), within a bounded deadline.
fn read(src: &mut KafkaSource, want: usize, max: usize) -> (Vec<Record>, bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while out.len() < want {
        assert!(
            Instant::now() < deadline,
            "timed out with {} of {want} records",
            out.len()
        );
        match src
            .poll_batch(max.min(want - out.len()), Duration::from_millis(500))
            .unwrap()
        {
            SourceBatch::Records(rs) => out.extend(rs),
            SourceBatch::Idle => {}
            SourceBatch::Done => return (out, true),
        }
    }
    (out, false)
}

#[test]
fn stops_mid_way_and_resumes_from_committed_positions_without_gap_or_repeat() {
    let started = Instant::now();
    let cluster = cluster("votes");
    let servers = cluster.bootstrap_servers();
    produce(&servers, "votes");
    let produced_in = started.elapsed();

    let params = json!({
        "bootstrap_servers": servers, "topic": "votes", "group_id": "vote-count", "stop_at_end": true
    });

    // Run 1: process about half, commit, then read one more batch and "crash" before committing.
    let mut processed: Vec<Record> = Vec::new();
    let mut committed = Positions::new();
    let uncommitted: Vec<Record>;
    {
        let mut src = KafkaSource::from_params(&params, &Positions::new()).unwrap();
        assert_eq!(src.partitions(), vec![0, 1, 2]);
        let (first, done) = read(&mut src, N / 2, 25);
        assert!(!done);
        for r in &first {
            committed.advance(r.position);
        }
        src.commit_all(&committed).unwrap();
        processed.extend(first);
        let (extra, _) = read(&mut src, 10, 10);
        assert!(!extra.is_empty());
        uncommitted = extra;
    }

    // Run 2a: resume from the engine's positions (no group needed).
    let mut no_group = params.clone();
    no_group.as_object_mut().unwrap().remove("group_id");
    let mut resumed = KafkaSource::from_params(&no_group, &committed).unwrap();
    let (rest, done) = read(&mut resumed, N, 100);
    assert!(
        done,
        "a stop_at_end source finishes at the end of every partition"
    );
    assert!(matches!(
        resumed.poll_batch(10, Duration::ZERO).unwrap(),
        SourceBatch::Done
    ));

    // Run 2b: resume from the group's committed offsets alone: the same records.
    let mut from_group = KafkaSource::from_params(&params, &Positions::new()).unwrap();
    let (rest_b, _) = read(&mut from_group, N, 100);
    let ids = |rs: &[Record]| rs.iter().map(vote_id).collect::<BTreeSet<u64>>();
    assert_eq!(ids(&rest), ids(&rest_b));

    // Every record processed exactly once: no gap, no repeat.
    let all: Vec<u64> = processed.iter().chain(&rest).map(vote_id).collect();
    let unique: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(all.len(), N, "no repeat");
    assert_eq!(unique, (0..N as u64).collect(), "no gap");
    // What was read but not committed before the crash is read again, not lost.
    assert!(ids(&uncommitted).is_subset(&ids(&rest)));

    // Per partition, positions run 1, 2, 3, ... without a hole, and the watermark of each
    // partition can be kept apart: every record names its partition.
    let mut per_partition: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for r in processed.iter().chain(&rest) {
        assert_eq!(r.index, r.position.offset);
        per_partition
            .entry(r.position.partition)
            .or_default()
            .push(r.position.offset);
    }
    for (p, offsets) in &per_partition {
        let expected: Vec<u64> = (1..=offsets.len() as u64).collect();
        assert_eq!(offsets, &expected, "partition {p}");
    }
    // The sink keyed by voter: one voter always lands in one partition.
    let mut voter_partitions: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    for r in processed.iter().chain(&rest) {
        let v: Value = serde_json::from_slice(&r.payload).unwrap();
        voter_partitions
            .entry(v["voter_id"].as_str().unwrap().to_string())
            .or_default()
            .insert(r.position.partition);
    }
    assert!(voter_partitions.values().all(|ps| ps.len() == 1));
    println!(
        "kafka: produced {N} records in {produced_in:?}; whole test {:?}; per partition {:?}",
        started.elapsed(),
        per_partition
            .iter()
            .map(|(p, o)| (*p, o.len()))
            .collect::<Vec<_>>()
    );
}

#[test]
fn seek_rewinds_one_partition_and_unbounded_source_goes_idle() {
    let cluster = cluster("seek");
    let servers = cluster.bootstrap_servers();
    produce(&servers, "seek");
    let mut src = KafkaSource::from_params(
        &json!({"bootstrap_servers": servers, "topic": "seek", "partitions": [1]}),
        &Positions::new(),
    )
    .unwrap();
    assert_eq!(src.partitions(), vec![1]);
    let mut all = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    // Unbounded: read until the source reports Idle after having records.
    loop {
        assert!(Instant::now() < deadline);
        match src.poll_batch(100, Duration::from_millis(300)).unwrap() {
            SourceBatch::Records(rs) => all.extend(rs),
            SourceBatch::Idle if !all.is_empty() => break,
            SourceBatch::Idle => {}
            SourceBatch::Done => panic!("an unbounded source never finishes"),
        }
    }
    assert!(all.iter().all(|r| r.position.partition == 1));
    let len = all.len();
    assert!(len > 3);
    src.seek(all[len - 4].position).unwrap();
    let (again, _) = read(&mut src, 3, 10);
    assert_eq!(again, all[len - 3..].to_vec());
    let err = src
        .seek(sardonyx_connectors::Position {
            partition: 0,
            offset: 1,
        })
        .unwrap_err();
    assert!(!err.is_retryable());
}

#[test]
fn open_rejects_a_missing_partition_and_sink_rejects_a_record_without_key() {
    let cluster = cluster("errors");
    let servers = cluster.bootstrap_servers();
    let err = KafkaSource::from_params(
        &json!({"bootstrap_servers": servers, "topic": "errors", "partitions": [7]}),
        &Positions::new(),
    )
    .err()
    .unwrap();
    assert!(!err.is_retryable());
    assert!(
        err.to_string().contains("partition 7 does not exist"),
        "{err}"
    );

    let err = KafkaSource::from_params(
        &json!({"bootstrap_servers": servers, "topic": "missing"}),
        &Positions::new(),
    )
    .err()
    .unwrap();
    assert!(
        !err.is_retryable() && err.to_string().contains("Unknown topic"),
        "{err}"
    );

    // Peers split the partitions; a peer beyond the partition count reads nothing.
    let params: KafkaSourceParams =
        serde_json::from_value(json!({"bootstrap_servers": servers, "topic": "errors"})).unwrap();
    let share = |peer, n| {
        KafkaSource::open_peer(params.clone(), peer, n, &Positions::new())
            .unwrap()
            .partitions()
    };
    assert_eq!(
        (share(0, 2), share(1, 2), share(3, 4)),
        (vec![0, 2], vec![1], vec![])
    );

    let mut sink = KafkaSink::from_params(
        &json!({"bootstrap_servers": servers, "topic": "errors", "key_field": "id"}),
    )
    .unwrap();
    let err = sink
        .write_batch(&[br#"{"id": 1}"#.to_vec(), br#"{"other": 2}"#.to_vec()])
        .unwrap_err();
    assert!(!err.is_retryable());
    assert!(
        err.to_string()
            .contains(r#"record 1 of the batch has no key field "id""#),
        "{err}"
    );
    sink.flush().unwrap();
}
