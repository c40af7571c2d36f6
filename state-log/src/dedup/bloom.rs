//! The split-block bloom filter of a bucket ([`BloomBits`]): the fast "no" in front of the
//! bucket's locator and RocksDB. It never answers "no" for an id that was set, and answers
//! "maybe" for one that was not at about the configured rate; each probe touches one 32-byte
//! block (one cache line), so that probing every bucket stays cheap. Pure: it sees only
//! [`IdHash`]es, and is rebuilt from the stored ids when the filter is opened.

use bloomfilter::Bloom;

use super::hash::IdHash;

/// One block of a [`BloomBits`]: 256 bits as eight 32-bit words, aligned so that a block is
/// never split across two cache lines.
#[derive(Clone, Copy, Default)]
#[repr(C, align(32))]
pub(super) struct Block(pub(super) [u32; 8]);

/// Odd multipliers that pick one bit in each word of a block from the same 32 hash bits.
const BLOCK_SALTS: [u32; 8] = [
    0x47b6_137b,
    0x4497_4d91,
    0x8824_ad5b,
    0xa2b7_289d,
    0x7054_95c7,
    0x2df1_424b,
    0x9efc_4947,
    0x5c6b_fb31,
];

/// A split-block bloom filter probed with bits derived from one [`IdHash`]: an id picks one
/// 256-bit block (multiply-shift of the hash's high 32 bits) and sets or tests one bit in each
/// of the block's eight words (from 32 other hash bits). Every probe of an id touches one cache
/// line, where a classic bloom filter touches one per bit (about seven at 1 %): with a lookup
/// probing up to `num_buckets` filters, that is what a lookup costs. Blocks cost some accuracy
/// (ids crowd unevenly into blocks), so the filter gets 25 % more bits than the `bloomfilter` crate
/// gives a classic one of the same rate (0.6 % measured for a 1 % target); the test
/// `bloom_false_positive_rate_is_near_the_target` measures the rate.
pub(super) struct BloomBits {
    /// The blocks; an id's block is picked by multiply-shift of its hash.
    pub(super) blocks: Vec<Block>,
}

impl BloomBits {
    /// An empty filter sized for `items` ids at `false_positive_rate`.
    pub(super) fn new(items: usize, false_positive_rate: f64) -> BloomBits {
        let items = items.max(1);
        let classic = Bloom::<[u8]>::compute_bitmap_size(items, false_positive_rate);
        let bytes = classic + classic / 4;
        BloomBits {
            blocks: vec![Block::default(); bytes.div_ceil(32).max(1)],
        }
    }

    /// The block of `h`.
    #[inline]
    fn block_of(&self, h: IdHash) -> usize {
        ((h.block_bits() as u64 * self.blocks.len() as u64) >> 32) as usize
    }

    /// Asks the CPU to start loading the block of `h` into its caches (a hint: no effect on
    /// what any call answers), so that a [`BloomBits::set`] or a check of it a few ids later
    /// does not wait for memory.
    #[inline]
    pub(super) fn prefetch(&self, h: IdHash) {
        #[cfg(target_arch = "x86_64")]
        {
            let block: *const Block = &self.blocks[self.block_of(h)];
            // SAFETY: a prefetch is a hint that never faults and changes no memory; the
            // address is that of a live block anyway. SSE is part of every x86-64 target.
            #[allow(unsafe_code)]
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(block.cast());
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = h;
    }

    /// Sets the bits of `h`: from now on `h` is a "maybe".
    #[inline]
    pub(super) fn set(&mut self, h: IdHash) {
        let (i, mask) = (self.block_of(h), BloomMask::of(h));
        for (word, bit) in self.blocks[i].0.iter_mut().zip(mask.0) {
            *word |= bit;
        }
    }

    /// False if `h` was never set ("no"); true if it may have been ("maybe").
    #[cfg(test)]
    pub(super) fn check(&self, h: IdHash) -> bool {
        self.check_masked(h, &BloomMask::of(h))
    }

    /// [`BloomBits::check`] with the bits of `h` already computed (they are the same in every
    /// bucket).
    #[inline]
    pub(super) fn check_masked(&self, h: IdHash, mask: &BloomMask) -> bool {
        let block = &self.blocks[self.block_of(h)].0;
        let missing = block
            .iter()
            .zip(mask.0)
            .fold(0, |missing, (word, bit)| missing | (bit & !word));
        missing == 0
    }
}

/// The bit an id sets or tests in each word of its block, in every bucket's filter.
pub(super) struct BloomMask([u32; 8]);

impl BloomMask {
    /// The bits of `h`.
    #[inline]
    pub(super) fn of(h: IdHash) -> BloomMask {
        let bits = h.bit_bits();
        BloomMask(BLOCK_SALTS.map(|s| 1u32 << (bits.wrapping_mul(s) >> 27)))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn id(i: u64) -> [u8; 8] {
        i.to_be_bytes()
    }

    /// The bloom filters keep close to the configured false-positive rate on sequential ids
    /// (the ids of the vote workload): the one hash and the blocks lose nothing visible.
    #[test]
    fn bloom_false_positive_rate_is_near_the_target() {
        for fp in [0.01, 0.001] {
            let n = 100_000u64;
            let mut bloom = BloomBits::new(n as usize, fp);
            for i in 0..n {
                bloom.set(IdHash::of(&id(i)));
            }
            for i in 0..n {
                assert!(bloom.check(IdHash::of(&id(i))));
            }
            let trials = 200_000u64;
            let hits = (n..n + trials)
                .filter(|i| bloom.check(IdHash::of(&id(*i))))
                .count();
            let rate = hits as f64 / trials as f64;
            eprintln!("false-positive rate {rate} for target {fp}");
            assert!(rate < fp * 1.3, "{rate} for target {fp}");
        }
    }

    #[test]
    fn an_empty_filter_says_no() {
        let bloom = BloomBits::new(1_000, 0.01);
        for i in 0..10_000 {
            assert!(!bloom.check(IdHash::of(&id(i))), "{i}");
        }
    }

    proptest! {
        /// Never a false "no": every id set answers "maybe", through `check` and through
        /// `check_masked`, whatever the ids, the rate, and even when the filter holds more ids
        /// than it was sized for.
        #[test]
        fn never_says_no_to_an_id_set(
            ids in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..24), 0..300),
            items in 0usize..400,
            false_positive_rate in prop_oneof![Just(0.001), Just(0.01), Just(0.5), Just(0.999)],
        ) {
            let mut bloom = BloomBits::new(items, false_positive_rate);
            for id in &ids {
                bloom.set(IdHash::of(id));
            }
            for id in &ids {
                let h = IdHash::of(id);
                prop_assert!(bloom.check(h));
                prop_assert!(bloom.check_masked(h, &BloomMask::of(h)));
            }
        }
    }
}
