//! How a task's key groups are divided among its slots ([`Division`]), and where a slot of a
//! re-divided task finds the state of each of its key groups ([`sources`]): pure, so routing,
//! rescaling and the cluster's placement agree without talking to each other.
//!
//! A task that was never re-divided, or that `sardonyx run` re-divided on restart, owns
//! contiguous ranges ([`key_groups::range_of`]), and routing needs no table. A task a cluster
//! grew or shrank while it ran has the division [`key_groups::reassign`] gave it (as few key
//! groups moved as possible), which may be any table: routing then looks each key group up.
//!
//! **Chained re-divisions.** A slot of a new division gathers its first state from the slots of
//! the divisions before it and writes it as its first snapshot. A task may be re-divided again
//! before every slot of the previous division gathered (a process joined twice in quick
//! succession); a key group's state is then in the newest division whose owner of that group
//! has gathered (has a snapshot), or, if none has, in the oldest division kept, whose slots hold
//! their state from the start. [`sources`] computes exactly that, and every older division's
//! ledgers may be retired once every slot of a newer one has gathered.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use crate::key_groups::{self, key_group_of};

/// How the key groups of a task are divided among its slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Division {
    /// Slot `i` of `slots` owns [`key_groups::range_of`]`(i, slots, key_groups)`.
    Contiguous {
        /// The task's slot count.
        slots: usize,
        /// The job's number of key groups.
        key_groups: usize,
    },
    /// Any division: the owner slot of each key group.
    Table {
        /// The task's slot count (some may own no key group).
        slots: usize,
        /// The owner of each key group, in key group order.
        owners: Arc<[u32]>,
    },
}

impl Division {
    /// The contiguous division of `key_groups` among `slots` slots (0 is read as 1).
    pub fn contiguous(slots: usize, key_groups: usize) -> Division {
        Division::Contiguous {
            slots: slots.max(1),
            key_groups,
        }
    }

    /// The division of `owners` (one owner slot per key group, each below `slots`): the
    /// contiguous one if that is what it is.
    ///
    /// # Panics
    /// If an owner is not below `slots`.
    pub fn from_owners(slots: usize, owners: &[usize]) -> Division {
        let slots = slots.max(1);
        assert!(
            owners.iter().all(|&o| o < slots),
            "a key group's owner is not one of the {slots} slots"
        );
        if owners == key_groups::contiguous(slots, owners.len()).as_slice() {
            return Division::contiguous(slots, owners.len());
        }
        Division::Table {
            slots,
            owners: owners.iter().map(|&o| o as u32).collect(),
        }
    }

    /// The task's slot count.
    pub fn slots(&self) -> usize {
        match self {
            Division::Contiguous { slots, .. } | Division::Table { slots, .. } => *slots,
        }
    }

    /// The job's number of key groups.
    pub fn key_groups(&self) -> usize {
        match self {
            Division::Contiguous { key_groups, .. } => *key_groups,
            Division::Table { owners, .. } => owners.len(),
        }
    }

    /// Whether slot `i` owns `[⌊i·G/n⌋, ⌊(i+1)·G/n⌋)` (routing needs no table).
    pub fn is_contiguous(&self) -> bool {
        matches!(self, Division::Contiguous { .. })
    }

    /// The slot that owns `key_group`.
    pub fn owner(&self, key_group: usize) -> usize {
        match self {
            Division::Contiguous { slots, key_groups } => {
                key_groups::slot_of(key_group, *slots, *key_groups)
            }
            Division::Table { owners, .. } => owners[key_group] as usize,
        }
    }

    /// The slot that takes a key of 64-bit hash `hash`: the owner of its key group.
    pub fn slot_of_hash(&self, hash: u64) -> usize {
        self.owner(key_group_of(hash, self.key_groups()))
    }

    /// Whether slot `slot` owns `key_group`.
    pub fn owns(&self, slot: usize, key_group: usize) -> bool {
        key_group < self.key_groups() && self.owner(key_group) == slot
    }

    /// The key groups of slot `slot`, in order.
    pub fn groups_of(&self, slot: usize) -> Vec<usize> {
        match self {
            Division::Contiguous { slots, key_groups } => {
                key_groups::range_of(slot, *slots, *key_groups).collect()
            }
            Division::Table { owners, .. } => owners
                .iter()
                .enumerate()
                .filter(|(_, &o)| o as usize == slot)
                .map(|(kg, _)| kg)
                .collect(),
        }
    }

    /// The key groups of slot `slot` as ranges in order (for logs and the cluster's replica).
    pub fn ranges_of(&self, slot: usize) -> Vec<Range<usize>> {
        let mut out: Vec<Range<usize>> = Vec::new();
        for kg in self.groups_of(slot) {
            match out.last_mut() {
                Some(r) if r.end == kg => r.end = kg + 1,
                _ => out.push(kg..kg + 1),
            }
        }
        out
    }
}

/// Where a slot of a re-divided task finds the state of each of its key groups: the key groups
/// of `mine`, grouped by the `(division, slot)` whose ledger holds their state, where division
/// `i` is `past[i]` (oldest first; the new division itself is not among them). A key group's
/// state is in the newest past division whose owner of it has gathered (`gathered(i, slot)`:
/// its ledger has a snapshot), else in the oldest, `past[0]`, whose slots hold their state from
/// the start and for which `gathered` is not asked. Every key group of `mine` is in exactly one
/// source; no source is listed without key groups. `past` must not be empty.
///
/// # Panics
/// If `past` is empty, or a key group of `mine` is not a key group of the past divisions.
pub fn sources(
    mine: &[usize],
    past: &[Division],
    mut gathered: impl FnMut(usize, usize) -> bool,
) -> BTreeMap<(usize, usize), Vec<usize>> {
    assert!(!past.is_empty(), "a re-divided task has a division before");
    let mut asked: BTreeMap<(usize, usize), bool> = BTreeMap::new();
    let mut out: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
    for &kg in mine {
        let mut source = (0, past[0].owner(kg));
        for i in (1..past.len()).rev() {
            let slot = past[i].owner(kg);
            if *asked.entry((i, slot)).or_insert_with(|| gathered(i, slot)) {
                source = (i, slot);
                break;
            }
        }
        out.entry(source).or_default().push(kg);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_table_that_is_contiguous_is_the_contiguous_division() {
        assert_eq!(
            Division::from_owners(3, &key_groups::contiguous(3, 256)),
            Division::contiguous(3, 256)
        );
        let grown = key_groups::reassign(&key_groups::contiguous(2, 256), 3);
        let d = Division::from_owners(3, &grown);
        assert!(!d.is_contiguous());
        assert_eq!(d.ranges_of(0), vec![0..86]);
        assert_eq!(d.ranges_of(1), vec![128..213]);
        assert_eq!(d.ranges_of(2), vec![86..128, 213..256]);
        assert_eq!((d.owner(85), d.owner(86), d.owner(255)), (0, 2, 2));
        assert_eq!(d.slot_of_hash(u64::MAX), 2);
        assert_eq!(d.slot_of_hash(0), 0);
    }

    #[test]
    fn contiguous_division_answers_as_the_ranges() {
        let d = Division::contiguous(3, 256);
        assert_eq!(d.ranges_of(1), vec![85..170]);
        assert_eq!(d.groups_of(2).len(), 86);
        assert!(d.owns(1, 85) && !d.owns(1, 170) && !d.owns(1, 256));
    }

    #[test]
    fn sources_take_the_newest_division_that_gathered() {
        let g = 8;
        let past = [
            Division::contiguous(1, g),
            Division::contiguous(2, g),
            Division::from_owners(3, &key_groups::reassign(&key_groups::contiguous(2, g), 3)),
        ];
        // Division 2 (3 slots): only its slot 1 gathered; division 1 (2 slots): only slot 0.
        let gathered = |i: usize, s: usize| (i, s) == (2, 1) || (i, s) == (1, 0);
        let all: Vec<usize> = (0..g).collect();
        let got = sources(&all, &past, gathered);
        let want_2_1 = past[2].groups_of(1);
        let want_1_0: Vec<usize> = (0..4).filter(|kg| !want_2_1.contains(kg)).collect();
        let want_0_0: Vec<usize> = (4..8).filter(|kg| !want_2_1.contains(kg)).collect();
        let mut want = BTreeMap::new();
        want.insert((2, 1), want_2_1);
        want.insert((1, 0), want_1_0);
        want.insert((0, 0), want_0_0);
        want.retain(|_, v: &mut Vec<usize>| !v.is_empty());
        assert_eq!(got, want);
    }

    /// A chain of divisions of `g` key groups: the first contiguous, each next one re-divided
    /// from the one before with `reassign`.
    fn chain() -> impl Strategy<Value = Vec<Division>> {
        (1_usize..40, prop::collection::vec(1_usize..6, 1..5)).prop_map(|(g, counts)| {
            let mut owners = key_groups::contiguous(counts[0], g);
            let mut out = vec![Division::from_owners(counts[0], &owners)];
            for &n in &counts[1..] {
                owners = key_groups::reassign(&owners, n);
                out.push(Division::from_owners(n, &owners));
            }
            out
        })
    }

    proptest! {
        #[test]
        fn every_key_group_has_one_source_its_owner_there(
            past in chain(),
            gathered_bits in any::<u64>(),
            slot_of_new in 0_usize..6,
        ) {
            let g = past[0].key_groups();
            let new = Division::from_owners(
                slot_of_new + 1,
                &key_groups::reassign(
                    &(0..g).map(|kg| past.last().unwrap().owner(kg)).collect::<Vec<_>>(),
                    slot_of_new + 1,
                ),
            );
            let mine = new.groups_of(slot_of_new);
            let gathered = |i: usize, s: usize| gathered_bits >> ((i * 6 + s) % 64) & 1 == 1;
            let got = sources(&mine, &past, gathered);
            let mut seen: Vec<usize> = got.values().flatten().copied().collect();
            seen.sort_unstable();
            prop_assert_eq!(&seen, &mine);
            for ((i, slot), kgs) in &got {
                prop_assert!(!kgs.is_empty());
                for &kg in kgs {
                    // Its owner in that division, which gathered (or is the oldest), and no
                    // newer division's owner of it gathered.
                    prop_assert_eq!(past[*i].owner(kg), *slot);
                    prop_assert!(*i == 0 || gathered(*i, *slot));
                    for (j, newer) in past.iter().enumerate().skip(i + 1) {
                        prop_assert!(!gathered(j, newer.owner(kg)));
                    }
                }
            }
        }
    }
}
