//! Which lines of a file each of several readers takes: striped byte ranges (pure arithmetic,
//! no I/O).
//!
//! With `n` readers (a task's input peers) on one file of `len` bytes, reader `i` owns the bytes
//! `[i·len/n, (i+1)·len/n)` and reads the lines whose **first byte** lies there: a line belongs
//! to exactly one reader. A reader whose range starts inside a line skips to the next line
//! start; a reader finishes a line that starts inside its range even when the line runs past
//! the range's end, and starts no line at or after that end. The last reader's range has no
//! end: it reads to the end of the file, however far that is when it gets there (so one reader
//! reads the whole file, as a file source always did).
//!
//! Each reader computes its range from the length it sees. Readers that see different lengths
//! (a file growing while they open it) get ranges that may overlap (lines read twice) or leave
//! a gap (lines read by no one): a file must not grow while its readers open it. Lines appended
//! after that are the last reader's.
//!
//! A reader resumes from a committed offset (the end of a line it read, so a line start) and
//! reads the rest of its range from there. A committed offset before the range's start (the
//! file grew between runs, so the ranges moved on) resumes at the range's first line instead:
//! the lines in between now belong to the previous reader, whose committed offset lies before
//! them, so nothing is skipped (what is read twice is deduplicated downstream).

/// The range of one reader: the lines whose first byte is in `[start, end)` (no `end`: to the
/// end of the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stripe {
    /// The first byte a line of this reader may start at.
    pub start: u64,
    /// The byte no line of this reader starts at or after; `None` for the last reader.
    pub end: Option<u64>,
}

/// Where a reader starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// At this offset, which is a line start (or the end of the file).
    LineStart(u64),
    /// At the first line start at or after this offset, which may be inside a line: see
    /// [`Cut`].
    FirstLineFrom(u64),
}

/// How to reach the first line start at or after an offset inside a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The offset is a line start: read from there.
    LineStartsHere,
    /// The offset is inside a line: skip to just after that line's newline (or to the end of
    /// the file if it has none).
    SkipRestOfLine,
}

impl Stripe {
    /// The whole file: one reader.
    pub const WHOLE: Stripe = Stripe {
        start: 0,
        end: None,
    };

    /// The range of reader `reader` of `readers` (at least 1) over a file of `len` bytes.
    /// `reader` must be below `readers`.
    pub fn of(len: u64, reader: usize, readers: usize) -> Stripe {
        let readers = readers.max(1);
        assert!(reader < readers, "reader {reader} of {readers}");
        let at = |i: usize| (u128::from(len) * i as u128 / readers as u128) as u64;
        Stripe {
            start: at(reader),
            end: (reader + 1 < readers).then(|| at(reader + 1)),
        }
    }

    /// True when a line starting at `line_start` is this reader's to read.
    pub fn owns(&self, line_start: u64) -> bool {
        line_start >= self.start && self.end.is_none_or(|end| line_start < end)
    }

    /// True when a reader whose next line starts at `next` has read all of its range (a line
    /// starting there would be another reader's).
    pub fn is_done_at(&self, next: u64) -> bool {
        self.end.is_some_and(|end| next >= end)
    }

    /// Where reading starts, from the offset this reader committed last (`None` when it has
    /// committed nothing).
    pub fn entry(&self, committed: Option<u64>) -> Entry {
        match committed {
            Some(c) if c >= self.start => Entry::LineStart(c),
            _ if self.start == 0 => Entry::LineStart(0),
            _ => Entry::FirstLineFrom(self.start),
        }
    }
}

/// How to reach the first line start at or after `at` (> 0), given the byte just before `at`:
/// `at` is a line start exactly when that byte is a newline.
pub fn cut(byte_before: u8) -> Cut {
    if byte_before == b'\n' {
        Cut::LineStartsHere
    } else {
        Cut::SkipRestOfLine
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The lines `(start, end)` (end past the newline) a reader of `stripe` reads from
    /// `entry`, found with this module's functions the way the file source finds them.
    fn read(bytes: &[u8], stripe: Stripe, entry: Entry) -> Vec<(u64, u64)> {
        let next_line_end = |from: u64| -> u64 {
            let rest = &bytes[from as usize..];
            from + rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |i| i + 1) as u64
        };
        let mut at = match entry {
            Entry::LineStart(at) => at,
            Entry::FirstLineFrom(from) => match cut(bytes[from as usize - 1]) {
                Cut::LineStartsHere => from,
                Cut::SkipRestOfLine => next_line_end(from),
            },
        };
        let mut lines = Vec::new();
        while at < bytes.len() as u64 && !stripe.is_done_at(at) {
            assert!(stripe.owns(at), "a line at {at} outside {stripe:?}");
            let end = next_line_end(at);
            lines.push((at, end));
            at = end;
        }
        lines
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
        /// Across `n` readers every line is read exactly once, in file order.
        #[test]
        fn every_line_is_read_by_exactly_one_reader(bytes in contents(), n in 1usize..12) {
            let len = bytes.len() as u64;
            let mut read_by_all = Vec::new();
            for i in 0..n {
                let stripe = Stripe::of(len, i, n);
                read_by_all.extend(read(&bytes, stripe, stripe.entry(None)));
            }
            prop_assert_eq!(read_by_all, all_lines(&bytes));
        }

        /// Resuming from any offset a reader commits (the end of a line it read) reads exactly
        /// the rest of its lines.
        #[test]
        fn resuming_from_a_committed_offset_reads_the_rest_of_the_range(
            bytes in contents(), n in 1usize..6, reader in 0usize..6,
        ) {
            let reader = reader % n;
            let stripe = Stripe::of(bytes.len() as u64, reader, n);
            let lines = read(&bytes, stripe, stripe.entry(None));
            for (k, &(_, committed)) in lines.iter().enumerate() {
                let entry = stripe.entry(Some(committed));
                prop_assert_eq!(entry, Entry::LineStart(committed));
                prop_assert_eq!(read(&bytes, stripe, entry), lines[k + 1..].to_vec());
            }
        }

        /// A file that grew between runs (its old part ending with a newline): each reader
        /// resumes from the offset it committed over the old length, with ranges over the new
        /// one, and no line is skipped.
        #[test]
        fn a_file_grown_between_runs_loses_no_line(
            bytes in contents(), more in contents(), n in 1usize..6,
            stops in prop::collection::vec(0usize..8, 6),
        ) {
            let mut bytes = bytes;
            if bytes.last().is_some_and(|&b| b != b'\n') {
                bytes.push(b'\n');
            }
            let old_len = bytes.len() as u64;
            let mut grown = bytes.clone();
            grown.extend(&more);
            let mut seen = std::collections::BTreeSet::new();
            for (i, stop) in stops.iter().enumerate().take(n) {
                let old = Stripe::of(old_len, i, n);
                let lines = read(&bytes, old, old.entry(None));
                let k = stop % (lines.len() + 1);
                seen.extend(lines[..k].iter().map(|l| l.0));
                let committed = (k > 0).then(|| lines[k - 1].1);
                let stripe = Stripe::of(grown.len() as u64, i, n);
                seen.extend(read(&grown, stripe, stripe.entry(committed)).iter().map(|l| l.0));
            }
            for line in all_lines(&grown) {
                prop_assert!(seen.contains(&line.0), "line {:?} was skipped", line);
            }
        }
    }

    #[test]
    fn ranges_split_the_file_evenly_and_the_last_has_no_end() {
        assert_eq!(Stripe::of(10, 0, 1), Stripe::WHOLE);
        assert_eq!(
            [0, 1, 2].map(|i| Stripe::of(10, i, 3)),
            [
                Stripe {
                    start: 0,
                    end: Some(3)
                },
                Stripe {
                    start: 3,
                    end: Some(6)
                },
                Stripe {
                    start: 6,
                    end: None
                },
            ]
        );
        // More readers than bytes: some ranges are empty.
        assert_eq!(
            Stripe::of(1, 0, 3),
            Stripe {
                start: 0,
                end: Some(0)
            }
        );
        assert_eq!(Stripe::of(u64::MAX, 1, 2).start, u64::MAX / 2);
        assert_eq!(Stripe::of(0, 1, 2).entry(None), Entry::LineStart(0));
        assert_eq!(Stripe::of(10, 1, 2).entry(None), Entry::FirstLineFrom(5));
        assert_eq!(Stripe::of(10, 1, 2).entry(Some(3)), Entry::FirstLineFrom(5));
        assert_eq!(Stripe::of(10, 1, 2).entry(Some(7)), Entry::LineStart(7));
        assert_eq!(cut(b'\n'), Cut::LineStartsHere);
        assert_eq!(cut(b'}'), Cut::SkipRestOfLine);
    }
}
