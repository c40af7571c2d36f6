//! The layout of a dedup filter export: the ids of every bucket, with the bucket boundaries,
//! as the engine stores them in ledger snapshots. Unlike the stored batches (local state,
//! rebuilt when in doubt), an export lives in a ledger and is the truth on recovery, so every
//! version ever written must stay readable: version 5 (ids with labels, in runs of one label)
//! is written ([`ExportWriter`]); versions 5, 4 (ids without labels, written from 2026-11-22 to
//! 2026-12-06) and 3 (every id front-coded, written from 2026-11-22 05:47 to 12:12 UTC by
//! `2271da8`..`69e670a`) are read ([`parse_export`]), the ids of 4 and 3 without labels. Pure:
//! bytes in, bytes out.

use super::format::{label_tag, put_varint, tag_label, take_varint};
use crate::error::{Error, Result};

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
fn take_front_coded(bytes: &mut &[u8], id: &mut Vec<u8>) -> Option<()> {
    let shared = take_varint(bytes).filter(|s| *s <= id.len())?;
    let rest = take_varint(bytes).filter(|r| *r <= bytes.len())?;
    id.truncate(shared);
    id.extend_from_slice(&bytes[..rest]);
    *bytes = &bytes[rest..];
    Some(())
}

/// Takes one id of an export bucket off the bytes into the id buffer (which holds the previous
/// id): [`take_id_v4`] or, for version-3 exports, [`take_front_coded`].
type TakeId = fn(&mut &[u8], &mut Vec<u8>) -> Option<()>;

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

/// The first bytes of an export (version 5: runs of ids of one label; integer-like ids as
/// deltas, others front-coded).
pub const EXPORT_MAGIC: &[u8] = b"sardonyx-dedup-export-5\0";
/// The first bytes of a version-4 export (as version 5, without labels and runs), still read
/// by [`parse_export`].
pub(super) const EXPORT_MAGIC_V4: &[u8] = b"sardonyx-dedup-export-4\0";
/// The first bytes of a version-3 export (every id front-coded), still read by
/// [`parse_export`]; earlier exports (a bincode list of ids) are no longer read.
pub(super) const EXPORT_MAGIC_V3: &[u8] = b"sardonyx-dedup-export-3\0";

/// Builds a version-5 export: [`EXPORT_MAGIC`], then per bucket (oldest first) its byte
/// length (u64, little-endian) and its ids in insertion order, in runs of one label: each run
/// is its label's tag and its number of ids (LEB128), then the ids, each written by
/// [`put_id_v4`] (the previous id carries over from run to run). One buffer, no allocation
/// per id.
pub(super) struct ExportWriter {
    out: Vec<u8>,
    /// The previous id of the bucket being written.
    prev: Vec<u8>,
    /// Where the length of the bucket being written goes.
    bucket_at: Option<usize>,
    /// The run being written: its label, its number of ids, and its ids (written out when
    /// the label changes or the bucket ends).
    run: Option<Option<u16>>,
    run_ids: usize,
    run_bytes: Vec<u8>,
}

impl ExportWriter {
    /// An export with room for about `ids` ids (one byte each, as sequential integers take).
    pub(super) fn with_capacity(ids: usize) -> ExportWriter {
        let mut out = Vec::with_capacity(EXPORT_MAGIC.len() + 64 + ids);
        out.extend_from_slice(EXPORT_MAGIC);
        ExportWriter {
            out,
            prev: Vec::new(),
            bucket_at: None,
            run: None,
            run_ids: 0,
            run_bytes: Vec::new(),
        }
    }

    /// Starts the next bucket (ids pushed from now on belong to it).
    pub(super) fn start_bucket(&mut self) {
        self.end_bucket();
        self.bucket_at = Some(self.out.len());
        self.out.extend_from_slice(&[0; 8]);
        self.prev.clear();
    }

    /// Appends `id` with its label to the bucket being written.
    ///
    /// # Panics
    /// If no bucket was started.
    pub(super) fn push(&mut self, label: Option<u16>, id: &[u8]) {
        assert!(self.bucket_at.is_some(), "an id outside any bucket");
        if self.run != Some(label) {
            self.end_run();
            self.run = Some(label);
        }
        put_id_v4(&mut self.run_bytes, &mut self.prev, id);
        self.run_ids += 1;
    }

    /// Writes the run being written, if any.
    fn end_run(&mut self) {
        if let Some(label) = self.run.take() {
            put_varint(&mut self.out, label_tag(label));
            put_varint(&mut self.out, self.run_ids);
            self.out.append(&mut self.run_bytes);
            self.run_ids = 0;
        }
    }

    /// The export.
    pub(super) fn finish(mut self) -> Vec<u8> {
        self.end_bucket();
        self.out
    }

    /// Writes the length of the bucket being written, if any.
    fn end_bucket(&mut self) {
        self.end_run();
        if let Some(at) = self.bucket_at.take() {
            let len = (self.out.len() - at - 8) as u64;
            self.out[at..at + 8].copy_from_slice(&len.to_le_bytes());
        }
    }
}

/// One bucket of an export, checked: every id in it decodes.
pub(super) struct ExportBucket<'a> {
    /// The bucket's coded ids.
    ids: &'a [u8],
    /// How many there are.
    count: u64,
    /// The id coding of the export's version.
    take: TakeId,
    /// The ids come in runs of one label (version 5).
    runs: bool,
}

/// Walks a bucket's coded ids, calling `f` with each id and its label, until the bytes end or
/// `f` fails; `Ok(Err(()))` if the bytes do not decode.
fn walk<E>(
    mut ids: &[u8],
    take: TakeId,
    runs: bool,
    mut f: impl FnMut(Option<u16>, &[u8]) -> std::result::Result<(), E>,
) -> std::result::Result<std::result::Result<(), ()>, E> {
    let mut id = Vec::new();
    while !ids.is_empty() {
        let (label, n) = if runs {
            let label = take_varint(&mut ids).and_then(tag_label);
            // Each id takes at least one byte: a count beyond the bytes left is corrupt.
            let n = take_varint(&mut ids).filter(|n| (1..=ids.len()).contains(n));
            match (label, n) {
                (Some(label), Some(n)) => (label, n),
                _ => return Ok(Err(())),
            }
        } else {
            (None, 1)
        };
        for _ in 0..n {
            if take(&mut ids, &mut id).is_none() {
                return Ok(Err(()));
            }
            f(label, &id)?;
        }
    }
    Ok(Ok(()))
}

impl ExportBucket<'_> {
    /// The number of ids in the bucket.
    pub(super) fn count(&self) -> u64 {
        self.count
    }

    /// Calls `f` with each id of the bucket and its label (`None` in exports of versions
    /// before 5), in order, until it fails.
    pub(super) fn for_each_id<E>(
        &self,
        f: impl FnMut(Option<u16>, &[u8]) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        walk(self.ids, self.take, self.runs, f).map(|r| r.expect("checked by parse_export"))
    }
}

/// Reads an export of version 5, 4 or 3 into its buckets, oldest first, checking every id: an
/// export that is not one, is cut short or holds an id (or a run) that does not decode is
/// reported as [`Error::Corrupt`], before the caller has changed anything.
pub(super) fn parse_export(bytes: &[u8]) -> Result<Vec<ExportBucket<'_>>> {
    let bad = |detail: &str| Error::Corrupt {
        ledger: String::from("<dedup filter export>"),
        position: 0,
        detail: detail.to_owned(),
    };
    let (mut rest, take, runs): (&[u8], TakeId, bool) =
        if let Some(rest) = bytes.strip_prefix(EXPORT_MAGIC) {
            (rest, take_id_v4, true)
        } else if let Some(rest) = bytes.strip_prefix(EXPORT_MAGIC_V4) {
            (rest, take_id_v4, false)
        } else if let Some(rest) = bytes.strip_prefix(EXPORT_MAGIC_V3) {
            (rest, take_front_coded, false)
        } else {
            return Err(bad("not a dedup filter export"));
        };
    let mut buckets = Vec::new();
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| bad("truncated bucket length"))?;
        let len = usize::try_from(u64::from_le_bytes(*len))
            .ok()
            .filter(|l| *l <= tail.len())
            .ok_or_else(|| bad("bucket longer than the export"))?;
        let (blob, tail) = tail.split_at(len);
        let mut count = 0u64;
        walk(blob, take, runs, |_, _| {
            count += 1;
            Ok::<(), std::convert::Infallible>(())
        })
        .expect("infallible")
        .map_err(|()| bad("an id does not decode"))?;
        buckets.push(ExportBucket {
            ids: blob,
            count,
            take,
            runs,
        });
        rest = tail;
    }
    Ok(buckets)
}

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

    /// Ids like the engine's: a type byte and a big-endian counter, or arbitrary bytes.
    fn an_id() -> impl Strategy<Value = Vec<u8>> {
        proptest::prop_oneof![
            (0u64..50).prop_map(|n| [b"i".as_slice(), &n.to_be_bytes()].concat()),
            proptest::collection::vec(0u8..4, 0..12),
        ]
    }

    /// A labelled id like the engine's: few labels, so that runs form; or none.
    fn a_labelled_id() -> impl Strategy<Value = (Option<u16>, Vec<u8>)> {
        (
            proptest::prop_oneof![
                proptest::strategy::Just(None),
                (0u16..3).prop_map(Some),
                proptest::strategy::Just(Some(u16::MAX)),
            ],
            an_id(),
        )
    }

    /// A bucket's ids with their labels.
    type Bucket = Vec<(Option<u16>, Vec<u8>)>;

    /// `buckets` through an [`ExportWriter`].
    fn export_of(buckets: &[Bucket]) -> Vec<u8> {
        let mut w = ExportWriter::with_capacity(0);
        for bucket in buckets {
            w.start_bucket();
            for (label, id) in bucket {
                w.push(*label, id);
            }
        }
        w.finish()
    }

    /// The buckets of an export, read back.
    fn buckets_of(export: &[u8]) -> Result<Vec<Bucket>> {
        let mut back = Vec::new();
        for bucket in parse_export(export)? {
            let mut ids = Vec::new();
            bucket
                .for_each_id(|label, id| {
                    ids.push((label, id.to_vec()));
                    Ok::<_, ()>(())
                })
                .unwrap();
            assert_eq!(bucket.count(), ids.len() as u64);
            back.push(ids);
        }
        Ok(back)
    }

    proptest::proptest! {
        /// An export gives back exactly its buckets (empty ones too) and their ids with their
        /// labels, in order.
        #[test]
        fn export_round_trips(buckets in proptest::collection::vec(
            proptest::collection::vec(a_labelled_id(), 0..30), 0..5)
        ) {
            let export = export_of(&buckets);
            proptest::prop_assert!(export.starts_with(EXPORT_MAGIC));
            proptest::prop_assert_eq!(buckets_of(&export).unwrap(), buckets);
        }

        /// An export cut anywhere is refused, unless the cut falls between two buckets: then it
        /// reads as the buckets before the cut.
        #[test]
        fn a_cut_export_is_refused_or_reads_as_its_whole_buckets(
            buckets in proptest::collection::vec(
                proptest::collection::vec(a_labelled_id(), 0..8), 1..4),
        ) {
            let export = export_of(&buckets);
            let mut ends = vec![EXPORT_MAGIC.len()];
            for i in 1..=buckets.len() {
                ends.push(export_of(&buckets[..i]).len());
            }
            for cut in 0..export.len() {
                match ends.iter().position(|e| *e == cut) {
                    Some(whole) => proptest::prop_assert_eq!(
                        buckets_of(&export[..cut]).unwrap(), buckets[..whole].to_vec()
                    ),
                    None => {
                        let read = buckets_of(&export[..cut]);
                        let refused = matches!(read, Err(Error::Corrupt { .. }));
                        proptest::prop_assert!(refused, "cut at {}", cut);
                    }
                }
            }
        }

        /// Whatever follows the magic, reading never panics: it gives buckets or `Corrupt`.
        #[test]
        fn any_bytes_after_the_magic_read_or_are_refused(
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            version in 3usize..6,
        ) {
            let magic = [EXPORT_MAGIC_V3, EXPORT_MAGIC_V4, EXPORT_MAGIC][version - 3];
            let bytes = [magic, tail.as_slice()].concat();
            let answered = matches!(buckets_of(&bytes), Ok(_) | Err(Error::Corrupt { .. }));
            proptest::prop_assert!(answered);
        }
    }

    #[test]
    fn an_unknown_magic_is_refused() {
        for bytes in [&b""[..], b"sardonyx-dedup-export-2\0", b"hello"] {
            assert!(matches!(buckets_of(bytes), Err(Error::Corrupt { .. })));
        }
        assert!(buckets_of(EXPORT_MAGIC).unwrap().is_empty());
    }

    /// A version-4 export (ids without labels or runs) reads back, every id without a label.
    #[test]
    fn a_version_4_export_reads_back_without_labels() {
        let ids = [
            b"i\0\0\0\0\0\0\0\x07".to_vec(),
            b"i\0\0\0\0\0\0\0\x08".to_vec(),
            b"abc".to_vec(),
        ];
        let (mut blob, mut prev) = (Vec::new(), Vec::new());
        for id in &ids {
            put_id_v4(&mut blob, &mut prev, id);
        }
        let mut v4 = EXPORT_MAGIC_V4.to_vec();
        v4.extend_from_slice(&(blob.len() as u64).to_le_bytes());
        v4.extend_from_slice(&blob);
        let want: Vec<(Option<u16>, Vec<u8>)> = ids.iter().map(|id| (None, id.clone())).collect();
        assert_eq!(buckets_of(&v4).unwrap(), vec![want]);
    }

    /// A run whose count is zero or runs past the bucket's bytes, or whose tag is beyond every
    /// label, is refused.
    #[test]
    fn a_bad_run_is_refused() {
        for run in [&[1u8, 0][..], &[1, 5, 0x02], &[0x82, 0x80, 0x04, 1, 0x02]] {
            let mut bytes = EXPORT_MAGIC.to_vec();
            bytes.extend_from_slice(&(run.len() as u64).to_le_bytes());
            bytes.extend_from_slice(run);
            assert!(
                matches!(buckets_of(&bytes), Err(Error::Corrupt { .. })),
                "{run:?}"
            );
        }
    }

    /// A version-3 export (every id front-coded, bucket framing as in version 4) reads back.
    #[test]
    fn a_version_3_export_reads_back() {
        let buckets = vec![
            vec![b"abc".to_vec(), b"abd".to_vec(), b"x".to_vec()],
            vec![],
        ];
        let mut v3 = EXPORT_MAGIC_V3.to_vec();
        for bucket in &buckets {
            let (mut blob, mut prev) = (Vec::new(), Vec::new());
            for id in bucket {
                put_front_coded(&mut blob, &mut prev, id);
            }
            v3.extend_from_slice(&(blob.len() as u64).to_le_bytes());
            v3.extend_from_slice(&blob);
        }
        let unlabelled: Vec<Bucket> = buckets
            .iter()
            .map(|b| b.iter().map(|id| (None, id.clone())).collect())
            .collect();
        assert_eq!(buckets_of(&v3).unwrap(), unlabelled);
    }
}
