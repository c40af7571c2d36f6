//! Key groups (DESIGN §4, "Grouping"): the specified hash of a group key ([`key_hash`]), the
//! pure arithmetic that places a key's hash in one of a job's `key_groups` key groups, divides
//! the key groups among a task's slots, and re-divides them when the number of slots changes.
//!
//! **A key group is a range of hashes.** The key group of a 64-bit key hash `h` among `G` groups
//! is `⌊h · G / 2⁶⁴⌋` (Lemire's multiply-shift, [`key_group_of`]), not `h mod G`: the groups are
//! then consecutive slices of the hash space, so a contiguous range of key groups is a
//! contiguous range of hashes, and the reduction costs a multiplication instead of a division.
//! Like the hash itself, this reduction is pinned for the life of the state format.
//!
//! **A fresh task's slots own contiguous ranges**: with `n` slots, slot `i` owns the key groups
//! `[⌊i·G/n⌋, ⌊(i+1)·G/n⌋)` ([`range_of`]), and [`slot_of`] is its inverse, both O(1); a
//! contiguous division is what routing uses and needs no table.
//!
//! **A changed number of slots re-divides with as few moves as possible** ([`reassign`]): an
//! assignment is then one owner per key group (a table, [`contiguous`] for a fresh task), and
//! the new one keeps every key group where it is unless its owner is gone or holds more than its
//! new share. Each new slot ends with ⌊G/n⌋ or ⌈G/n⌉ key groups, and the number moved is the
//! least any balanced division allows (`G − Σ min(held, share)` with the larger shares given to
//! the slots that hold the most). Minimal moves and contiguity cannot both be had (3 → 2 slots
//! from contiguous ranges keeps ranges only by moving more than the minimum), so the result may
//! be non-contiguous; among the minimal divisions, ties are broken towards the contiguous one of
//! the new count (a slot keeps the groups of its own contiguous range first, and a freed group
//! goes to the slot whose contiguous range holds it when that slot has room), so a division
//! stays close to contiguous ranges (3 → 2 → 3 slots is contiguous again; 4 → 3 → 4 of 17
//! groups leaves one group away from its range, as moving it home is one move more than
//! needed). The way back from a change never moves more groups than the way out did.

use std::cell::RefCell;
use std::ops::Range;

use sardonyx_windowing::Value;

/// The number of key groups of a job that does not set `key_groups`.
pub const DEFAULT_KEY_GROUPS: usize = 256;

/// The most key groups a job may have (as Flink's largest `maxParallelism`): a key group is
/// the unit of state a rescale moves, and a slot's per-group bookkeeping grows with the count.
pub const MAX_KEY_GROUPS: usize = 32_768;

/// The specified 64-bit hash of a group key: xxh3-64 with seed 0 over the key's canonical bytes
/// ([`Value::write_canonical`]). The same in every process, build and Rust release.
pub fn key_hash(key: &Value) -> u64 {
    // The usual keys (integers, short strings) have their canonical bytes written on the
    // stack: the same bytes, so the same hash, without the thread-local buffer.
    let mut stack = [0u8; 64];
    let n = match key {
        Value::Int(i) => {
            stack[0] = 0x02;
            stack[1..9].copy_from_slice(&i.to_le_bytes());
            9
        }
        Value::Str(s) if s.len() <= stack.len() - 9 => {
            stack[0] = 0x05;
            stack[1..9].copy_from_slice(&(s.len() as u64).to_le_bytes());
            stack[9..9 + s.len()].copy_from_slice(s.as_bytes());
            9 + s.len()
        }
        _ => return key_hash_buffered(key),
    };
    xxhash_rust::xxh3::xxh3_64(&stack[..n])
}

/// [`key_hash`] through a buffer of the key's canonical bytes (any key).
fn key_hash_buffered(key: &Value) -> u64 {
    thread_local! {
        // One buffer per thread: hashing a key allocates nothing once it has grown.
        static BYTES: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    BYTES.with(|b| {
        let mut b = b.borrow_mut();
        b.clear();
        key.write_canonical(&mut b);
        let h = xxhash_rust::xxh3::xxh3_64(&b);
        // A hostile huge key must not pin its memory in the buffer for good.
        if b.capacity() > 64 << 10 {
            *b = Vec::new();
        }
        h
    })
}

/// The key group (of `key_groups`) of a group key: [`key_group_of`] its [`key_hash`], as a
/// label (key groups number at most [`MAX_KEY_GROUPS`], so they fit in 16 bits).
pub fn key_group_label(key: &Value, key_groups: usize) -> u16 {
    key_group_of(key_hash(key), key_groups) as u16
}

/// The key group (of `key_groups`) of a 64-bit key hash: `⌊hash · key_groups / 2⁶⁴⌋`, the hash's
/// position in the hash space scaled to the key groups. `key_groups` is at least 1 (0 is read
/// as 1).
pub fn key_group_of(hash: u64, key_groups: usize) -> usize {
    let g = key_groups.max(1) as u128;
    ((u128::from(hash) * g) >> 64) as usize
}

/// The key groups slot `slot` of `slots` owns in the contiguous division of `key_groups`:
/// `[⌊slot·G/n⌋, ⌊(slot+1)·G/n⌋)`. The ranges of slots `0..n` cover `0..G` in order, each with
/// ⌊G/n⌋ or ⌈G/n⌉ groups (empty ranges only when there are more slots than groups).
pub fn range_of(slot: usize, slots: usize, key_groups: usize) -> Range<usize> {
    let n = slots.max(1) as u64;
    let g = key_groups as u64;
    let at = |i: u64| (i * g / n) as usize;
    at(slot as u64)..at(slot as u64 + 1)
}

/// The slot (of `slots`) that owns `key_group` in the contiguous division of `key_groups`
/// ([`range_of`]'s inverse): the greatest `i` with `⌊i·G/n⌋ ≤ key_group`, which is
/// `⌊((key_group+1)·n − 1) / G⌋`.
pub fn slot_of(key_group: usize, slots: usize, key_groups: usize) -> usize {
    let n = slots.max(1) as u64;
    let g = key_groups.max(1) as u64;
    (((key_group as u64 + 1) * n - 1) / g) as usize
}

/// The contiguous division of `key_groups` among `slots` as a table: the owner of each key
/// group, in key group order (what a fresh task uses; [`slot_of`] of every group).
pub fn contiguous(slots: usize, key_groups: usize) -> Vec<usize> {
    (0..key_groups)
        .map(|kg| slot_of(kg, slots, key_groups))
        .collect()
}

/// Re-divides the key groups of `owners` (the owner slot of each key group) among `new_slots`
/// slots (0 is read as 1), moving as few key groups as possible: every key group is owned by
/// exactly one new slot, each new slot owns ⌊G/n⌋ or ⌈G/n⌉ of them, and a key group moves only
/// if its owner is gone (`owner ≥ new_slots`) or holds more than its share. Ties are broken
/// towards the contiguous division of `new_slots` (see the module doc). Pure and deterministic:
/// every process that computes it from the same table gets the same answer.
pub fn reassign(owners: &[usize], new_slots: usize) -> Vec<usize> {
    let n = new_slots.max(1);
    let total = owners.len();
    let (base, extra) = (total / n, total % n);
    let home = |kg: usize| slot_of(kg, n, total);
    let mut held = vec![0_usize; n];
    for &o in owners {
        if o < n {
            held[o] += 1;
        }
    }
    // The `extra` larger shares go first to slots that already hold that many (each saves a
    // move), then to slots whose contiguous range is a larger one, then by index.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&s| (held[s] <= base, range_of(s, n, total).len() <= base, s));
    let mut share = vec![base; n];
    for &s in &order[..extra] {
        share[s] += 1;
    }
    // Each surviving slot keeps up to its share: the groups of its own contiguous range
    // first, then the others in key group order; everything else is freed.
    let mut new = vec![usize::MAX; total];
    let mut load = vec![0_usize; n];
    for in_home in [true, false] {
        for (kg, &o) in owners.iter().enumerate() {
            if o < n && (home(kg) == o) == in_home && load[o] < share[o] {
                new[kg] = o;
                load[o] += 1;
            }
        }
    }
    // Freed groups go to the slot whose contiguous range holds them if it has room, then to
    // the slots with room in index order.
    for (kg, owner) in new.iter_mut().enumerate() {
        let h = home(kg);
        if *owner == usize::MAX && load[h] < share[h] {
            *owner = h;
            load[h] += 1;
        }
    }
    let mut next = 0;
    for owner in new.iter_mut().filter(|o| **o == usize::MAX) {
        while load[next] == share[next] {
            next += 1;
        }
        *owner = next;
        load[next] += 1;
    }
    new
}

/// The key groups that change owner from `old` to `new` (two tables of the same key groups),
/// as `(key_group, from, to)` in key group order.
///
/// # Panics
/// If the tables are of different lengths (they would not be of the same key groups).
pub fn moves(old: &[usize], new: &[usize]) -> Vec<(usize, usize, usize)> {
    assert_eq!(old.len(), new.len(), "assignments of different key groups");
    old.iter()
        .zip(new)
        .enumerate()
        .filter(|(_, (o, n))| o != n)
        .map(|(kg, (&o, &n))| (kg, o, n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The fewest moves any balanced division of `owners` among `n` slots needs, found by
    /// trying every division (small cases only): the reference [`reassign`] is held to.
    fn brute_force_min_moves(owners: &[usize], n: usize) -> usize {
        let g = owners.len();
        let (lo, hi) = (g / n, g.div_ceil(n));
        let mut best = usize::MAX;
        let mut table = vec![0_usize; g];
        loop {
            let mut count = vec![0_usize; n];
            for &o in &table {
                count[o] += 1;
            }
            if count.iter().all(|&c| lo <= c && c <= hi) {
                let moved = owners.iter().zip(&table).filter(|(a, b)| a != b).count();
                best = best.min(moved);
            }
            // The next table, counting in base n.
            let mut i = 0;
            loop {
                if i == g {
                    return best;
                }
                table[i] += 1;
                if table[i] < n {
                    break;
                }
                table[i] = 0;
                i += 1;
            }
        }
    }

    fn counts(table: &[usize], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &o in table {
            c[o] += 1;
        }
        c
    }

    /// Any owner table of `g` key groups among up to `m` old slots (owners may be gone).
    fn tables(max_groups: usize, max_slots: usize) -> impl Strategy<Value = Vec<usize>> {
        (1..=max_groups, 1..=max_slots).prop_flat_map(|(g, m)| prop::collection::vec(0..m, g))
    }

    #[test]
    fn contiguous_ranges_of_a_few_sizes() {
        assert_eq!(range_of(0, 1, 256), 0..256);
        assert_eq!(
            (0..3).map(|s| range_of(s, 3, 256)).collect::<Vec<_>>(),
            vec![0..85, 85..170, 170..256]
        );
        assert_eq!(
            (0..7)
                .map(|s| range_of(s, 7, 256).len())
                .collect::<Vec<_>>(),
            vec![36, 37, 36, 37, 36, 37, 37]
        );
        assert_eq!(contiguous(3, 7), vec![0, 0, 1, 1, 2, 2, 2]);
        assert_eq!(
            [0, 84, 85, 169, 170, 255].map(|kg| slot_of(kg, 3, 256)),
            [0, 0, 1, 1, 2, 2]
        );
    }

    #[test]
    fn key_groups_are_slices_of_the_hash_space() {
        assert_eq!(key_group_of(0, 256), 0);
        assert_eq!(key_group_of(u64::MAX, 256), 255);
        assert_eq!(key_group_of(1 << 56, 256), 1);
        assert_eq!(key_group_of((1 << 56) - 1, 256), 0);
        assert_eq!(key_group_of(u64::MAX, 1), 0);
        assert_eq!(key_group_of(u64::MAX, 0), 0);
        assert_eq!(key_group_of(u64::MAX / 3 * 2, 3), 1);
    }

    #[test]
    fn scaling_3_to_2_moves_the_fewest_groups_not_whole_ranges() {
        let old = contiguous(3, 6); // [0, 0, 1, 1, 2, 2]
        let new = reassign(&old, 2);
        // Slot 2 is gone: only its two groups move; ranges would have moved group 2 as well.
        assert_eq!(new, vec![0, 0, 1, 1, 1, 0]);
        assert_eq!(moves(&old, &new), vec![(4, 2, 1), (5, 2, 0)]);
        assert_eq!(contiguous(2, 6), vec![0, 0, 0, 1, 1, 1]);
        // Back to 3: contiguous again.
        assert_eq!(reassign(&new, 3), old);
    }

    proptest! {
        /// The stack fast path hashes the same bytes as the buffered one: integers, strings
        /// on both sides of its length limit (multi-byte characters included), and the kinds
        /// it leaves to the buffer.
        #[test]
        fn the_fast_key_hash_is_the_canonical_one(
            key in prop_oneof![
                any::<i64>().prop_map(Value::Int),
                any::<u64>().prop_map(Value::UInt),
                "\\PC{0,70}".prop_map(|s| Value::from(s.as_str())),
                "[a-z]{50,60}".prop_map(|s| Value::from(s.as_str())),
                any::<bool>().prop_map(Value::Bool),
                any::<f64>().prop_map(Value::Float),
                Just(Value::Null),
            ],
        ) {
            prop_assert_eq!(key_hash(&key), key_hash_buffered(&key));
        }

        #[test]
        fn range_of_and_slot_of_are_inverse(
            key_groups in 1..=MAX_KEY_GROUPS,
            slots in 1_usize..=64,
            at in any::<prop::sample::Index>(),
        ) {
            let slots = slots.min(key_groups);
            let kg = at.index(key_groups);
            let s = slot_of(kg, slots, key_groups);
            prop_assert!(s < slots);
            prop_assert!(range_of(s, slots, key_groups).contains(&kg));
            // The ranges tile 0..G in order, balanced.
            let ranges: Vec<_> = (0..slots).map(|i| range_of(i, slots, key_groups)).collect();
            prop_assert_eq!(ranges[0].start, 0);
            prop_assert_eq!(ranges[slots - 1].end, key_groups);
            for w in ranges.windows(2) {
                prop_assert_eq!(w[0].end, w[1].start);
            }
            for r in &ranges {
                prop_assert!(r.len() == key_groups / slots || r.len() == key_groups.div_ceil(slots));
            }
        }

        #[test]
        fn key_group_of_is_in_range_and_monotone(a in any::<u64>(), b in any::<u64>(), g in 1..=MAX_KEY_GROUPS) {
            let (lo, hi) = (a.min(b), a.max(b));
            prop_assert!(key_group_of(hi, g) < g);
            prop_assert!(key_group_of(lo, g) <= key_group_of(hi, g));
        }

        #[test]
        fn reassign_owns_each_group_once_balanced_with_few_moves(
            owners in tables(300, 12),
            n in 1_usize..=12,
        ) {
            let new = reassign(&owners, n);
            let g = owners.len();
            prop_assert_eq!(new.len(), g);
            // Every key group has exactly one owner, a new slot, and the slots are balanced.
            prop_assert!(new.iter().all(|&o| o < n));
            for c in counts(&new, n) {
                prop_assert!(c == g / n || c == g.div_ceil(n), "{c} groups of {g} on one of {n} slots");
            }
            // A group moves only when it must: its owner is gone, or holds more than a share.
            let held = counts(&owners.iter().map(|&o| o.min(n)).collect::<Vec<_>>(), n + 1);
            let forced: usize = held[n]
                + (0..n).map(|s| held[s].saturating_sub(g.div_ceil(n))).sum::<usize>();
            let moved = moves(&owners, &new).len();
            prop_assert!(moved >= forced);
            prop_assert!(moved <= forced + n, "{moved} moves, {forced} forced, {n} slots");
            // Reassigning to the same count moves nothing.
            prop_assert_eq!(reassign(&new, n), new.clone());
        }

        #[test]
        fn reassign_moves_the_fewest_groups_possible(owners in tables(7, 4), n in 1_usize..=3) {
            let new = reassign(&owners, n);
            prop_assert_eq!(moves(&owners, &new).len(), brute_force_min_moves(&owners, n));
        }

        #[test]
        fn scaling_out_and_back_in_moves_no_more_than_the_way_out(
            key_groups in 16_usize..=600,
            n in 1_usize..=16,
            m in 1_usize..=16,
        ) {
            // A job has at least as many key groups as peers (validation), here at least 16.
            let start = contiguous(n, key_groups);
            let there = reassign(&start, m);
            let back = reassign(&there, n);
            // The way back moves no more than the way out (undoing it is one balanced answer).
            // It need not be contiguous again: with 17 groups, 4 → 3 → 4 slots leaves one group
            // on slot 0, as moving it home would be a move more than needed.
            prop_assert!(moves(&there, &back).len() <= moves(&start, &there).len());
        }

        #[test]
        fn a_contiguous_division_is_kept(key_groups in 16_usize..=600, n in 1_usize..=16) {
            let start = contiguous(n, key_groups);
            prop_assert_eq!(reassign(&start, n), start);
        }
    }
}
