//! Acknowledged appends survive a process crash: a child process (this test binary, re-run)
//! appends concurrently to an embedded log and aborts mid-flight; the parent reopens the
//! directory and finds every acknowledged record.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Command;

use sardonyx_state_log::{EmbeddedLog, RequestId};

const DIR_VAR: &str = "SARDONYX_STATE_LOG_CRASH_DIR";
const ACKS_BEFORE_CRASH: usize = 300;

fn payload(writer: u64, seq: u64) -> Vec<u8> {
    format!("writer {writer} seq {seq}").into_bytes()
}

/// The child: does nothing unless run by the parent test with the directory variable set.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(DIR_VAR) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let log = EmbeddedLog::open(&dir).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for writer in 0..8u64 {
            let log = log.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                for seq in 0.. {
                    let p = log
                        .append("crash", RequestId::new(writer, seq), payload(writer, seq))
                        .await
                        .unwrap();
                    if tx.send((writer, seq, p)).is_err() {
                        return;
                    }
                }
            });
        }
        let mut out = std::io::stdout().lock();
        for _ in 0..ACKS_BEFORE_CRASH {
            let (w, s, p) = rx.recv().await.unwrap();
            writeln!(out, "ACK {w} {s} {p}").unwrap();
        }
        out.flush().unwrap();
        // Crash with appends in flight: no destructors, no clean shutdown.
        std::process::abort();
    });
}

#[test]
fn acknowledged_appends_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(DIR_VAR, dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "the child must have aborted");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let acked: Vec<(u64, u64, u64)> = stdout
        .lines()
        .filter_map(|l| l.find("ACK ").map(|i| &l[i + 4..]))
        .map(|l| {
            let v: Vec<u64> = l.split(' ').map(|x| x.parse().unwrap()).collect();
            (v[0], v[1], v[2])
        })
        .collect();
    assert_eq!(acked.len(), ACKS_BEFORE_CRASH, "child output: {stdout}");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let log = EmbeddedLog::open(dir.path()).await.unwrap();
        let read = log.read("crash", 0).await.unwrap();
        let stored: BTreeMap<u64, Vec<u8>> = read.entries.into_iter().collect();
        for (w, s, p) in &acked {
            assert_eq!(
                stored.get(p),
                Some(&payload(*w, *s)),
                "acked position {p} lost"
            );
        }
        // Positions are dense, and appending continues after the last stored one.
        let n = stored.len() as u64;
        assert!(stored.keys().copied().eq(0..n));
        assert!(n >= ACKS_BEFORE_CRASH as u64);
        // A retry of an acknowledged request is still deduplicated after the crash.
        let (w, s, p) = acked[0];
        assert_eq!(
            log.append("crash", RequestId::new(w, s), vec![])
                .await
                .unwrap(),
            p
        );
        assert_eq!(
            log.append("crash", RequestId::new(99, 0), vec![])
                .await
                .unwrap(),
            n
        );
        log.close().await.unwrap();
    });
}
