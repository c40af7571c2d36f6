//! Log servers: a [`Node`] served over TCP, and the operator's `status` query.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;

use crate::auth::ClusterSecret;
use crate::coordination::MAX_ENTRIES_PER_PAGE;
use crate::error::{Error, Result};
use crate::net::{
    serve, Handler, ReadPage, Request, Response, RpcClient, ServeOptions, StatusReply,
    MAX_ENTRY_WAIT, READ_PAGE_BYTES,
};
use crate::node::{Node, Tuning};
use crate::types::{CommitStats, Role, ServerStatus};

/// How to start one log server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Raft node id, unique in the cluster and stable across restarts.
    pub id: u64,
    /// Address to listen on (`host:port`; port 0 picks a free one, see [`LogServer::local_addr`]).
    pub listen_addr: String,
    /// Directory of this server's RocksDB (created if missing; reused on restart).
    pub data_dir: PathBuf,
    /// Every member: id → address other servers and clients reach it at. Must contain `id`.
    pub cluster: BTreeMap<u64, String>,
    /// Raft and group-commit tuning.
    pub tuning: Tuning,
    /// The cluster secret: clients and other servers must prove it, and this server proves it
    /// to the others. `None` serves only clients without one (use it on loopback only).
    pub secret: Option<ClusterSecret>,
}

impl ServerConfig {
    /// A config with default tuning and no secret.
    pub fn new(
        id: u64,
        listen_addr: impl Into<String>,
        data_dir: impl Into<PathBuf>,
        cluster: BTreeMap<u64, String>,
    ) -> Self {
        Self {
            id,
            listen_addr: listen_addr.into(),
            data_dir: data_dir.into(),
            cluster,
            tuning: Tuning::default(),
            secret: None,
        }
    }
}

/// A running log server. Drop does not stop it cleanly: call [`LogServer::shutdown`].
pub struct LogServer {
    node: Arc<Node>,
    local_addr: SocketAddr,
    serve_task: tokio::task::JoinHandle<()>,
}

impl LogServer {
    /// Opens the data directory, starts Raft and serves on `listen_addr`.
    ///
    /// On its first start the member with the lowest id initializes the cluster with every
    /// member of `cluster` (a no-op on later starts, since its log is then initialized); a
    /// restarted server rejoins with the data in `data_dir` and catches up from the leader.
    pub async fn start(config: ServerConfig) -> Result<LogServer> {
        let listener = tokio::net::TcpListener::bind(&config.listen_addr)
            .await
            .map_err(|e| Error::Io(format!("bind {}: {e}", config.listen_addr)))?;
        Self::start_on(listener, config).await
    }

    /// Like [`LogServer::start`] on an already bound listener (`listen_addr` is ignored).
    pub async fn start_on(
        listener: tokio::net::TcpListener,
        config: ServerConfig,
    ) -> Result<LogServer> {
        let advertised = config.cluster.get(&config.id).cloned().ok_or_else(|| {
            Error::InvalidRequest(format!(
                "cluster map does not contain this server's id {}",
                config.id
            ))
        })?;
        let local_addr = listener.local_addr()?;
        let node = Arc::new(
            Node::open(
                config.id,
                advertised,
                &config.data_dir,
                &config.tuning,
                config.secret.clone(),
            )
            .await?,
        );
        let serve_task = tokio::spawn(serve(
            listener,
            node.clone(),
            ServeOptions::new(config.secret.clone()),
        ));
        let lowest = config.cluster.keys().next().copied();
        if lowest == Some(config.id) {
            let members: BTreeMap<u64, BasicNode> = config
                .cluster
                .iter()
                .map(|(id, addr)| (*id, BasicNode::new(addr)))
                .collect();
            if let Err(e) = node.initialize(members).await {
                serve_task.abort();
                let _ = node.close().await;
                return Err(e);
            }
        }
        Ok(LogServer {
            node,
            local_addr,
            serve_task,
        })
    }

    /// Raft node id.
    pub fn id(&self) -> u64 {
        self.node.id
    }

    /// The address actually listened on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A view of this server's Raft metrics that does not keep it running.
    pub fn observer(&self) -> crate::NodeObserver {
        crate::NodeObserver::new(Arc::downgrade(&self.node))
    }

    /// This server's status line.
    pub fn status(&self) -> ServerStatus {
        self.node.status().0
    }

    /// Group-commit counters of this server (counting the commands it received as leader).
    pub fn commit_stats(&self) -> CommitStats {
        self.node.commit_stats()
    }

    /// WAL syncs (fsyncs) made by this server's Raft log store.
    pub fn wal_syncs(&self) -> u64 {
        self.node.wal_syncs()
    }

    /// Waits (bounded) until this server has applied the Raft log up to `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<()> {
        self.node
            .raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "wait applied")
            .await
            .map(|_| ())
            .map_err(|e| Error::Unavailable(format!("server {}: {e}", self.id())))
    }

    /// Waits (bounded) until some server is known to this one as leader; returns its id.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64> {
        let m = self
            .node
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "wait for a leader")
            .await
            .map_err(|e| Error::Unavailable(format!("server {}: {e}", self.id())))?;
        Ok(m.current_leader.expect("checked"))
    }

    /// Stops serving and Raft, and closes the database (the directory can be reopened at once).
    pub async fn shutdown(self) -> Result<()> {
        self.serve_task.abort();
        let _ = self.serve_task.await;
        self.node.close().await
    }
}

impl Node {
    /// Serves an append or a snapshot, fenced at `fence` if given; any other request (inside
    /// `Request::Fenced`) is refused.
    async fn ledger_write(&self, req: Request, fence: Option<u64>) -> Response {
        match req {
            Request::Append {
                ledger,
                request,
                record,
                crc,
            } => Response::Appended(
                self.append_checked(ledger, request, record, crc, fence)
                    .await,
            ),
            Request::Snapshot {
                ledger,
                covers,
                bytes,
                crc,
            } => Response::Snapshotted(
                self.snapshot_checked(ledger, covers, bytes, crc, fence)
                    .await,
            ),
            other => Response::Failed(Error::InvalidRequest(format!(
                "only appends and snapshots can be fenced, not {}",
                other.kind()
            ))),
        }
    }
}

impl Handler for Node {
    async fn handle(self: Arc<Self>, req: Request) -> Response {
        match req {
            Request::AppendEntries(rpc) => {
                Response::AppendEntries(self.raft.append_entries(rpc).await)
            }
            Request::Vote(rpc) => Response::Vote(self.raft.vote(rpc).await),
            Request::InstallSnapshot(rpc) => {
                Response::InstallSnapshot(self.raft.install_snapshot(rpc).await)
            }
            req @ (Request::Append { .. } | Request::Snapshot { .. }) => {
                self.ledger_write(req, None).await
            }
            Request::Fenced { fence, request } => self.ledger_write(*request, Some(fence)).await,
            Request::Read { ledger, from } => Response::Read(
                self.read_page(&ledger, from, READ_PAGE_BYTES)
                    .await
                    .map(|(read, complete)| ReadPage { read, complete }),
            ),
            Request::Info { ledger } => Response::Info(self.info(&ledger).await),
            Request::AppendEntry {
                request,
                entry,
                crc,
            } => Response::EntryAppended(self.append_entry_checked(request, entry, crc).await),
            Request::ReadEntries { from, max } => Response::Entries(
                self.read_entries(from, page_len(max), READ_PAGE_BYTES)
                    .await
                    .map(Into::into),
            ),
            Request::WaitEntries { from, max, wait_ms } => {
                let wait = Duration::from_millis(wait_ms).min(MAX_ENTRY_WAIT);
                Response::Entries(
                    self.wait_entries(from, page_len(max), READ_PAGE_BYTES, wait)
                        .await
                        .map(Into::into),
                )
            }
            Request::LastEntryPosition => {
                Response::LastEntryPosition(self.last_entry_position().await)
            }
            Request::Status => {
                let (status, members) = self.status();
                Response::Status(StatusReply {
                    last_entry_position: self.applied_entry_position(),
                    status,
                    members,
                })
            }
        }
    }
}

/// The entries one page may carry when `max` are asked for.
fn page_len(max: u64) -> usize {
    usize::try_from(max).map_or(MAX_ENTRIES_PER_PAGE, |m| m.min(MAX_ENTRIES_PER_PAGE))
}

/// Asks every server (those in `addrs`, plus members they name) for its status, for an
/// operator's `log-status` command, without a cluster secret (see [`status_with`]).
pub async fn status(addrs: &[String]) -> Vec<ServerStatus> {
    status_with(addrs, None).await
}

/// Asks every server (those in `addrs`, plus members they name) for its status, proving
/// `secret` if given. Servers that do not answer within a second are [`Role::Unreachable`];
/// a server that refuses the connection (wrong or missing secret) is [`Role::Unreachable`]
/// too, with the reason in `refused`.
pub async fn status_with(addrs: &[String], secret: Option<&ClusterSecret>) -> Vec<ServerStatus> {
    let secret = secret.cloned();
    let ask = |addr: String| {
        let secret = secret.clone();
        async move {
            let client = RpcClient::new(addr.clone(), secret);
            match client.call(Request::Status, Duration::from_secs(1)).await {
                Ok(Response::Status(r)) => (addr, Ok(r)),
                Ok(other) => (addr, Err(Some(format!("unexpected answer {other:?}")))),
                Err(e @ Error::Unauthenticated { .. }) => (addr, Err(Some(e.to_string()))),
                Err(_) => (addr, Err(None)),
            }
        }
    };
    let mut asked = BTreeSet::new();
    let mut answers: Vec<(String, std::result::Result<StatusReply, Option<String>>)> = Vec::new();
    let mut todo: Vec<String> = addrs.to_vec();
    while !todo.is_empty() {
        let round: Vec<String> = todo.drain(..).filter(|a| asked.insert(a.clone())).collect();
        let mut set = tokio::task::JoinSet::new();
        for a in round {
            set.spawn(ask(a));
        }
        while let Some(Ok(ans)) = set.join_next().await {
            if let Ok(r) = &ans.1 {
                todo.extend(
                    r.members
                        .iter()
                        .map(|(_, a)| a.clone())
                        .filter(|a| !asked.contains(a)),
                );
            }
            answers.push(ans);
        }
    }
    let ids: BTreeMap<String, u64> = answers
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .flat_map(|r| r.members.iter().map(|(id, a)| (a.clone(), *id)))
        .collect();
    let mut out: Vec<ServerStatus> = answers
        .into_iter()
        .map(|(addr, r)| match r {
            Ok(r) => ServerStatus {
                addr,
                last_entry_position: Some(r.last_entry_position),
                ..r.status
            },
            Err(refused) => ServerStatus {
                id: ids.get(&addr).copied(),
                addr,
                role: Role::Unreachable,
                current_leader: None,
                current_term: 0,
                last_log_index: None,
                last_applied: None,
                refused,
                last_entry_position: None,
            },
        })
        .collect();
    out.sort_by(|a, b| (a.id, &a.addr).cmp(&(b.id, &b.addr)));
    out
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use bytes::Bytes;

    use super::*;
    use crate::codec::crc;
    use crate::coordination::MAX_ENTRY_BYTES;
    use crate::types::RequestId;

    /// A one-member cluster on a free loopback port, and a raw connection to it.
    async fn single_server(dir: &std::path::Path) -> (LogServer, RpcClient) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let cluster = BTreeMap::from([(1, addr.clone())]);
        let server = LogServer::start_on(listener, ServerConfig::new(1, &addr, dir, cluster))
            .await
            .unwrap();
        server
            .wait_for_leader(Duration::from_secs(10))
            .await
            .unwrap();
        (server, RpcClient::new(addr, None))
    }

    fn append_entry(seq: u64, entry: Vec<u8>) -> Request {
        Request::AppendEntry {
            request: RequestId::new(1, seq),
            crc: crc(&entry),
            entry: Bytes::from(entry),
        }
    }

    fn entries(r: Response) -> Result<Vec<(u64, Vec<u8>)>> {
        match r {
            Response::Entries(r) => r.map(Into::into),
            other => panic!("expected Entries, got {other:?}"),
        }
    }

    const T: Duration = Duration::from_secs(10);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_refuses_an_oversized_entry_that_skipped_the_client_check() {
        let dir = tempfile::tempdir().unwrap();
        let (server, raw) = single_server(dir.path()).await;
        let r = raw
            .call(append_entry(0, vec![3; MAX_ENTRY_BYTES + 1]), T)
            .await
            .unwrap();
        match r {
            Response::EntryAppended(Err(Error::TooLarge { bytes, limit, .. })) => {
                assert_eq!(
                    (bytes, limit),
                    (MAX_ENTRY_BYTES as u64 + 1, MAX_ENTRY_BYTES as u64)
                );
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        match raw.call(Request::LastEntryPosition, T).await.unwrap() {
            Response::LastEntryPosition(Ok(p)) => assert_eq!(p, 0),
            other => panic!("{other:?}"),
        }
        server.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_poll_is_answered_when_an_entry_commits_or_empty_at_its_wait() {
        let dir = tempfile::tempdir().unwrap();
        let (server, raw) = single_server(dir.path()).await;
        let raw = Arc::new(raw);
        // Nothing at 1: answered empty once the wait has passed, not before.
        let started = Instant::now();
        let wait = |from, wait_ms| Request::WaitEntries {
            from,
            max: 100,
            wait_ms,
        };
        assert_eq!(
            entries(raw.call(wait(1, 100), T).await.unwrap()),
            Ok(vec![])
        );
        assert!(started.elapsed() >= Duration::from_millis(100));
        // A long wait is answered as soon as an entry at or after `from` commits.
        let waiting = {
            let raw = raw.clone();
            tokio::spawn(async move { raw.call(wait(1, 60_000), T).await })
        };
        let appended = raw
            .call(append_entry(0, b"first".to_vec()), T)
            .await
            .unwrap();
        assert!(
            matches!(appended, Response::EntryAppended(Ok(1))),
            "{appended:?}"
        );
        let got = entries(waiting.await.unwrap().unwrap()).unwrap();
        assert_eq!(got, vec![(1, b"first".to_vec())]);
        // An entry that exists is answered at once; position 0 does not exist.
        let started = Instant::now();
        assert_eq!(
            entries(raw.call(wait(1, 60_000), T).await.unwrap()).unwrap(),
            got
        );
        assert!(started.elapsed() < T);
        assert!(matches!(
            entries(raw.call(wait(0, 10), T).await.unwrap()),
            Err(Error::InvalidRequest(_))
        ));
        // The status reply carries the position.
        assert_eq!(
            status(&[server.local_addr().to_string()]).await[0].last_entry_position,
            Some(1)
        );
        server.shutdown().await.unwrap();
    }
}
