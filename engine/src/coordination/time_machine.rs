//! The time machine, pure half (DESIGN §6): any coordination log replayed from its start to any
//! entry gives the replica every process held at that point.

use super::entry::Entry;
use super::state::Replica;

/// The replica after playing `entries` (each with its log position, in log order) from an
/// empty cluster up to and including position `to` (`None`: all of them).
pub fn replay<'a>(entries: impl IntoIterator<Item = (u64, &'a Entry)>, to: Option<u64>) -> Replica {
    let mut replica = Replica::new();
    for (position, entry) in entries {
        if to.is_some_and(|to| position > to) {
            break;
        }
        let _ = replica.apply_in_place(entry, position);
    }
    replica
}
