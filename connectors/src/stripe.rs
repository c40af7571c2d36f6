//! Which lines of a file each of several readers takes: interleaved blocks of bytes (pure
//! arithmetic, no I/O).
//!
//! The file's bytes are cut into blocks of `block` bytes (by default
//! [`DEFAULT_BLOCK_BYTES`]); with `n` readers, reader `i` owns blocks `i, i+n, i+2n, …` and
//! reads the lines whose **first byte** lies in one of them. A line belongs to exactly one
//! reader, whatever the file's length: ownership depends on a line's offset alone, so readers
//! that open the file at different lengths agree, and lines appended later are dealt out the
//! same way.
//!
//! Each reader goes through the whole file and hands over only its own lines: it passes over
//! the others' blocks counting their newlines a chunk at a time
//! ([`Stripe::next_own_block`]; going through them line by line made two readers slower than
//! one, BENCHMARKS.md "Session 22"). It therefore knows every line's number,
//! and the readers stay within about a block of each other in the file, so their event times
//! stay close too. (Contiguous ranges, the first design, had the second of two readers start
//! in the middle of the file: its watermark ran far ahead of the first's, and every window it
//! opened stayed open until the first caught up: a session window job held 3–4× the memory.)
//!
//! A reader resumes just after the last line it read (its committed offset) and goes on from
//! there: the lines before its next own line are other readers'.

/// The default block size: 64 KiB, some 700 lines of 90 bytes.
pub const DEFAULT_BLOCK_BYTES: u64 = 64 * 1024;

/// The lines one reader of several takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stripe {
    reader: u64,
    readers: u64,
    block: u64,
}

impl Stripe {
    /// The lines of reader `reader` of `readers` (at least 1), in blocks of `block` bytes (at
    /// least 1). `reader` must be below `readers`.
    pub fn new(reader: usize, readers: usize, block: u64) -> Stripe {
        let readers = readers.max(1);
        assert!(reader < readers, "reader {reader} of {readers}");
        Stripe {
            reader: reader as u64,
            readers: readers as u64,
            block: block.max(1),
        }
    }

    /// The same reader with blocks of `block` bytes (at least 1).
    pub fn with_block(self, block: u64) -> Stripe {
        Stripe {
            block: block.max(1),
            ..self
        }
    }

    /// True when a line starting at `line_start` is this reader's to read.
    pub fn owns(&self, line_start: u64) -> bool {
        self.readers == 1 || (line_start / self.block) % self.readers == self.reader
    }

    /// The start of the first block at or after offset `at`'s block that this reader owns
    /// (`at`'s own block's start if it owns it).
    pub fn next_own_block(&self, at: u64) -> u64 {
        let b = at / self.block;
        let ahead = (self.reader + self.readers - b % self.readers) % self.readers;
        (b + ahead).saturating_mul(self.block)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The lines `(start, end)` (end past the newline) of `bytes` from offset `from` (a line
    /// start) that `stripe` owns.
    fn read(bytes: &[u8], stripe: Stripe, from: u64) -> Vec<(u64, u64)> {
        all_lines(bytes)
            .into_iter()
            .filter(|&(start, _)| start >= from && stripe.owns(start))
            .collect()
    }

    /// Every line of `bytes`, `(start, end)`.
    fn all_lines(bytes: &[u8]) -> Vec<(u64, u64)> {
        let mut lines = Vec::new();
        let mut at = 0;
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'\n' {
                lines.push((at, i as u64 + 1));
                at = i as u64 + 1;
            }
        }
        if at < bytes.len() as u64 {
            lines.push((at, bytes.len() as u64));
        }
        lines
    }

    /// Files of short and long lines, with or without a last newline, empty included.
    fn contents() -> impl Strategy<Value = Vec<u8>> {
        (
            prop::collection::vec(prop_oneof![Just(0usize), 1usize..4, 10usize..60], 0..20),
            any::<bool>(),
        )
            .prop_map(|(lens, trailing)| {
                let mut bytes = Vec::new();
                for (i, len) in lens.iter().enumerate() {
                    bytes.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, *len));
                    bytes.push(b'\n');
                }
                if !trailing {
                    bytes.pop();
                }
                bytes
            })
    }

    proptest! {

        /// The next own block is owned, not before `at`'s block, and no block between is.
        #[test]
        fn the_next_own_block_is_the_first_owned_from_here(
            readers in 1usize..9, block in 1u64..200, at in 0u64..100_000, r in 0usize..8,
        ) {
            let s = Stripe::new(r % readers, readers, block);
            let next = s.next_own_block(at);
            prop_assert!(s.owns(next));
            prop_assert_eq!(next % block, 0);
            prop_assert!(next >= at / block * block);
            let mut b = at / block * block;
            while b < next {
                prop_assert!(!s.owns(b), "block at {} is owned before {}", b, next);
                b += block;
            }
        }
        /// Across `n` readers every line is read exactly once.
        #[test]
        fn every_line_is_read_by_exactly_one_reader(
            bytes in contents(), n in 1usize..12, block in 1u64..80,
        ) {
            let mut read_by_all = Vec::new();
            for i in 0..n {
                read_by_all.extend(read(&bytes, Stripe::new(i, n, block), 0));
            }
            read_by_all.sort_unstable();
            prop_assert_eq!(read_by_all, all_lines(&bytes));
        }

        /// A file that grew between runs: each reader resumes from the offset it committed
        /// over the old part, and no line of the grown file is skipped or read twice.
        #[test]
        fn a_file_grown_between_runs_loses_no_line(
            bytes in contents(), more in contents(), n in 1usize..6, block in 1u64..80,
            stops in prop::collection::vec(0usize..8, 6),
        ) {
            let mut bytes = bytes;
            if bytes.last().is_some_and(|&b| b != b'\n') {
                bytes.push(b'\n');
            }
            let mut grown = bytes.clone();
            grown.extend(&more);
            let mut seen = Vec::new();
            for (i, stop) in stops.iter().enumerate().take(n) {
                let stripe = Stripe::new(i, n, block);
                let lines = read(&bytes, stripe, 0);
                let k = stop % (lines.len() + 1);
                seen.extend(lines[..k].iter().map(|l| l.0));
                let committed = if k > 0 { lines[k - 1].1 } else { 0 };
                seen.extend(read(&grown, stripe, committed).iter().map(|l| l.0));
            }
            seen.sort_unstable();
            let want: Vec<u64> = all_lines(&grown).iter().map(|l| l.0).collect();
            prop_assert_eq!(seen, want);
        }
    }

    #[test]
    fn blocks_are_dealt_out_in_turn() {
        assert!((0..1_000_000)
            .step_by(997)
            .all(|at| Stripe::new(0, 1, DEFAULT_BLOCK_BYTES).owns(at)));
        let owner = |at: u64| (0..3).find(|&i| Stripe::new(i, 3, 10).owns(at)).unwrap();
        let owners: Vec<usize> = [0, 9, 10, 19, 20, 29, 30, 45].map(owner).into();
        assert_eq!(owners, [0, 0, 1, 1, 2, 2, 0, 1]);
        // A block of 0 bytes is read as 1.
        assert!(Stripe::new(1, 2, 0).owns(1));
    }
}
