//! The start of every connection between two processes: versions, identities and credit
//! windows exchanged, and both ends authenticated with the cluster secret — before any other
//! frame is read.
//!
//! The exchange (frames of at most [`HANDSHAKE_FRAME_BYTES`]; the dialer is the one that
//! connected):
//! 1. dialer → listener: `Hello { version, process, has_secret, nonce, window }`;
//! 2. listener → dialer: `Refused(Version | SecretRequired | ListenerHasNoSecret)`, or
//!    `Challenge { version, process, nonce, proof, window }` with
//!    `proof = HMAC-SHA256(secret, "sardonyx-log server" ‖ dialer nonce ‖ listener nonce)`
//!    (`None` when neither has a secret);
//! 3. the dialer checks the version, that the process is the one it meant to dial, and the
//!    proof (it refuses a listener that cannot prove the secret before proving its own), then
//!    sends `Proof { proof }` with the client label;
//! 4. the listener checks the proof and whether it admits the connection (`link`), and
//!    answers `Accepted` or `Refused(WrongSecret | Duplicate | …)`.
//!
//! The HMACs are the log transport's ([`ClusterSecret`]): each side proves the secret over both
//! fresh nonces, so a recorded handshake cannot be replayed and a proof cannot be reflected.
//! The secret never travels; the frames after the handshake are not encrypted.

use futures::{SinkExt, StreamExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec, LengthDelimitedCodecError};

use super::address::ProcessId;
use super::frame::{self, Handshake, Refusal, HANDSHAKE_FRAME_BYTES};
use sardonyx_state_log::ClusterSecret;

/// The reading half of a connection, in frames.
pub(crate) type FrameReader = FramedRead<OwnedReadHalf, LengthDelimitedCodec>;
/// The writing half of a connection, in frames.
pub(crate) type FrameWriter = FramedWrite<OwnedWriteHalf, LengthDelimitedCodec>;

/// A fresh connection in frames, limited to handshake frames until [`open_up`].
pub(crate) fn framed(stream: TcpStream) -> (FrameReader, FrameWriter) {
    let (r, w) = stream.into_split();
    let codec = || {
        LengthDelimitedCodec::builder()
            .max_frame_length(HANDSHAKE_FRAME_BYTES)
            .new_codec()
    };
    (FramedRead::new(r, codec()), FramedWrite::new(w, codec()))
}

/// Raises the frame limit of an authenticated connection to `max_frame_bytes`.
pub(crate) fn open_up(reader: &mut FrameReader, writer: &mut FrameWriter, max_frame_bytes: usize) {
    reader.decoder_mut().set_max_frame_length(max_frame_bytes);
    writer.encoder_mut().set_max_frame_length(max_frame_bytes);
}

/// True if `e` is the codec's refusal of a frame over its length limit.
pub(crate) fn is_too_large(e: &std::io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<LengthDelimitedCodecError>())
}

/// What this process says of itself in a handshake.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Identity<'a> {
    pub version: u32,
    pub process: ProcessId,
    pub secret: Option<&'a ClusterSecret>,
    /// The credit window this process grants per slot.
    pub window: u32,
}

/// What the other end said of itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerIdentity {
    pub process: ProcessId,
    /// The credit window it grants per slot.
    pub window: u32,
}

/// How a handshake failed.
#[derive(Debug)]
pub(crate) enum HandshakeError {
    /// The connection broke.
    Io(std::io::Error),
    /// One end refused the other (`by_peer`: the other end did).
    Refused {
        peer: Option<ProcessId>,
        by_peer: bool,
        reason: Refusal,
    },
}

impl From<std::io::Error> for HandshakeError {
    fn from(e: std::io::Error) -> Self {
        HandshakeError::Io(e)
    }
}

/// Sends one handshake frame (a refusal's message shortened to fit the frame limit).
pub(crate) async fn send(w: &mut FrameWriter, msg: &Handshake) -> std::io::Result<()> {
    let mut bytes = frame::encode(msg);
    if bytes.len() > HANDSHAKE_FRAME_BYTES {
        let short = Handshake::Refused(Refusal::Protocol("(message too long to send)".into()));
        bytes = frame::encode(&short);
    }
    w.send(bytes).await
}

/// Receives one handshake frame. A frame over the limit, or one that is not a handshake frame,
/// is refused (by this end). `versions`: this end's version, and whether this end is the
/// dialer — so that a `Hello` or `Challenge` of another version whose layout differs from ours
/// is still refused as a version mismatch, by the version it starts with.
async fn recv(
    r: &mut FrameReader,
    peer: Option<ProcessId>,
    versions: (u32, bool),
) -> Result<Handshake, HandshakeError> {
    let refuse = |reason| HandshakeError::Refused {
        peer,
        by_peer: false,
        reason,
    };
    let bytes = match r.next().await {
        None => {
            return Err(HandshakeError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the connection closed during the handshake",
            )))
        }
        Some(Err(e)) if is_too_large(&e) => {
            return Err(refuse(Refusal::FrameTooLarge {
                limit: HANDSHAKE_FRAME_BYTES,
            }))
        }
        Some(Err(e)) => return Err(HandshakeError::Io(e)),
        Some(Ok(bytes)) => bytes,
    };
    frame::decode::<Handshake>(&bytes).map_err(|e| {
        let (ours, dialer) = versions;
        // `Hello` is variant 0 and `Challenge` variant 1; both start with the version.
        let opening = if dialer { 1 } else { 0 };
        match sardonyx_state_log::decode_bounded::<(u32, u32)>(&bytes) {
            Ok(((variant, theirs), _)) if variant == opening && theirs != ours => {
                refuse(if dialer {
                    Refusal::Version {
                        dialer: ours,
                        listener: theirs,
                    }
                } else {
                    Refusal::Version {
                        dialer: theirs,
                        listener: ours,
                    }
                })
            }
            _ => refuse(Refusal::Protocol(format!("not a handshake frame: {e}"))),
        }
    })
}

/// Refuses a peer's credit window of 0 (it could never be sent to).
fn check_window(window: u32) -> Result<(), Refusal> {
    if window == 0 {
        return Err(Refusal::Protocol("a credit window of 0 batches".into()));
    }
    Ok(())
}

/// Sends our refusal (best effort: the other end may be gone) and returns it as the error.
async fn refuse(
    w: &mut FrameWriter,
    peer: Option<ProcessId>,
    reason: Refusal,
) -> Result<PeerIdentity, HandshakeError> {
    let _ = send(w, &Handshake::Refused(reason.clone())).await;
    Err(HandshakeError::Refused {
        peer,
        by_peer: false,
        reason,
    })
}

fn refused_by_peer<T>(peer: Option<ProcessId>, reason: Refusal) -> Result<T, HandshakeError> {
    Err(HandshakeError::Refused {
        peer,
        by_peer: true,
        reason,
    })
}

/// The dialer's side: `Ok` with the listener's identity once it accepted the connection.
pub(crate) async fn dial(
    r: &mut FrameReader,
    w: &mut FrameWriter,
    me: Identity<'_>,
    expected: ProcessId,
) -> Result<PeerIdentity, HandshakeError> {
    let nonce = sardonyx_state_log::nonce().map_err(std::io::Error::other)?;
    let hello = Handshake::Hello {
        version: me.version,
        process: me.process,
        has_secret: me.secret.is_some(),
        nonce,
        window: me.window,
    };
    send(w, &hello).await?;
    let (version, process, their_nonce, proof, window) =
        match recv(r, Some(expected), (me.version, true)).await {
            Ok(Handshake::Challenge {
                version,
                process,
                nonce,
                proof,
                window,
            }) => (version, process, nonce, proof, window),
            Ok(Handshake::Refused(reason)) => return refused_by_peer(Some(expected), reason),
            Ok(other) => {
                let reason = Refusal::Protocol(format!("expected Challenge, got {}", other.kind()));
                return refuse(w, Some(expected), reason).await;
            }
            Err(HandshakeError::Refused { reason, peer, .. }) => {
                return refuse(w, peer, reason).await
            }
            Err(e) => return Err(e),
        };
    let peer = Some(process);
    if version != me.version {
        let reason = Refusal::Version {
            dialer: me.version,
            listener: version,
        };
        return refuse(w, peer, reason).await;
    }
    if process != expected {
        return refuse(
            w,
            peer,
            Refusal::WrongProcess {
                expected,
                found: process,
            },
        )
        .await;
    }
    let our_proof = match (me.secret, proof) {
        (None, None) => None,
        (Some(secret), Some(proof)) => {
            if !secret.verify_server(&nonce, &their_nonce, &proof) {
                return refuse(w, peer, Refusal::BadListenerProof).await;
            }
            Some(secret.client_proof(&nonce, &their_nonce))
        }
        (Some(_), None) => return refuse(w, peer, Refusal::ListenerHasNoSecret).await,
        (None, Some(_)) => {
            let reason = Refusal::Protocol("a proof without a secret asked for".into());
            return refuse(w, peer, reason).await;
        }
    };
    send(w, &Handshake::Proof { proof: our_proof }).await?;
    match recv(r, peer, (me.version, true)).await? {
        Handshake::Accepted => Ok(PeerIdentity { process, window }),
        Handshake::Refused(reason) => refused_by_peer(peer, reason),
        other => {
            let reason = Refusal::Protocol(format!("expected Accepted, got {}", other.kind()));
            refuse(w, peer, reason).await
        }
    }
}

/// The listener's side up to the dialer's proof: `Ok` with the dialer's identity once it is
/// authenticated. The caller then decides whether to admit it and sends the verdict
/// ([`accept`], or [`send`] of a refusal).
pub(crate) async fn listen(
    r: &mut FrameReader,
    w: &mut FrameWriter,
    me: Identity<'_>,
) -> Result<PeerIdentity, HandshakeError> {
    let (version, process, has_secret, their_nonce, window) =
        match recv(r, None, (me.version, false)).await {
            Ok(Handshake::Hello {
                version,
                process,
                has_secret,
                nonce,
                window,
            }) => (version, process, has_secret, nonce, window),
            Ok(other) => {
                let reason = Refusal::Protocol(format!("expected Hello, got {}", other.kind()));
                return refuse(w, None, reason).await;
            }
            Err(HandshakeError::Refused { reason, .. }) => return refuse(w, None, reason).await,
            Err(e) => return Err(e),
        };
    let peer = Some(process);
    if version != me.version {
        let reason = Refusal::Version {
            dialer: version,
            listener: me.version,
        };
        return refuse(w, peer, reason).await;
    }
    if let Err(reason) = check_window(window) {
        return refuse(w, peer, reason).await;
    }
    match (has_secret, me.secret) {
        (false, Some(_)) => return refuse(w, peer, Refusal::SecretRequired).await,
        (true, None) => return refuse(w, peer, Refusal::ListenerHasNoSecret).await,
        _ => {}
    }
    let nonce = sardonyx_state_log::nonce().map_err(std::io::Error::other)?;
    let challenge = Handshake::Challenge {
        version: me.version,
        process: me.process,
        nonce,
        proof: me.secret.map(|s| s.server_proof(&their_nonce, &nonce)),
        window: me.window,
    };
    send(w, &challenge).await?;
    match recv(r, peer, (me.version, false)).await {
        Ok(Handshake::Proof { proof }) => {
            let verified = match (me.secret, proof) {
                (None, None) => true,
                (Some(secret), Some(proof)) => secret.verify_client(&their_nonce, &nonce, &proof),
                _ => false,
            };
            if verified {
                Ok(PeerIdentity { process, window })
            } else {
                refuse(w, peer, Refusal::WrongSecret).await
            }
        }
        Ok(Handshake::Refused(reason)) => refused_by_peer(peer, reason),
        Ok(other) => {
            let reason = Refusal::Protocol(format!("expected Proof, got {}", other.kind()));
            refuse(w, peer, reason).await
        }
        Err(HandshakeError::Refused { reason, .. }) => refuse(w, peer, reason).await,
        Err(e) => Err(e),
    }
}

/// The listener admits the connection.
pub(crate) async fn accept(w: &mut FrameWriter) -> std::io::Result<()> {
    send(w, &Handshake::Accepted).await
}
