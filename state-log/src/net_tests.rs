//! The transport against hostile or misconfigured peers: frame limits, bounded concurrency,
//! authentication. Real TCP on 127.0.0.1.

use std::sync::atomic::AtomicUsize;

use proptest::prelude::*;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use super::*;
use crate::types::LedgerInfo;

/// A handler that counts the requests it serves at once and holds each one until the test
/// lets it go.
struct Gate {
    running: watch::Sender<usize>,
    max_running: AtomicUsize,
    served: AtomicUsize,
    open: Semaphore,
}

impl Gate {
    fn new(open: usize) -> Arc<Self> {
        Arc::new(Gate {
            running: watch::channel(0).0,
            max_running: AtomicUsize::new(0),
            served: AtomicUsize::new(0),
            open: Semaphore::new(open),
        })
    }
}

impl Handler for Gate {
    async fn handle(self: Arc<Self>, _req: Request) -> Response {
        self.running.send_modify(|n| {
            *n += 1;
            self.max_running.fetch_max(*n, Ordering::SeqCst);
        });
        self.open.acquire().await.expect("open").forget();
        self.running.send_modify(|n| *n -= 1);
        self.served.fetch_add(1, Ordering::SeqCst);
        Response::Info(Ok(LedgerInfo::default()))
    }
}

fn secret(s: &str) -> ClusterSecret {
    ClusterSecret::from_bytes(s.as_bytes()).expect("long enough")
}

/// Serves `handler` on a free loopback port with `options`; returns the address and the task.
async fn start<H: Handler>(
    handler: Arc<H>,
    options: ServeOptions,
) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    (addr, tokio::spawn(serve(listener, handler, options)))
}

const T: Duration = Duration::from_secs(10);

/// Reads until the server closes the connection; the bytes it sent before.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(T, stream.read_to_end(&mut got))
        .await
        .expect("the server closes the connection")
        .expect("read");
    got
}

#[tokio::test]
async fn a_huge_length_before_the_handshake_closes_the_connection() {
    let gate = Gate::new(usize::MAX >> 4);
    let (addr, _server) = start(
        gate.clone(),
        ServeOptions::new(Some(secret("0123456789abcdef"))),
    )
    .await;
    let mut raw = TcpStream::connect(&addr).await.unwrap();
    // 4 GiB - 1 declared; nothing follows. The server must not wait for (or allocate) it.
    raw.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    assert_eq!(read_until_closed(&mut raw).await, b"");
    // Still serving others.
    let client = RpcClient::new(addr, Some(secret("0123456789abcdef")));
    assert!(matches!(
        client.call(Request::Status, T).await.unwrap(),
        Response::Info(Ok(_))
    ));
    assert_eq!(gate.served.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_frame_over_the_limit_after_the_handshake_closes_the_connection() {
    let gate = Gate::new(usize::MAX >> 4);
    let options = ServeOptions {
        max_frame: 1000,
        ..ServeOptions::new(None)
    };
    let (addr, _server) = start(gate.clone(), options).await;
    let mut raw = TcpStream::connect(&addr).await.unwrap();
    client_handshake(&mut raw, None).await.unwrap();
    raw.write_all(&1001u32.to_be_bytes()).await.unwrap();
    raw.write_all(&[0u8; 1001]).await.unwrap();
    assert_eq!(read_until_closed(&mut raw).await, b"");
    // A frame at the limit is read (and, not being a request, answered as a bad one).
    let mut raw = TcpStream::connect(&addr).await.unwrap();
    client_handshake(&mut raw, None).await.unwrap();
    raw.write_all(&1000u32.to_be_bytes()).await.unwrap();
    raw.write_all(&[0xFFu8; 1000]).await.unwrap();
    let frame = read_frame(&mut raw, MAX_FRAME_BYTES)
        .await
        .unwrap()
        .unwrap();
    let env: Envelope<Response> = codec::decode(&frame).unwrap();
    assert!(matches!(
        env.body,
        Response::Failed(Error::Fatal(m)) if m.starts_with("bad request frame: ")
    ));
    assert_eq!(gate.served.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_client_refuses_to_send_a_frame_over_the_limit() {
    let (addr, _server) = start(Gate::new(1), ServeOptions::new(None)).await;
    let client = RpcClient::new(addr.clone(), None);
    let huge = Request::Append {
        ledger: "l".into(),
        request: crate::RequestId::new(1, 1),
        record: Bytes::from(vec![0u8; MAX_FRAME_BYTES]),
        crc: 0,
    };
    match client.call(huge, T).await.unwrap_err() {
        Error::TooLarge { what, bytes, limit } => {
            assert_eq!(what, format!("Append request to {addr}"));
            assert!(bytes > MAX_FRAME_BYTES as u64);
            assert_eq!(limit, MAX_FRAME_BYTES as u64);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_flooding_client_is_served_at_most_n_requests_at_once() {
    const N: usize = 4;
    const REQUESTS: usize = 200;
    let gate = Gate::new(0);
    let options = ServeOptions {
        max_inflight: N,
        ..ServeOptions::new(None)
    };
    let (addr, _server) = start(gate.clone(), options).await;
    let client = Arc::new(RpcClient::new(addr, None));
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..REQUESTS {
        let client = client.clone();
        calls.spawn(async move { client.call(Request::Status, T).await });
    }
    // N requests are taken up, and no more: the server stops reading the connection.
    let mut running = gate.running.subscribe();
    tokio::time::timeout(T, running.wait_for(|n| *n == N))
        .await
        .expect("N requests in flight")
        .unwrap();
    for _ in 0..1000 {
        tokio::task::yield_now().await;
    }
    assert_eq!(*gate.running.borrow(), N);
    assert_eq!(gate.served.load(Ordering::SeqCst), 0);
    // Let them all through: every request is answered, never more than N at once.
    gate.open.add_permits(REQUESTS);
    while let Some(r) = calls.join_next().await {
        assert!(matches!(r.unwrap().unwrap(), Response::Info(Ok(_))));
    }
    assert_eq!(gate.served.load(Ordering::SeqCst), REQUESTS);
    assert_eq!(gate.max_running.load(Ordering::SeqCst), N);
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_until_one_closes() {
    let gate = Gate::new(usize::MAX >> 4);
    let options = ServeOptions {
        max_connections: 1,
        ..ServeOptions::new(None)
    };
    let (addr, _server) = start(gate.clone(), options).await;
    let first = RpcClient::new(addr.clone(), None);
    first.call(Request::Status, T).await.unwrap();
    // The second connection is not served while the first is open...
    let second = RpcClient::new(addr.clone(), None);
    let e = second
        .call(Request::Status, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Unavailable(ref m) if m.contains("timed out")),
        "{e}"
    );
    // ...and is once it closes.
    drop(first);
    let third = RpcClient::new(addr, None);
    assert!(matches!(
        third.call(Request::Status, T).await.unwrap(),
        Response::Info(Ok(_))
    ));
}

#[tokio::test]
async fn only_clients_with_the_same_secret_are_served() {
    let gate = Gate::new(usize::MAX >> 4);
    let key = secret("the cluster secret, 32 bytes long");
    let (addr, _server) = start(gate.clone(), ServeOptions::new(Some(key.clone()))).await;
    let refusal = |s: Option<ClusterSecret>| {
        let addr = addr.clone();
        async move {
            match RpcClient::new(addr.clone(), s)
                .call(Request::Status, T)
                .await
            {
                Err(Error::Unauthenticated { addr: a, failure }) if a == addr => failure,
                other => panic!("{other:?}"),
            }
        }
    };
    assert_eq!(refusal(None).await, AuthFailure::SecretRequired);
    assert_eq!(
        refusal(Some(secret("another secret, also long"))).await,
        AuthFailure::BadServerProof
    );
    assert_eq!(gate.served.load(Ordering::SeqCst), 0);
    let ok = RpcClient::new(addr.clone(), Some(key.clone()));
    assert!(matches!(
        ok.call(Request::Status, T).await.unwrap(),
        Response::Info(Ok(_))
    ));
    assert_eq!(gate.served.load(Ordering::SeqCst), 1);

    // A client that knows the server's proof but not the secret (it replays a proof it saw)
    // is refused with WrongSecret, and the server sends nothing else.
    let mut raw = TcpStream::connect(&addr).await.unwrap();
    let hello = Handshake::Hello {
        protocol: auth::PROTOCOL,
        has_secret: true,
        client_nonce: [1; 32],
    };
    send_handshake(&mut raw, &hello).await.unwrap();
    let Handshake::Challenge { server_proof, .. } = recv_handshake(&mut raw).await.unwrap() else {
        panic!("challenge expected");
    };
    send_handshake(
        &mut raw,
        &Handshake::Proof {
            client_proof: server_proof,
        },
    )
    .await
    .unwrap();
    assert!(matches!(
        recv_handshake(&mut raw).await.unwrap(),
        Handshake::Refused(AuthFailure::WrongSecret)
    ));
    assert_eq!(read_until_closed(&mut raw).await, b"");

    // A request sent without any handshake is not a Hello: refused, never served.
    let mut raw = TcpStream::connect(&addr).await.unwrap();
    let frame = encode_frame(
        &Envelope {
            id: 1,
            body: Request::Status,
        },
        MAX_FRAME_BYTES,
        || "request".into(),
    )
    .unwrap();
    raw.write_all(&frame).await.unwrap();
    assert!(matches!(
        recv_handshake(&mut raw).await.unwrap(),
        Handshake::Refused(AuthFailure::Protocol(m)) if m.starts_with("not a handshake frame")
    ));
    assert_eq!(gate.served.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_server_without_a_secret_is_refused_by_a_client_with_one() {
    let (addr, _server) = start(Gate::new(1), ServeOptions::new(None)).await;
    let client = RpcClient::new(addr, Some(secret("0123456789abcdef")));
    assert!(matches!(
        client.call(Request::Status, T).await.unwrap_err(),
        Error::Unauthenticated {
            failure: AuthFailure::ServerHasNoSecret,
            ..
        }
    ));
}

#[tokio::test]
async fn a_silent_connection_is_dropped_after_the_handshake_timeout() {
    let options = ServeOptions {
        handshake_timeout: Duration::from_millis(50),
        ..ServeOptions::new(None)
    };
    let (addr, _server) = start(Gate::new(1), options).await;
    let mut raw = TcpStream::connect(&addr).await.unwrap();
    assert_eq!(read_until_closed(&mut raw).await, b"");
}

fn valid_request_frames() -> Vec<Vec<u8>> {
    let requests = vec![
        Request::Status,
        Request::Read {
            ledger: "job/task/0".into(),
            from: 7,
        },
        Request::Append {
            ledger: "job/task/0".into(),
            request: crate::RequestId::new(3, 4),
            record: Bytes::from_static(b"a batch record"),
            crc: 99,
        }
        .fenced(Some(5)),
        Request::Snapshot {
            ledger: "l".into(),
            covers: 3,
            bytes: Bytes::from_static(b"state"),
            crc: 1,
        },
    ];
    requests
        .into_iter()
        .enumerate()
        .map(|(id, body)| {
            codec::encode(&Envelope {
                id: id as u64,
                body,
            })
            .unwrap()
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary bytes as a request, a response or a handshake frame: an error or a value,
    /// never a panic or an allocation the bytes do not justify.
    #[test]
    fn arbitrary_frames_decode_to_an_error_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = codec::decode::<Envelope<Request>>(&bytes);
        let _ = codec::decode::<Envelope<Response>>(&bytes);
        let _ = codec::decode::<Handshake>(&bytes);
    }

    /// Valid request frames with bytes flipped, cut or a length prefix blown up.
    #[test]
    fn mutated_request_frames_decode_to_an_error_not_a_panic(
        which in 0usize..4,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let frame = valid_request_frames().swap_remove(which);
        let mut mutated = frame.clone();
        for (at, byte) in &flips {
            mutated[at.index(frame.len())] = *byte;
        }
        let _ = codec::decode::<Envelope<Request>>(&mutated);
        let _ = codec::decode::<Envelope<Request>>(&mutated[..cut.index(mutated.len() + 1)]);
        // A varint length of 2^64-1 spliced in anywhere.
        let at = cut.index(frame.len() + 1);
        let mut spliced = frame[..at].to_vec();
        spliced.extend_from_slice(&[0xFF; 9]);
        spliced.extend_from_slice(&frame[at..]);
        let _ = codec::decode::<Envelope<Request>>(&spliced);
    }
}
