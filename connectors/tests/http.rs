//! HTTP ingestion source with real HTTP requests on 127.0.0.1.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use sardonyx_connectors::http::{self, HttpSource};
use sardonyx_connectors::{Position, Record, Source, SourceBatch};
use serde_json::{json, Value};

fn open(extra: Value) -> HttpSource {
    let mut params = json!({
        "listen": "127.0.0.1:0",
        "schema": {"required": {"vote_id": "integer", "candidate": "string"}}
    });
    for (k, v) in extra.as_object().unwrap() {
        params[k] = v.clone();
    }
    HttpSource::from_params(&params).unwrap()
}

fn url(src: &HttpSource) -> String {
    format!("http://{}/ingest", src.local_addr())
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    body: String,
) -> (StatusCode, Option<String>, Value) {
    let response = client.post(url).body(body).send().await.unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, retry_after, body)
}

/// Runs the source's poll loop on a blocking thread until `stop`, returning every record.
fn poller(
    mut src: HttpSource,
    max: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(HttpSource, Vec<Record>)> {
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        loop {
            match src.poll_batch(max, Duration::from_millis(20)).unwrap() {
                SourceBatch::Records(rs) => out.extend(rs),
                SourceBatch::Idle if stop.load(Ordering::SeqCst) => return (src, out),
                SourceBatch::Idle => {}
                SourceBatch::Done => return (src, out),
            }
        }
    })
}

fn vote(i: u64) -> Value {
    let candidate = ["ada", "bob"][i as usize % 2];
    json!({"vote_id": i, "candidate": candidate})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_segments_are_answered_after_the_job_takes_them() {
    let src = open(json!({}));
    let url = url(&src);
    let client = reqwest::Client::new();
    let stop = Arc::new(AtomicBool::new(false));
    let polling = poller(src, 1000, stop.clone());

    let (status, _, body) = post(&client, &url, vote(1).to_string()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"accepted": 1, "first": 1, "last": 1}));
    let batch = json!([vote(2), vote(3), vote(4)]).to_string();
    let (status, _, body) = post(&client, &url, batch).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"accepted": 3, "first": 2, "last": 4}));
    let (status, _, body) = post(&client, &url, "[]".into()).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"accepted": 0})));

    stop.store(true, Ordering::SeqCst);
    let (src, records) = polling.await.unwrap();
    let got: Vec<(u64, Value)> = records
        .iter()
        .map(|r| {
            (
                r.position.offset,
                serde_json::from_slice(&r.payload).unwrap(),
            )
        })
        .collect();
    assert_eq!(got, (1..=4).map(|i| (i, vote(i))).collect::<Vec<_>>());
    assert!(records
        .iter()
        .all(|r| r.position.partition == 0 && r.index == r.position.offset));
    assert_eq!(src.partitions(), vec![0]);
    let stats = src.stats();
    assert_eq!((stats.accepted_requests, stats.accepted_segments), (2, 4));
    drop(src);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_and_oversized_bodies_are_refused_whole() {
    let mut src = open(json!({"max_body_bytes": 1024, "queue_capacity": 4, "ack": "queued"}));
    let url = url(&src);
    let client = reqwest::Client::new();

    let (status, _, body) = post(
        &client,
        &url,
        json!({"vote_id": "7", "candidate": "ada"}).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["problems"][0]["field"], "vote_id");
    assert_eq!(
        body["problems"][0]["message"],
        "field \"vote_id\" must be an integer, got a string (\"7\")"
    );
    // One bad segment in an array refuses the whole request, naming the segment and field.
    let (status, _, body) = post(&client, &url, json!([vote(1), {"vote_id": 2}]).to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["problems"],
        json!([{"segment": 1, "field": "candidate", "message": "field \"candidate\" is required"}])
    );
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("segment 1: field \"candidate\" is required"));
    let (status, _, body) = post(&client, &url, "{not json".into()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("the body is not JSON"),
        "{body}"
    );
    let (status, _, _) = post(&client, &url, "[1, 2]".into()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Oversized: more bytes than max_body_bytes, or more segments than the queue can ever hold.
    let big = json!({"vote_id": 1, "candidate": "x".repeat(2000)}).to_string();
    let big_len = big.len();
    let (status, _, body) = post(&client, &url, big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        body["error"],
        format!(
            "the request body is {big_len} bytes, over the limit max_body_bytes = 1024: send \
             fewer segments per request"
        )
    );
    let many = json!((0..5).map(vote).collect::<Vec<_>>()).to_string();
    let (status, _, body) = post(&client, &url, many).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");

    // Nothing of any of them reached the job.
    assert!(matches!(
        src.poll_batch(10, Duration::ZERO).unwrap(),
        SourceBatch::Idle
    ));
    let stats = src.stats();
    assert_eq!(
        (
            stats.invalid_requests,
            stats.too_large_requests,
            stats.accepted_segments
        ),
        (4, 2, 0)
    );
    // A wrong method is not ingestion.
    let status = client.get(&url).send().await.unwrap().status();
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_gets_503_with_retry_after_and_every_accepted_segment_is_counted() {
    // Phase 1, deterministic: nobody drains a queue of 8, 40 concurrent requests arrive.
    let mut src = open(json!({"queue_capacity": 8, "ack": "queued", "retry_after_secs": 2}));
    let url = url(&src);
    let client = reqwest::Client::new();
    let sends = (0..40).map(|i| {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move { (i, post(&client, &url, vote(i).to_string()).await) })
    });
    let sends: Vec<_> = sends.collect();
    let mut accepted = BTreeSet::new();
    let mut busy = 0;
    for send in sends {
        let (i, (status, retry_after, _)) = send.await.unwrap();
        match status {
            StatusCode::ACCEPTED => {
                accepted.insert(i);
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(retry_after.as_deref(), Some("2"));
                busy += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((accepted.len(), busy), (8, 32));
    let SourceBatch::Records(records) = src.poll_batch(100, Duration::ZERO).unwrap() else {
        panic!("the accepted segments are queued")
    };
    let ids: BTreeSet<u64> = records
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.payload).unwrap()["vote_id"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(ids, accepted);
    assert_eq!(src.stats().busy_requests, 32);
    drop(src);

    // Phase 2: 16 concurrent clients flood a queue of 2 segments, each retrying on 503. The job
    // is slow on purpose: it takes a batch (3 segments at most) only after a request has been
    // refused since its last one (or when fewer than 2 clients are left), so backpressure is
    // certain, not a matter of timing. Every vote is ingested exactly once, and each 200 means
    // "the job has it".
    let src = open(json!({"queue_capacity": 2, "retry_after_secs": 0}));
    let url = self::url(&src);
    let stop = Arc::new(AtomicBool::new(false));
    let active = Arc::new(AtomicUsize::new(16));
    let polling = {
        let (stop, active) = (stop.clone(), active.clone());
        let mut src = src;
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut out = Vec::new();
            let mut busy_seen = 0;
            loop {
                assert!(Instant::now() < deadline, "the flood made no progress");
                let busy = src.stats().busy_requests;
                if busy == busy_seen && active.load(Ordering::SeqCst) >= 2 {
                    std::thread::yield_now();
                    continue;
                }
                busy_seen = busy;
                match src.poll_batch(3, Duration::from_millis(20)).unwrap() {
                    SourceBatch::Records(rs) => out.extend(rs),
                    SourceBatch::Idle if stop.load(Ordering::SeqCst) => return (src, out),
                    SourceBatch::Idle | SourceBatch::Done => {}
                }
            }
        })
    };
    let started = Instant::now();
    let total = 400u64;
    let clients = (0..16u64).map(|c| {
        let (client, url, active) = (client.clone(), url.clone(), active.clone());
        tokio::spawn(async move {
            let mut refused = 0u64;
            let mut positions = Vec::new();
            for i in (c..total).step_by(16) {
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let body = json!([vote(i), vote(i + 1_000_000)]).to_string();
                    let (status, retry_after, body) = post(&client, &url, body).await;
                    match status {
                        StatusCode::OK => {
                            positions.push((
                                body["first"].as_u64().unwrap(),
                                body["last"].as_u64().unwrap(),
                            ));
                            break;
                        }
                        StatusCode::SERVICE_UNAVAILABLE => {
                            assert_eq!(retry_after.as_deref(), Some("0"));
                            refused += 1;
                            assert!(Instant::now() < deadline, "no progress");
                            tokio::task::yield_now().await;
                        }
                        other => panic!("unexpected {other}: {body}"),
                    }
                }
            }
            active.fetch_sub(1, Ordering::SeqCst);
            (refused, positions)
        })
    });
    let clients: Vec<_> = clients.collect();
    let mut refused = 0;
    let mut acked_positions = Vec::new();
    for c in clients {
        let (r, p) = c.await.unwrap();
        refused += r;
        acked_positions.extend(p);
    }
    stop.store(true, Ordering::SeqCst);
    let (src, records) = polling.await.unwrap();
    let elapsed = started.elapsed();
    let ids: Vec<u64> = records
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.payload).unwrap()["vote_id"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let unique: BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(ids.len() as u64, 2 * total, "no segment twice");
    assert_eq!(
        unique,
        (0..total).chain(1_000_000..1_000_000 + total).collect(),
        "none lost"
    );
    // The positions answered to clients are exactly the positions the job received.
    let mut answered: Vec<u64> = acked_positions.iter().flat_map(|&(a, b)| a..=b).collect();
    answered.sort();
    assert_eq!(
        answered,
        records
            .iter()
            .map(|r| r.position.offset)
            .collect::<Vec<_>>()
    );
    let stats = src.stats();
    assert_eq!(stats.accepted_segments, 2 * total);
    assert_eq!(stats.busy_requests, refused);
    assert!(refused > 0, "the flood met backpressure");
    println!(
        "http: {} segments in {total} requests from 16 clients into a queue of 2 in {elapsed:?}; {refused} answered 503",
        2 * total
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_drains_then_finishes_and_seek_continues_numbering() {
    let mut src = open(json!({"ack": "queued"}));
    let url = url(&src);
    let client = reqwest::Client::new();
    src.seek(Position {
        partition: 0,
        offset: 41,
    })
    .unwrap();
    assert_eq!(
        post(&client, &url, vote(1).to_string()).await.0,
        StatusCode::ACCEPTED
    );
    src.close();
    let (status, retry_after, _) = post(&client, &url, vote(2).to_string()).await;
    assert_eq!(
        (status, retry_after.as_deref()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("1"))
    );
    let SourceBatch::Records(records) = src.poll_batch(10, Duration::from_secs(1)).unwrap() else {
        panic!("the queued segment is still handed over")
    };
    assert_eq!(
        records[0].position,
        Position {
            partition: 0,
            offset: 42
        }
    );
    assert!(matches!(
        src.poll_batch(10, Duration::from_secs(1)).unwrap(),
        SourceBatch::Done
    ));
    assert!(src
        .seek(Position {
            partition: 3,
            offset: 0
        })
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_for_the_job_gets_503_if_the_source_closes() {
    let src = open(json!({}));
    let url = url(&src);
    let client = reqwest::Client::new();
    let waiting = tokio::spawn(async move { post(&client, &url, vote(1).to_string()).await });
    // Wait (bounded) until the request is queued, then drop the source without polling.
    let deadline = Instant::now() + Duration::from_secs(10);
    while src.stats().accepted_segments == 0 {
        assert!(Instant::now() < deadline);
        tokio::task::yield_now().await;
    }
    tokio::task::spawn_blocking(move || drop(src))
        .await
        .unwrap();
    let (status, _, _) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[test]
fn params_are_validated_with_every_problem() {
    let problems = http::validate(&json!({
        "listen": "localhost", "queue_capacity": 0, "ack": "later",
        "schema": {"required": {"vote_id": "int"}, "optional": {}}, "port": 1
    }));
    let mut fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "ack",
            "listen",
            "port",
            "queue_capacity",
            "schema.optional",
            "schema.required.vote_id"
        ],
        "{problems:?}"
    );
    let vote_id = problems
        .iter()
        .find(|(f, _)| f == "schema.required.vote_id")
        .unwrap();
    assert!(vote_id.1.contains("unknown type \"int\""), "{vote_id:?}");
    assert!(http::validate(&json!({"listen": "127.0.0.1:8080"})).is_empty());
}

/// Sends `head` and then `body_parts` on a raw connection (no client library that would send a
/// body whole), and reads the answer: status line and JSON body.
async fn raw_exchange(
    addr: std::net::SocketAddr,
    head: &str,
    body_parts: &[Vec<u8>],
) -> (String, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    for part in body_parts {
        conn.write_all(part).await.unwrap();
    }
    conn.flush().await.unwrap();
    // Read until the answer's headers and its declared body have arrived (the body of the
    // request is never finished: the answer must come without it).
    let answer = async {
        let mut got = Vec::new();
        let mut buf = [0_u8; 4096];
        loop {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "connection closed before a full answer: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let length: usize = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .expect("the answer has a content-length");
                if got.len() >= end + 4 + length {
                    let status = text.lines().next().unwrap().to_owned();
                    let body = serde_json::from_slice(&got[end + 4..end + 4 + length]).unwrap();
                    return (status, body);
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), answer)
        .await
        .expect("an answer without the rest of the body")
}

/// A body over `max_body_bytes` is refused without being read whole: on its declared length
/// before any of it is read, or, sent in chunks without a declared length, as soon as more
/// than the limit has arrived (the body here never ends, so reading it whole would hang).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_gets_413_before_it_is_read_whole() {
    let mut src = open(json!({"max_body_bytes": 1024, "ack": "queued"}));
    let addr = src.local_addr();
    let (status, body) = raw_exchange(
        addr,
        "POST /ingest HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 10737418240\r\n\r\n",
        &[b"[{\"vote_id\": 1".to_vec()],
    )
    .await;
    assert_eq!(status, "HTTP/1.1 413 Payload Too Large");
    assert_eq!(
        body,
        json!({"error": "the request body is 10737418240 bytes, over the limit max_body_bytes = 1024: send fewer segments per request"})
    );
    let chunk = |data: &[u8]| {
        let mut c = format!("{:x}\r\n", data.len()).into_bytes();
        c.extend_from_slice(data);
        c.extend_from_slice(b"\r\n");
        c
    };
    let parts: Vec<Vec<u8>> = (0..3).map(|_| chunk(&[b' '; 512])).collect();
    let (status, body) = raw_exchange(
        addr,
        "POST /ingest HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        &parts,
    )
    .await;
    assert_eq!(status, "HTTP/1.1 413 Payload Too Large");
    assert_eq!(
        body,
        json!({"error": "the request body is more than 1024 bytes, over the limit max_body_bytes = 1024: send fewer segments per request"})
    );
    let stats = src.stats();
    assert_eq!((stats.too_large_requests, stats.accepted_segments), (2, 0));
    assert!(matches!(
        src.poll_batch(10, Duration::ZERO).unwrap(),
        SourceBatch::Idle
    ));
}
