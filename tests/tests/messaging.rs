//! Messaging between real processes: a receiving process whose consumer takes one batch per
//! tick holds a sending process (this test) to its credit — backpressure across processes —
//! over an authenticated connection, with every batch delivered in order.

use std::process::Stdio;
use std::time::{Duration, Instant};

use sardonyx::messaging::{
    Batch, Delivery, Done, Messenger, MessengerConfig, ProcessId, Sender, SlotAddress,
};
use sardonyx::runtime::Mark;
use sardonyx::{Segment, Value};
use sardonyx_state_log::ClusterSecret;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Set in the receiving process (its value: the cluster secret).
const CHILD_SECRET: &str = "SARDONYX_TEST_MESSAGING_SECRET";
const CREDIT: u32 = 3;
const BATCHES: i64 = 30;
/// The receiving consumer takes one batch per tick.
const TICK: Duration = Duration::from_millis(5);
/// Bounds the whole exchange (it takes about `BATCHES × TICK`).
const LIMIT: Duration = Duration::from_secs(20);

fn slot() -> SlotAddress {
    SlotAddress::new("votes", "count", 0)
}

fn config(process: u64, secret: &str) -> MessengerConfig {
    MessengerConfig {
        secret: ClusterSecret::from_bytes(secret.as_bytes()),
        credit_per_slot: CREDIT,
        ..MessengerConfig::new(ProcessId(process), "127.0.0.1:0".parse().unwrap())
    }
}

/// Not a test: the receiving process that `backpressure_crosses_processes` starts (it does
/// nothing unless started so). It prints `listening ADDR`, takes one batch per tick checking
/// their order, and at the sender's `Done` prints `taken N` and the most batches it ever had
/// queued (`most-queued Q`), then exits.
#[tokio::test]
async fn receiving_process() {
    let Ok(secret) = std::env::var(CHILD_SECRET) else {
        return;
    };
    let b = Messenger::bind(config(2, &secret)).await.unwrap();
    let mut inbox = b.open_slot(slot()).unwrap();
    println!("listening {}", b.local_addr());
    let mut tick = tokio::time::interval(TICK);
    let (mut taken, mut most_queued) = (0i64, 0usize);
    loop {
        tick.tick().await;
        most_queued = most_queued.max(inbox.len());
        match inbox.try_recv() {
            None => {}
            Some(Delivery::Batch { process, batch }) => {
                assert_eq!(process, ProcessId(1));
                assert_eq!(batch.mark.watermark, Some(taken), "in order");
                assert_eq!(batch.segments[0].get("n"), Some(&Value::from(taken)));
                taken += 1;
            }
            Some(Delivery::Done { .. }) => break,
        }
    }
    println!("taken {taken}");
    println!("most-queued {most_queued}");
}

/// A sender pushing as fast as it can to a process whose consumer takes one batch per tick is
/// held to the consumer's pace: the receiver never has more than the credit queued, and the
/// sender's sends take at least `(BATCHES − CREDIT − 1)` ticks in all.
#[tokio::test]
async fn backpressure_crosses_processes() {
    let secret = "a cluster secret of 32 bytes....";
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "receiving_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_SECRET, secret)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut value_of = async |prefix: &str| -> String {
        loop {
            let line = lines.next_line().await.unwrap().expect("a line");
            // (libtest may print `test receiving_process ... ` before the first line.)
            if let Some((_, v)) = line.split_once(prefix) {
                return v.trim().to_owned();
            }
        }
    };
    let run = async {
        let addr = value_of("listening ").await.parse().unwrap();
        let a = Messenger::bind(config(1, secret)).await.unwrap();
        a.set_address(ProcessId(2), addr);
        let start = Instant::now();
        for n in 0..BATCHES {
            let mut s = Segment::new();
            s.insert("n", Value::from(n));
            let batch = Batch {
                to: slot(),
                from: Sender::new("read", 0),
                segments: vec![s],
                mark: Mark {
                    watermark: Some(n),
                    idle: false,
                },
                acks: vec![],
                seq: n as u64,
            };
            a.send_batch(ProcessId(2), batch).await.unwrap();
            assert!(a.in_flight(ProcessId(2), &slot()) <= CREDIT);
        }
        let sending = start.elapsed();
        let done = Done {
            to: slot(),
            from: Sender::new("read", 0),
            batches: BATCHES as u64,
        };
        a.send_done(ProcessId(2), done).await.unwrap();
        let taken: i64 = value_of("taken ").await.parse().unwrap();
        let most_queued: u32 = value_of("most-queued ").await.parse().unwrap();
        (sending, taken, most_queued, a.stats())
    };
    let (sending, taken, most_queued, stats) = tokio::time::timeout(LIMIT, run)
        .await
        .expect("within the limit");
    assert!(child.wait().await.unwrap().success());
    assert_eq!(taken, BATCHES);
    assert!(most_queued <= CREDIT, "{most_queued} queued");
    // Send k (k ≥ CREDIT) needs the consumer's take of batch k − CREDIT, one per tick.
    let paced = TICK * (BATCHES as u32 - CREDIT - 1);
    assert!(
        sending >= paced,
        "sent {BATCHES} in {sending:?}, under {paced:?}"
    );
    assert!(stats.credit_waits > 0);
    assert_eq!(stats.sent, BATCHES as u64 + 1);
}
