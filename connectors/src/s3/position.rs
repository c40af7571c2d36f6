//! Where the S3 input stands, as the engine's `(partition, offset)` pair: pure encoding and
//! decoding, and the assignment of objects to partitions.
//!
//! The committed position of an S3 input is *(object, byte offset)*. The engine checkpoints
//! positions as `u32` partitions with `u64` offsets, so the object is named by its **ordinal**:
//! its index in its partition's objects in key order. An offset is `ordinal << 40 | byte`, so
//! positions grow as a partition is read (the engine only moves them forward) and a resumed
//! input opens object `ordinal` and skips `byte` bytes of its (decompressed) body. A partition
//! is one input peer's share of the objects (an object goes to partition
//! `fnv1a(key) mod n_peers`); its id also holds the peer count (`n_peers << 16 | peer`), so a
//! position committed with another peer count is recognised and refused instead of misread.

/// Bits of an offset that hold the byte offset within an object: objects up to 1 TiB.
pub const BYTE_BITS: u32 = 40;
/// The largest byte offset within one object.
pub const MAX_BYTE: u64 = (1 << BYTE_BITS) - 1;
/// The largest ordinal (objects per partition: about 16 million).
pub const MAX_ORDINAL: u64 = (1 << (64 - BYTE_BITS)) - 1;

/// A point in one partition: after `byte` bytes of the partition's object number `ordinal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectPosition {
    /// The object's index among its partition's objects, in key order.
    pub ordinal: u64,
    /// Bytes of the object's (decompressed) body before the point.
    pub byte: u64,
}

impl ObjectPosition {
    /// The engine's offset for this point; `None` past the limits ([`MAX_ORDINAL`],
    /// [`MAX_BYTE`]).
    pub fn encode(self) -> Option<u64> {
        (self.ordinal <= MAX_ORDINAL && self.byte <= MAX_BYTE)
            .then_some(self.ordinal << BYTE_BITS | self.byte)
    }

    /// The point an engine offset stands for.
    pub fn decode(offset: u64) -> Self {
        ObjectPosition {
            ordinal: offset >> BYTE_BITS,
            byte: offset & MAX_BYTE,
        }
    }
}

/// The partition id of input peer `peer` of `n_peers`.
pub fn partition_id(peer: usize, n_peers: usize) -> u32 {
    ((n_peers as u32) << 16) | peer as u32
}

/// The `(peer, n_peers)` a partition id was made from.
pub fn partition_peer(partition: u32) -> (usize, usize) {
    ((partition & 0xffff) as usize, (partition >> 16) as usize)
}

/// The peer (of `n_peers`) that reads the object with key `key`: FNV-1a of the key's bytes, a
/// fixed function, so every build and every restart agrees.
pub fn peer_of(key: &str, n_peers: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % n_peers.max(1) as u64) as usize
}

/// How an object's body is compressed, by its key's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain JSON lines.
    None,
    /// `.gz`: gzip (several members are read as one stream).
    Gzip,
    /// `.zst` or `.zstd`: zstd.
    Zstd,
}

impl Compression {
    /// The compression of the object with key `key`.
    pub fn of_key(key: &str) -> Self {
        if key.ends_with(".gz") {
            Compression::Gzip
        } else if key.ends_with(".zst") || key.ends_with(".zstd") {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// True for keys the input skips: a path segment below `prefix` that starts with `_` or `.`
/// (the output's staging area `_staging/`, and the convention of Hadoop and Spark for
/// bookkeeping files), and "folder" markers ending in `/`.
pub fn is_hidden(prefix: &str, key: &str) -> bool {
    let rest = key.strip_prefix(prefix).unwrap_or(key);
    rest.ends_with('/')
        || rest
            .split('/')
            .any(|segment| segment.starts_with('_') || segment.starts_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn offsets_round_trip_and_keep_order(
            a in (0..=MAX_ORDINAL, 0..=MAX_BYTE),
            b in (0..=MAX_ORDINAL, 0..=MAX_BYTE),
        ) {
            let (pa, pb) = (
                ObjectPosition { ordinal: a.0, byte: a.1 },
                ObjectPosition { ordinal: b.0, byte: b.1 },
            );
            let (ea, eb) = (pa.encode().unwrap(), pb.encode().unwrap());
            prop_assert_eq!(ObjectPosition::decode(ea), pa);
            // The engine only moves an offset forward: the encoding must keep the order.
            prop_assert_eq!(ea.cmp(&eb), pa.cmp(&pb));
        }

        #[test]
        fn partition_ids_round_trip(n in 1usize..1000, peer_seed in 0usize..1000) {
            let peer = peer_seed % n;
            prop_assert_eq!(partition_peer(partition_id(peer, n)), (peer, n));
            let key = format!("k{peer_seed}");
            prop_assert!(peer_of(&key, n) < n);
        }
    }

    #[test]
    fn limits_and_extensions() {
        let too_far = ObjectPosition {
            ordinal: 0,
            byte: MAX_BYTE + 1,
        };
        assert_eq!(too_far.encode(), None);
        // FNV-1a is fixed: these must never change, or committed positions would be misread.
        assert_eq!(peer_of("votes/000.jsonl", 3), peer_of("votes/000.jsonl", 3));
        assert_eq!(peer_of("a", 1), 0);
        assert_eq!(
            peer_of("a", 1000),
            (0xaf63_dc4c_8601_ec8c_u64 % 1000) as usize
        );
        assert_eq!(Compression::of_key("a/b.jsonl.gz"), Compression::Gzip);
        assert_eq!(Compression::of_key("a/b.jsonl.zst"), Compression::Zstd);
        assert_eq!(Compression::of_key("a/b.jsonl"), Compression::None);
        assert!(is_hidden(
            "out/",
            "out/_staging/0001/0000000000/000000.jsonl"
        ));
        assert!(is_hidden("out/", "out/.keep"));
        assert!(is_hidden("out/", "out/dir/"));
        assert!(!is_hidden("out/", "out/part-0000-0000000000.jsonl"));
        assert!(!is_hidden("_in/", "_in/a.jsonl"));
    }
}
