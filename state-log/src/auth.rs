//! Mutual authentication of a connection with the shared cluster secret.
//!
//! Every connection to a log server (from a client or from another server's Raft) starts with a
//! handshake of small frames, before any request is read:
//!
//! 1. client → server: `Hello { protocol, has_secret, client_nonce }` (32 random bytes);
//! 2. server → client: `Challenge { server_nonce, server_proof }` where
//!    `server_proof = HMAC-SHA256(secret, "sardonyx-log server" ‖ client_nonce ‖ server_nonce)`
//!    — or `Open` if neither side has a secret, or `Refused` if only one side has one;
//! 3. client → server: `Proof { client_proof }` with the label `"sardonyx-log client"`, sent only
//!    once the server's proof verified (the client checks the server first);
//! 4. server → client: `Accepted`, or `Refused { WrongSecret }` and the server closes.
//!
//! Each side proves knowledge of the secret over both nonces, so a recorded handshake cannot be
//! replayed, and the labels keep a server's proof from being reflected back as a client's. The
//! secret itself never travels. This authenticates the two ends at connection start; it does not
//! encrypt the frames that follow (see the README's "Log cluster security").

use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::{AuthFailure, Error, Result, SecretProblem};

/// Fewest bytes a cluster secret may have (after trimming surrounding whitespace).
pub const MIN_SECRET_BYTES: usize = 16;

/// Version of the handshake and of the frames after it; both sides must speak the same.
pub(crate) const PROTOCOL: u32 = 1;

const SERVER_LABEL: &[u8] = b"sardonyx-log server";
const CLIENT_LABEL: &[u8] = b"sardonyx-log client";

/// Length of a nonce and of a proof.
pub(crate) const NONCE_BYTES: usize = 32;

/// The shared secret of a log cluster: every log server and every client of it (the runtime's
/// ledger client, `log-status`, Raft peers among themselves) must hold the same one, or the
/// connection is refused at its start. Its `Debug` form does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(Vec<u8>);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterSecret({} bytes)", self.0.len())
    }
}

impl ClusterSecret {
    /// A secret from its bytes, trimmed of surrounding ASCII whitespace (so a file ending in a
    /// newline and one without hold the same secret); `None` if fewer than
    /// [`MIN_SECRET_BYTES`] remain.
    pub fn from_bytes(bytes: &[u8]) -> Option<ClusterSecret> {
        let trimmed = bytes.trim_ascii();
        (trimmed.len() >= MIN_SECRET_BYTES).then(|| ClusterSecret(trimmed.to_vec()))
    }

    /// Reads the secret from a file (`--secret-file`). Refused with [`Error::Secret`]: a file
    /// that cannot be read, that holds fewer than [`MIN_SECRET_BYTES`] bytes (an empty one
    /// included), or (on Unix) that every user may access — a secret anyone on the host can
    /// read protects nothing, and saying so beats a false sense of safety.
    pub fn from_file(path: impl AsRef<Path>) -> Result<ClusterSecret> {
        let path = path.as_ref();
        let fail = |problem| Error::Secret {
            path: path.to_path_buf(),
            problem,
        };
        let bytes =
            std::fs::read(path).map_err(|e| fail(SecretProblem::Unreadable(e.to_string())))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(|e| fail(SecretProblem::Unreadable(e.to_string())))?
                .permissions()
                .mode();
            if mode & 0o007 != 0 {
                return Err(fail(SecretProblem::WorldAccessible(mode & 0o777)));
            }
        }
        ClusterSecret::from_bytes(&bytes)
            .ok_or_else(|| fail(SecretProblem::TooShort(bytes.trim_ascii().len())))
    }

    fn proof(&self, label: &[u8], client_nonce: &[u8], server_nonce: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any size");
        mac.update(label);
        mac.update(client_nonce);
        mac.update(server_nonce);
        mac
    }

    /// The server's proof over both nonces (HMAC-SHA256 with the server label). Public so that
    /// other transports of the cluster (the engine's messaging) authenticate the same way.
    pub fn server_proof(&self, client_nonce: &Nonce, server_nonce: &Nonce) -> [u8; 32] {
        let tag = self
            .proof(SERVER_LABEL, client_nonce, server_nonce)
            .finalize()
            .into_bytes();
        tag.into()
    }

    /// The client's proof over both nonces (HMAC-SHA256 with the client label). Public so that
    /// other transports of the cluster (the engine's messaging) authenticate the same way.
    pub fn client_proof(&self, client_nonce: &Nonce, server_nonce: &Nonce) -> [u8; 32] {
        let tag = self
            .proof(CLIENT_LABEL, client_nonce, server_nonce)
            .finalize()
            .into_bytes();
        tag.into()
    }

    /// True if `proof` is the server's proof over both nonces (compared in constant time).
    pub fn verify_server(&self, client: &Nonce, server: &Nonce, proof: &[u8]) -> bool {
        self.proof(SERVER_LABEL, client, server)
            .verify_slice(proof)
            .is_ok()
    }

    /// True if `proof` is the client's proof over both nonces (compared in constant time).
    pub fn verify_client(&self, client: &Nonce, server: &Nonce, proof: &[u8]) -> bool {
        self.proof(CLIENT_LABEL, client, server)
            .verify_slice(proof)
            .is_ok()
    }
}

/// A random challenge.
pub type Nonce = [u8; NONCE_BYTES];

/// A fresh nonce from the operating system's random source (public for the engine's messaging,
/// which challenges its peers the same way).
pub fn nonce() -> Result<Nonce> {
    let mut n = [0u8; NONCE_BYTES];
    getrandom::fill(&mut n)
        .map_err(|e| Error::Fatal(format!("no random source for a nonce: {e}")))?;
    Ok(n)
}

/// The frames of the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Handshake {
    /// The client's opening.
    Hello {
        /// [`PROTOCOL`] of the client.
        protocol: u32,
        /// Whether the client holds a secret (and will prove it).
        has_secret: bool,
        /// The client's challenge.
        client_nonce: Nonce,
    },
    /// The server's challenge and its own proof.
    Challenge {
        /// The server's challenge.
        server_nonce: Nonce,
        /// HMAC over both nonces with the server label.
        server_proof: [u8; 32],
    },
    /// Neither side has a secret: requests may follow.
    Open,
    /// The client's proof.
    Proof {
        /// HMAC over both nonces with the client label.
        client_proof: [u8; 32],
    },
    /// The client is authenticated: requests may follow.
    Accepted,
    /// The server refuses the connection and closes it.
    Refused(AuthFailure),
}

/// What a server answers to a client's `Hello`: the reply, and whether the handshake goes on
/// (a `Challenge` awaits the client's proof; `Open` and `Refused` end it).
pub(crate) fn answer_hello(
    secret: Option<&ClusterSecret>,
    hello: &Handshake,
    server_nonce: Nonce,
) -> Handshake {
    match (hello, secret) {
        (Handshake::Hello { protocol, .. }, _) if *protocol != PROTOCOL => {
            Handshake::Refused(AuthFailure::Protocol(format!(
                "the client speaks protocol {protocol}, this server {PROTOCOL}"
            )))
        }
        (
            Handshake::Hello {
                has_secret: false, ..
            },
            None,
        ) => Handshake::Open,
        (
            Handshake::Hello {
                has_secret: false, ..
            },
            Some(_),
        ) => Handshake::Refused(AuthFailure::SecretRequired),
        (
            Handshake::Hello {
                has_secret: true, ..
            },
            None,
        ) => Handshake::Refused(AuthFailure::ServerHasNoSecret),
        (
            Handshake::Hello {
                has_secret: true,
                client_nonce,
                ..
            },
            Some(secret),
        ) => Handshake::Challenge {
            server_nonce,
            server_proof: secret.server_proof(client_nonce, &server_nonce),
        },
        (other, _) => Handshake::Refused(AuthFailure::Protocol(format!(
            "expected Hello, got {}",
            other.kind()
        ))),
    }
}

impl Handshake {
    /// The frame's name, for messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Handshake::Hello { .. } => "Hello",
            Handshake::Challenge { .. } => "Challenge",
            Handshake::Open => "Open",
            Handshake::Proof { .. } => "Proof",
            Handshake::Accepted => "Accepted",
            Handshake::Refused(_) => "Refused",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> ClusterSecret {
        ClusterSecret::from_bytes(s.as_bytes()).unwrap()
    }

    #[test]
    fn proofs_verify_only_with_the_same_secret_nonces_and_role() {
        let a = secret("correct horse battery staple");
        let b = secret("correct horse battery stapl3");
        let (c, s) = ([1u8; 32], [2u8; 32]);
        assert!(a.verify_server(&c, &s, &a.server_proof(&c, &s)));
        assert!(a.verify_client(&c, &s, &a.client_proof(&c, &s)));
        assert!(!a.verify_server(&c, &s, &b.server_proof(&c, &s)));
        assert!(!a.verify_client(&c, &s, &b.client_proof(&c, &s)));
        // A server's proof cannot be reflected as a client's, and nonces are bound.
        assert!(!a.verify_client(&c, &s, &a.server_proof(&c, &s)));
        assert!(!a.verify_server(&s, &c, &a.server_proof(&c, &s)));
        assert!(!a.verify_server(&c, &s, &a.server_proof(&c, &s)[..31]));
    }

    #[test]
    fn secrets_are_trimmed_and_need_sixteen_bytes() {
        assert_eq!(secret("  0123456789abcdef\n"), secret("0123456789abcdef"));
        assert_eq!(ClusterSecret::from_bytes(b"0123456789abcde\n"), None);
        assert_eq!(ClusterSecret::from_bytes(b""), None);
        assert_eq!(
            format!("{:?}", secret("0123456789abcdef")),
            "ClusterSecret(16 bytes)"
        );
    }

    #[test]
    fn a_server_answers_each_kind_of_hello() {
        let k = secret("0123456789abcdef");
        let hello = |has_secret| Handshake::Hello {
            protocol: PROTOCOL,
            has_secret,
            client_nonce: [7; 32],
        };
        assert_eq!(answer_hello(None, &hello(false), [0; 32]), Handshake::Open);
        assert_eq!(
            answer_hello(Some(&k), &hello(false), [0; 32]),
            Handshake::Refused(AuthFailure::SecretRequired)
        );
        assert_eq!(
            answer_hello(None, &hello(true), [0; 32]),
            Handshake::Refused(AuthFailure::ServerHasNoSecret)
        );
        assert_eq!(
            answer_hello(Some(&k), &hello(true), [9; 32]),
            Handshake::Challenge {
                server_nonce: [9; 32],
                server_proof: k.server_proof(&[7; 32], &[9; 32])
            }
        );
        let old = Handshake::Hello {
            protocol: PROTOCOL + 1,
            has_secret: false,
            client_nonce: [7; 32],
        };
        assert!(matches!(
            answer_hello(None, &old, [0; 32]),
            Handshake::Refused(AuthFailure::Protocol(m)) if m.contains("protocol 2")
        ));
        assert!(matches!(
            answer_hello(Some(&k), &Handshake::Accepted, [0; 32]),
            Handshake::Refused(AuthFailure::Protocol(m)) if m == "expected Hello, got Accepted"
        ));
    }

    #[cfg(unix)]
    #[test]
    fn secret_files_must_be_private_and_long_enough() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            ClusterSecret::from_file(&path).unwrap(),
            secret("0123456789abcdef")
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = ClusterSecret::from_file(&path).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "cluster secret file {}: is accessible to every user (mode 644); make it private \
                 with `chmod 600`",
                path.display()
            )
        );
        std::fs::write(&path, "\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(
            ClusterSecret::from_file(&path).unwrap_err(),
            Error::Secret {
                path: path.clone(),
                problem: SecretProblem::TooShort(0)
            }
        );
        let missing = dir.path().join("missing");
        assert!(matches!(
            ClusterSecret::from_file(&missing).unwrap_err(),
            Error::Secret {
                problem: SecretProblem::Unreadable(_),
                ..
            }
        ));
    }
}
