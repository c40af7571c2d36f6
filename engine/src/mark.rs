//! [`Mark`]: what a peer tells the peers it sends to about event time with every batch, in
//! one process ([`crate::runtime`]) and between processes ([`crate::messaging`]); a module of
//! its own so that both use it without depending on each other.

/// What a peer tells its downstream peers about event time with every batch.
///
/// Idleness is declared by inputs only (DESIGN §4): an input peer whose every partition is idle
/// sends `idle`, and a function or windowed peer is idle exactly when all its upstream peers
/// are (it never infers idleness from a quiet upstream peer: a slow peer is not an idle one).
/// An idle sender stops holding the receiver's watermark back; its next batch that is not
/// idle makes it hold it again.
///
/// It travels between processes too ([`crate::messaging`]), hence public and serializable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mark {
    /// The sender's watermark (`None` until it has one).
    pub watermark: Option<i64>,
    /// The sender is idle.
    pub idle: bool,
}
