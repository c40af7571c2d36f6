//! The coordination log's API: the [`CoordinationLog`] trait that [`crate::EmbeddedLog`] and
//! [`crate::LogClient`] implement (as they do [`crate::Ledgers`]), and the [`EntrySubscription`]
//! that yields the log's entries in order from a position and then each new one as it commits.
//!
//! The coordination log is the state log's second keyspace: one totally ordered list of opaque
//! entries (this crate knows nothing of what they mean) at positions 1, 2, 3, … without gaps,
//! never compacted. The engine's peer processes append to it and play it into their replicas.
//! A subscription is built from a source that can wait for entries (the embedded node's
//! notification of each apply, or a server's long poll); the subscription itself only keeps
//! the next position to yield and checks that what the source gives follows on from it.

use std::collections::VecDeque;

use crate::error::{Error, Result};
use crate::types::RequestId;
use crate::BoxFuture;

/// Largest entry the coordination log accepts, in bytes: a larger one is refused with
/// [`Error::TooLarge`] before it is sent (by a [`crate::LogClient`]) and before it reaches Raft
/// (by every node). Entries are meant to be small (a join, a job submission).
pub const MAX_ENTRY_BYTES: usize = 16 << 20;

/// An entry of the coordination log with its position: `(position, bytes)`.
pub type CoordinationEntry = (u64, Vec<u8>);

/// Most entries one read or wait of a server answers (a client reads page after page).
pub(crate) const MAX_ENTRIES_PER_PAGE: usize = 4096;

/// The coordination log, implemented by [`crate::EmbeddedLog`] and [`crate::LogClient`]; hold
/// it as `Arc<dyn CoordinationLog>` or as a generic.
///
/// Positions start at 1 and follow one another without gaps; every reader sees the same entry
/// at the same position, for ever (nothing is compacted).
pub trait CoordinationLog: Send + Sync {
    /// Appends `entry` as the log's next entry and returns its position once it is committed on
    /// a quorum and fsynced. Appending again with a `request` id that was already applied (the
    /// last [`REQUEST_ID_WINDOW`](crate::REQUEST_ID_WINDOW) of each client are remembered)
    /// returns the original position and appends nothing. Request ids of the coordination log
    /// and of the ledgers are apart: the same id may be used for both. An entry over
    /// [`MAX_ENTRY_BYTES`] is refused with [`Error::TooLarge`].
    fn append_entry<'a>(&'a self, request: RequestId, entry: Vec<u8>)
        -> BoxFuture<'a, Result<u64>>;

    /// The entries at positions `from` (at least 1; 0 is [`Error::InvalidRequest`]) and after,
    /// in order: `max` of them, or fewer if the log ends first (none if `from` is past its
    /// end). Sees every append that completed before the call. A stored entry that fails its
    /// checksum, or a missing one, is [`Error::CorruptEntry`] naming its position.
    fn read_entries<'a>(
        &'a self,
        from: u64,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<CoordinationEntry>>>;

    /// The position of the last entry (0 if the log is empty); sees every completed append.
    fn last_entry_position(&self) -> BoxFuture<'_, Result<u64>>;

    /// A subscription that yields every entry from position `from` (at least 1) in order, then
    /// each new entry as it commits (see [`EntrySubscription`]).
    fn subscribe_entries(&self, from: u64) -> Result<EntrySubscription>;
}

/// Where a subscription gets its entries: the embedded node or a cluster's servers.
pub(crate) trait EntrySource: Send + Sync {
    /// Entries from position `from` on, in order, waiting until at least one exists — or an
    /// empty page if a bounded wait passed first (the subscription asks again). Every entry
    /// given must be committed. The future owns what it needs, so that a subscription can keep
    /// it across cancelled calls.
    fn fetch(&self, from: u64) -> BoxFuture<'static, Result<Vec<CoordinationEntry>>>;
}

/// A fetch in flight.
type Fetch = BoxFuture<'static, Result<Vec<CoordinationEntry>>>;

/// A subscription to the coordination log: [`EntrySubscription::next`] yields the entries from
/// the starting position in order, without gaps or repeats, then waits for each new one.
///
/// Only committed entries are yielded. On the embedded node it wakes on the state machine's
/// apply; over a [`crate::LogClient`] it long-polls the leader, and survives leader changes and
/// server restarts: the wait is re-issued to whichever server leads, from the next position
/// not yet yielded. An error from `next` (e.g. [`Error::Unavailable`] once the client's
/// `retry_for` has passed with no server answering) ends nothing: calling `next` again resumes
/// at the same position. `next` is cancel-safe (an abandoned call yields nothing and loses
/// nothing: the request in flight is kept and the next call goes on awaiting it, so a
/// `tokio::select!` loop that cancels `next` on every tick leaves no abandoned long polls).
pub struct EntrySubscription {
    next: u64,
    buffered: VecDeque<CoordinationEntry>,
    source: Box<dyn EntrySource>,
    /// The fetch of `next` in flight, if a call to `next` was cancelled while awaiting it.
    in_flight: Option<Fetch>,
}

impl EntrySubscription {
    /// A subscription from position `from` (at least 1) over `source`.
    pub(crate) fn new(from: u64, source: Box<dyn EntrySource>) -> Result<EntrySubscription> {
        if from == 0 {
            return Err(Error::InvalidRequest(
                "coordination log positions start at 1".into(),
            ));
        }
        Ok(EntrySubscription {
            next: from,
            buffered: VecDeque::new(),
            source,
            in_flight: None,
        })
    }

    /// The position of the entry the next call to [`EntrySubscription::next`] yields.
    pub fn next_position(&self) -> u64 {
        self.next
    }

    /// The next entry, `(position, bytes)`, waiting for it to be committed if need be.
    pub async fn next(&mut self) -> Result<CoordinationEntry> {
        loop {
            if let Some(entry) = self.buffered.pop_front() {
                self.next = entry.0 + 1;
                return Ok(entry);
            }
            let fetch = self
                .in_flight
                .get_or_insert_with(|| self.source.fetch(self.next));
            let page = fetch.await;
            self.in_flight = None;
            let page = page?;
            check_follows(self.next, &page)?;
            self.buffered.extend(page);
        }
    }
}

impl std::fmt::Debug for EntrySubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntrySubscription")
            .field("next", &self.next)
            .field("buffered", &self.buffered.len())
            .finish_non_exhaustive()
    }
}

/// Refuses an entry over [`MAX_ENTRY_BYTES`] with [`Error::TooLarge`].
pub(crate) fn check_entry_size(bytes: usize) -> Result<()> {
    if bytes > MAX_ENTRY_BYTES {
        return Err(Error::TooLarge {
            what: "coordination log entry".into(),
            bytes: bytes as u64,
            limit: MAX_ENTRY_BYTES as u64,
        });
    }
    Ok(())
}

/// Checks that a page of entries starts at `next` and that its positions follow one another;
/// anything else is a broken promise of the source, reported rather than yielded.
pub(crate) fn check_follows(next: u64, page: &[CoordinationEntry]) -> Result<()> {
    for (i, (position, _)) in page.iter().enumerate() {
        let expected = next + i as u64;
        if *position != expected {
            return Err(Error::Fatal(format!(
                "the coordination log answered position {position} where {expected} was due"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use proptest::prelude::*;
    use tokio::sync::watch;

    use super::*;

    /// A source that serves pages of a fixed list (possibly tampered with), one call at a time.
    struct Pages(Mutex<VecDeque<Result<Vec<CoordinationEntry>>>>);

    impl EntrySource for Pages {
        fn fetch(&self, _from: u64) -> Fetch {
            let page = self.0.lock().unwrap().pop_front();
            Box::pin(async move { page.unwrap_or_else(|| Ok(Vec::new())) })
        }
    }

    /// A source whose every fetch waits until the gate opens, then answers the entry asked
    /// for; it counts its fetches.
    struct Gated {
        fetches: Arc<AtomicUsize>,
        gate: watch::Receiver<bool>,
    }

    impl EntrySource for Gated {
        fn fetch(&self, from: u64) -> Fetch {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            let mut gate = self.gate.clone();
            Box::pin(async move {
                gate.wait_for(|open| *open).await.expect("gate kept");
                Ok(vec![(from, b"e".to_vec())])
            })
        }
    }

    #[tokio::test]
    async fn a_cancelled_next_keeps_its_fetch_for_the_next_call() {
        let fetches = Arc::new(AtomicUsize::new(0));
        let (open, gate) = watch::channel(false);
        let source = Gated {
            fetches: fetches.clone(),
            gate,
        };
        let mut sub = EntrySubscription::new(4, Box::new(source)).unwrap();
        for _ in 0..3 {
            // Abandoned while its fetch waits (a select! that took another branch).
            let abandoned = tokio::time::timeout(Duration::from_millis(5), sub.next()).await;
            assert!(abandoned.is_err());
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1, "one fetch, kept");
        open.send_replace(true);
        assert_eq!(sub.next().await.unwrap(), (4, b"e".to_vec()));
        assert_eq!(sub.next().await.unwrap(), (5, b"e".to_vec()));
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }

    fn entries(positions: impl IntoIterator<Item = u64>) -> Vec<CoordinationEntry> {
        positions.into_iter().map(|p| (p, vec![p as u8])).collect()
    }

    #[tokio::test]
    async fn yields_pages_in_order_and_resumes_after_an_error() {
        let pages = VecDeque::from([
            Ok(entries(3..5)),
            Ok(Vec::new()),
            Err(Error::Unavailable("no server".into())),
            Ok(entries(5..6)),
            Ok(entries([7])),
        ]);
        let mut sub = EntrySubscription::new(3, Box::new(Pages(Mutex::new(pages)))).unwrap();
        assert_eq!(sub.next().await.unwrap().0, 3);
        assert_eq!(sub.next().await.unwrap(), (4, vec![4]));
        assert_eq!(sub.next_position(), 5);
        // The empty page is asked again; the error is reported and ends nothing.
        assert_eq!(
            sub.next().await,
            Err(Error::Unavailable("no server".into()))
        );
        assert_eq!(sub.next().await.unwrap().0, 5);
        // A page that skips a position is refused, not yielded.
        let e = sub.next().await.unwrap_err();
        assert_eq!(
            e,
            Error::Fatal("the coordination log answered position 7 where 6 was due".into())
        );
        assert_eq!(sub.next_position(), 6);
        assert!(matches!(
            EntrySubscription::new(0, Box::new(Pages(Mutex::default()))),
            Err(Error::InvalidRequest(_))
        ));
    }

    proptest! {
        #[test]
        fn only_pages_that_follow_on_are_accepted(
            next in 1u64..1000,
            positions in proptest::collection::vec(1u64..1100, 0..20),
        ) {
            let page = entries(positions.iter().copied());
            let follows = positions.iter().enumerate().all(|(i, p)| *p == next + i as u64);
            prop_assert_eq!(check_follows(next, &page).is_ok(), follows);
            let run = entries(next..next + positions.len() as u64);
            prop_assert!(check_follows(next, &run).is_ok());
        }
    }
}
