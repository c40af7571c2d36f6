//! A coordination log read whole, and its replica at any position: what `sardonyx
//! cluster-status` shows (the replica now) and `sardonyx replay --to N` (the time machine).
//!
//! Every process plays the log the same way ([`LogView::replica_at`] is what a live process
//! held after entry N): an entry that does not decode is skipped by all of them, and the
//! replica notes entries that decode but do not apply.

use sardonyx_state_log::{CoordinationLog, Error as LogError};

use crate::coordination::{replay, Entry, Replica};

/// Entries asked for per read.
const PAGE: usize = 4096;

/// The entries of a coordination log, decoded, with the positions of those that were not.
#[derive(Debug, Default)]
pub struct LogView {
    /// `(position, entry)` of every entry that decoded, in order.
    pub entries: Vec<(u64, Entry)>,
    /// `(position, why)` of every entry that did not decode (every replica skips it).
    pub undecodable: Vec<(u64, String)>,
    /// The position of the log's last entry (0: empty).
    pub last: u64,
}

impl LogView {
    /// The replica after the entry at position `to` (`None`: after the last).
    pub fn replica_at(&self, to: Option<u64>) -> Replica {
        replay(self.entries.iter().map(|(p, e)| (*p, e)), to)
    }

    /// The entry at position `position`, if it decoded.
    pub fn entry(&self, position: u64) -> Option<&Entry> {
        self.entries
            .binary_search_by_key(&position, |(p, _)| *p)
            .ok()
            .map(|i| &self.entries[i].1)
    }
}

/// Reads every entry of `log` (page by page) and decodes it.
pub async fn read_entries(log: &dyn CoordinationLog) -> Result<LogView, LogError> {
    let mut view = LogView::default();
    let mut from = 1;
    loop {
        let page = log.read_entries(from, PAGE).await?;
        let Some((last, _)) = page.last() else {
            return Ok(view);
        };
        from = last + 1;
        view.last = *last;
        for (position, bytes) in page {
            match Entry::decode(&bytes) {
                Ok(entry) => view.entries.push((position, entry)),
                Err(e) => view.undecodable.push((position, e.to_string())),
            }
        }
    }
}
