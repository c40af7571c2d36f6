//! The layout of a dedup filter export (the ids of every bucket, stored in ledger snapshots).

use super::format::{put_varint, take_varint};

/// Appends `id` to a version-3 export bucket as the length of the prefix it shares with the
/// previous id (`prev`, then replaced by `id`), the length of the rest, and the rest.
#[cfg(test)]
pub(super) fn put_front_coded(out: &mut Vec<u8>, prev: &mut Vec<u8>, id: &[u8]) {
    let shared = prev.iter().zip(id).take_while(|(a, b)| a == b).count();
    put_varint(out, shared);
    put_varint(out, id.len() - shared);
    out.extend_from_slice(&id[shared..]);
    prev.truncate(shared);
    prev.extend_from_slice(&id[shared..]);
}

/// Takes one id written by [`put_front_coded`] off `bytes` into `id` (which holds the previous
/// one); `None` if it does not decode.
pub(super) fn take_front_coded(bytes: &mut &[u8], id: &mut Vec<u8>) -> Option<()> {
    let shared = take_varint(bytes).filter(|s| *s <= id.len())?;
    let rest = take_varint(bytes).filter(|r| *r <= bytes.len())?;
    id.truncate(shared);
    id.extend_from_slice(&bytes[..rest]);
    *bytes = &bytes[rest..];
    Some(())
}

/// Takes one id of an export bucket off the bytes into the id buffer (which holds the previous
/// id): [`take_id_v4`] or, for version-3 exports, [`take_front_coded`].
pub(super) type TakeId = fn(&mut &[u8], &mut Vec<u8>) -> Option<()>;

/// The last 8 bytes of `id` as a big-endian counter (`None` for ids shorter than 8 bytes).
fn counter(id: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = id.get(id.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

/// Deltas smaller than this (either sign) are written as deltas: their tag
/// (`zigzag(delta) << 1`) stays below 2^63, which `take_varint` reads back.
const MAX_DELTA: u64 = 1 << 61;

/// Appends `id` to a version-4 export bucket. An id of the previous id's length that differs
/// from it only in its last 8 bytes (a big-endian counter, as the engine's integer ids are) is
/// written as the counter's difference: one LEB128 number `zigzag(delta) << 1`, so one byte for
/// the next integer. Any other id is front-coded: `shared << 1 | 1` (the length of the prefix
/// it shares with the previous id), the length of the rest, the rest. `prev` holds the previous
/// id and is replaced by `id`.
pub(super) fn put_id_v4(out: &mut Vec<u8>, prev: &mut Vec<u8>, id: &[u8]) {
    if prev.len() == id.len() && id.len() >= 8 && prev[..id.len() - 8] == id[..id.len() - 8] {
        let (a, b) = (counter(prev), counter(id));
        let delta = b.expect("8 bytes").wrapping_sub(a.expect("8 bytes")) as i64;
        if delta.unsigned_abs() < MAX_DELTA {
            let zigzag = ((delta << 1) ^ (delta >> 63)) as u64;
            put_varint(out, (zigzag << 1) as usize);
            let at = id.len() - 8;
            prev[at..].copy_from_slice(&id[at..]);
            return;
        }
    }
    let shared = prev.iter().zip(id).take_while(|(a, b)| a == b).count();
    put_varint(out, shared << 1 | 1);
    put_varint(out, id.len() - shared);
    out.extend_from_slice(&id[shared..]);
    prev.truncate(shared);
    prev.extend_from_slice(&id[shared..]);
}

/// Takes one id written by [`put_id_v4`] off `bytes` into `id` (which holds the previous one);
/// `None` if it does not decode.
pub(super) fn take_id_v4(bytes: &mut &[u8], id: &mut Vec<u8>) -> Option<()> {
    let tag = take_varint(bytes)? as u64;
    if tag & 1 == 0 {
        let zigzag = tag >> 1;
        let delta = ((zigzag >> 1) as i64) ^ -((zigzag & 1) as i64);
        let next = counter(id)?.wrapping_add(delta as u64);
        let at = id.len() - 8;
        id[at..].copy_from_slice(&next.to_be_bytes());
        return Some(());
    }
    let shared = usize::try_from(tag >> 1).ok().filter(|s| *s <= id.len())?;
    let rest = take_varint(bytes).filter(|r| *r <= bytes.len())?;
    id.truncate(shared);
    id.extend_from_slice(&bytes[..rest]);
    *bytes = &bytes[rest..];
    Some(())
}

/// The first bytes of a [`DedupFilter::export`] (version 4: integer-like ids as deltas, others
/// front-coded).
pub const EXPORT_MAGIC: &[u8] = b"sardonyx-dedup-export-4\0";
/// The first bytes of a version-3 export (every id front-coded), still read by
/// [`DedupFilter::import`]; earlier exports (a bincode list of ids) are no longer read.
pub(super) const EXPORT_MAGIC_V3: &[u8] = b"sardonyx-dedup-export-3\0";

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy;

    /// `ids` written one after the other with `put`, then read back with `take`.
    fn coded(
        ids: &[Vec<u8>],
        put: fn(&mut Vec<u8>, &mut Vec<u8>, &[u8]),
        take: TakeId,
    ) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut prev = Vec::new();
        for id in ids {
            put(&mut out, &mut prev, id);
        }
        let (mut rest, mut id, mut back) = (&out[..], Vec::new(), Vec::new());
        while !rest.is_empty() {
            take(&mut rest, &mut id).expect("every id decodes");
            back.push(id.clone());
        }
        back
    }

    proptest::proptest! {
        /// Front coding gives back exactly the ids written, in order, whatever they share.
        #[test]
        fn front_coding_round_trips(ids in proptest::collection::vec(
            proptest::collection::vec(0u8..4, 0..12), 0..40)
        ) {
            proptest::prop_assert_eq!(coded(&ids, put_front_coded, take_front_coded), ids);
        }

        /// The version-4 id coding gives back exactly the ids written, in order: integer-like ids
        /// (a shared first byte and a big-endian counter, with deltas of any size and sign) mixed
        /// with arbitrary ones of any length.
        #[test]
        fn id_coding_round_trips(ids in proptest::collection::vec(
            proptest::prop_oneof![
                (0u8..2, proptest::prop_oneof![
                    0u64..40,
                    (1u64 << 60)..(1u64 << 60) + 40,
                    proptest::num::u64::ANY,
                ])
                    .prop_map(|(p, n)| {
                        let mut id = vec![b'i' + p];
                        id.extend_from_slice(&n.to_be_bytes());
                        id
                    }),
                proptest::collection::vec(0u8..4, 0..12),
            ],
            0..60)
        ) {
            proptest::prop_assert_eq!(coded(&ids, put_id_v4, take_id_v4), ids);
        }
    }

    /// Counter deltas at the edge of what is written as a delta round-trip (a tag of 2^63 would
    /// need a tenth LEB128 byte, which the reader refuses).
    #[test]
    fn the_largest_deltas_round_trip() {
        let at = |n: u64| [b"i".as_slice(), &n.to_be_bytes()].concat();
        let edge = MAX_DELTA;
        let ids: Vec<Vec<u8>> = [0, edge, 0, edge - 1, 0, edge + 1, u64::MAX, 0]
            .into_iter()
            .map(at)
            .collect();
        assert_eq!(coded(&ids, put_id_v4, take_id_v4), ids);
    }
}
