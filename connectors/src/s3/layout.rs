//! The keys the S3 output writes, and how they are read back: pure functions.
//!
//! Output peer `peer` writes its objects as `{prefix}part-{peer:04}-{seq:010}.jsonl`, numbered
//! from 0 in the order they are rolled. Until an object is rolled, each batch written to it is
//! kept durable as a staged part `{prefix}_staging/{peer:04}/{seq:010}/{part:06}.jsonl`; rolling
//! writes the object whole from its parts (one PUT, or a multipart upload completed at the end:
//! it appears only complete) and then deletes the parts. A run that was killed finds the parts
//! of its unrolled objects and rolls each under the same name, so a roll interrupted after its
//! upload overwrites the object with the same content instead of writing it again elsewhere.

/// The folder of staged parts under the output's prefix (skipped by the S3 input: it starts
/// with `_`).
pub const STAGING: &str = "_staging/";

/// The key of output peer `peer`'s object number `seq`.
pub fn object_key(prefix: &str, peer: usize, seq: u64) -> String {
    format!("{prefix}part-{peer:04}-{seq:010}.jsonl")
}

/// The start of the keys of every object of output peer `peer`.
pub fn object_key_start(prefix: &str, peer: usize) -> String {
    format!("{prefix}part-{peer:04}-")
}

/// The object number of `key` if it is one of output peer `peer`'s objects.
pub fn object_seq(prefix: &str, peer: usize, key: &str) -> Option<u64> {
    let rest = key.strip_prefix(&object_key_start(prefix, peer))?;
    let digits = rest.strip_suffix(".jsonl")?;
    (digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())?
}

/// The folder of output peer `peer`'s staged parts.
pub fn staging_folder(prefix: &str, peer: usize) -> String {
    format!("{prefix}{STAGING}{peer:04}/")
}

/// The key of staged part `part` of output peer `peer`'s object `seq`.
pub fn part_key(prefix: &str, peer: usize, seq: u64, part: u32) -> String {
    format!("{}{seq:010}/{part:06}.jsonl", staging_folder(prefix, peer))
}

/// The `(seq, part)` of a staged part's key of output peer `peer`.
pub fn part_of(prefix: &str, peer: usize, key: &str) -> Option<(u64, u32)> {
    let rest = key.strip_prefix(&staging_folder(prefix, peer))?;
    let (seq, part) = rest.split_once('/')?;
    let part = part.strip_suffix(".jsonl")?;
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    (digits(seq, 10) && digits(part, 6)).then(|| Some((seq.parse().ok()?, part.parse().ok()?)))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn keys_read_back(peer in 0usize..10_000, seq in 0u64..10_000_000_000, part in 0u32..1_000_000,
                          prefix in "([a-z]{1,5}/){0,2}") {
            prop_assert_eq!(object_seq(&prefix, peer, &object_key(&prefix, peer, seq)), Some(seq));
            prop_assert_eq!(part_of(&prefix, peer, &part_key(&prefix, peer, seq, part)), Some((seq, part)));
            // Another peer's keys are not this peer's.
            prop_assert_eq!(object_seq(&prefix, peer + 1, &object_key(&prefix, peer, seq)), None);
            prop_assert_eq!(part_of(&prefix, peer + 1, &part_key(&prefix, peer, seq, part)), None);
            // Keys sort as their numbers do (the input reads in key order).
            prop_assert!(object_key(&prefix, peer, seq) < object_key(&prefix, peer, seq + 1));
        }
    }

    #[test]
    fn the_layout() {
        assert_eq!(object_key("out/", 1, 42), "out/part-0001-0000000042.jsonl");
        assert_eq!(
            part_key("out/", 1, 42, 7),
            "out/_staging/0001/0000000042/000007.jsonl"
        );
        assert_eq!(object_seq("out/", 1, "out/part-0001-42.jsonl"), None);
        assert_eq!(part_of("out/", 1, "out/_staging/0001/x/000007.jsonl"), None);
    }
}
