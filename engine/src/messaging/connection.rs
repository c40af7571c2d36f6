//! One authenticated connection with another process, after its handshake: the reading and
//! writing loops, and the credit and control state they share with the senders.
//!
//! **Writing**: senders queue encoded slot frames (batches, `Done`) in a bounded queue, after
//! taking a credit of the slot's window ([`Connection::take_credit`], the wait that makes
//! backpressure cross processes). Control frames — credit grants, pings and pongs, acks — are
//! never queued behind data: they are kept coalesced (one grant per slot, one XOR per ack root)
//! and written first whenever the writer wakes. So no reader ever waits on a writer, and two
//! processes sending to each other cannot deadlock on full queues.
//!
//! **Reading**: frames are decoded and handled at once, never waiting: a slot frame is checked
//! against the slot's credit and put into the slot's queue (`endpoints`), a grant wakes the
//! senders waiting for it, acks are XORed into the ack table, a ping is answered, a pong
//! completes its ping. A frame over the limit, a frame that does not decode, or a breach of
//! credit closes the connection with the reason.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use super::address::{ProcessId, SlotAddress};
use super::credit::{ReceiveWindow, SendWindow};
use super::endpoints::{CreditReturn, Delivered, Delivery, Endpoints, Inbound};
use super::error::MessagingError;
use super::frame::{self, AckUpdate, Frame, Refusal, ACKS_PER_FRAME};
use super::handshake::{is_too_large, FrameReader, FrameWriter};

/// Most pings (and pongs) of one connection waiting to be written; older ones are dropped
/// (their pinger sees no answer), so a peer pinging in a loop cannot grow memory.
const MAX_QUEUED_PINGS: usize = 64;

/// Acks waiting to go to one process, coalesced by root.
#[derive(Debug)]
pub(crate) struct OutgoingAcks {
    pending: HashMap<u64, u64>,
    limit: usize,
    /// Updates dropped because `limit` roots were already waiting.
    pub dropped: u64,
}

impl OutgoingAcks {
    /// Holds at most `limit` roots.
    pub(crate) fn new(limit: usize) -> Self {
        OutgoingAcks {
            pending: HashMap::new(),
            limit,
            dropped: 0,
        }
    }

    /// XORs an update in; false if it was dropped (too many roots waiting: its tree will
    /// expire and be replayed).
    pub(crate) fn add(&mut self, root: u64, xor: u64) -> bool {
        let full = self.pending.len() >= self.limit;
        match self.pending.get_mut(&root) {
            Some(v) => {
                *v ^= xor;
                if *v == 0 {
                    // Edges that cancel out tell the root nothing.
                    self.pending.remove(&root);
                }
                true
            }
            None if xor == 0 => true,
            None if full => {
                self.dropped += 1;
                false
            }
            None => {
                self.pending.insert(root, xor);
                true
            }
        }
    }

    /// True if no ack waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    fn drain(&mut self) -> Vec<AckUpdate> {
        self.pending
            .drain()
            .map(|(root, xor)| AckUpdate { root, xor })
            .collect()
    }
}

/// Gives a credit back unless disarmed (its frame was queued).
struct CreditGuard<'a> {
    connection: &'a Connection,
    slot: &'a SlotAddress,
    armed: bool,
}

impl Drop for CreditGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let c = self.connection;
            c.send_window.lock().expect("send window").untake(self.slot);
            c.credit_granted.notify_waiters();
        }
    }
}

/// Removes a ping from the pings waiting for their pong when its wait ends.
struct PingGuard<'a> {
    pings: &'a Mutex<HashMap<u64, oneshot::Sender<()>>>,
    seq: u64,
}

impl Drop for PingGuard<'_> {
    fn drop(&mut self) {
        self.pings.lock().expect("pings").remove(&self.seq);
    }
}

/// Control frames waiting to be written.
#[derive(Debug)]
struct Control {
    receive: ReceiveWindow<SlotAddress>,
    pings: VecDeque<u64>,
    pongs: VecDeque<u64>,
}

/// One connection with another process.
#[derive(Debug)]
pub(crate) struct Connection {
    /// The other process.
    pub(crate) peer: ProcessId,
    /// Its address (as connected).
    pub(crate) addr: SocketAddr,
    /// Unique within the messenger: tells a replaced connection from its successor.
    pub(crate) id: u64,
    /// This process dialled it.
    pub(crate) dialled: bool,
    data: mpsc::Sender<Bytes>,
    send_window: Mutex<SendWindow<SlotAddress>>,
    credit_granted: Notify,
    control: Mutex<Control>,
    control_ready: Notify,
    acks_out: Arc<Mutex<OutgoingAcks>>,
    bytes: Arc<ByteCounts>,
    pings: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    next_ping: std::sync::atomic::AtomicU64,
    closed: CancellationToken,
}

/// How a connection is made: who, where, and its windows and queue.
#[derive(Debug)]
pub(crate) struct ConnectionSpec {
    pub peer: ProcessId,
    pub addr: SocketAddr,
    pub id: u64,
    pub dialled: bool,
    /// The credit window the peer grants us per slot.
    pub send_window: u32,
    /// The credit window we grant the peer per slot.
    pub receive_window: u32,
    /// Slot frames queued for writing at most.
    pub queue_frames: usize,
    /// Acks waiting for the peer (shared by its successive connections).
    pub acks_out: Arc<Mutex<OutgoingAcks>>,
    /// The messenger's byte counters (written, read), length prefixes included.
    pub bytes: Arc<ByteCounts>,
}

/// Bytes written and read by a messenger's connections, length prefixes included.
#[derive(Debug, Default)]
pub(crate) struct ByteCounts {
    pub written: std::sync::atomic::AtomicU64,
    pub read: std::sync::atomic::AtomicU64,
}

/// The length prefix of every frame.
const PREFIX_BYTES: u64 = 4;

impl Connection {
    /// A connection and the receiving end of its data queue (for [`run`](Self::run)).
    pub(crate) fn new(spec: ConnectionSpec) -> (Arc<Connection>, mpsc::Receiver<Bytes>) {
        let (data, rx) = mpsc::channel(spec.queue_frames.max(1));
        let c = Connection {
            peer: spec.peer,
            addr: spec.addr,
            id: spec.id,
            dialled: spec.dialled,
            data,
            send_window: Mutex::new(SendWindow::new(spec.send_window)),
            credit_granted: Notify::new(),
            control: Mutex::new(Control {
                receive: ReceiveWindow::new(spec.receive_window),
                pings: VecDeque::new(),
                pongs: VecDeque::new(),
            }),
            control_ready: Notify::new(),
            acks_out: spec.acks_out,
            bytes: spec.bytes,
            pings: Mutex::new(HashMap::new()),
            next_ping: std::sync::atomic::AtomicU64::new(0),
            closed: CancellationToken::new(),
        };
        (Arc::new(c), rx)
    }

    /// True once the connection is closed (or closing).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Cancelled when the connection closes.
    pub(crate) fn closed_token(&self) -> &CancellationToken {
        &self.closed
    }

    /// Closes the connection: its loops end and the socket is dropped.
    pub(crate) fn close(&self) {
        self.closed.cancel();
    }

    /// Sends an encoded slot frame (a batch or a `Done` for `slot`): takes one credit of the
    /// slot, waiting for a grant if its window is used up, then queues the frame for writing,
    /// waiting while the queue is full. Returns whether it had to wait for credit; `Err` if the
    /// connection closed first (the frame was not sent). Cancel-safe: dropped before the frame
    /// is queued, it gives its credit back.
    pub(crate) async fn send_slot(&self, slot: &SlotAddress, bytes: Bytes) -> Result<bool, ()> {
        let waited = self.take_credit(slot).await?;
        let mut credit = CreditGuard {
            connection: self,
            slot,
            armed: true,
        };
        let queued = tokio::select! {
            r = self.data.send(bytes) => r.is_ok(),
            _ = self.closed.cancelled() => false,
        };
        if !queued {
            return Err(());
        }
        credit.armed = false;
        Ok(waited)
    }

    /// Takes one credit for a message to `slot`, waiting for a grant if its window is used up.
    /// Returns whether it had to wait; `Err` if the connection closed meanwhile.
    async fn take_credit(&self, slot: &SlotAddress) -> Result<bool, ()> {
        let mut waited = false;
        loop {
            let granted = self.credit_granted.notified();
            tokio::pin!(granted);
            granted.as_mut().enable();
            if self.is_closed() {
                return Err(());
            }
            if self.send_window.lock().expect("send window").try_take(slot) {
                return Ok(waited);
            }
            waited = true;
            tokio::select! {
                _ = granted => {}
                _ = self.closed.cancelled() => return Err(()),
            }
        }
    }

    /// Messages to `slot` sent and not yet granted back.
    pub(crate) fn in_flight(&self, slot: &SlotAddress) -> u32 {
        self.send_window
            .lock()
            .expect("send window")
            .in_flight(slot)
    }

    /// Wakes the writer to send acks waiting for this peer.
    pub(crate) fn acks_waiting(&self) {
        self.control_ready.notify_one();
    }

    /// Sends a ping and waits for its pong: the round trip. `Err` if the connection closes
    /// first (or the ping was dropped from a full ping queue).
    pub(crate) async fn ping(&self) -> Result<Duration, ()> {
        let seq = self.next_ping.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pings.lock().expect("pings").insert(seq, tx);
        // However the wait ends (a pong, a close, the caller giving up), the ping is forgotten.
        let _forget = PingGuard {
            pings: &self.pings,
            seq,
        };
        {
            let mut c = self.control.lock().expect("control");
            if c.pings.len() >= MAX_QUEUED_PINGS {
                if let Some(old) = c.pings.pop_front() {
                    self.pings.lock().expect("pings").remove(&old);
                }
            }
            c.pings.push_back(seq);
        }
        let start = Instant::now();
        self.control_ready.notify_one();
        tokio::select! {
            r = rx => r.map(|()| start.elapsed()).map_err(|_| ()),
            _ = self.closed.cancelled() => Err(()),
        }
    }

    /// Runs the connection until it closes: `Ok` for a clean end (the peer closed it, or this
    /// process did), `Err` with the reason otherwise.
    pub(crate) async fn run(
        self: Arc<Self>,
        reader: FrameReader,
        writer: FrameWriter,
        data: mpsc::Receiver<Bytes>,
        endpoints: Arc<Endpoints>,
    ) -> Result<(), MessagingError> {
        let me = self.clone();
        let writing = tokio::spawn(async move {
            let r = me.write_loop(writer, data).await;
            me.close();
            r
        });
        let read = self.read_loop(reader, &endpoints).await;
        self.close();
        let write = writing.await.unwrap_or_else(|e| {
            Err(MessagingError::Closed {
                process: self.peer,
                source: Some(std::io::Error::other(e)),
            })
        });
        // Pings waiting for an answer get none.
        self.pings.lock().expect("pings").clear();
        read.and(write)
    }

    async fn read_loop(
        self: &Arc<Self>,
        mut reader: FrameReader,
        endpoints: &Endpoints,
    ) -> Result<(), MessagingError> {
        loop {
            let next = tokio::select! {
                biased;
                _ = self.closed.cancelled() => return Ok(()),
                next = reader.next() => next,
            };
            let bytes = match next {
                None => return Ok(()),
                Some(Err(e)) if is_too_large(&e) => {
                    return Err(MessagingError::Refused {
                        process: Some(self.peer),
                        addr: self.addr,
                        by_peer: false,
                        reason: Refusal::FrameTooLarge {
                            limit: reader.decoder().max_frame_length(),
                        },
                    })
                }
                Some(Err(e)) => {
                    return Err(MessagingError::Closed {
                        process: self.peer,
                        source: Some(e),
                    })
                }
                Some(Ok(bytes)) => bytes,
            };
            self.bytes
                .read
                .fetch_add(bytes.len() as u64 + PREFIX_BYTES, Ordering::Relaxed);
            let frame =
                frame::decode::<Frame>(&bytes).map_err(|message| MessagingError::Malformed {
                    process: self.peer,
                    context: "frame",
                    message,
                })?;
            self.handle(frame, endpoints)?;
        }
    }

    fn handle(self: &Arc<Self>, frame: Frame, endpoints: &Endpoints) -> Result<(), MessagingError> {
        let (slot, delivery) = match frame {
            Frame::Batch(batch) => (
                batch.to.clone(),
                Delivery::Batch {
                    process: self.peer,
                    batch,
                },
            ),
            Frame::Done(done) => (
                done.to.clone(),
                Delivery::Done {
                    process: self.peer,
                    done,
                },
            ),
            Frame::Credit { slot, batches } => {
                self.send_window
                    .lock()
                    .expect("send window")
                    .grant(&slot, batches)
                    .map_err(|source| MessagingError::Credit {
                        process: self.peer,
                        slot,
                        source,
                    })?;
                self.credit_granted.notify_waiters();
                return Ok(());
            }
            Frame::Acks(updates) => {
                endpoints.apply_acks(updates.into_iter().map(|u| (u.root, u.xor)));
                return Ok(());
            }
            Frame::Ping { seq } => {
                let mut c = self.control.lock().expect("control");
                if c.pongs.len() >= MAX_QUEUED_PINGS {
                    c.pongs.pop_front();
                }
                c.pongs.push_back(seq);
                drop(c);
                self.control_ready.notify_one();
                return Ok(());
            }
            Frame::Pong { seq } => {
                if let Some(tx) = self.pings.lock().expect("pings").remove(&seq) {
                    let _ = tx.send(());
                }
                return Ok(());
            }
        };
        self.control
            .lock()
            .expect("control")
            .receive
            .arrive(&slot)
            .map_err(|source| MessagingError::Credit {
                process: self.peer,
                slot: slot.clone(),
                source,
            })?;
        if matches!(delivery, Delivery::Batch { .. }) && super::drop_point::drop_this_batch() {
            tracing::warn!(process = %self.peer, %slot, "test hook: an incoming batch was dropped");
            self.consumed(&slot);
            return Ok(());
        }
        let connection: Arc<dyn CreditReturn> = self.clone();
        let inbound = Inbound {
            delivery,
            connection: Arc::downgrade(&connection),
        };
        match endpoints.deliver(&slot, inbound) {
            Delivered::Queued => Ok(()),
            Delivered::NoSlot => {
                // The slot was open here and closed (the sender's run is stale): the message
                // is dropped and its credit given back; its ack tree expires and the input
                // replays it.
                endpoints.misaddressed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(process = %self.peer, %slot, "a message for a slot closed here was dropped");
                self.consumed(&slot);
                Ok(())
            }
            Delivered::Full => Err(MessagingError::Credit {
                process: self.peer,
                slot,
                source: super::credit::CreditError::Exceeded {
                    window: self.control.lock().expect("control").receive.window(),
                },
            }),
        }
    }

    async fn write_loop(
        &self,
        mut writer: FrameWriter,
        mut data: mpsc::Receiver<Bytes>,
    ) -> Result<(), MessagingError> {
        let io = |e: std::io::Error| MessagingError::Closed {
            process: self.peer,
            source: Some(e),
        };
        loop {
            // Control first, then whatever data is queued, in one flush.
            let control = self.control_frames();
            for f in control {
                let bytes = frame::encode(&f);
                self.count_written(&bytes);
                writer.feed(bytes).await.map_err(io)?;
            }
            SinkExt::<Bytes>::flush(&mut writer).await.map_err(io)?;
            tokio::select! {
                biased;
                _ = self.closed.cancelled() => return Ok(()),
                _ = self.control_ready.notified() => {}
                bytes = data.recv() => {
                    let Some(bytes) = bytes else { return Ok(()) };
                    self.count_written(&bytes);
                    writer.feed(bytes).await.map_err(io)?;
                    // More that is ready goes in the same flush (a bounded number, so control
                    // frames are not held back long).
                    for _ in 0..16 {
                        match data.try_recv() {
                            Ok(bytes) => {
                                self.count_written(&bytes);
                                writer.feed(bytes).await.map_err(io)?
                            }
                            Err(_) => break,
                        }
                    }
                }
            }
        }
    }

    fn count_written(&self, frame: &Bytes) {
        self.bytes
            .written
            .fetch_add(frame.len() as u64 + PREFIX_BYTES, Ordering::Relaxed);
    }

    /// The control frames to write now (taken: they count as sent).
    fn control_frames(&self) -> Vec<Frame> {
        let mut frames = Vec::new();
        {
            let mut c = self.control.lock().expect("control");
            for (slot, batches) in c.receive.take_grants() {
                frames.push(Frame::Credit { slot, batches });
            }
            frames.extend(c.pongs.drain(..).map(|seq| Frame::Pong { seq }));
            frames.extend(c.pings.drain(..).map(|seq| Frame::Ping { seq }));
        }
        let acks = self.acks_out.lock().expect("acks").drain();
        for chunk in acks.chunks(ACKS_PER_FRAME) {
            frames.push(Frame::Acks(chunk.to_vec()));
        }
        frames
    }
}

impl CreditReturn for Connection {
    /// The local consumer took a message of `slot` that came by this connection: its credit
    /// goes back.
    fn consumed(&self, slot: &SlotAddress) {
        self.control.lock().expect("control").receive.consume(slot);
        self.control_ready.notify_one();
    }
}
