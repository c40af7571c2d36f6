//! The dedup filter: "has this segment id been applied?" for exactly-once state.
//!
//! Ids live in rotating **buckets**. Each bucket is a key range of one RocksDB column family,
//! `ids` (the truth), with two in-memory structures in front of it, both derived from it:
//!
//! - a **bloom filter** (the fast "no"; split into 32-byte blocks so that probing it for an id
//!   touches one cache line; about 1.5 bytes per id at 1 %, so the filters of all
//!   buckets stay in the CPU caches);
//! - a **locator**: 32 bits of the id's hash → the number of the stored batch that holds the
//!   id, consulted only on a bloom "maybe": sorted arrays of 8 bytes per id with a small
//!   directory (a lookup searches one or two cache lines), and for the newest bucket one hash
//!   map of at most about 57 000 ids (the bucket's latest chunk), so that its memory does not
//!   grow with the bucket size.
//!
//! Each id is hashed **once** (a 64-bit multiply-fold hash, `IdHash`); the bloom block and bits of
//! every bucket and the locator key are derived from that one hash.
//!
//! **Storage.** A bucket's key range holds one RocksDB value per stored batch (key: the bucket's
//! number, 8 bytes big-endian, then the batch's number in the bucket, 4 bytes; value: its ids, each
//! as its label's tag and the id coded against the one before it as the export codes ids, so that
//! the engine's sequential integer ids take 2 bytes each instead of 11), not one key per id. A
//! stored batch holds up to 1024 ids (`MAX_IDS_PER_BATCH`, so that confirming an id never scans
//! much) and takes the ids of successive inserts until it is full. The newest bucket's stored
//! batches stay in memory until they are written (see "Durability"): an insert costs no RocksDB
//! write at all, and a full bucket of 200 000 ids is written as one `WriteBatch`. A lookup asks
//! each bucket's bloom filter, newest first; a "maybe" is looked up in the bucket's locator and
//! confirmed by reading the stored batch it names (from memory if it is not yet written) and
//! finding the exact id bytes in it, so the answer is exact: a bloom or locator false positive
//! costs at most one RocksDB read, never a wrong answer. When the newest bucket holds `bucket_size`
//! ids a new bucket is started, and once there are more than `num_buckets` buckets the oldest one
//! is dropped with one range delete (one column family for all buckets: creating and dropping one
//! per bucket cost RocksDB an OPTIONS file written and verified each time).
//!
//! **Horizon.** The filter remembers the most recent inserts: always at least
//! `(num_buckets - 1) × bucket_size` ids and at most `num_buckets × bucket_size`
//! ([`DedupConfig::horizon`]); an id inserted longer ago than that may be forgotten (and a
//! redelivery of it counted again). Size the horizon to cover every id that can be redelivered:
//! inputs resume from their last committed position, so a horizon well beyond the ids of one
//! checkpoint interval suffices.
//!
//! **Durability.** Ids and the mark (below) are written to RocksDB together, in one write
//! through its WAL without fsync, when the newest bucket is full, when more than a few MB of ids
//! wait, on [`DedupFilter::flush`] (the engine calls it once a snapshot's mark is inserted) and
//! when the filter is dropped. So what is on disk is always a prefix of the inserts together
//! with the mark of a call within it: a process that dies loses at most the inserts since the
//! last write (up to one bucket), and its mark still names the ledger prefix the filter holds,
//! so the engine replays its ledger from there (below); a machine crash may lose more of the
//! most recent writes, with the same consistency. The bloom filters and locators are never
//! stored: [`DedupFilter::open`] rebuilds them from the stored batches, so after any crash they
//! agree with what RocksDB kept (and a lookup always confirms in RocksDB or in the unwritten
//! batches, so they could never make an answer wrong anyway). The filter is derived state: the
//! engine stores its contents ([`DedupFilter::export`]) in ledger snapshots and, on a recovery
//! where the filter on disk does not match the ledger (see the mark below), clears it and
//! re-inserts the ids of the snapshot and of the replayed ledger entries ([`DedupFilter::clear`],
//! [`DedupFilter::import`], then [`DedupFilter::insert_batch`]).
//!
//! **Labels.** An id may be inserted with a **label** (a `u16`; the engine stores the id's key
//! group there). Lookups ignore it; it is kept with the id in its stored batch and in the export
//! ([`export_ids`] gives it back), so the ids of some labels can be taken out of a filter's
//! export (a rescale keeps the ids of its own key groups).
//!
//! **Mark.** An insert may carry a **mark**, opaque bytes stored in the same RocksDB write as
//! the ids (the engine stores the ledger position whose ids they are). [`DedupFilter::mark`]
//! returns the mark of the last insert, so a process that opens the filter again knows which
//! prefix of its ledger the filter already holds and replays only the rest instead of
//! rebuilding. Any insert without a mark, [`DedupFilter::clear`] and [`DedupFilter::import`]
//! remove the mark: the filter no longer corresponds to a ledger prefix.
//!
//! Directories written by earlier versions (one key per id in `bucket-…` column families, before
//! 2026-11-22; stored batches without labels in `batches-…`, before 2026-12-06; stored batches
//! of whole ids in `labelled-…`, before 2026-12-07; one column family per bucket, `coded-…`,
//! until 2026-12-07) are not read:
//! [`DedupFilter::open`] forgets them and opens the filter empty and without a mark, so the
//! engine rebuilds it from the ledger (once, on the first run of the new version).
//!
//! **Where things are.** `hash` (the one hash of an id), `bloom` (the split-block bloom
//! filter), `locator` (hash bits → stored batch), `bucket` (one bucket's bloom filter, locator
//! and counts), `format` (the stored batches' bytes), `export` (the export's bytes, versioned:
//! it lives in ledger snapshots) and `config` are pure; `filter` holds the [`DedupFilter`] and
//! all of its RocksDB I/O.

mod bloom;
mod bucket;
mod config;
mod export;
mod filter;
mod format;
mod hash;
mod locator;

pub use config::DedupConfig;
pub use filter::DedupFilter;

/// Calls `f` with every id of a [`DedupFilter::export`] and its label (`None` for an id
/// inserted without one, and for every id of an export written before labels), oldest bucket
/// first (for a rescale, which gathers the ids of some labels from several slots' exports into
/// one filter). An export that does not decode is [`crate::Error::Corrupt`], reported before
/// `f` is called.
pub fn export_ids(export: &[u8], mut f: impl FnMut(Option<u16>, &[u8])) -> crate::Result<()> {
    for bucket in export::parse_export(export)? {
        bucket
            .for_each_id(|label, id| {
                f(label, id);
                Ok::<(), std::convert::Infallible>(())
            })
            .expect("infallible");
    }
    Ok(())
}

#[cfg(test)]
mod export_ids_tests {
    use super::{export_ids, DedupConfig, DedupFilter};

    #[test]
    fn export_ids_gives_back_every_id_of_every_bucket() {
        let dir = tempfile::tempdir().unwrap();
        let config = DedupConfig {
            bucket_size: 4,
            ..DedupConfig::default()
        };
        let mut f = DedupFilter::open(dir.path(), config).unwrap();
        let ids: Vec<Vec<u8>> = (0..10_u64)
            .map(|i| [b"i".as_slice(), &i.to_be_bytes()].concat())
            .chain([b"s\x03abc".to_vec()])
            .collect();
        for chunk in ids.chunks(3) {
            f.insert_batch(chunk.iter().map(Vec::as_slice)).unwrap();
        }
        let mut back = Vec::new();
        export_ids(&f.export().unwrap(), |label, id| {
            assert_eq!(label, None);
            back.push(id.to_vec())
        })
        .unwrap();
        back.sort();
        let mut want = ids.clone();
        want.sort();
        assert_eq!(back, want);
        assert_eq!(
            export_ids(b"nonsense", |_, _| ()).unwrap_err().to_string(),
            "corrupt record in ledger \"<dedup filter export>\" at position 0: not a dedup filter export"
        );
    }
}
