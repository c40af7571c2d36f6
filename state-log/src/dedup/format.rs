//! The byte layout of the dedup filter's stored batches: the filter's `ids` column family holds
//! one value per stored batch under its bucket's and its own number ([`batch_key`]: 12 bytes,
//! big-endian, so that a bucket's batches are one key range in order), and the value is its
//! ids, each as its label's tag ([`label_tag`]: 0 for none, the label + 1 otherwise; LEB128)
//! and the id coded against the one before it in the batch as the export codes ids
//! (`export::put_id_v4`: the next integer id in one byte, any other front-coded; the first id
//! of a batch against the empty id). Also the LEB128 varint the export coding shares.
//! This layout is local derived state (the filter is rebuilt from the ledger when in doubt);
//! the layout stored in ledgers is the export's (`export.rs`). Pure: bytes in, bytes out.

use super::export::{put_id_v4, take_id_v4};
use crate::error::{Error, Result};

/// Appends `n` as LEB128 (7 bits per byte, low first).
pub(super) fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Takes a LEB128 number off the front of `bytes`; `None` if it is cut short or too long.
pub(super) fn take_varint(bytes: &mut &[u8]) -> Option<usize> {
    let mut n = 0usize;
    let mut shift = 0;
    loop {
        let (&b, rest) = bytes.split_first()?;
        *bytes = rest;
        if shift > 56 {
            return None;
        }
        n |= ((b & 0x7f) as usize) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Some(n);
        }
    }
}

/// An id's label as stored: 0 for none, the label + 1 otherwise.
pub(super) fn label_tag(label: Option<u16>) -> usize {
    label.map_or(0, |l| l as usize + 1)
}

/// The label of a stored tag ([`label_tag`]); `None` for a tag no label has.
pub(super) fn tag_label(tag: usize) -> Option<Option<u16>> {
    match tag {
        0 => Some(None),
        t => u16::try_from(t - 1).ok().map(Some),
    }
}

/// Appends `id` to a stored batch's value: its label's tag (LEB128), then the id coded against
/// the previous id of the batch, `prev` (empty for the first), which becomes `id`.
pub(super) fn encode_id(blob: &mut Vec<u8>, prev: &mut Vec<u8>, label: Option<u16>, id: &[u8]) {
    put_varint(blob, label_tag(label));
    put_id_v4(blob, prev, id);
}

/// One id of a stored batch with its label, or `Err(())` where the batch does not decode.
pub(super) type StoredId<'a> = std::result::Result<(Option<u16>, &'a [u8]), ()>;

/// The labelled ids of a stored batch, in order: call [`BlobIds::next`] until `None` (each id
/// is decoded into a buffer the next call reuses, so this is not an `Iterator`).
pub(super) struct BlobIds<'a> {
    /// The rest of the stored batch's value.
    blob: &'a [u8],
    /// The id decoded last.
    id: Vec<u8>,
}

impl<'a> BlobIds<'a> {
    /// The ids of the stored batch `blob`.
    pub(super) fn new(blob: &'a [u8]) -> BlobIds<'a> {
        BlobIds {
            blob,
            id: Vec::new(),
        }
    }

    /// The next id and its label; `Some(Err(()))` (then `None`) if it does not decode.
    #[allow(clippy::should_implement_trait)]
    pub(super) fn next(&mut self) -> Option<StoredId<'_>> {
        if self.blob.is_empty() {
            return None;
        }
        let label = take_varint(&mut self.blob).and_then(tag_label);
        let Some(label) = label.filter(|_| take_id_v4(&mut self.blob, &mut self.id).is_some())
        else {
            self.blob = &[];
            return Some(Err(()));
        };
        Some(Ok((label, &self.id)))
    }
}

/// Calls `f` with each labelled id of stored batch `batch` of bucket `bucket`, in
/// order, until it returns `true`; whether it did. A batch that does not decode is
/// [`Error::Corrupt`] (after `f` saw the ids before the fault).
pub(super) fn scan_ids(
    blob: &[u8],
    bucket: u64,
    batch: u32,
    mut f: impl FnMut(Option<u16>, &[u8]) -> bool,
) -> Result<bool> {
    let mut ids = BlobIds::new(blob);
    while let Some(id) = ids.next() {
        let (label, id) = id.map_err(|()| corrupt(bucket, batch as u64))?;
        if f(label, id) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The error for stored batch `batch` of bucket `bucket` that does not decode.
pub(super) fn corrupt(bucket: u64, batch: u64) -> Error {
    Error::Corrupt {
        ledger: format!("<dedup filter bucket {bucket}>"),
        position: batch,
        detail: "stored batch of ids does not decode".into(),
    }
}

/// The RocksDB key of stored batch `batch` of bucket `seq`: the two numbers big-endian (8 and
/// 4 bytes), so that keys sort by bucket, then batch.
pub(super) fn batch_key(seq: u64, batch: u32) -> [u8; 12] {
    let mut key = [0; 12];
    key[..8].copy_from_slice(&seq.to_be_bytes());
    key[8..].copy_from_slice(&batch.to_be_bytes());
    key
}

/// The bucket and batch numbers of a [`batch_key`]; [`Error::Corrupt`] for a key of another
/// length.
pub(super) fn parse_batch_key(key: &[u8]) -> Result<(u64, u32)> {
    let key: &[u8; 12] = key.try_into().map_err(|_| Error::Corrupt {
        ledger: "<dedup filter>".into(),
        position: 0,
        detail: format!("stored batch key of {} bytes, not 12", key.len()),
    })?;
    let (seq, batch) = key.split_at(8);
    Ok((
        u64::from_be_bytes(seq.try_into().expect("8 bytes")),
        u32::from_be_bytes(batch.try_into().expect("4 bytes")),
    ))
}

/// The keys of bucket `seq`'s stored batches: from its first possible key, below the second
/// (the next bucket's first, or `None` past the last bucket number).
pub(super) fn bucket_range(seq: u64) -> ([u8; 12], Option<[u8; 12]>) {
    (
        batch_key(seq, 0),
        seq.checked_add(1).map(|s| batch_key(s, 0)),
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The labelled ids of a stored batch's value, or `None` if one does not decode.
    fn ids_of(blob: &[u8]) -> Option<Vec<(Option<u16>, Vec<u8>)>> {
        let mut ids = BlobIds::new(blob);
        let mut out = Vec::new();
        while let Some(id) = ids.next() {
            let (label, id) = id.ok()?;
            out.push((label, id.to_vec()));
        }
        Some(out)
    }

    proptest! {
        /// Every number below 2^63 (nine LEB128 bytes) reads back, and only its bytes are taken.
        #[test]
        fn varint_round_trips(
            n in 0usize..(1 << 63),
            tail in proptest::collection::vec(any::<u8>(), 0..4),
        ) {
            let mut out = Vec::new();
            put_varint(&mut out, n);
            prop_assert!(out.len() <= 9);
            out.extend_from_slice(&tail);
            let mut rest = &out[..];
            prop_assert_eq!(take_varint(&mut rest), Some(n));
            prop_assert_eq!(rest, &tail[..]);
        }

        /// A stored batch gives back exactly its labelled ids, in order; cut short anywhere
        /// inside an id, it reports the id that does not decode.
        #[test]
        fn stored_batch_round_trips(ids in proptest::collection::vec(
            (
                proptest::option::of(any::<u16>()),
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..200),
                    // Integer ids as the engine writes them: coded as deltas when close.
                    (0u64..40).prop_map(|n| [&b"i"[..], &n.to_be_bytes()].concat()),
                    any::<u64>().prop_map(|n| [&b"i"[..], &n.to_be_bytes()].concat()),
                ],
            ),
            0..20)
        ) {
            let (mut blob, mut prev) = (Vec::new(), Vec::new());
            let mut ends = vec![0];
            for (label, id) in &ids {
                encode_id(&mut blob, &mut prev, *label, id);
                ends.push(blob.len());
            }
            prop_assert_eq!(ids_of(&blob), Some(ids.clone()));
            for cut in 0..blob.len() {
                let whole = ends.iter().position(|e| *e == cut);
                prop_assert_eq!(ids_of(&blob[..cut]), whole.map(|n| ids[..n].to_vec()));
            }
        }
    }

    #[test]
    fn sequential_integer_ids_take_two_bytes_each() {
        let (mut blob, mut prev) = (Vec::new(), Vec::new());
        for n in 1_000u64..2_024 {
            encode_id(
                &mut blob,
                &mut prev,
                Some(3),
                &[&b"i"[..], &n.to_be_bytes()].concat(),
            );
        }
        assert_eq!(
            blob.len(),
            1 + 1 + 1 + 9 + 1_023 * 2,
            "the first id front-coded whole"
        );
        let ids = ids_of(&blob).unwrap();
        assert_eq!(ids.len(), 1_024);
        assert_eq!(
            ids[1_023],
            (Some(3), [&b"i"[..], &2_023u64.to_be_bytes()].concat())
        );
    }

    #[test]
    fn a_varint_cut_short_or_too_long_is_refused() {
        assert_eq!(take_varint(&mut &[][..]), None);
        assert_eq!(take_varint(&mut &[0x80][..]), None);
        assert_eq!(take_varint(&mut &[0xff; 9][..]), None);
        assert_eq!(take_varint(&mut &[0xff; 10][..]), None);
        let mut max = Vec::new();
        put_varint(&mut max, (1 << 63) - 1);
        assert_eq!(take_varint(&mut &max[..]), Some((1 << 63) - 1));
    }

    #[test]
    fn a_tag_beyond_every_label_is_refused() {
        assert_eq!(tag_label(label_tag(Some(u16::MAX))), Some(Some(u16::MAX)));
        assert_eq!(tag_label(label_tag(None)), Some(None));
        assert_eq!(tag_label(u16::MAX as usize + 2), None);
        let mut blob = Vec::new();
        put_varint(&mut blob, 1 << 20);
        put_varint(&mut blob, 1);
        blob.push(b'x');
        assert_eq!(ids_of(&blob), None);
    }

    proptest! {
        /// Keys read back, and sort as (bucket, batch) does; a bucket's range holds exactly its
        /// own keys.
        #[test]
        fn batch_keys_sort_by_bucket_then_batch(
            a in (any::<u64>(), any::<u32>()),
            b in (any::<u64>(), any::<u32>()),
        ) {
            prop_assert_eq!(parse_batch_key(&batch_key(a.0, a.1)).unwrap(), a);
            prop_assert_eq!(batch_key(a.0, a.1).cmp(&batch_key(b.0, b.1)), a.cmp(&b));
            let (start, end) = bucket_range(a.0);
            let key = batch_key(b.0, b.1);
            let inside = key >= start && end.is_none_or(|e| key < e);
            prop_assert_eq!(inside, b.0 == a.0);
        }
    }

    #[test]
    fn batch_keys_are_12_bytes() {
        assert_eq!(parse_batch_key(&batch_key(3, 7)).unwrap(), (3, 7));
        let err = parse_batch_key(&[0; 8]).unwrap_err().to_string();
        assert!(err.contains("stored batch key of 8 bytes, not 12"), "{err}");
        assert_eq!(bucket_range(u64::MAX).1, None);
    }
}
