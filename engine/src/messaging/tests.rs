//! Messaging over real TCP on loopback: two or three messengers in one test process.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast;

use super::frame::{self, Frame, Handshake};
use super::handshake::{self, Identity};
use super::*;
use crate::mark::Mark;
use crate::segment::{Segment, Value};
use sardonyx_state_log::ClusterSecret;

/// Every test finishes well within this; it only bounds a wait that would otherwise hang.
const LIMIT: Duration = Duration::from_secs(10);

fn config(process: u64) -> MessengerConfig {
    MessengerConfig::new(ProcessId(process), "127.0.0.1:0".parse().unwrap())
}

async fn messenger(process: u64) -> Messenger {
    Messenger::bind(config(process)).await.unwrap()
}

/// Messengers that know each other's addresses.
fn introduce(all: &[&Messenger]) {
    for a in all {
        for b in all {
            if a.process() != b.process() {
                a.set_address(b.process(), b.local_addr());
            }
        }
    }
}

fn slot(n: u32) -> SlotAddress {
    SlotAddress::new("votes", "count", n)
}

/// Batch `n` from `from` to `to`: segments `n*10..n*10+3`, watermark `n`, one ack edge.
fn batch(to: SlotAddress, from: Sender, n: i64) -> Batch {
    let segments = (0..3)
        .map(|i| {
            let mut s = Segment::new();
            s.insert("n", Value::from(n * 10 + i));
            s
        })
        .collect();
    Batch {
        to,
        from,
        segments,
        mark: Mark {
            watermark: Some(n),
            idle: n % 7 == 0,
        },
        acks: vec![AckEdge {
            origin: ProcessId(1),
            root: 1000 + n as u64,
            id: 2000 + n as u64,
        }],
        seq: n as u64,
    }
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {LIMIT:?}"))
}

/// The next event that `pick` selects (others are skipped).
async fn event<T>(
    events: &mut broadcast::Receiver<LinkEvent>,
    mut pick: impl FnMut(&LinkEvent) -> Option<T>,
) -> T {
    within("an event", async {
        loop {
            let e = events.recv().await.expect("events");
            if let Some(t) = pick(&e) {
                return t;
            }
        }
    })
    .await
}

async fn recv(inbox: &mut SlotReceiver) -> Delivery {
    within("a delivery", inbox.recv()).await.expect("open")
}

/// Batches from two processes to two slots of a third arrive in order per (sender, slot),
/// intact (segments, marks, ack edges), each stream's `Done` after its batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_arrive_in_order_per_sender_and_slot_intact() {
    let (a, b, c) = (messenger(1).await, messenger(2).await, messenger(3).await);
    introduce(&[&a, &b, &c]);
    let inboxes = [b.open_slot(slot(0)).unwrap(), b.open_slot(slot(1)).unwrap()];
    // Each slot's consumer on its own (a sender waiting for one slot's credit waits for its
    // consumer, not for the other slot's).
    let check = |s: usize, mut inbox: SlotReceiver| async move {
        // Per sending process: the batch expected next, in order, then its Done.
        let mut next = [s as i64, s as i64];
        let mut done = [false, false];
        while !(done[0] && done[1]) {
            match recv(&mut inbox).await {
                Delivery::Batch {
                    process,
                    batch: got,
                } => {
                    let (i, task) = match process {
                        ProcessId(1) => (0, "read"),
                        ProcessId(3) => (1, "parse"),
                        other => panic!("from {other}"),
                    };
                    assert!(!done[i], "a batch after its stream's Done");
                    assert_eq!(got, batch(slot(s as u32), Sender::new(task, 0), next[i]));
                    next[i] += 2;
                }
                Delivery::Done { process, done: d } => {
                    let i = if process == ProcessId(1) { 0 } else { 1 };
                    assert_eq!(d.to, slot(s as u32));
                    assert_eq!(next[i], 30 + s as i64, "Done before every batch");
                    done[i] = true;
                }
            }
        }
        assert!(inbox.try_recv().is_none());
    };
    let send = |m: Messenger, task: &'static str| async move {
        for n in 0..30 {
            let to = slot((n % 2) as u32);
            m.send_batch(ProcessId(2), batch(to, Sender::new(task, 0), n))
                .await
                .unwrap();
        }
        for s in 0..2 {
            let done = Done {
                to: slot(s),
                from: Sender::new(task, 0),
                batches: 15,
            };
            m.send_done(ProcessId(2), done).await.unwrap();
        }
    };
    let senders = tokio::spawn(async move {
        tokio::join!(send(a.clone(), "read"), send(c.clone(), "parse"));
        (a, c)
    });
    let [zero, one] = inboxes;
    let checks = tokio::spawn(async move { tokio::join!(check(0, zero), check(1, one)) });
    within("the checks", checks).await.unwrap();
    let (a, c) = within("the senders", senders).await.unwrap();
    assert_eq!(a.stats().sent, 32);
    // A and C wrote only slot frames (they receive nothing, so grant nothing), and B has read
    // them all: the Done that ended each stream was their last frame.
    let written = a.stats().bytes_written + c.stats().bytes_written;
    assert!(written > 64 * 30, "{written}");
    assert_eq!(b.stats().bytes_read, written);
    assert_eq!(b.stats().misaddressed, 0);
}

/// Different secrets: the dialer refuses the listener's proof before proving its own, and
/// both ends report why. Without a secret on the dialer, the listener refuses it; with the
/// same secret, the connection is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_refused_on_both_sides_with_the_reason() {
    let secret = |s: &str| ClusterSecret::from_bytes(s.as_bytes());
    let with = |p, s| MessengerConfig {
        secret: secret(s),
        ..config(p)
    };
    let a = Messenger::bind(with(1, "the first secret, 32 bytes long!"))
        .await
        .unwrap();
    let b = Messenger::bind(with(2, "the other secret, just as long!!"))
        .await
        .unwrap();
    introduce(&[&a, &b]);
    let mut b_events = b.events();
    let e = within("a refusal", a.connect(ProcessId(2)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            MessagingError::Refused {
                process: Some(ProcessId(2)),
                by_peer: false,
                reason: Refusal::BadListenerProof,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(!e.is_retryable());
    let (by_peer, reason) = event(&mut b_events, |e| match e {
        LinkEvent::Refused {
            by_peer, reason, ..
        } => Some((*by_peer, reason.clone())),
        _ => None,
    })
    .await;
    assert_eq!((by_peer, reason), (true, Refusal::BadListenerProof));
    assert!(!a.is_connected(ProcessId(2)) && !b.is_connected(ProcessId(1)));

    // No secret at all against a listener that requires one.
    let open = messenger(3).await;
    open.set_address(ProcessId(2), b.local_addr());
    let e = within("a refusal", open.connect(ProcessId(2)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            MessagingError::Refused {
                by_peer: true,
                reason: Refusal::SecretRequired,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        std::error::Error::source(&e).unwrap().to_string(),
        "the listening process requires the cluster secret and the dialer has none (give --secret-file)"
    );
    let reason = event(&mut b_events, |e| match e {
        LinkEvent::Refused {
            by_peer: false,
            reason,
            ..
        } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert_eq!(reason, Refusal::SecretRequired);

    // A dialer that answers the challenge with a forged proof: the listener says so.
    let (mut r, mut w) = handshake::framed(TcpStream::connect(b.local_addr()).await.unwrap());
    let hello = Handshake::Hello {
        version: PROTOCOL_VERSION,
        process: ProcessId(9),
        has_secret: true,
        nonce: [7; 32],
        window: 4,
    };
    handshake::send(&mut w, &hello).await.unwrap();
    let challenge = frame::decode::<Handshake>(&r.next().await.unwrap().unwrap()).unwrap();
    assert_eq!(challenge.kind(), "Challenge");
    handshake::send(
        &mut w,
        &Handshake::Proof {
            proof: Some([0; 32]),
        },
    )
    .await
    .unwrap();
    let verdict = frame::decode::<Handshake>(&r.next().await.unwrap().unwrap()).unwrap();
    assert_eq!(verdict, Handshake::Refused(Refusal::WrongSecret));
    let reason = event(&mut b_events, |e| match e {
        LinkEvent::Refused {
            by_peer: false,
            reason,
            ..
        } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert_eq!(reason, Refusal::WrongSecret);

    // The same secret on both ends: connected.
    let c = Messenger::bind(with(4, "the other secret, just as long!!"))
        .await
        .unwrap();
    c.set_address(ProcessId(2), b.local_addr());
    within("a connection", c.connect(ProcessId(2)))
        .await
        .unwrap();
    within("a ping", c.ping(ProcessId(2))).await.unwrap();
}

/// A frame whose declared length is over the limit is refused and the connection closed
/// before its body is read — during the handshake (the small handshake limit) and after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_limit_is_refused_and_the_connection_closed() {
    let b = Messenger::bind(MessengerConfig {
        max_frame_bytes: 1 << 20,
        ..config(2)
    })
    .await
    .unwrap();
    let mut events = b.events();

    // Before the handshake: a 2 GiB length prefix and nothing else.
    let mut raw = TcpStream::connect(b.local_addr()).await.unwrap();
    raw.write_all(&0x8000_0000u32.to_be_bytes()).await.unwrap();
    let mut answer = Vec::new();
    within("the close", raw.read_to_end(&mut answer))
        .await
        .unwrap();
    // The refusal, as one frame, then the end of the stream.
    let len = u32::from_be_bytes(answer[..4].try_into().unwrap()) as usize;
    assert_eq!(answer.len(), 4 + len);
    assert_eq!(
        frame::decode::<Handshake>(&answer[4..]).unwrap(),
        Handshake::Refused(Refusal::FrameTooLarge {
            limit: frame::HANDSHAKE_FRAME_BYTES
        })
    );
    let reason = event(&mut events, |e| match e {
        LinkEvent::Refused { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        reason,
        Refusal::FrameTooLarge {
            limit: frame::HANDSHAKE_FRAME_BYTES
        }
    );

    // After a good handshake: a frame declaring 1 MiB + 1.
    let (mut r, mut w) = handshake::framed(TcpStream::connect(b.local_addr()).await.unwrap());
    let me = Identity {
        version: PROTOCOL_VERSION,
        process: ProcessId(9),
        secret: None,
        window: 4,
    };
    let peer = within(
        "a handshake",
        handshake::dial(&mut r, &mut w, me, ProcessId(2)),
    )
    .await
    .unwrap();
    assert_eq!(peer.process, ProcessId(2));
    assert_eq!(peer.window, 4);
    let mut raw = w.into_inner();
    raw.write_all(&((1u32 << 20) + 1).to_be_bytes())
        .await
        .unwrap();
    let error = event(&mut events, |e| match e {
        LinkEvent::Disconnected {
            process: ProcessId(9),
            error,
        } => Some(error.clone()),
        _ => None,
    })
    .await
    .expect("an error");
    assert!(
        matches!(&*error, MessagingError::Refused { reason: Refusal::FrameTooLarge { limit }, .. }
            if *limit == 1 << 20),
        "{error:?}"
    );
    // The connection is closed: the reading half sees its end.
    let mut raw_read = r.into_inner();
    let mut rest = Vec::new();
    within("the close", raw_read.read_to_end(&mut rest))
        .await
        .unwrap();
}

/// Processes speaking different protocol versions refuse each other, with both versions named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_mismatch_is_refused() {
    let a = Messenger::bind_speaking(config(1), PROTOCOL_VERSION + 1)
        .await
        .unwrap();
    let b = messenger(2).await;
    introduce(&[&a, &b]);
    let mut b_events = b.events();
    let e = within("a refusal", a.connect(ProcessId(2)))
        .await
        .unwrap_err();
    let version = Refusal::Version {
        dialer: PROTOCOL_VERSION + 1,
        listener: PROTOCOL_VERSION,
    };
    assert!(
        matches!(&e, MessagingError::Refused { by_peer: true, reason, .. } if *reason == version),
        "{e:?}"
    );
    assert_eq!(
        version.to_string(),
        "the dialer speaks messaging protocol version 3 and the listener version 2"
    );
    let reason = event(&mut b_events, |e| match e {
        LinkEvent::Refused {
            by_peer: false,
            reason,
            ..
        } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert_eq!(reason, version);
    // The other way round: the listener's version is checked by the dialer.
    let mut a_events = a.events();
    let e = within("a refusal", b.connect(ProcessId(1)))
        .await
        .unwrap_err();
    let version = Refusal::Version {
        dialer: PROTOCOL_VERSION,
        listener: PROTOCOL_VERSION + 1,
    };
    assert!(
        matches!(&e, MessagingError::Refused { by_peer: true, reason, .. } if *reason == version),
        "{e:?}"
    );
    let reason = event(&mut a_events, |e| match e {
        LinkEvent::Refused { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert_eq!(reason, version);

    // A hello of a later version whose layout is not ours is still refused by its version.
    let (mut r, mut w) = handshake::framed(TcpStream::connect(b.local_addr()).await.unwrap());
    let future_hello = frame::encode(&(0u32, 7u32, "a field we do not know", true));
    assert!(frame::decode::<Handshake>(&future_hello).is_err());
    w.send(future_hello).await.unwrap();
    let answer = frame::decode::<Handshake>(&r.next().await.unwrap().unwrap()).unwrap();
    assert_eq!(
        answer,
        Handshake::Refused(Refusal::Version {
            dialer: 7,
            listener: PROTOCOL_VERSION
        })
    );
    // A dialer granting no credit at all could never be sent to: refused.
    let (mut r, mut w) = handshake::framed(TcpStream::connect(b.local_addr()).await.unwrap());
    let me = Identity {
        version: PROTOCOL_VERSION,
        process: ProcessId(9),
        secret: None,
        window: 0,
    };
    let refused = handshake::dial(&mut r, &mut w, me, ProcessId(2)).await;
    assert!(
        matches!(&refused, Err(handshake::HandshakeError::Refused { by_peer: true,
            reason: Refusal::Protocol(m), .. }) if m == "a credit window of 0 batches"),
        "{refused:?}"
    );
}

/// A connection that drops is dialled again by the next send, and sending resumes; a process
/// that is down is dialled with backoff until it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_is_redialled_and_sending_resumes() {
    let (a, b) = (messenger(1).await, messenger(2).await);
    introduce(&[&a, &b]);
    let mut inbox = b.open_slot(slot(0)).unwrap();
    let mut a_events = a.events();
    let from = Sender::new("read", 0);
    a.send_batch(ProcessId(2), batch(slot(0), from.clone(), 0))
        .await
        .unwrap();
    assert!(matches!(recv(&mut inbox).await, Delivery::Batch { .. }));

    // The receiving end closes the connection.
    b.disconnect(ProcessId(1));
    event(&mut a_events, |e| {
        matches!(
            e,
            LinkEvent::Disconnected {
                process: ProcessId(2),
                ..
            }
        )
        .then_some(())
    })
    .await;
    a.send_batch(ProcessId(2), batch(slot(0), from.clone(), 1))
        .await
        .unwrap();
    match recv(&mut inbox).await {
        Delivery::Batch { batch: got, .. } => assert_eq!(got, batch(slot(0), from.clone(), 1)),
        other => panic!("{other:?}"),
    }
    assert_eq!(a.stats().connections, 2);

    // The receiving process goes away; a send waits, dialling with backoff, until a process 2
    // listens at that address again.
    let addr = b.local_addr();
    b.shutdown();
    within("the shutdown", b.stopped()).await;
    assert!(
        within("the end of the queue", inbox.recv()).await.is_none(),
        "a shut down messenger's slot queues end"
    );
    drop((b, inbox));
    event(&mut a_events, |e| {
        matches!(
            e,
            LinkEvent::Disconnected {
                process: ProcessId(2),
                ..
            }
        )
        .then_some(())
    })
    .await;
    let sender = {
        let a = a.clone();
        let from = from.clone();
        tokio::spawn(async move { a.send_batch(ProcessId(2), batch(slot(0), from, 2)).await })
    };
    // At least one dial fails before the process is back.
    let error = event(&mut a_events, |e| match e {
        LinkEvent::DialFailed {
            process: ProcessId(2),
            error,
        } => Some(error.clone()),
        _ => None,
    })
    .await;
    assert!(
        matches!(*error, MessagingError::Connect { .. }),
        "{error:?}"
    );
    let b = Messenger::bind(MessengerConfig {
        listen: addr,
        ..config(2)
    })
    .await
    .unwrap();
    let mut inbox = b.open_slot(slot(0)).unwrap();
    within("the send", sender).await.unwrap().unwrap();
    match recv(&mut inbox).await {
        Delivery::Batch { batch: got, .. } => assert_eq!(got, batch(slot(0), from, 2)),
        other => panic!("{other:?}"),
    }
}

/// Backpressure across processes: a consumer taking one batch per tick holds a sender that
/// pushes as fast as it can to at most `credit_per_slot` batches in flight (sent and not yet
/// taken), measured after every send and every take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_holds_its_sender_to_its_credit() {
    const CREDIT: u32 = 4;
    const BATCHES: u64 = 40;
    let a = messenger(1).await;
    let b = Messenger::bind(MessengerConfig {
        credit_per_slot: CREDIT,
        ..config(2)
    })
    .await
    .unwrap();
    introduce(&[&a, &b]);
    let mut inbox = b.open_slot(slot(0)).unwrap();
    #[derive(Default)]
    struct Counts {
        sent: u64,
        taken: u64,
        most_in_flight: u64,
        most_queued: usize,
    }
    let counts = Arc::new(Mutex::new(Counts::default()));
    let started = Arc::new(tokio::sync::Notify::new());
    let sender = {
        let (a, counts, started) = (a.clone(), counts.clone(), started.clone());
        tokio::spawn(async move {
            for n in 0..BATCHES {
                a.send_batch(
                    ProcessId(2),
                    batch(slot(0), Sender::new("read", 0), n as i64),
                )
                .await
                .unwrap();
                let mut c = counts.lock().unwrap();
                c.sent += 1;
                c.most_in_flight = c.most_in_flight.max(c.sent - c.taken);
                assert!(a.in_flight(ProcessId(2), &slot(0)) <= CREDIT);
                if c.sent == u64::from(CREDIT) {
                    started.notify_one();
                }
            }
        })
    };
    // The consumer starts once the sender has used its credit, so the window is reached.
    within("the first sends", started.notified()).await;
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    let mut next = 0;
    while next < BATCHES as i64 {
        tick.tick().await;
        // Take and count under one lock: the credit a take gives back cannot be used by a send
        // before the take is counted.
        let mut c = counts.lock().unwrap();
        c.most_queued = c.most_queued.max(inbox.len());
        if let Some(d) = inbox.try_recv() {
            let Delivery::Batch { batch: got, .. } = d else {
                panic!("{d:?}")
            };
            assert_eq!(got.mark.watermark, Some(next));
            next += 1;
            c.taken += 1;
        }
    }
    within("the sender", sender).await.unwrap();
    let c = counts.lock().unwrap();
    assert_eq!(c.most_in_flight, u64::from(CREDIT));
    assert!(c.most_queued <= CREDIT as usize, "{}", c.most_queued);
    assert!(a.stats().credit_waits > 0);
    assert_eq!(a.stats().sent, BATCHES);
}

/// Pings come back as pongs; both ends use the one connection the lower process made, even
/// when both dial at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_round_trip_over_one_connection_per_pair() {
    for _ in 0..10 {
        let (a, b) = (messenger(1).await, messenger(2).await);
        introduce(&[&a, &b]);
        let (ab, ba) = within("both pings", async {
            tokio::join!(a.ping(ProcessId(2)), b.ping(ProcessId(1)))
        })
        .await;
        assert!(ab.unwrap() < LIMIT && ba.unwrap() < LIMIT);
        for _ in 0..3 {
            within("a ping", a.ping(ProcessId(2))).await.unwrap();
            within("a ping", b.ping(ProcessId(1))).await.unwrap();
        }
        assert_eq!(a.stats().connections, 1, "one connection for the pair");
        assert_eq!(b.stats().connections, 1, "one connection for the pair");
    }
}

/// A caller that gives up while a dial is under way (a timeout around a ping or a send) leaves
/// nothing stuck: the dial completes on its own, and the next ping uses its connection. (On
/// one thread, so that nothing else runs during the single poll.)
#[tokio::test]
async fn giving_up_during_a_dial_leaves_nothing_stuck() {
    let (a, b) = (messenger(1).await, messenger(2).await);
    introduce(&[&a, &b]);
    let mut events = a.events();
    // Polled once: the dial starts (it cannot finish within one poll: it needs the network),
    // then the caller is gone.
    assert!(a.ping(ProcessId(2)).now_or_never().is_none());
    event(&mut events, |e| {
        matches!(
            e,
            LinkEvent::Connected {
                process: ProcessId(2),
                dialled: true
            }
        )
        .then_some(())
    })
    .await;
    within("a ping", a.ping(ProcessId(2))).await.unwrap();
    assert_eq!(a.stats().connections, 1);
}

/// An ack tree spanning three processes completes at the input's process once every batch is
/// finished; a tree whose batch is dropped never completes and expires at `pending_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_trees_complete_across_processes_and_a_dropped_batch_expires() {
    let timeout = Duration::from_secs(30);
    let a = Messenger::bind(MessengerConfig {
        pending_timeout: timeout,
        ..config(1)
    })
    .await
    .unwrap();
    let (b, c) = (messenger(2).await, messenger(3).await);
    introduce(&[&a, &b, &c]);
    let mut at_b = b.open_slot(slot(0)).unwrap();
    let mut at_c = c.open_slot(slot(1)).unwrap();
    let started = Instant::now();

    // The input at A reads two batches and sends one derived batch of each to B.
    let (root, dropped_root) = (random_id(), random_id());
    a.start_tree(root).unwrap();
    a.start_tree(dropped_root).unwrap();
    for r in [root, dropped_root] {
        let id = random_id();
        let mut out = batch(slot(0), Sender::new("read", 0), 0);
        out.acks = vec![AckEdge {
            origin: a.process(),
            root: r,
            id,
        }];
        a.send_batch(ProcessId(2), out).await.unwrap();
        a.send_ack(a.process(), r, r ^ id).unwrap();
    }

    // B finishes the first and emits one batch from it to C; it loses the second.
    let Delivery::Batch { batch: first, .. } = recv(&mut at_b).await else {
        panic!()
    };
    let Delivery::Batch { batch: second, .. } = recv(&mut at_b).await else {
        panic!()
    };
    assert_eq!(second.acks[0].root, dropped_root);
    let edge = first.acks[0];
    assert_eq!(edge.root, root);
    let next = random_id();
    let mut out = batch(slot(1), Sender::new("count", 0), 1);
    out.acks = vec![AckEdge {
        origin: edge.origin,
        root,
        id: next,
    }];
    b.send_batch(ProcessId(3), out).await.unwrap();
    assert_eq!(edge.origin, ProcessId(1));
    b.send_ack(edge.origin, root, edge.id ^ next).unwrap();
    assert!(
        a.ack_table().trees().contains(root),
        "C has not finished yet"
    );

    // C writes it and acks.
    let Delivery::Batch { batch: last, .. } = recv(&mut at_c).await else {
        panic!()
    };
    let edge = last.acks[0];
    c.send_ack(edge.origin, edge.root, edge.id).unwrap();
    assert_eq!(
        within("the completion", a.completed_trees()).await,
        vec![root]
    );

    let mut table = a.ack_table();
    assert!(table.trees().contains(dropped_root));
    assert_eq!(table.expired(started), Vec::<u64>::new());
    assert_eq!(table.expired(Instant::now() + timeout), vec![dropped_root]);
    assert!(table.trees().is_empty());
    // A late ack for the expired tree is ignored.
    assert_eq!(table.ack(dropped_root, 1), AckOutcome::Unknown);
}

/// A batch for a slot not open yet at the receiver is parked, its credit held, and delivered
/// first when the slot opens: a sender may start before its receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_for_a_slot_not_open_yet_waits_for_it_to_open() {
    let (a, b) = (messenger(1).await, messenger(2).await);
    introduce(&[&a, &b]);
    let window =
        MessengerConfig::new(ProcessId(1), "127.0.0.1:0".parse().unwrap()).credit_per_slot as u64;
    let mut open = b.open_slot(slot(0)).unwrap();
    for n in 0..window {
        a.send_batch(
            ProcessId(2),
            batch(slot(5), Sender::new("read", 0), n as i64),
        )
        .await
        .unwrap();
    }
    // The parked batches hold their credit: one more waits until the slot opens.
    let more = {
        let a = a.clone();
        tokio::spawn(async move {
            a.send_batch(
                ProcessId(2),
                batch(slot(5), Sender::new("read", 0), window as i64),
            )
            .await
        })
    };
    // Other slots are not held up by it.
    a.send_batch(ProcessId(2), batch(slot(0), Sender::new("read", 0), 99))
        .await
        .unwrap();
    assert!(matches!(recv(&mut open).await, Delivery::Batch { .. }));
    assert!(!more.is_finished());
    let mut late = b.open_slot(slot(5)).unwrap();
    for n in 0..=window {
        match recv(&mut late).await {
            Delivery::Batch { batch: got, .. } => {
                assert_eq!(got, batch(slot(5), Sender::new("read", 0), n as i64))
            }
            other => panic!("expected batch {n}, got {other:?}"),
        }
    }
    more.await.unwrap().unwrap();
    assert_eq!(b.stats().misaddressed, 0);
    assert!(matches!(
        b.open_slot(slot(0)),
        Err(MessagingError::SlotAlreadyOpen(_))
    ));
}

/// A batch for a slot that was open and closed is dropped (and counted), and its credit comes
/// back: the sender is not blocked by a stale route. Discarding a stale slot drops what was
/// parked for it and returns its credit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_for_a_closed_slot_is_dropped_and_its_credit_returned() {
    let (a, b) = (messenger(1).await, messenger(2).await);
    introduce(&[&a, &b]);
    drop(b.open_slot(slot(5)).unwrap());
    let mut open = b.open_slot(slot(0)).unwrap();
    for n in 0..12 {
        a.send_batch(ProcessId(2), batch(slot(5), Sender::new("read", 0), n))
            .await
            .unwrap();
    }
    // Ordered behind the misaddressed ones on the same connection.
    a.send_batch(ProcessId(2), batch(slot(0), Sender::new("read", 0), 99))
        .await
        .unwrap();
    assert!(matches!(recv(&mut open).await, Delivery::Batch { .. }));
    assert_eq!(b.stats().misaddressed, 12);

    // Parked for slot 6, then discarded: the credit comes back, so the sender goes on.
    let window =
        MessengerConfig::new(ProcessId(1), "127.0.0.1:0".parse().unwrap()).credit_per_slot as i64;
    for n in 0..window {
        a.send_batch(ProcessId(2), batch(slot(6), Sender::new("read", 0), n))
            .await
            .unwrap();
    }
    // A marker behind them on the same connection: once it arrived, they are parked.
    a.send_batch(ProcessId(2), batch(slot(0), Sender::new("read", 0), 100))
        .await
        .unwrap();
    assert!(matches!(recv(&mut open).await, Delivery::Batch { .. }));
    b.discard_slots(|s| *s == slot(6));
    within(
        "a send after the discard",
        a.send_batch(ProcessId(2), batch(slot(6), Sender::new("read", 0), window)),
    )
    .await
    .unwrap();
    // It parked anew: the slot opens with it alone.
    let mut reopened = b.open_slot(slot(6)).unwrap();
    match recv(&mut reopened).await {
        Delivery::Batch { batch: got, .. } => {
            assert_eq!(got, batch(slot(6), Sender::new("read", 0), window))
        }
        other => panic!("expected the last batch, got {other:?}"),
    }
}

/// A peer that breaks the protocol after its handshake — a batch beyond its credit, a body
/// that is not a frame — is disconnected, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_breaking_the_protocol_is_disconnected_with_the_reason() {
    let b = Messenger::bind(MessengerConfig {
        credit_per_slot: 1,
        ..config(2)
    })
    .await
    .unwrap();
    let _inbox = b.open_slot(slot(0)).unwrap();
    let mut events = b.events();
    let me = Identity {
        version: PROTOCOL_VERSION,
        process: ProcessId(9),
        secret: None,
        window: 4,
    };
    let connect = || async {
        let (mut r, mut w) = handshake::framed(TcpStream::connect(b.local_addr()).await.unwrap());
        let peer = handshake::dial(&mut r, &mut w, me, ProcessId(2))
            .await
            .unwrap();
        assert_eq!(peer.window, 1);
        (r, w)
    };
    let disconnected = |events: &mut broadcast::Receiver<LinkEvent>| {
        let events = events.resubscribe();
        async move {
            let mut events = events;
            event(&mut events, |e| match e {
                LinkEvent::Disconnected {
                    process: ProcessId(9),
                    error: Some(error),
                } => Some(error.clone()),
                _ => None,
            })
            .await
        }
    };

    // Two batches on a window of one, the first not taken.
    let (_r, mut w) = connect().await;
    let waiting = tokio::spawn(disconnected(&mut events));
    for n in 0..2 {
        let f = Frame::Batch(batch(slot(0), Sender::new("read", 0), n));
        w.send(frame::encode(&f)).await.unwrap();
    }
    let error = within("the disconnection", waiting).await.unwrap();
    assert!(
        matches!(&*error, MessagingError::Credit { process: ProcessId(9), slot: s,
            source: credit::CreditError::Exceeded { window: 1 } } if *s == slot(0)),
        "{error:?}"
    );

    // Bytes that are no frame.
    let (_r, mut w) = connect().await;
    let waiting = tokio::spawn(disconnected(&mut events));
    w.send(bytes::Bytes::from_static(&[200, 1, 2, 3]))
        .await
        .unwrap();
    let error = within("the disconnection", waiting).await.unwrap();
    assert!(
        matches!(
            &*error,
            MessagingError::Malformed {
                process: ProcessId(9),
                context: "frame",
                ..
            }
        ),
        "{error:?}"
    );
}

/// A send given up while its frame waits for room in the connection's queue gives its credit
/// back (no network: the connection is not running, its queue holds one frame).
#[test]
fn a_send_given_up_gives_its_credit_back() {
    use super::connection::{ByteCounts, Connection, ConnectionSpec, OutgoingAcks};
    let (c, _queue) = Connection::new(ConnectionSpec {
        peer: ProcessId(2),
        addr: "127.0.0.1:1".parse().unwrap(),
        id: 0,
        dialled: true,
        send_window: 4,
        receive_window: 4,
        queue_frames: 1,
        acks_out: Arc::new(Mutex::new(OutgoingAcks::new(16))),
        bytes: Arc::new(ByteCounts::default()),
    });
    let frame = bytes::Bytes::from_static(b"frame");
    assert_eq!(
        c.send_slot(&slot(0), frame.clone()).now_or_never(),
        Some(Ok(false))
    );
    assert_eq!(c.in_flight(&slot(0)), 1);
    // The queue is full: the second send takes a credit, then waits, and is given up.
    assert_eq!(c.send_slot(&slot(0), frame).now_or_never(), None);
    assert_eq!(c.in_flight(&slot(0)), 1, "the credit came back");
}
