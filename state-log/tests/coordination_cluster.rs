//! The coordination log on a 3-server cluster over real TCP on 127.0.0.1 with RocksDB in temp
//! dirs: concurrent appends from several clients, and a subscription through another client
//! that yields every entry exactly once, in order, while leaders are stopped and a stopped
//! server comes back.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use sardonyx_state_log::{
    status, ClientOptions, CoordinationEntry, CoordinationLog, EntrySubscription, Error, LogClient,
    LogServer, RequestId, Role, ServerConfig, Tuning, MAX_ENTRY_BYTES,
};
use tokio::sync::watch;

/// Upper bound on awaiting something that must happen (an election included).
const LIMIT: Duration = Duration::from_secs(20);

fn tuning() -> Tuning {
    Tuning {
        heartbeat_interval: Duration::from_millis(40),
        election_timeout: (Duration::from_millis(200), Duration::from_millis(400)),
        // Raft snapshots and log purges happen during the test, so a server that was down
        // catches up by snapshot installation too.
        raft_snapshot_every: 16,
        raft_logs_to_keep: 4,
        ..Tuning::default()
    }
}

fn config(id: u64, dirs: &[tempfile::TempDir], cluster: &BTreeMap<u64, String>) -> ServerConfig {
    ServerConfig {
        tuning: tuning(),
        ..ServerConfig::new(
            id,
            cluster[&id].clone(),
            dirs[(id - 1) as usize].path(),
            cluster.clone(),
        )
    }
}

fn client(addrs: &[String]) -> LogClient {
    let options = ClientOptions {
        // Short long polls, so that idle waits are re-issued often during the test.
        subscription_wait: Duration::from_millis(500),
        ..ClientOptions::default()
    };
    LogClient::with_options(addrs.to_vec(), options).unwrap()
}

fn entry(client: u64, i: u64) -> Vec<u8> {
    format!("client {client} entry {i}").into_bytes()
}

/// The leader's id, once some server knows of one.
async fn leader(servers: &BTreeMap<u64, LogServer>) -> u64 {
    let any = servers.values().next().unwrap();
    any.wait_for_leader(LIMIT).await.unwrap()
}

/// Runs `sub` in a task that publishes the entries it has yielded so far, until it has `total`.
fn collect(
    mut sub: EntrySubscription,
    total: usize,
) -> (
    watch::Receiver<Vec<CoordinationEntry>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = watch::channel(Vec::new());
    let task = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < total {
            match sub.next().await {
                Ok(e) => {
                    got.push(e);
                    tx.send_replace(got.clone());
                }
                // Retryable errors (no leader for longer than the client's retry_for) end
                // nothing: ask again.
                Err(e) if e.is_retryable() => continue,
                Err(e) => panic!("subscription failed: {e:?}"),
            }
        }
    });
    (rx, task)
}

/// Waits until the subscriber has yielded at least `n` entries.
async fn seen(rx: &mut watch::Receiver<Vec<CoordinationEntry>>, n: usize) {
    tokio::time::timeout(LIMIT, rx.wait_for(|got| got.len() >= n))
        .await
        .expect("the subscriber keeps up")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_yields_every_entry_once_in_order_across_leader_changes() {
    let mut listeners = Vec::new();
    let mut cluster = BTreeMap::new();
    for id in 1..=3u64 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        cluster.insert(id, l.local_addr().unwrap().to_string());
        listeners.push(l);
    }
    let addrs: Vec<String> = cluster.values().cloned().collect();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut servers = BTreeMap::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let s = LogServer::start_on(l, config(id, &dirs, &cluster))
            .await
            .unwrap();
        servers.insert(id, s);
    }

    // Three clients append at once: every position from 1 to 60 is given exactly once, and
    // each client's entries are in the order it appended them.
    let mut tasks = tokio::task::JoinSet::new();
    for c in 1..=3u64 {
        let log = client(&addrs);
        tasks.spawn(async move {
            let mut positions = Vec::new();
            for i in 0..20u64 {
                positions.push(
                    log.append_entry(RequestId::new(c, i), entry(c, i))
                        .await
                        .unwrap(),
                );
            }
            (c, positions)
        });
    }
    let mut expected: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    while let Some(r) = tasks.join_next().await {
        let (c, positions) = r.unwrap();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
        for (i, p) in positions.into_iter().enumerate() {
            assert!(expected.insert(p, entry(c, i as u64)).is_none());
        }
    }
    assert_eq!(
        expected.keys().copied().collect::<Vec<_>>(),
        (1..=60).collect::<Vec<_>>()
    );
    // Known to every server by now: it committed those appends with them.
    let first_leader = leader(&servers).await;

    // A subscription through its own client, started at 1 after the first 60 entries.
    let subscriber: Arc<dyn CoordinationLog> = Arc::new(client(&addrs));
    let total = 140;
    let (mut progress, task) = collect(subscriber.subscribe_entries(1).unwrap(), total);
    seen(&mut progress, 60).await;

    // Appends go on through one client; the leader is stopped while the subscriber waits on
    // it, and again (another leader) once the first stopped server is back.
    let appender = client(&addrs);
    let mut append = |i: u64| {
        let appender = appender.clone();
        let bytes = entry(9, i);
        expected.insert(i, bytes.clone());
        async move {
            let p = appender
                .append_entry(RequestId::new(9, i), bytes)
                .await
                .unwrap();
            assert_eq!(p, i, "one appender alone: positions follow its appends");
        }
    };
    for i in 61..=80u64 {
        append(i).await;
    }
    seen(&mut progress, 80).await;
    servers
        .remove(&first_leader)
        .unwrap()
        .shutdown()
        .await
        .unwrap();
    for i in 81..=110u64 {
        append(i).await;
    }
    seen(&mut progress, 110).await;
    let second_leader = leader(&servers).await;
    assert_ne!(second_leader, first_leader);

    // The stopped server comes back on its directory and catches up (by replication or by a
    // Raft snapshot, which carries the coordination log).
    let restarted = LogServer::start(config(first_leader, &dirs, &cluster))
        .await
        .unwrap();
    let target = servers[&second_leader].status().last_log_index.unwrap();
    restarted.wait_applied(target, LIMIT).await.unwrap();
    assert_eq!(restarted.status().last_entry_position, Some(110));
    servers.insert(first_leader, restarted);
    servers
        .remove(&second_leader)
        .unwrap()
        .shutdown()
        .await
        .unwrap();
    for i in 111..=140u64 {
        append(i).await;
    }
    tokio::time::timeout(LIMIT, task)
        .await
        .expect("the subscriber finishes")
        .unwrap();

    // Exactly once, in order, every entry at the position it was appended at.
    let got = progress.borrow().clone();
    assert_eq!(got, expected.clone().into_iter().collect::<Vec<_>>());
    let positions: BTreeSet<u64> = got.iter().map(|(p, _)| *p).collect();
    assert_eq!(positions.len(), total);

    // Reads through any client agree, and `status` shows each server's last position.
    assert_eq!(subscriber.read_entries(1, usize::MAX).await.unwrap(), got);
    assert_eq!(appender.last_entry_position().await.unwrap(), 140);
    let target = servers[&leader(&servers).await]
        .status()
        .last_log_index
        .unwrap();
    for s in servers.values() {
        s.wait_applied(target, LIMIT).await.unwrap();
    }
    let st = status(&addrs).await;
    for s in &st {
        if s.id == Some(second_leader) {
            assert_eq!((s.role, s.last_entry_position), (Role::Unreachable, None));
        } else {
            assert_eq!(s.last_entry_position, Some(140), "{st:#?}");
        }
    }
    for (_, s) in servers {
        s.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_client_refuses_an_oversized_entry_before_sending_it() {
    // No server listens there: a refusal that needed one would be `Unavailable`.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let log = LogClient::connect([addr]).unwrap();
    let e = log
        .append_entry(RequestId::new(1, 0), vec![0; MAX_ENTRY_BYTES + 1])
        .await
        .unwrap_err();
    assert_eq!(
        e,
        Error::TooLarge {
            what: "coordination log entry".into(),
            bytes: MAX_ENTRY_BYTES as u64 + 1,
            limit: MAX_ENTRY_BYTES as u64,
        }
    );
    assert!(matches!(
        log.subscribe_entries(0),
        Err(Error::InvalidRequest(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_waits_through_a_restart_of_its_only_server() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let cluster = BTreeMap::from([(1, addr.clone())]);
    let dir = tempfile::tempdir().unwrap();
    let config = || ServerConfig {
        tuning: tuning(),
        ..ServerConfig::new(1, &addr, dir.path(), cluster.clone())
    };
    let server = LogServer::start_on(listener, config()).await.unwrap();
    let log = client(std::slice::from_ref(&addr));
    for i in 1..=3u64 {
        log.append_entry(RequestId::new(1, i), entry(1, i))
            .await
            .unwrap();
    }
    let (mut progress, task) = collect(log.subscribe_entries(2).unwrap(), 4);
    seen(&mut progress, 2).await;
    // The subscriber's long poll is in flight at the server when it stops; it comes back on
    // its directory, and the next entry reaches the subscriber.
    server.shutdown().await.unwrap();
    let server = LogServer::start(config()).await.unwrap();
    assert_eq!(
        log.append_entry(RequestId::new(1, 4), entry(1, 4))
            .await
            .unwrap(),
        4
    );
    seen(&mut progress, 3).await;
    log.append_entry(RequestId::new(1, 5), entry(1, 5))
        .await
        .unwrap();
    tokio::time::timeout(LIMIT, task).await.unwrap().unwrap();
    let got = progress.borrow().clone();
    assert_eq!(got, (2..=5).map(|i| (i, entry(1, i))).collect::<Vec<_>>());
    server.shutdown().await.unwrap();
}
