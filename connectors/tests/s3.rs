//! The S3 input and output against a real S3-compatible server (moto's, started on loopback by
//! `connectors/tests/s3-setup.sh`; `.ci/run` starts it through `scripts/test`).
//!
//! The server comes from `SARDONYX_S3_URL` (and, for the bad-credentials test, a second one that
//! checks credentials from `SARDONYX_S3_AUTH_URL`). Without it, each test fails when `CI=true`
//! (a CI machine without the server must not pass green), and otherwise prints a notice and
//! returns.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sardonyx_connectors::s3::params::{self, Location};
use sardonyx_connectors::s3::{S3Error, S3Sink, S3Source, S3Store};
use sardonyx_connectors::{ConnectorError, Positions, Record, Sink, Source, SourceBatch};
use serde_json::json;

fn server(var: &str, mode: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => panic!(
            "CI=true but {var} is unset: the S3 tests need a real server; run `export {var}=\"$(bash connectors/tests/s3-setup.sh {mode})\"` first"
        ),
        _ => {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: {var} is unset; run `export {var}=\"$(bash connectors/tests/s3-setup.sh {mode})\"`"
            );
            None
        }
    }
}

/// Credentials the open test server takes (it accepts any).
fn env() -> Vec<(String, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID".into(), "sardonyx".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "sardonyx".into()),
    ]
}

/// Creates a fresh bucket named after the test (tests run in parallel on one server) with a
/// plain, unsigned `PUT /bucket` (the client library does not create buckets).
fn fresh_bucket(endpoint: &str, test: &str) -> String {
    let bucket = format!("t-{test}-{}", std::process::id()).replace('_', "-");
    let addr = endpoint.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).expect("connecting to the S3 server");
    write!(
        conn,
        "PUT /{bucket} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "creating bucket {bucket}: {answer}"
    );
    bucket
}

/// The whole bucket.
fn location(endpoint: &str, bucket: &str) -> Location {
    params::source_params(&json!({"bucket": bucket, "endpoint": endpoint,
                                  "retry": {"max_retries": 2, "max_elapsed_ms": 2000}}))
    .unwrap()
    .location
}

fn store(endpoint: &str, bucket: &str) -> S3Store {
    S3Store::open_with_env(&location(endpoint, bucket), env()).unwrap()
}

fn source(
    endpoint: &str,
    bucket: &str,
    extra: serde_json::Value,
    peer: usize,
    n_peers: usize,
    positions: &Positions,
) -> Result<S3Source, ConnectorError> {
    let mut p = json!({"bucket": bucket, "prefix": "in", "endpoint": endpoint});
    p.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let params = params::source_params(&p).unwrap();
    let store = S3Store::open_with_env(&params.location, env())?;
    S3Source::open_with_store(store, params, peer, n_peers, positions)
}

fn gzip(text: &str) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(text.as_bytes()).unwrap();
    enc.finish().unwrap()
}

/// Puts `n` objects under `in/` (plain, `.gz` and `.zst` in turn), object `i` holding lines
/// `{"o":i,"l":j}` for j < i % 7 + 1 (and a blank line in each plain one); and two objects the
/// input must skip. Returns every line, in key order.
fn put_objects(store: &S3Store, n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for i in 0..n {
        let rows: Vec<String> = (0..i % 7 + 1)
            .map(|j| json!({"o": i, "l": j}).to_string())
            .collect();
        let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
        let (key, body) = match i % 3 {
            0 => (format!("in/{i:03}.jsonl"), format!("\n{text}").into_bytes()),
            1 => (format!("in/{i:03}.jsonl.gz"), gzip(&text)),
            _ => (
                format!("in/{i:03}.jsonl.zst"),
                zstd::encode_all(text.as_bytes(), 3).unwrap(),
            ),
        };
        store.put(&key, Bytes::from(body), u64::MAX).unwrap();
        lines.extend(rows);
    }
    store
        .put(
            "in/_staging/x.jsonl",
            Bytes::from_static(b"{\"hidden\":1}\n"),
            u64::MAX,
        )
        .unwrap();
    store
        .put(
            "in/.keep",
            Bytes::from_static(b"{\"hidden\":2}\n"),
            u64::MAX,
        )
        .unwrap();
    lines
}

/// Reads until the source is done; every record.
fn read_all(source: &mut S3Source) -> Vec<Record> {
    let mut out = Vec::new();
    loop {
        match source.poll_batch(5, Duration::from_millis(10)).unwrap() {
            SourceBatch::Records(r) => out.extend(r),
            SourceBatch::Done => return out,
            SourceBatch::Idle => panic!("a source without watch went idle"),
        }
    }
}

fn text(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8(r.payload.clone()).unwrap())
        .collect()
}

#[test]
fn many_objects_are_read_once_each_in_key_order_across_peers() {
    let Some(endpoint) = server("SARDONYX_S3_URL", "open") else {
        return;
    };
    let bucket = fresh_bucket(&endpoint, "many");
    let lines = put_objects(&store(&endpoint, &bucket), 60);

    for n_peers in [1, 3] {
        let mut got = Vec::new();
        for peer in 0..n_peers {
            let mut s = source(
                &endpoint,
                &bucket,
                json!({}),
                peer,
                n_peers,
                &Positions::new(),
            )
            .unwrap();
            assert_eq!(s.partitions(), vec![s.partition()]);
            let records = read_all(&mut s);
            // Each peer reads its objects in key order, and positions only grow.
            let mut last = 0;
            for r in &records {
                assert_eq!(r.position.partition, s.partition());
                assert!(r.position.offset > last, "positions grow");
                last = r.position.offset;
                assert!(r.fault.is_none());
            }
            let mine = text(&records);
            let mut sorted = mine.clone();
            sorted.sort_by_key(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["o"].as_u64().unwrap(), v["l"].as_u64().unwrap())
            });
            assert_eq!(mine, sorted, "peer {peer} of {n_peers} reads in key order");
            got.extend(mine);
        }
        got.sort();
        let mut expected = lines.clone();
        expected.sort();
        assert_eq!(got, expected, "{n_peers} peers read every line once");
    }
}

#[test]
fn a_resumed_input_goes_on_after_any_record_in_the_middle_of_an_object() {
    let Some(endpoint) = server("SARDONYX_S3_URL", "open") else {
        return;
    };
    let bucket = fresh_bucket(&endpoint, "resume");
    put_objects(&store(&endpoint, &bucket), 12);
    let all =
        read_all(&mut source(&endpoint, &bucket, json!({}), 0, 1, &Positions::new()).unwrap());
    let all_text = text(&all);
    for (k, r) in all.iter().enumerate() {
        let positions = Positions::from_iter([r.position]);
        let mut resumed = source(&endpoint, &bucket, json!({}), 0, 1, &positions).unwrap();
        let rest = read_all(&mut resumed);
        assert_eq!(text(&rest), all_text[k + 1..], "resuming after record {k}");
        // Record numbers are line numbers in their object, also after a resume.
        let idx: Vec<u64> = rest.iter().map(|r| r.index).collect();
        let expected: Vec<u64> = all[k + 1..].iter().map(|r| r.index).collect();
        assert_eq!(idx, expected);
    }
}

#[test]
fn positions_from_another_peer_count_or_removed_objects_are_refused() {
    let Some(endpoint) = server("SARDONYX_S3_URL", "open") else {
        return;
    };
    let bucket = fresh_bucket(&endpoint, "refuse");
    let st = store(&endpoint, &bucket);
    put_objects(&st, 4);
    let mut s = source(&endpoint, &bucket, json!({}), 0, 2, &Positions::new()).unwrap();
    let records = read_all(&mut s);
    let last = Positions::from_iter([records.last().unwrap().position]);
    let err = source(&endpoint, &bucket, json!({}), 0, 3, &last)
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("committed by 2 input peers, and the task now has 3"),
        "{err}"
    );
    for o in st.list("in/").unwrap() {
        st.delete(&o.key).unwrap();
    }
    let err = source(&endpoint, &bucket, json!({}), 0, 2, &last)
        .err()
        .unwrap();
    assert!(err.to_string().contains("objects were removed"), "{err}");
}

#[test]
fn watch_picks_up_new_objects_and_goes_idle_meanwhile() {
    let Some(endpoint) = server("SARDONYX_S3_URL", "open") else {
        return;
    };
    let bucket = fresh_bucket(&endpoint, "watch");
    let st = store(&endpoint, &bucket);
    st.put("in/a.jsonl", Bytes::from_static(b"{\"n\":1}\n"), u64::MAX)
        .unwrap();
    let mut s = source(
        &endpoint,
        &bucket,
        json!({"watch": true, "watch_interval": [20, "milliseconds"]}),
        0,
        1,
        &Positions::new(),
    )
    .unwrap();
    let poll = |s: &mut S3Source| match s.poll_batch(100, Duration::from_millis(50)).unwrap() {
        SourceBatch::Records(r) => Some(text(&r)),
        SourceBatch::Idle => None,
        SourceBatch::Done => panic!("a watching source never finishes"),
    };
    assert_eq!(poll(&mut s), Some(vec![r#"{"n":1}"#.to_owned()]));
    assert_eq!(poll(&mut s), None);
    st.put(
        "in/b.jsonl.gz",
        Bytes::from(gzip("{\"n\":2}\n{\"n\":3}\n")),
        u64::MAX,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        if let Some(r) = poll(&mut s) {
            break r;
        }
        assert!(Instant::now() < deadline, "the new object was never read");
    };
    assert_eq!(got, [r#"{"n":2}"#, r#"{"n":3}"#]);
    // An object sorting before one already read is skipped (with a warning).
    st.put("in/a0.jsonl", Bytes::from_static(b"{\"n\":0}\n"), u64::MAX)
        .unwrap();
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(poll(&mut s), None);
    assert_eq!(s.objects().len(), 2);
}

#[test]
fn a_line_longer_than_the_limit_is_a_faulty_record_and_bad_data_is_fatal() {
    let Some(endpoint) = server("SARDONYX_S3_URL", "open") else {
        return;
    };
    let bucket = fresh_bucket(&endpoint, "faults");
    let st = store(&endpoint, &bucket);
    let long = format!("{{\"x\":\"{}\"}}", "y".repeat(2000));
    st.put(
        "in/a.jsonl",
        Bytes::from(format!("{{\"n\":1}}\n{long}\n{{\"n\":2}}\n")),
        u64::MAX,
    )
    .unwrap();
    let mut s = source(
        &endpoint,
        &bucket,
        json!({"max_line_bytes": 100}),
        0,
        1,
        &Positions::new(),
    )
    .unwrap();
    let records = read_all(&mut s);
    assert_eq!(records.len(), 3);
    assert_eq!(records[1].index, 2);
    assert!(matches!(
        records[1].fault,
        Some(sardonyx_connectors::source::RecordFault::LineTooLong {
            length: 2008,
            limit: 100
        })
    ));
    assert_eq!(records[2].payload, b"{\"n\":2}");

    st.put(
        "in/b.jsonl.gz",
        Bytes::from_static(b"not gzip at all\n"),
        u64::MAX,
    )
    .unwrap();
    let mut s = source(&endpoint, &bucket, json!({}), 0, 1, &Positions::new()).unwrap();
    let err = loop {
        match s.poll_batch(100, Duration::from_millis(10)) {
            Ok(SourceBatch::Records(_)) => continue,
            Ok(other) => panic!("expected an error, got {other:?}"),
            Err(e) => break e,
        }
    };
    assert!(!err.is_retryable());
    assert!(
        matches!(&err, ConnectorError::S3(e) if matches!(&**e, S3Error::Body { key, .. } if key == "in/b.jsonl.gz")),
        "{err:?}"
    );
}

fn sink_params(endpoint: &str, bucket: &str, extra: serde_json::Value) -> params::S3SinkParams {
    let mut p = json!({"bucket": bucket, "prefix": "out", "endpoint": endpoint});
    p.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    params::sink_params(&p).unwrap()
}

fn sink(
    endpoint: &str,
    bucket: &str,
    extra: serde_json::Value,
    peer: usize,
    resuming: bool,
) -> S3Sink {
    let params = sink_params(endpoint, bucket, extra);
    let store = S3Store::open_with_env(&params.location, env()).unwrap();
    S3Sink::open_with_store(store, params, peer, resuming).unwrap()
}

/// Every object under `out/`: key → content.
fn objects(st: &S3Store) -> BTreeMap<String, String> {
    st.list("out/")
        .unwrap()
        .into_iter()
        .map(|o| {
            let body = st.get_bytes(&o.key).unwrap();
            (o.key, String::from_utf8(body.to_vec()).unwrap())
        })
        .collect()
}

fn batch(from: usize, n: usize) -> Vec<Vec<u8>> {
    (from..from + n)
        .map(|i| format!("{{\"i\":{i}}}").into_bytes())
        .collect()
}

fn lines(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("{{\"i\":{i}}}\n"))
        .collect()
}

#[test]
fn the_sink_rolls_by_size_and_each_flushed_batch_is_durable() {
    let Some(endpoint) = server("SARDONYX_S3_URL", "open") else {
        return;
    };
    let bucket = fresh_bucket(&endpoint, "roll");
    let st = store(&endpoint, &bucket);
    // Each batch of 10 records is 80 bytes; an object rolls once it holds 200 (3 batches).
    let mut s = sink(
        &endpoint,
        &bucket,
        json!({"max_object_bytes": 200}),
        1,
        false,
    );
    for b in 0..7 {
        s.write_batch(&batch(b * 10, 10)).unwrap();
        s.flush().unwrap();
    }
    let seen = objects(&st);
    assert_eq!(
        seen.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "out/_staging/0001/0000000002/000000.jsonl",
            "out/part-0001-0000000000.jsonl",
            "out/part-0001-0000000001.jsonl",
        ]
    );
    assert_eq!(seen["out/part-0001-0000000000.jsonl"], lines(0, 30));
    assert_eq!(seen["out/part-0001-0000000001.jsonl"], lines(30, 30));
    // The seventh batch is durable, staged; the end of the output rolls it.
    assert_eq!(
        seen["out/_staging/0001/0000000002/000000.jsonl"],
        lines(60, 10)
    );
    s.close().unwrap();
    let seen = objects(&st);
    assert_eq!(seen.len(), 3, "{:?}", seen.keys());
    assert_eq!(seen["out/part-0001-0000000002.jsonl"], lines(60, 10));

    // A batch written again after a failed flush is not doubled.
    let mut s = sink(&endpoint, &bucket, json!({}), 2, false);
    s.write_batch(&batch(0, 3)).unwrap();
    s.write_batch(&batch(0, 3)).unwrap();
    s.flush().unwrap();
    s.close().unwrap();
    assert_eq!(objects(&st)["out/part-0002-0000000000.jsonl"], lines(0, 3));
}

#[test]
fn the_sink_rolls_by_age() {
    let Some(endpoint) = server("SARDONYX_S3_URL", "open") else {
        return;
    };
    let bucket = fresh_bucket(&endpoint, "age");
    let st = store(&endpoint, &bucket);
    let mut s = sink(
        &endpoint,
        &bucket,
        json!({"max_object_age": [100, "milliseconds"]}),
        0,
        false,
    );
    s.write_batch(&batch(0, 2)).unwrap();
    s.flush().unwrap();
    assert!(!objects(&st).contains_key("out/part-0000-0000000000.jsonl"));
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(100) {
        std::thread::sleep(Duration::from_millis(100) - started.elapsed());
    }
    s.write_batch(&batch(2, 2)).unwrap();
    s.flush().unwrap();
    let seen = objects(&st);
    assert_eq!(seen.len(), 1, "{:?}", seen.keys());
    assert_eq!(seen["out/part-0000-0000000000.jsonl"], lines(0, 4));
    std::mem::forget(s);
}

#[test]
fn a_sink_killed_mid_object_is_rolled_under_the_same_names_on_resume() {
    let Some(endpoint) = server("SARDONYX_S3_URL", "open") else {
        return;
    };
    let bucket = fresh_bucket(&endpoint, "crash");
    let st = store(&endpoint, &bucket);
    let mut s = sink(
        &endpoint,
        &bucket,
        json!({"max_object_bytes": 200}),
        0,
        false,
    );
    for b in 0..5 {
        s.write_batch(&batch(b * 10, 10)).unwrap();
        s.flush().unwrap();
    }
    // As after `kill -9`: no drop, no roll. Object 0 is rolled; object 1 has two parts staged.
    std::mem::forget(s);
    // And as after a kill between a roll's upload and the deletion of its parts: object 0's
    // first part is staged again beside the rolled object.
    st.put(
        "out/_staging/0000/0000000000/000001.jsonl",
        Bytes::from(lines(10, 10)),
        u64::MAX,
    )
    .unwrap();
    let mut s = sink(
        &endpoint,
        &bucket,
        json!({"max_object_bytes": 200}),
        0,
        true,
    );
    let seen = objects(&st);
    assert_eq!(
        seen.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "out/part-0000-0000000000.jsonl",
            "out/part-0000-0000000001.jsonl"
        ],
        "no part left staged, no object under another name"
    );
    assert_eq!(seen["out/part-0000-0000000000.jsonl"], lines(0, 30));
    assert_eq!(seen["out/part-0000-0000000001.jsonl"], lines(30, 20));
    assert_eq!(s.current_key(), "out/part-0000-0000000002.jsonl");
    s.write_batch(&batch(50, 1)).unwrap();
    s.flush().unwrap();
    s.close().unwrap();
    assert_eq!(objects(&st)["out/part-0000-0000000002.jsonl"], lines(50, 1));

    // A fresh job starts the peer's objects over; other peers' are left alone.
    st.put(
        "out/part-0001-0000000000.jsonl",
        Bytes::from(lines(0, 1)),
        u64::MAX,
    )
    .unwrap();
    let s = sink(&endpoint, &bucket, json!({}), 0, false);
    assert_eq!(
        objects(&st).keys().map(String::as_str).collect::<Vec<_>>(),
        ["out/part-0001-0000000000.jsonl"]
    );
    drop(s);
}

#[test]
fn large_objects_are_uploaded_in_parts() {
    let Some(endpoint) = server("SARDONYX_S3_URL", "open") else {
        return;
    };
    let bucket = fresh_bucket(&endpoint, "multipart");
    let st = store(&endpoint, &bucket);
    let mut s = sink(
        &endpoint,
        &bucket,
        json!({"part_bytes": 5 << 20, "max_object_bytes": 12 << 20}),
        0,
        false,
    );
    let record = format!("{{\"pad\":\"{}\"}}", "p".repeat(1 << 20));
    for _ in 0..12 {
        s.write_batch(&[record.clone().into_bytes()]).unwrap();
        s.flush().unwrap();
    }
    let listed = st.list("out/").unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let object = &listed[0];
    assert_eq!(object.key, "out/part-0000-0000000000.jsonl");
    assert_eq!(object.size, 12 * (record.len() as u64 + 1));
    // S3 gives a multipart object the entity tag `"…-<parts>"`: 12 MiB in 5 MiB parts is 3.
    assert!(
        object
            .e_tag
            .as_deref()
            .is_some_and(|t| t.trim_matches('"').ends_with("-3")),
        "{object:?}"
    );
    let body = st.get_bytes(&object.key).unwrap();
    assert!(body
        .split(|b| *b == b'\n')
        .take(12)
        .all(|l| l == record.as_bytes()));
    std::mem::forget(s);
}

#[test]
fn a_missing_bucket_names_the_bucket_parameter() {
    let Some(endpoint) = server("SARDONYX_S3_URL", "open") else {
        return;
    };
    let bucket = format!("no-such-bucket-{}", std::process::id());
    let err = source(&endpoint, &bucket, json!({}), 0, 1, &Positions::new())
        .err()
        .unwrap();
    assert!(
        matches!(&err, ConnectorError::S3(e) if matches!(**e, S3Error::BucketNotFound { .. })),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    assert_eq!(
        err.to_string(),
        format!("bucket: no bucket named {bucket:?} at {endpoint}")
    );
    let params = sink_params(&endpoint, &bucket, json!({}));
    let store = S3Store::open_with_env(&params.location, env()).unwrap();
    let err = S3Sink::open_with_store(store, params, 0, true)
        .err()
        .unwrap();
    assert!(
        err.to_string().starts_with("bucket: no bucket named"),
        "{err}"
    );
}

#[test]
fn bad_credentials_name_the_environment_variables() {
    let Some(endpoint) = server("SARDONYX_S3_AUTH_URL", "auth") else {
        return;
    };
    let err = source(&endpoint, "some-bucket", json!({}), 0, 1, &Positions::new())
        .err()
        .unwrap();
    assert!(
        matches!(&err, ConnectorError::S3(e) if matches!(**e, S3Error::CredentialsRefused { .. })),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    assert!(
        err.to_string().starts_with("credentials: the server refused the credentials for bucket \"some-bucket\" (AWS_ACCESS_KEY_ID"),
        "{err}"
    );
    // The cause is kept: the server's own code.
    let cause = std::error::Error::source(&err)
        .map(|e| format!("{e:?}"))
        .unwrap_or_default();
    assert!(cause.contains("InvalidAccessKeyId"), "{cause}");
}

#[test]
fn a_server_that_is_not_there_is_a_retryable_failure_after_the_client_retries() {
    let Some(_) = server("SARDONYX_S3_URL", "open") else {
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let err = source(
        &endpoint,
        "bkt",
        json!({"retry": {"max_retries": 2, "first_delay_ms": 10, "max_delay_ms": 20}}),
        0,
        1,
        &Positions::new(),
    )
    .err()
    .unwrap();
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.to_string().starts_with("listing s3://bkt/in/"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}
