//! The state log's own TCP transport: length-delimited frames (`u32` BE length ‖ bincode body),
//! multiplexed request/response by call id, used both between Raft nodes and by clients.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Mutex};

use crate::codec;
use crate::error::{Error, Result};
use crate::raft_types::TypeConfig;
use crate::types::{LedgerInfo, LedgerRead, RequestId, ServerStatus};

/// Largest frame accepted (a guard against garbage length prefixes).
pub(crate) const MAX_FRAME: usize = 512 * 1024 * 1024;

/// A request on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    Append {
        ledger: String,
        request: RequestId,
        record: Bytes,
        crc: u32,
    },
    Snapshot {
        ledger: String,
        covers: u64,
        bytes: Bytes,
        crc: u32,
    },
    Read {
        ledger: String,
        from: u64,
    },
    Info {
        ledger: String,
    },
    Status,
    /// `request` (an `Append` or a `Snapshot`) as a fenced write. Last, so the encoding of the
    /// other requests is unchanged.
    Fenced {
        fence: u64,
        request: Box<Request>,
    },
}

impl Request {
    /// `self`, as a fenced write if a `fence` is given.
    pub(crate) fn fenced(self, fence: Option<u64>) -> Request {
        match fence {
            Some(fence) => Request::Fenced {
                fence,
                request: Box::new(self),
            },
            None => self,
        }
    }

    /// The request's name, for messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Request::AppendEntries(_) => "AppendEntries",
            Request::Vote(_) => "Vote",
            Request::InstallSnapshot(_) => "InstallSnapshot",
            Request::Append { .. } => "Append",
            Request::Snapshot { .. } => "Snapshot",
            Request::Read { .. } => "Read",
            Request::Info { .. } => "Info",
            Request::Status => "Status",
            Request::Fenced { .. } => "Fenced",
        }
    }
}

/// A response on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Response {
    AppendEntries(std::result::Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(std::result::Result<VoteResponse<u64>, RaftError<u64>>),
    InstallSnapshot(
        std::result::Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>,
    ),
    Appended(Result<u64>),
    Snapshotted(Result<()>),
    Read(Result<LedgerRead>),
    Info(Result<LedgerInfo>),
    Status(StatusReply),
    /// The server could not decode or serve the request at all.
    Failed(Error),
}

/// A server's answer to `Status`: its own line plus the cluster membership it knows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StatusReply {
    pub(crate) status: ServerStatus,
    pub(crate) members: Vec<(u64, String)>,
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    id: u64,
    body: T,
}

/// Writes one frame.
async fn write_frame<W: AsyncWriteExt + Unpin>(w: &mut W, payload: &[u8]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4 + payload.len());
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf).await
}

/// Reads one frame; `Ok(None)` on a clean end of stream.
async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the limit"),
        ));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Ok(Some(buf))
}

// ---------------------------------------------------------------------------------------------
// Client side

type Pending = Arc<StdMutex<HashMap<u64, oneshot::Sender<Response>>>>;

/// One multiplexed connection.
struct Conn {
    writer: Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    dead: Arc<AtomicBool>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A lazily (re)connecting RPC client to one address.
pub(crate) struct RpcClient {
    addr: String,
    conn: Mutex<Option<Arc<Conn>>>,
}

impl RpcClient {
    pub(crate) fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            conn: Mutex::new(None),
        }
    }

    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    async fn connection(&self, timeout: Duration) -> Result<Arc<Conn>> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.dead.load(Ordering::Acquire) {
                return Ok(c.clone());
            }
        }
        let stream = tokio::time::timeout(timeout, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| Error::Unavailable(format!("connect to {} timed out", self.addr)))?
            .map_err(|e| Error::Unavailable(format!("connect to {}: {e}", self.addr)))?;
        let _ = stream.set_nodelay(true);
        let (read_half, write_half) = stream.into_split();
        let pending: Pending = Arc::default();
        let dead = Arc::new(AtomicBool::new(false));
        let reader = {
            let pending = pending.clone();
            let dead = dead.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(read_half);
                while let Ok(Some(frame)) = read_frame(&mut r).await {
                    let Ok(env) = codec::decode::<Envelope<Response>>(&frame) else {
                        break;
                    };
                    let tx = pending.lock().expect("pending lock").remove(&env.id);
                    if let Some(tx) = tx {
                        let _ = tx.send(env.body);
                    }
                }
                dead.store(true, Ordering::Release);
                // Dropping the senders wakes every waiting caller with an error.
                pending.lock().expect("pending lock").clear();
            })
        };
        let conn = Arc::new(Conn {
            writer: Mutex::new(write_half),
            pending,
            next_id: AtomicU64::new(1),
            dead,
            reader,
        });
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Sends a request and waits for its response, at most `timeout` in all.
    /// Connection failures and timeouts are [`Error::Unavailable`].
    pub(crate) async fn call(&self, req: Request, timeout: Duration) -> Result<Response> {
        let fut = async {
            let conn = self.connection(timeout).await?;
            let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            conn.pending.lock().expect("pending lock").insert(id, tx);
            let frame = codec::encode(&Envelope { id, body: req })?;
            let sent = {
                let mut w = conn.writer.lock().await;
                write_frame(&mut *w, &frame).await
            };
            if let Err(e) = sent {
                conn.dead.store(true, Ordering::Release);
                conn.pending.lock().expect("pending lock").remove(&id);
                return Err(Error::Unavailable(format!("send to {}: {e}", self.addr)));
            }
            rx.await
                .map_err(|_| Error::Unavailable(format!("connection to {} closed", self.addr)))
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(Error::Unavailable(format!(
                "request to {} timed out after {timeout:?}",
                self.addr
            ))),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server side

/// Something that answers requests (a log server's node).
pub(crate) trait Handler: Send + Sync + 'static {
    /// Serves one request.
    fn handle(
        self: Arc<Self>,
        req: Request,
    ) -> impl std::future::Future<Output = Response> + Send + 'static;
}

/// Accepts connections until the task is aborted; each connection's requests are served
/// concurrently and answered in completion order. Aborting this task aborts every connection.
pub(crate) async fn serve<H: Handler>(listener: tokio::net::TcpListener, handler: Arc<H>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                conns.spawn(serve_conn(stream, handler.clone()));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_conn<H: Handler>(stream: TcpStream, handler: Arc<H>) {
    let (read_half, mut write_half) = stream.into_split();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(async move {
        while let Some(frame) = rx.recv().await {
            if write_frame(&mut write_half, &frame).await.is_err() {
                break;
            }
        }
    });
    let mut r = BufReader::new(read_half);
    while let Ok(Some(frame)) = read_frame(&mut r).await {
        let tx = tx.clone();
        let handler = handler.clone();
        // Reap finished request tasks so the set does not grow without bound.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            let (id, resp) = match codec::decode::<Envelope<Request>>(&frame) {
                Ok(env) => (env.id, handler.handle(env.body).await),
                Err(e) => (
                    0,
                    Response::Failed(Error::Fatal(format!("bad request frame: {e}"))),
                ),
            };
            if let Ok(bytes) = codec::encode(&Envelope { id, body: resp }) {
                let _ = tx.send(bytes);
            }
        });
    }
    drop(tx);
    // Let in-flight requests finish and their answers drain; the set is aborted if this
    // connection task is aborted.
    while tasks.join_next().await.is_some() {}
}
