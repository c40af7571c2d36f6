//! A 3-node log-server cluster over real TCP on 127.0.0.1 with RocksDB in temp dirs, every
//! connection (clients and Raft peers) authenticated with a cluster secret.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sardonyx_state_log::{
    status_with, AuthFailure, ClientOptions, ClusterSecret, Error, LogClient, LogServer, RequestId,
    Role, ServerConfig, ServerStatus, Tuning,
};

fn secret() -> ClusterSecret {
    ClusterSecret::from_bytes(b"the test cluster's shared secret").unwrap()
}

/// A client of `addrs` proving `secret`.
fn client_with(addrs: &[String], secret: Option<ClusterSecret>) -> LogClient {
    let options = ClientOptions {
        secret,
        ..ClientOptions::default()
    };
    LogClient::with_options(addrs.to_vec(), options).unwrap()
}

fn tuning() -> Tuning {
    Tuning {
        heartbeat_interval: Duration::from_millis(50),
        election_timeout: (Duration::from_millis(400), Duration::from_millis(800)),
        // Build Raft snapshots and purge the log often, so a node that was down catches up by
        // snapshot installation, not only by log replication.
        raft_snapshot_every: 8,
        raft_logs_to_keep: 2,
        ..Tuning::default()
    }
}

fn config(id: u64, dirs: &[tempfile::TempDir], cluster: &BTreeMap<u64, String>) -> ServerConfig {
    ServerConfig {
        tuning: tuning(),
        secret: Some(secret()),
        ..ServerConfig::new(
            id,
            cluster[&id].clone(),
            dirs[(id - 1) as usize].path(),
            cluster.clone(),
        )
    }
}

/// Polls `status` until exactly one leader and `want` reachable voters agree, with a deadline.
async fn wait_status(addrs: &[String], want_reachable: usize) -> Vec<ServerStatus> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = status_with(addrs, Some(&secret())).await;
        let leaders: Vec<_> = st.iter().filter(|s| s.role == Role::Leader).collect();
        let reachable = st.iter().filter(|s| s.role != Role::Unreachable).count();
        if leaders.len() == 1 && reachable == want_reachable {
            let l = leaders[0].id;
            if st
                .iter()
                .filter(|s| s.role != Role::Unreachable)
                .all(|s| s.current_leader == l)
            {
                return st;
            }
        }
        assert!(Instant::now() < deadline, "cluster did not settle: {st:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_failover_catch_up_and_dedup() {
    // Bind the three listeners first (port 0), so the addresses are known and free.
    let mut listeners = Vec::new();
    let mut cluster = BTreeMap::new();
    for id in 1..=3u64 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        cluster.insert(id, l.local_addr().unwrap().to_string());
        listeners.push(l);
    }
    let addrs: Vec<String> = cluster.values().cloned().collect();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut servers: BTreeMap<u64, LogServer> = BTreeMap::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let s = LogServer::start_on(l, config(id, &dirs, &cluster))
            .await
            .unwrap();
        servers.insert(id, s);
    }

    let st = wait_status(&addrs, 3).await;
    assert_eq!(st.len(), 3);
    assert_eq!(
        st.iter().filter(|s| s.role == Role::Follower).count(),
        2,
        "{st:#?}"
    );
    let leader = st
        .iter()
        .find(|s| s.role == Role::Leader)
        .unwrap()
        .id
        .unwrap();

    // Without the secret, or with another one, nothing gets in: no append, no status, no vote
    // (the servers' terms do not move).
    let terms: Vec<u64> = st.iter().map(|s| s.current_term).collect();
    let e = client_with(&addrs, None)
        .append("slot-1", RequestId::new(66, 0), b"intruder".to_vec())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            Error::Unauthenticated {
                failure: AuthFailure::SecretRequired,
                ..
            }
        ),
        "{e:?}"
    );
    let other = ClusterSecret::from_bytes(b"a different secret, same length!").unwrap();
    let e = client_with(&addrs, Some(other.clone()))
        .append("slot-1", RequestId::new(66, 1), b"intruder".to_vec())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            Error::Unauthenticated {
                failure: AuthFailure::BadServerProof,
                ..
            }
        ),
        "{e:?}"
    );
    for s in status_with(&addrs, Some(&other)).await {
        assert_eq!(s.role, Role::Unreachable);
        assert_eq!(
            s.refused.as_deref(),
            Some(
                format!(
                    "authentication with the log server at {} failed: the server's proof is \
                     wrong: it holds a different secret or is an impostor",
                    s.addr
                )
                .as_str()
            )
        );
    }
    let st = wait_status(&addrs, 3).await;
    assert_eq!(st.iter().map(|s| s.current_term).collect::<Vec<_>>(), terms);

    let client = client_with(&addrs, Some(secret()));
    for i in 0..10u64 {
        let p = client
            .append("slot-1", RequestId::new(7, i), format!("r{i}").into_bytes())
            .await
            .unwrap();
        assert_eq!(p, i);
    }

    // Kill the leader; appends continue after re-election (the client follows the new leader).
    servers.remove(&leader).unwrap().shutdown().await.unwrap();
    for i in 10..20u64 {
        let p = client
            .append("slot-1", RequestId::new(7, i), format!("r{i}").into_bytes())
            .await
            .unwrap();
        assert_eq!(p, i);
    }
    let st = wait_status(&addrs, 2).await;
    let down = st.iter().find(|s| s.role == Role::Unreachable).unwrap();
    assert_eq!(
        down.id,
        Some(leader),
        "status names the unreachable member: {st:#?}"
    );
    let new_leader = st
        .iter()
        .find(|s| s.role == Role::Leader)
        .unwrap()
        .id
        .unwrap();
    assert_ne!(new_leader, leader);

    // A retried request id (same client and seq) is applied once, before and after failover.
    assert_eq!(
        client
            .append("slot-1", RequestId::new(7, 3), b"again".to_vec())
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        client
            .append("slot-1", RequestId::new(7, 15), b"again".to_vec())
            .await
            .unwrap(),
        15
    );
    assert_eq!(client.info("slot-1").await.unwrap().next_position, 20);

    // Compaction through the cluster.
    client
        .snapshot("slot-1", 9, b"state@9".to_vec())
        .await
        .unwrap();

    // Fencing through the cluster: refused below the ledger's fence (at once, not retried).
    assert_eq!(
        client
            .append_fenced("slot-2", 2, RequestId::new(9, 0), b"owner-2".to_vec())
            .await,
        Ok(0)
    );
    let stale = Error::Fenced {
        ledger: "slot-2".into(),
        fence: 1,
        current: 2,
    };
    assert_eq!(
        client
            .append_fenced("slot-2", 1, RequestId::new(9, 1), b"stale".to_vec())
            .await,
        Err(stale.clone())
    );
    assert_eq!(
        client
            .snapshot_fenced("slot-2", 1, 0, b"stale".to_vec())
            .await,
        Err(stale.clone())
    );
    client
        .snapshot_fenced("slot-2", 2, 0, b"state-2".to_vec())
        .await
        .unwrap();

    // Restart the old leader on its data directory and address; it catches up.
    let restarted = LogServer::start(config(leader, &dirs, &cluster))
        .await
        .unwrap();
    let target = servers[&new_leader].status().last_log_index.unwrap();
    restarted
        .wait_applied(target, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(
        restarted
            .wait_for_leader(Duration::from_secs(5))
            .await
            .unwrap(),
        new_leader
    );
    servers.insert(leader, restarted);
    let st = wait_status(&addrs, 3).await;
    assert!(st.iter().all(|s| s.last_applied >= Some(target)), "{st:#?}");

    let read = client.read("slot-1", 0).await.unwrap();
    assert_eq!(read.snapshot, Some((9, b"state@9".to_vec())));
    let want: Vec<(u64, Vec<u8>)> = (10..20)
        .map(|i| (i, format!("r{i}").into_bytes()))
        .collect();
    assert_eq!(read.entries, want);
    assert_eq!(read.stats.records_scanned, 10);

    // The restarted node can lead: stop the current leader; the ledger is intact on the others.
    servers
        .remove(&new_leader)
        .unwrap()
        .shutdown()
        .await
        .unwrap();
    let p = client
        .append("slot-1", RequestId::new(8, 0), b"r20".to_vec())
        .await
        .unwrap();
    assert_eq!(p, 20);
    let read = client.read("slot-1", 0).await.unwrap();
    assert_eq!(read.entries.len(), 11);
    assert_eq!(read.snapshot, Some((9, b"state@9".to_vec())));
    // The fence holds on the new leader too (replicated, or carried by a Raft snapshot).
    assert_eq!(client.info("slot-2").await.unwrap().fence, 2);
    assert_eq!(
        client
            .snapshot_fenced("slot-2", 1, 0, b"stale".to_vec())
            .await,
        Err(stale)
    );
    assert_eq!(
        client.read("slot-2", 0).await.unwrap().snapshot,
        Some((0, b"state-2".to_vec()))
    );

    for (_, s) in servers {
        s.shutdown().await.unwrap();
    }
}
