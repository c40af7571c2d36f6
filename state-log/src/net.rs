//! The state log's own TCP transport: length-delimited frames (`u32` BE length ‖ bincode body),
//! multiplexed request/response by call id, used both between Raft nodes and by clients.

use std::collections::HashMap;
use std::net::SocketAddr;
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
use tokio::sync::{oneshot, Mutex, Semaphore};

use crate::auth::{self, ClusterSecret, Handshake};
use crate::codec;
use crate::error::{AuthFailure, Error, Result};
use crate::raft_types::TypeConfig;
use crate::types::{LedgerInfo, LedgerRead, RequestId, ServerStatus};

/// Largest frame (after the handshake) a log server or client reads or writes. Its length is
/// checked before anything is allocated, and a frame's buffer then grows only with the bytes
/// that actually arrive. Sized for the largest legitimate message: a ledger snapshot travels
/// whole in one `Snapshot` request (an engine snapshot is zstd-compressed window state and
/// dedup filter; Q4 of the vote benchmark: 1.2 MB), whereas Raft's `InstallSnapshot` is chunked
/// by openraft (3 MiB chunks), `AppendEntries` is split on [`Error::TooLarge`] and reads are
/// paged (`READ_PAGE_BYTES`, 32 MiB).
pub const MAX_FRAME_BYTES: usize = 128 << 20;

/// Largest record or snapshot a client may append: a frame less room for the request around
/// it, so that a Raft entry carrying it alone still fits in an `AppendEntries` frame. A larger
/// one is refused with [`Error::TooLarge`] before anything is sent.
pub const MAX_PAYLOAD_BYTES: usize = MAX_FRAME_BYTES - (1 << 20);

/// Most entry bytes one page of a `Read` response carries (the snapshot goes whole in the
/// first page, beside them); the client reads page after page.
pub(crate) const READ_PAGE_BYTES: usize = 32 << 20;

/// Longest a server holds a subscription's `WaitEntries` before answering it empty.
pub(crate) const MAX_ENTRY_WAIT: Duration = Duration::from_secs(60);

/// Requests of one connection served at once; the server reads no further frame from that
/// connection until one of them is answered (TCP then holds the client back).
pub const MAX_INFLIGHT_PER_CONNECTION: usize = 64;

/// Request bytes of one connection held at once (frames read and not yet answered).
pub const MAX_INFLIGHT_BYTES_PER_CONNECTION: usize = 2 * MAX_FRAME_BYTES;

/// Connections a log server serves at once; past it, it accepts no more until one closes.
pub const MAX_CONNECTIONS: usize = 1024;

/// Largest handshake frame (they are tens of bytes): before a client is authenticated, it can
/// make the server read no more than this.
const HANDSHAKE_FRAME_BYTES: usize = 256;

/// Time a new connection has to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

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
    // The coordination log (after the ledgers' requests, so their encoding is unchanged).
    /// Append an entry whose crc32 is `crc`.
    AppendEntry {
        request: RequestId,
        entry: Bytes,
        crc: u32,
    },
    /// Read at most `max` entries from `from` (linearizable).
    ReadEntries {
        from: u64,
        max: u64,
    },
    /// The long poll of a subscription: entries from `from` as soon as one exists, or none
    /// after `wait_ms` (at most [`MAX_ENTRY_WAIT`]).
    WaitEntries {
        from: u64,
        max: u64,
        wait_ms: u64,
    },
    /// The position of the last entry (linearizable).
    LastEntryPosition,
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
            Request::AppendEntry { .. } => "AppendEntry",
            Request::ReadEntries { .. } => "ReadEntries",
            Request::WaitEntries { .. } => "WaitEntries",
            Request::LastEntryPosition => "LastEntryPosition",
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
    Read(Result<ReadPage>),
    Info(Result<LedgerInfo>),
    Status(StatusReply),
    /// The server could not decode or serve the request at all.
    Failed(Error),
    /// Answer to `AppendEntry`: the entry's position.
    EntryAppended(Result<u64>),
    /// Answer to `ReadEntries` and `WaitEntries`.
    Entries(Result<EntryPage>),
    /// Answer to `LastEntryPosition`.
    LastEntryPosition(Result<u64>),
}

/// Entries of the coordination log on the wire, in position order (payloads as byte strings).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct EntryPage {
    pub(crate) entries: Vec<(u64, serde_bytes::ByteBuf)>,
}

impl From<Vec<(u64, Vec<u8>)>> for EntryPage {
    fn from(entries: Vec<(u64, Vec<u8>)>) -> Self {
        EntryPage {
            entries: entries
                .into_iter()
                .map(|(p, e)| (p, serde_bytes::ByteBuf::from(e)))
                .collect(),
        }
    }
}

impl From<EntryPage> for Vec<(u64, Vec<u8>)> {
    fn from(page: EntryPage) -> Self {
        page.entries
            .into_iter()
            .map(|(p, e)| (p, e.into_vec()))
            .collect()
    }
}

/// One page of a ledger read (see [`READ_PAGE_BYTES`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ReadPage {
    /// The snapshot (if it covers the position asked for) and the entries of this page.
    pub(crate) read: LedgerRead,
    /// False if entries after this page's were left out.
    pub(crate) complete: bool,
}

/// A server's answer to `Status`: its own line plus the cluster membership it knows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StatusReply {
    pub(crate) status: ServerStatus,
    pub(crate) members: Vec<(u64, String)>,
    /// The server's last applied coordination-log position. Last, and not inside `status`, so
    /// that a client of an earlier version still decodes the reply (it ignores trailing bytes).
    pub(crate) last_entry_position: u64,
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    id: u64,
    body: T,
}

/// Encodes `value` as one frame (`u32` BE length ‖ bincode), refused with [`Error::TooLarge`]
/// past `limit` bytes of body.
fn encode_frame<T: Serialize>(
    value: &T,
    limit: usize,
    what: impl FnOnce() -> String,
) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; 4];
    codec::encode_into(value, &mut buf)?;
    let len = buf.len() - 4;
    if len > limit {
        return Err(Error::TooLarge {
            what: what(),
            bytes: len as u64,
            limit: limit as u64,
        });
    }
    buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
}

/// Reads a frame's length; `Ok(None)` on a clean end of stream. A length over `limit` is an
/// [`std::io::ErrorKind::InvalidData`] error naming both, and nothing is allocated for it.
async fn read_frame_len<R: AsyncReadExt + Unpin>(
    r: &mut R,
    limit: usize,
) -> std::io::Result<Option<usize>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame declares {len} bytes, over the limit of {limit} bytes"),
        ));
    }
    Ok(Some(len))
}

/// Reads a frame body of `len` (already checked) bytes. The buffer grows with what arrives, so
/// a peer that declares a large frame and sends little costs little.
async fn read_frame_body<R: AsyncReadExt + Unpin>(
    r: &mut R,
    len: usize,
) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len.min(64 << 10));
    (&mut *r).take(len as u64).read_to_end(&mut buf).await?;
    if buf.len() < len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!(
                "connection closed {} bytes into a frame of {len}",
                buf.len()
            ),
        ));
    }
    Ok(buf)
}

/// Reads one frame of at most `limit` bytes; `Ok(None)` on a clean end of stream.
async fn read_frame<R: AsyncReadExt + Unpin>(
    r: &mut R,
    limit: usize,
) -> std::io::Result<Option<Vec<u8>>> {
    match read_frame_len(r, limit).await? {
        Some(len) => read_frame_body(r, len).await.map(Some),
        None => Ok(None),
    }
}

/// Sends one handshake frame.
async fn send_handshake<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    msg: &Handshake,
) -> std::io::Result<()> {
    let frame = encode_frame(msg, HANDSHAKE_FRAME_BYTES, || "handshake frame".into())
        .map_err(std::io::Error::other)?;
    w.write_all(&frame).await
}

/// Receives one handshake frame; a frame that is not one is a protocol failure.
async fn recv_handshake<R: AsyncReadExt + Unpin>(
    r: &mut R,
) -> std::result::Result<Handshake, HandshakeError> {
    let frame = read_frame(r, HANDSHAKE_FRAME_BYTES).await?.ok_or_else(|| {
        HandshakeError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed during the handshake",
        ))
    })?;
    codec::decode::<Handshake>(&frame).map_err(|e| {
        HandshakeError::Refused(AuthFailure::Protocol(format!("not a handshake frame: {e}")))
    })
}

/// How a handshake failed: the connection broke, or one side refused the other.
#[derive(Debug)]
enum HandshakeError {
    Io(std::io::Error),
    Refused(AuthFailure),
}

impl From<std::io::Error> for HandshakeError {
    fn from(e: std::io::Error) -> Self {
        HandshakeError::Io(e)
    }
}

/// The client's side of the handshake (see [`crate::auth`]): `Ok` once requests may be sent.
async fn client_handshake(
    stream: &mut TcpStream,
    secret: Option<&ClusterSecret>,
) -> std::result::Result<(), HandshakeError> {
    let client_nonce = auth::nonce().map_err(std::io::Error::other)?;
    let hello = Handshake::Hello {
        protocol: auth::PROTOCOL,
        has_secret: secret.is_some(),
        client_nonce,
    };
    send_handshake(stream, &hello).await?;
    let refused = |f| Err(HandshakeError::Refused(f));
    match (recv_handshake(stream).await?, secret) {
        (Handshake::Open, None) => Ok(()),
        (Handshake::Open, Some(_)) => refused(AuthFailure::ServerHasNoSecret),
        (Handshake::Refused(f), _) => refused(f),
        (
            Handshake::Challenge {
                server_nonce,
                server_proof,
            },
            Some(secret),
        ) => {
            if !secret.verify_server(&client_nonce, &server_nonce, &server_proof) {
                // Say why, so the server's log shows it too.
                let bad = Handshake::Refused(AuthFailure::BadServerProof);
                let _ = send_handshake(stream, &bad).await;
                return refused(AuthFailure::BadServerProof);
            }
            let client_proof = secret.client_proof(&client_nonce, &server_nonce);
            send_handshake(stream, &Handshake::Proof { client_proof }).await?;
            match recv_handshake(stream).await? {
                Handshake::Accepted => Ok(()),
                Handshake::Refused(f) => refused(f),
                other => refused(AuthFailure::Protocol(format!(
                    "expected Accepted, got {}",
                    other.kind()
                ))),
            }
        }
        (other, _) => refused(AuthFailure::Protocol(format!(
            "unexpected {} from the server",
            other.kind()
        ))),
    }
}

/// The server's side of the handshake: `Ok` once the client is authenticated (or neither side
/// has a secret). A refusal is sent to the client before the error is returned.
async fn server_handshake(
    stream: &mut TcpStream,
    secret: Option<&ClusterSecret>,
) -> std::result::Result<(), HandshakeError> {
    let hello = match recv_handshake(stream).await {
        Ok(h) => h,
        Err(HandshakeError::Refused(f)) => {
            let _ = send_handshake(stream, &Handshake::Refused(f.clone())).await;
            return Err(HandshakeError::Refused(f));
        }
        Err(e) => return Err(e),
    };
    let server_nonce = auth::nonce().map_err(std::io::Error::other)?;
    let answer = auth::answer_hello(secret, &hello, server_nonce);
    send_handshake(stream, &answer).await?;
    match (answer, secret, hello) {
        (Handshake::Open, _, _) => Ok(()),
        (Handshake::Refused(f), _, _) => Err(HandshakeError::Refused(f)),
        (Handshake::Challenge { .. }, Some(secret), Handshake::Hello { client_nonce, .. }) => {
            let verdict = match recv_handshake(stream).await? {
                Handshake::Proof { client_proof }
                    if secret.verify_client(&client_nonce, &server_nonce, &client_proof) =>
                {
                    Handshake::Accepted
                }
                Handshake::Proof { .. } => Handshake::Refused(AuthFailure::WrongSecret),
                // The client refused this server (it holds another secret): nothing to answer.
                Handshake::Refused(f) => return Err(HandshakeError::Refused(f)),
                other => Handshake::Refused(AuthFailure::Protocol(format!(
                    "expected Proof, got {}",
                    other.kind()
                ))),
            };
            send_handshake(stream, &verdict).await?;
            match verdict {
                Handshake::Refused(f) => Err(HandshakeError::Refused(f)),
                _ => Ok(()),
            }
        }
        (other, _, _) => Err(HandshakeError::Refused(AuthFailure::Protocol(format!(
            "internal: answered {}",
            other.kind()
        )))),
    }
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

/// A lazily (re)connecting RPC client to one address, authenticating every new connection
/// with the cluster secret if it has one.
pub(crate) struct RpcClient {
    addr: String,
    secret: Option<ClusterSecret>,
    conn: Mutex<Option<Arc<Conn>>>,
}

impl RpcClient {
    pub(crate) fn new(addr: impl Into<String>, secret: Option<ClusterSecret>) -> Self {
        Self {
            addr: addr.into(),
            secret,
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
        let mut stream = tokio::time::timeout(timeout, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| Error::Unavailable(format!("connect to {} timed out", self.addr)))?
            .map_err(|e| Error::Unavailable(format!("connect to {}: {e}", self.addr)))?;
        let _ = stream.set_nodelay(true);
        match tokio::time::timeout(timeout, client_handshake(&mut stream, self.secret.as_ref()))
            .await
        {
            Err(_) => {
                return Err(Error::Unavailable(format!(
                    "handshake with {} timed out",
                    self.addr
                )))
            }
            Ok(Err(HandshakeError::Io(e))) => {
                return Err(Error::Unavailable(format!(
                    "handshake with {}: {e}",
                    self.addr
                )))
            }
            Ok(Err(HandshakeError::Refused(failure))) => {
                return Err(Error::Unauthenticated {
                    addr: self.addr.clone(),
                    failure,
                })
            }
            Ok(Ok(())) => {}
        }
        let (read_half, write_half) = stream.into_split();
        let pending: Pending = Arc::default();
        let dead = Arc::new(AtomicBool::new(false));
        let reader = {
            let pending = pending.clone();
            let dead = dead.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(read_half);
                while let Ok(Some(frame)) = read_frame(&mut r, MAX_FRAME_BYTES).await {
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
            let kind = req.kind();
            let frame = encode_frame(&Envelope { id, body: req }, MAX_FRAME_BYTES, || {
                format!("{kind} request to {}", self.addr)
            })?;
            let (tx, rx) = oneshot::channel();
            conn.pending.lock().expect("pending lock").insert(id, tx);
            let sent = {
                let mut w = conn.writer.lock().await;
                w.write_all(&frame).await
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

/// The limits a server applies to its connections (the constants of this module; tests
/// shrink them).
#[derive(Debug, Clone)]
pub(crate) struct ServeOptions {
    /// The cluster secret clients must prove; `None`: only clients without one are served.
    pub(crate) secret: Option<ClusterSecret>,
    /// Largest request frame.
    pub(crate) max_frame: usize,
    /// Requests of one connection served at once.
    pub(crate) max_inflight: usize,
    /// Request bytes of one connection held at once (at least `max_frame`).
    pub(crate) max_inflight_bytes: usize,
    /// Connections served at once.
    pub(crate) max_connections: usize,
    /// Time to complete the handshake.
    pub(crate) handshake_timeout: Duration,
}

impl ServeOptions {
    /// The module's limits, with this secret.
    pub(crate) fn new(secret: Option<ClusterSecret>) -> Self {
        Self {
            secret,
            max_frame: MAX_FRAME_BYTES,
            max_inflight: MAX_INFLIGHT_PER_CONNECTION,
            max_inflight_bytes: MAX_INFLIGHT_BYTES_PER_CONNECTION,
            max_connections: MAX_CONNECTIONS,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        }
    }
}

/// Accepts connections until the task is aborted, at most `max_connections` at once; each
/// connection is authenticated, then its requests are served concurrently (at most
/// `max_inflight` and `max_inflight_bytes` at once) and answered in completion order. Aborting
/// this task aborts every connection.
pub(crate) async fn serve<H: Handler>(
    listener: tokio::net::TcpListener,
    handler: Arc<H>,
    options: ServeOptions,
) {
    let options = Arc::new(options);
    let slots = Arc::new(Semaphore::new(options.max_connections));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                tracing::warn!(
                    limit = options.max_connections,
                    "log server at its connection limit; accepting no more until one closes"
                );
                tokio::select! {
                    slot = slots.clone().acquire_owned() => slot.expect("never closed"),
                    Some(_) = conns.join_next(), if !conns.is_empty() => continue,
                }
            }
        };
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let (handler, options) = (handler.clone(), options.clone());
                conns.spawn(async move {
                    serve_conn(stream, peer, handler, &options).await;
                    drop(slot);
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_conn<H: Handler>(
    mut stream: TcpStream,
    peer: SocketAddr,
    handler: Arc<H>,
    options: &ServeOptions,
) {
    match tokio::time::timeout(
        options.handshake_timeout,
        server_handshake(&mut stream, options.secret.as_ref()),
    )
    .await
    {
        Err(_) => {
            tracing::warn!(%peer, "closing a connection that did not complete its handshake in time");
            return;
        }
        Ok(Err(HandshakeError::Refused(failure))) => {
            tracing::warn!(%peer, %failure, "refused a connection");
            return;
        }
        Ok(Err(HandshakeError::Io(e))) => {
            tracing::debug!(%peer, error = %e, "connection lost during the handshake");
            return;
        }
        Ok(Ok(())) => {}
    }
    let (read_half, mut write_half) = stream.into_split();
    // Bounded like the requests: a client that does not read its answers stops being served.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(options.max_inflight);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(async move {
        while let Some(frame) = rx.recv().await {
            if write_half.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    let requests = Arc::new(Semaphore::new(options.max_inflight));
    let max_frame = options.max_frame.min(options.max_inflight_bytes);
    let bytes = Arc::new(Semaphore::new(options.max_inflight_bytes));
    let mut r = BufReader::new(read_half);
    loop {
        // Take a request slot before reading the next frame: at the limit, this connection is
        // not read, and TCP flow control holds the client back.
        let request = requests
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let len = match read_frame_len(&mut r, max_frame).await {
            Ok(Some(len)) => len,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "closing a connection");
                break;
            }
        };
        let held = bytes
            .clone()
            .acquire_many_owned(len.max(1) as u32)
            .await
            .expect("never closed");
        let frame = match read_frame_body(&mut r, len).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "closing a connection");
                break;
            }
        };
        let tx = tx.clone();
        let handler = handler.clone();
        // Reap finished request tasks so the set does not grow without bound.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            let (id, resp) = match codec::decode::<Envelope<Request>>(&frame) {
                Ok(env) => {
                    drop(frame);
                    (env.id, handler.handle(env.body).await)
                }
                Err(e) => (
                    0,
                    Response::Failed(Error::Fatal(format!("bad request frame: {e}"))),
                ),
            };
            drop(held);
            let answer = encode_frame(&Envelope { id, body: resp }, MAX_FRAME_BYTES, || {
                "response".into()
            })
            .or_else(|e| {
                encode_frame(
                    &Envelope {
                        id,
                        body: Response::Failed(e),
                    },
                    MAX_FRAME_BYTES,
                    || "response".into(),
                )
            });
            if let Ok(bytes) = answer {
                let _ = tx.send(bytes).await;
            }
            drop(request);
        });
    }
    drop(tx);
    // Let in-flight requests finish and their answers drain; the set is aborted if this
    // connection task is aborted.
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
#[path = "net_tests.rs"]
mod tests;
