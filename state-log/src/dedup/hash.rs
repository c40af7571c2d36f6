//! The one hash of an id ([`IdHash`]) from which every bloom probe and the locator key are
//! derived. A lookup probes the bloom filter of every bucket and, on a "maybe", a locator:
//! hashing the id once for all of them (a 64-bit multiply-fold hash, 8 bytes at a time) is what
//! keeps a lookup to one hash and one cache line per bucket. Pure: bytes in, bits out.

/// The one hash of an id from which every bloom probe and the locator key are derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdHash {
    /// The id's 64-bit hash: its high half picks the bloom block, its low half is the locator
    /// key.
    h1: u64,
    /// A second 64 bits derived from `h1`: its high half picks the bits within the block.
    h2: u64,
}

const K0: u64 = 0xa076_1d64_78bd_642f;
const K1: u64 = 0xe703_7ed1_a0b4_28db;

/// 128-bit product folded to 64 bits (the mixing step of wyhash and foldhash).
#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let r = (a as u128) * (b as u128);
    (r as u64) ^ ((r >> 64) as u64)
}

/// Murmur3's 64-bit finalizer: every input bit affects every output bit.
#[inline]
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The 1–7 bytes after the last whole word as one word, read without a copy: two overlapping
/// 4-byte reads for 4–7 bytes, three single bytes (first, middle, last) for 1–3. For a given
/// length every byte lands in the word, so ids of the same length never share it (the length
/// itself is mixed into the hash first).
#[inline]
fn tail_word(rest: &[u8]) -> u64 {
    let n = rest.len();
    if n >= 4 {
        let lo = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
        let hi = u32::from_le_bytes(rest[n - 4..].try_into().expect("4 bytes"));
        lo as u64 | (hi as u64) << 32
    } else {
        rest[0] as u64 | (rest[n / 2] as u64) << 8 | (rest[n - 1] as u64) << 16
    }
}

impl IdHash {
    /// Hashes `id` once: 8 bytes at a time through a folded multiply, then a finalizer.
    /// Deterministic (a fixed key), though nothing relies on that across processes: bloom
    /// filters and locators are rebuilt from the stored ids on open.
    #[inline]
    pub(crate) fn of(id: &[u8]) -> IdHash {
        let mut h = K0 ^ (id.len() as u64).wrapping_mul(K1);
        let mut chunks = id.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            h = fold_mul(h ^ w, K1);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            h = fold_mul(h ^ tail_word(rest), K1);
        }
        let h1 = fmix64(h ^ K0);
        let h2 = fmix64(h1 ^ K1);
        IdHash { h1, h2 }
    }

    /// 32 bits that pick the id's bloom block (the high half of `h1`).
    #[inline]
    pub(super) fn block_bits(self) -> u32 {
        (self.h1 >> 32) as u32
    }

    /// 32 bits that pick the bits the id sets in its bloom block (the high half of `h2`).
    #[inline]
    pub(super) fn bit_bits(self) -> u32 {
        (self.h2 >> 32) as u32
    }

    /// The locator key: 32 bits of the hash (others pick the bloom bits).
    #[inline]
    pub(super) fn key(self) -> u32 {
        self.h1 as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_on_every_byte_and_the_length() {
        let a = IdHash::of(b"vote-12345");
        assert_eq!(a, IdHash::of(b"vote-12345"));
        assert_ne!(a, IdHash::of(b"vote-12346"));
        assert_ne!(IdHash::of(b""), IdHash::of(b"\0"));
        assert_ne!(IdHash::of(b"ab"), IdHash::of(b"ab\0"));
        assert_ne!(IdHash::of(&[0; 8]), IdHash::of(&[0; 16]));
        // Every byte of every length of tail: flipping any one changes the hash.
        for len in 1..=16usize {
            let base: Vec<u8> = (0..len as u8).collect();
            for i in 0..len {
                let mut other = base.clone();
                other[i] ^= 0x5a;
                assert_ne!(IdHash::of(&base), IdHash::of(&other), "len {len} byte {i}");
            }
        }
    }
}
