//! [`Messenger`]: one process's end of messaging with the others — its listener, its
//! connections (one per pair of processes, re-dialled with backoff when one drops), sending
//! batches with credit, the local slots' queues, acks and pings.
//!
//! Connections are made on demand: the first send, ack or ping to a process dials it (at the
//! address given with [`Messenger::set_address`]), unless it dialled first; when both dial at
//! once the lower process id's dial is kept (`link`). A connection that drops is dialled again
//! by the next send, with backoff (from `redial_min` doubling to `redial_max`) while the other
//! process cannot be reached. A refusal that only a change of configuration can fix (another
//! secret, another protocol version, another process at the address) is returned at once.
//!
//! What is sent on a connection that drops before the other end takes it is lost: batches
//! delivered to a slot arrive in order per sending process, but a drop can leave a gap. The ack
//! trees make that safe: the lost batch's tree never completes, expires after
//! `pending_timeout`, and the input replays it (the dedup filter drops what was applied twice).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::ack_tree::AckTreeError;
use super::address::{ProcessId, SlotAddress};
use super::connection::{ByteCounts, Connection, ConnectionSpec, OutgoingAcks};
use super::endpoints::{AckTable, Endpoints, SlotReceiver};
use super::error::MessagingError;
use super::frame::{self, Batch, Done, Frame, Refusal, DEFAULT_MAX_FRAME_BYTES, PROTOCOL_VERSION};
use super::handshake::{self, HandshakeError, Identity, PeerIdentity};
use super::link::{admit, LinkState};
use sardonyx_state_log::ClusterSecret;

/// How a messenger listens, authenticates, grants credit and re-dials.
#[derive(Debug, Clone)]
pub struct MessengerConfig {
    /// This process's id.
    pub process: ProcessId,
    /// The address to listen on (port 0: any free port, see [`Messenger::local_addr`]).
    pub listen: SocketAddr,
    /// The cluster secret; without one on both ends, connections are open.
    pub secret: Option<ClusterSecret>,
    /// Messages (batches or `Done`) a sender may have in flight per destination slot before
    /// this process's consumer takes them (default 4).
    pub credit_per_slot: u32,
    /// Largest frame after the handshake, in bytes; checked before a frame is read.
    pub max_frame_bytes: usize,
    /// Slot frames queued for writing per connection (default 16).
    pub queue_frames: usize,
    /// Connections accepted at once (default 256); a slot's queue holds
    /// `credit_per_slot × max_connections` messages at most.
    pub max_connections: usize,
    /// Time a connection has to complete its handshake (default 5 s).
    pub handshake_timeout: Duration,
    /// First wait before dialling an unreachable process again (default 20 ms).
    pub redial_min: Duration,
    /// Longest wait between dials (default 2 s).
    pub redial_max: Duration,
    /// Age at which a pending ack tree expires (default 60 s).
    pub pending_timeout: Duration,
    /// Ack roots waiting to be sent to one process at most (default 1 Mi); past it, acks are
    /// dropped (their trees expire and are replayed).
    pub max_pending_acks: usize,
}

impl MessengerConfig {
    /// The defaults, for process `process` listening on `listen`, without a secret.
    pub fn new(process: ProcessId, listen: SocketAddr) -> Self {
        MessengerConfig {
            process,
            listen,
            secret: None,
            credit_per_slot: 4,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            queue_frames: 16,
            max_connections: 256,
            handshake_timeout: Duration::from_secs(5),
            redial_min: Duration::from_millis(20),
            redial_max: Duration::from_secs(2),
            pending_timeout: Duration::from_secs(60),
            max_pending_acks: 1 << 20,
        }
    }
}

/// Something that happened to a messenger's connections (see [`Messenger::events`]).
#[derive(Debug, Clone)]
pub enum LinkEvent {
    /// A connection with `process` is up.
    Connected {
        /// The other process.
        process: ProcessId,
        /// This process dialled it.
        dialled: bool,
    },
    /// The connection with `process` closed: cleanly (`error: None`) or for a reason.
    Disconnected {
        /// The other process.
        process: ProcessId,
        /// Why, if not a clean close.
        error: Option<Arc<MessagingError>>,
    },
    /// A dial failed in a way worth trying again (the process unreachable, the connection
    /// broken, a duplicate); the dialler tries again after a backoff.
    DialFailed {
        /// The process dialled.
        process: ProcessId,
        /// Why.
        error: Arc<MessagingError>,
    },
    /// A handshake was refused, by this process or by the other end.
    Refused {
        /// The other end's address.
        addr: SocketAddr,
        /// The other process, if it said who it is.
        process: Option<ProcessId>,
        /// True if the other end refused.
        by_peer: bool,
        /// Why.
        reason: Refusal,
    },
}

/// Counters of one messenger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessengerStats {
    /// Slot messages (batches and `Done`) sent.
    pub sent: u64,
    /// Of those, the ones that had to wait for credit.
    pub credit_waits: u64,
    /// Messages dropped on arrival because their slot was not open here.
    pub misaddressed: u64,
    /// Connections made (dialled or accepted).
    pub connections: u64,
    /// Dials that failed and were tried again.
    pub failed_dials: u64,
    /// Bytes written to connections after their handshakes (length prefixes included).
    pub bytes_written: u64,
    /// Bytes read from connections after their handshakes (length prefixes included).
    pub bytes_read: u64,
}

/// One process's connections with the others.
#[derive(Debug)]
enum Link {
    Idle,
    Dialing,
    Up(Arc<Connection>),
}

#[derive(Debug)]
struct Peer {
    addr: Option<SocketAddr>,
    link: Link,
    /// Woken when `link` changes.
    changed: Arc<Notify>,
    acks: Arc<Mutex<OutgoingAcks>>,
    /// A task is bringing up the connection that waiting acks need.
    acks_connecting: bool,
}

impl Peer {
    fn state(&self) -> LinkState {
        match &self.link {
            Link::Idle => LinkState::Idle,
            Link::Dialing => LinkState::Dialing,
            Link::Up(c) if c.is_closed() => LinkState::Idle,
            Link::Up(_) => LinkState::Up,
        }
    }
}

#[derive(Debug)]
struct Inner {
    config: MessengerConfig,
    version: u32,
    local_addr: SocketAddr,
    peers: Mutex<HashMap<ProcessId, Peer>>,
    endpoints: Arc<Endpoints>,
    events: broadcast::Sender<LinkEvent>,
    next_connection: AtomicU64,
    sent: AtomicU64,
    credit_waits: AtomicU64,
    connections_made: AtomicU64,
    failed_dials: AtomicU64,
    bytes: Arc<ByteCounts>,
    shutdown: CancellationToken,
    /// Cancelled once the listener is closed.
    stopped: CancellationToken,
}

/// Shuts the messenger down when the last handle drops.
#[derive(Debug)]
struct Owner(CancellationToken);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A process's end of messaging with the other processes of the cluster. Cheap to clone; the
/// last clone dropped (or [`shutdown`](Self::shutdown)) closes the listener and every
/// connection.
#[derive(Debug, Clone)]
pub struct Messenger {
    inner: Arc<Inner>,
    _owner: Arc<Owner>,
}

impl Messenger {
    /// Listens on `config.listen` and starts accepting connections.
    pub async fn bind(config: MessengerConfig) -> Result<Messenger, MessagingError> {
        Self::bind_speaking(config, PROTOCOL_VERSION).await
    }

    /// [`bind`](Self::bind), speaking protocol `version` (tests of a version mismatch).
    pub(crate) async fn bind_speaking(
        config: MessengerConfig,
        version: u32,
    ) -> Result<Messenger, MessagingError> {
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| MessagingError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| MessagingError::Listen {
                addr: config.listen,
                source,
            })?;
        let queue_capacity =
            (config.credit_per_slot.max(1) as usize).saturating_mul(config.max_connections.max(1));
        let shutdown = CancellationToken::new();
        let inner = Arc::new(Inner {
            endpoints: Arc::new(Endpoints::new(queue_capacity, config.pending_timeout)),
            config,
            version,
            local_addr,
            peers: Mutex::new(HashMap::new()),
            events: broadcast::channel(256).0,
            next_connection: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            credit_waits: AtomicU64::new(0),
            connections_made: AtomicU64::new(0),
            failed_dials: AtomicU64::new(0),
            bytes: Arc::new(ByteCounts::default()),
            shutdown: shutdown.clone(),
            stopped: CancellationToken::new(),
        });
        tokio::spawn(inner.clone().accept_loop(listener));
        Ok(Messenger {
            inner,
            _owner: Arc::new(Owner(shutdown)),
        })
    }

    /// This process's id.
    pub fn process(&self) -> ProcessId {
        self.inner.config.process
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Records where process `process` listens (from the coordination replica).
    pub fn set_address(&self, process: ProcessId, addr: SocketAddr) {
        let mut peers = self.inner.peers();
        peers
            .entry(process)
            .or_insert_with(|| self.inner.new_peer(None))
            .addr = Some(addr);
    }

    /// Forgets process `process` (it left the cluster): its connection is closed, and sends to
    /// it fail with [`MessagingError::UnknownProcess`] until its address is set again.
    pub fn forget(&self, process: ProcessId) {
        let peer = self.inner.peers().remove(&process);
        if let Some(peer) = peer {
            if let Link::Up(c) = &peer.link {
                c.close();
            }
            peer.changed.notify_waiters();
        }
    }

    /// Closes the connection with `process`, if any (the next send dials again).
    pub fn disconnect(&self, process: ProcessId) {
        if let Some(Link::Up(c)) = self.inner.peers().get(&process).map(|p| &p.link) {
            c.close();
        }
    }

    /// True if a connection with `process` is up.
    pub fn is_connected(&self, process: ProcessId) -> bool {
        self.inner
            .peers()
            .get(&process)
            .is_some_and(|p| p.state() == LinkState::Up)
    }

    /// Connects to `process` (or waits for the connection it is making to us).
    pub async fn connect(&self, process: ProcessId) -> Result<(), MessagingError> {
        self.inner.connection(process).await.map(|_| ())
    }

    /// Opens the queue of local slot `slot`: batches and `Done`s sent to it by other processes
    /// arrive there, beginning with those that arrived before it opened (parked, their credit
    /// held: a sender may start before the receiver). Dropping the receiver closes it (later
    /// messages for it are dropped and counted as misaddressed).
    pub fn open_slot(&self, slot: SlotAddress) -> Result<SlotReceiver, MessagingError> {
        self.inner
            .endpoints
            .open_slot(slot.clone())
            .ok_or(MessagingError::SlotAlreadyOpen(slot))
    }

    /// Forgets the slots `stale` picks that are not open here: messages parked for them are
    /// dropped, and closed ones are no longer remembered (a message for them would park
    /// again). For slots of a superseded run, whose senders are gone.
    pub fn discard_slots(&self, stale: impl Fn(&SlotAddress) -> bool) {
        self.inner.endpoints.discard(stale);
    }

    /// Sends a batch to its slot in process `to`, waiting for the slot's credit (the
    /// backpressure of a slow consumer there) and for a connection (dialled, with backoff,
    /// until it is made, `to` is forgotten or the messenger shuts down).
    pub async fn send_batch(&self, to: ProcessId, batch: Batch) -> Result<(), MessagingError> {
        let slot = batch.to.clone();
        let bytes = self.inner.encode(&Frame::Batch(batch))?;
        self.inner.send_slot_frame(to, &slot, bytes).await
    }

    /// Tells slot `done.to` in process `to` that `done.from` has finished; behind the sender's
    /// batches, with credit like them.
    pub async fn send_done(&self, to: ProcessId, done: Done) -> Result<(), MessagingError> {
        let slot = done.to.clone();
        let bytes = self.inner.encode(&Frame::Done(done))?;
        self.inner.send_slot_frame(to, &slot, bytes).await
    }

    /// Sends an ack-tree update to the process that holds the tree's root (this one included),
    /// without waiting: updates are XORed together per root until the connection writes them.
    pub fn send_ack(&self, to: ProcessId, root: u64, xor: u64) -> Result<(), MessagingError> {
        if to == self.process() {
            self.inner.endpoints.apply_acks([(root, xor)]);
            return Ok(());
        }
        let (connection, dial) = {
            let mut peers = self.inner.peers();
            let peer = peers
                .get_mut(&to)
                .ok_or(MessagingError::UnknownProcess(to))?;
            if !peer.acks.lock().expect("acks").add(root, xor) {
                tracing::warn!(process = %to, root, "too many acks waiting: one was dropped");
            }
            match &peer.link {
                Link::Up(c) if !c.is_closed() => (Some(c.clone()), false),
                // One task at most per process brings the connection the acks wait for.
                _ => (None, !std::mem::replace(&mut peer.acks_connecting, true)),
            }
        };
        if let Some(c) = connection {
            c.acks_waiting();
        } else if dial {
            self.inner.connect_for_acks(to);
        }
        Ok(())
    }

    /// Pings `process` and waits for its pong: the round-trip time. Fails if the connection
    /// cannot be made or closes first. (Callers bound the wait: a failure detector's timeout.)
    pub async fn ping(&self, process: ProcessId) -> Result<Duration, MessagingError> {
        let c = self.inner.connection(process).await?;
        c.ping().await.map_err(|()| MessagingError::Closed {
            process,
            source: None,
        })
    }

    /// Starts the ack tree of an input batch read here, with root `root`
    /// ([`random_id`](super::random_id)).
    pub fn start_tree(&self, root: u64) -> Result<(), AckTreeError> {
        self.inner.endpoints.acks().start(root, Instant::now())
    }

    /// The process's ack-tree table (locked; keep it short).
    pub fn ack_table(&self) -> std::sync::MutexGuard<'_, AckTable> {
        self.inner.endpoints.acks()
    }

    /// Waits until at least one ack tree has completed, and returns the roots that did.
    pub async fn completed_trees(&self) -> Vec<u64> {
        loop {
            let notified = self.inner.endpoints.completed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let done = self.inner.endpoints.acks().take_completed();
            if !done.is_empty() {
                return done;
            }
            notified.await;
        }
    }

    /// What happens to the connections from now on (a bounded channel: a receiver that falls
    /// behind misses events and is told so).
    pub fn events(&self) -> broadcast::Receiver<LinkEvent> {
        self.inner.events.subscribe()
    }

    /// The messenger's counters.
    pub fn stats(&self) -> MessengerStats {
        let i = &self.inner;
        MessengerStats {
            sent: i.sent.load(Ordering::Relaxed),
            credit_waits: i.credit_waits.load(Ordering::Relaxed),
            misaddressed: i.endpoints.misaddressed.load(Ordering::Relaxed),
            connections: i.connections_made.load(Ordering::Relaxed),
            failed_dials: i.failed_dials.load(Ordering::Relaxed),
            bytes_written: i.bytes.written.load(Ordering::Relaxed),
            bytes_read: i.bytes.read.load(Ordering::Relaxed),
        }
    }

    /// Messages to `slot` of process `to` sent on the current connection and not yet taken by
    /// their consumer there (0 without a connection).
    pub fn in_flight(&self, to: ProcessId, slot: &SlotAddress) -> u32 {
        match self.inner.peers().get(&to).map(|p| &p.link) {
            Some(Link::Up(c)) => c.in_flight(slot),
            _ => 0,
        }
    }

    /// Closes the listener, every connection and every slot's queue.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// Waits until the messenger is shut down and its listener closed (its port is free).
    pub async fn stopped(&self) {
        self.inner.stopped.cancelled().await;
    }
}

impl Inner {
    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<ProcessId, Peer>> {
        self.peers.lock().expect("peers lock")
    }

    fn new_peer(&self, addr: Option<SocketAddr>) -> Peer {
        Peer {
            addr,
            link: Link::Idle,
            changed: Arc::new(Notify::new()),
            acks: Arc::new(Mutex::new(OutgoingAcks::new(self.config.max_pending_acks))),
            acks_connecting: false,
        }
    }

    fn identity(&self) -> Identity<'_> {
        Identity {
            version: self.version,
            process: self.config.process,
            secret: self.config.secret.as_ref(),
            window: self.config.credit_per_slot.max(1),
        }
    }

    fn emit(&self, event: LinkEvent) {
        // No subscriber is fine.
        let _ = self.events.send(event);
    }

    fn encode(&self, frame: &Frame) -> Result<Bytes, MessagingError> {
        let bytes = frame::encode(frame);
        if bytes.len() > self.config.max_frame_bytes {
            return Err(MessagingError::FrameTooLarge {
                what: frame.kind(),
                bytes: bytes.len(),
                limit: self.config.max_frame_bytes,
            });
        }
        Ok(bytes)
    }

    async fn send_slot_frame(
        self: &Arc<Self>,
        to: ProcessId,
        slot: &SlotAddress,
        bytes: Bytes,
    ) -> Result<(), MessagingError> {
        if to == self.config.process {
            return Err(MessagingError::Refused {
                process: Some(to),
                addr: self.local_addr,
                by_peer: false,
                reason: Refusal::SameProcess(to),
            });
        }
        loop {
            let c = self.connection(to).await?;
            // A connection that closed meanwhile did not send it: the next one will.
            if let Ok(waited) = c.send_slot(slot, bytes.clone()).await {
                self.sent.fetch_add(1, Ordering::Relaxed);
                if waited {
                    self.credit_waits.fetch_add(1, Ordering::Relaxed);
                }
                return Ok(());
            }
        }
    }

    /// The open connection with `to`: the current one, the one being made, or a new dial
    /// (again and again with backoff while `to` cannot be reached).
    async fn connection(
        self: &Arc<Self>,
        to: ProcessId,
    ) -> Result<Arc<Connection>, MessagingError> {
        let mut backoff = self.config.redial_min;
        loop {
            if self.shutdown.is_cancelled() {
                return Err(MessagingError::Shutdown);
            }
            let (changed, dial) = {
                let mut peers = self.peers();
                let peer = peers
                    .get_mut(&to)
                    .ok_or(MessagingError::UnknownProcess(to))?;
                match (&peer.link, peer.state()) {
                    (Link::Up(c), LinkState::Up) => return Ok(c.clone()),
                    (_, LinkState::Dialing) => {
                        // Another task is dialling: wait for its outcome, registered under the
                        // lock so that its notification cannot be missed.
                        let mut notified = Box::pin(peer.changed.clone().notified_owned());
                        notified.as_mut().enable();
                        (peer.changed.clone(), Err(notified))
                    }
                    _ => {
                        let addr = peer.addr.ok_or(MessagingError::UnknownProcess(to))?;
                        peer.link = Link::Dialing;
                        (peer.changed.clone(), Ok(addr))
                    }
                }
            };
            let addr = match dial {
                Ok(addr) => addr,
                Err(notified) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = self.shutdown.cancelled() => return Err(MessagingError::Shutdown),
                    }
                    continue;
                }
            };
            // The dial runs on its own task: a caller that gives up (a timeout around a send
            // or a ping) must not leave the link `Dialing` for ever.
            let inner = self.clone();
            let dialled = tokio::spawn(async move {
                let result = inner.dial(to, addr).await;
                inner.dial_ended(to, result)
            })
            .await
            .unwrap_or_else(|e| match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(_) => Err(MessagingError::Shutdown),
            });
            let failed = match dialled {
                Ok(c) => return Ok(c),
                Err(e) => e,
            };
            if !failed.is_retryable() {
                return Err(failed);
            }
            tracing::debug!(process = %to, error = %failed, ?backoff, "dial failed; again after a backoff");
            self.failed_dials.fetch_add(1, Ordering::Relaxed);
            self.emit(LinkEvent::DialFailed {
                process: to,
                error: Arc::new(failed),
            });
            // Wait out the backoff, or less if a connection comes in meanwhile (the other
            // process's dial, when ours was refused as a duplicate).
            let notified = changed.notified();
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = notified => {}
                _ = self.shutdown.cancelled() => return Err(MessagingError::Shutdown),
            }
            backoff = (backoff * 2).min(self.config.redial_max);
        }
    }

    /// Brings up a connection with `to` for the acks waiting for it, on a task of its own (the
    /// caller set `acks_connecting`: one such task per process at most).
    fn connect_for_acks(self: &Arc<Self>, to: ProcessId) {
        let inner = self.clone();
        tokio::spawn(async move {
            let connected = inner.connection(to).await;
            if let Some(peer) = inner.peers().get_mut(&to) {
                peer.acks_connecting = false;
            }
            if let Ok(c) = connected {
                c.acks_waiting();
            }
        });
    }

    /// Records how a dial of `to` ended: the new connection installed and started, or the
    /// link idle again (and a refusal published).
    fn dial_ended(
        self: &Arc<Self>,
        to: ProcessId,
        result: Result<Dialled, MessagingError>,
    ) -> Result<Arc<Connection>, MessagingError> {
        let mut peers = self.peers();
        let peer = peers.get_mut(&to);
        let failed = match (result, peer) {
            (Ok((c, r, w, rx)), Some(peer)) => {
                self.install(peer, c.clone());
                self.spawn_connection(c.clone(), r, w, rx, None);
                return Ok(c);
            }
            (Ok((c, ..)), None) => {
                // Forgotten while we dialled.
                c.close();
                return Err(MessagingError::UnknownProcess(to));
            }
            (Err(e), peer) => {
                if let Some(peer) = peer {
                    if matches!(peer.link, Link::Dialing) {
                        peer.link = Link::Idle;
                    }
                    peer.changed.notify_waiters();
                }
                e
            }
        };
        drop(peers);
        if let MessagingError::Refused {
            process,
            addr,
            by_peer,
            reason,
        } = &failed
        {
            self.emit(LinkEvent::Refused {
                addr: *addr,
                process: *process,
                by_peer: *by_peer,
                reason: reason.clone(),
            });
        }
        Err(failed)
    }

    /// Dials `to` at `addr` and runs the dialer's handshake.
    async fn dial(&self, to: ProcessId, addr: SocketAddr) -> Result<Dialled, MessagingError> {
        let timeout = self.config.handshake_timeout;
        let connect_error = |source| MessagingError::Connect {
            process: to,
            addr,
            source,
        };
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(connect_error(e)),
            Err(_) => return Err(connect_error(std::io::ErrorKind::TimedOut.into())),
        };
        let _ = stream.set_nodelay(true);
        let (mut r, mut w) = handshake::framed(stream);
        let peer = tokio::time::timeout(
            timeout,
            handshake::dial(&mut r, &mut w, self.identity(), to),
        )
        .await
        .map_err(|_| MessagingError::HandshakeTimeout { addr, timeout })?
        .map_err(|e| handshake_error(e, addr, to))?;
        handshake::open_up(&mut r, &mut w, self.config.max_frame_bytes);
        let acks_out = self
            .peers()
            .entry(peer.process)
            .or_insert_with(|| self.new_peer(None))
            .acks
            .clone();
        let (c, rx) = self.new_connection(acks_out, peer, addr, true);
        Ok((c, r, w, rx))
    }

    fn new_connection(
        &self,
        acks_out: Arc<Mutex<OutgoingAcks>>,
        peer: PeerIdentity,
        addr: SocketAddr,
        dialled: bool,
    ) -> (Arc<Connection>, tokio::sync::mpsc::Receiver<Bytes>) {
        Connection::new(ConnectionSpec {
            peer: peer.process,
            addr,
            id: self.next_connection.fetch_add(1, Ordering::Relaxed),
            dialled,
            send_window: peer.window,
            receive_window: self.config.credit_per_slot.max(1),
            queue_frames: self.config.queue_frames,
            acks_out,
            bytes: self.bytes.clone(),
        })
    }

    /// Makes `c` the peer's connection, closing any other.
    fn install(&self, peer: &mut Peer, c: Arc<Connection>) {
        if let Link::Up(old) = &peer.link {
            if old.id != c.id {
                old.close();
            }
        }
        peer.link = Link::Up(c.clone());
        peer.changed.notify_waiters();
        self.connections_made.fetch_add(1, Ordering::Relaxed);
        self.emit(LinkEvent::Connected {
            process: c.peer,
            dialled: c.dialled,
        });
        tracing::debug!(process = %c.peer, dialled = c.dialled, "connected");
    }

    /// Runs `c` until it closes, then forgets it (holding `permit`, if accepted, until then).
    fn spawn_connection(
        self: &Arc<Self>,
        c: Arc<Connection>,
        r: handshake::FrameReader,
        w: handshake::FrameWriter,
        rx: tokio::sync::mpsc::Receiver<Bytes>,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        let inner = self.clone();
        tokio::spawn(async move {
            let shutdown = inner.shutdown.clone();
            let watch = c.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = shutdown.cancelled() => watch.close(),
                    _ = watch.closed_token().cancelled() => {}
                }
            });
            let result = c.clone().run(r, w, rx, inner.endpoints.clone()).await;
            drop(permit);
            inner.ended(&c, result);
        });
    }

    fn ended(self: &Arc<Self>, c: &Connection, result: Result<(), MessagingError>) {
        let acks_waiting = {
            let mut peers = self.peers();
            match peers.get_mut(&c.peer) {
                Some(peer) => {
                    if matches!(&peer.link, Link::Up(now) if now.id == c.id) {
                        peer.link = Link::Idle;
                    }
                    peer.changed.notify_waiters();
                    let waiting = !peer.acks.lock().expect("acks").is_empty();
                    waiting
                        && peer.state() == LinkState::Idle
                        && !std::mem::replace(&mut peer.acks_connecting, true)
                }
                None => false,
            }
        };
        if acks_waiting && !self.shutdown.is_cancelled() {
            // Acks the closed connection did not write go on the next one.
            self.connect_for_acks(c.peer);
        }
        match &result {
            Ok(()) => tracing::debug!(process = %c.peer, "connection closed"),
            Err(e) => tracing::warn!(process = %c.peer, error = %e, "connection closed"),
        }
        self.emit(LinkEvent::Disconnected {
            process: c.peer,
            error: result.err().map(Arc::new),
        });
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        let permits = Arc::new(Semaphore::new(self.config.max_connections.max(1)));
        let stopped = self.stopped.clone().drop_guard();
        loop {
            let accepted = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((stream, addr)) => {
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        tracing::warn!(%addr, "too many connections: refused one");
                        continue;
                    };
                    tokio::spawn(self.clone().incoming(stream, addr, permit));
                }
                Err(e) => {
                    // Out of descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        drop(listener);
        self.endpoints.close_all();
        drop(stopped);
    }

    /// The listener's side of a new connection: handshake, admission, then running it.
    async fn incoming(
        self: Arc<Self>,
        stream: TcpStream,
        addr: SocketAddr,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let _ = stream.set_nodelay(true);
        let (mut r, mut w) = handshake::framed(stream);
        let timeout = self.config.handshake_timeout;
        let peer =
            match tokio::time::timeout(timeout, handshake::listen(&mut r, &mut w, self.identity()))
                .await
            {
                Ok(Ok(peer)) => peer,
                Ok(Err(HandshakeError::Refused {
                    peer,
                    by_peer,
                    reason,
                })) => {
                    tracing::warn!(%addr, %reason, by_peer, "connection refused");
                    self.emit(LinkEvent::Refused {
                        addr,
                        process: peer,
                        by_peer,
                        reason,
                    });
                    return;
                }
                Ok(Err(HandshakeError::Io(e))) => {
                    tracing::debug!(%addr, error = %e, "a connection broke during its handshake");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%addr, ?timeout, "a handshake timed out");
                    return;
                }
            };
        // Admission and installation in one critical section, so no dial of ours can start
        // in between.
        let admitted = {
            let mut peers = self.peers();
            let entry = peers
                .entry(peer.process)
                .or_insert_with(|| self.new_peer(None));
            match admit(self.config.process, peer.process, entry.state()) {
                Ok(()) => {
                    handshake::open_up(&mut r, &mut w, self.config.max_frame_bytes);
                    let (c, rx) = self.new_connection(entry.acks.clone(), peer, addr, false);
                    self.install(entry, c.clone());
                    Ok((c, rx))
                }
                Err(reason) => Err(reason),
            }
        };
        let (c, rx) = match admitted {
            Ok(c) => c,
            Err(reason) => {
                let _ = handshake::send(&mut w, &frame::Handshake::Refused(reason.clone())).await;
                tracing::debug!(%addr, process = %peer.process, %reason, "connection refused");
                self.emit(LinkEvent::Refused {
                    addr,
                    process: Some(peer.process),
                    by_peer: false,
                    reason,
                });
                return;
            }
        };
        if let Err(e) = handshake::accept(&mut w).await {
            tracing::debug!(%addr, error = %e, "the dialer left before its connection was accepted");
            c.close();
        }
        self.spawn_connection(c, r, w, rx, Some(permit));
    }
}

/// A dialled, authenticated connection not yet started: the connection, its two halves and
/// its data queue.
type Dialled = (
    Arc<Connection>,
    handshake::FrameReader,
    handshake::FrameWriter,
    tokio::sync::mpsc::Receiver<Bytes>,
);

/// A failed handshake as a [`MessagingError`].
fn handshake_error(e: HandshakeError, addr: SocketAddr, to: ProcessId) -> MessagingError {
    match e {
        HandshakeError::Io(source) => MessagingError::Closed {
            process: to,
            source: Some(source),
        },
        HandshakeError::Refused {
            peer,
            by_peer,
            reason,
        } => MessagingError::Refused {
            process: peer,
            addr,
            by_peer,
            reason,
        },
    }
}
