//! Lines of a file or an object's body with a bound on what is held (DESIGN §10): a line longer
//! than `max_line_bytes` is read through in the reader's chunks and only its start kept, so one
//! huge line cannot make an input allocate without bound. The `sardonyx/jsonl` and `sardonyx/s3`
//! inputs read through it.

use std::io::{self, BufRead};

/// How much of a too long line is kept (and shown in its rejection).
pub const TOO_LONG_PREVIEW_BYTES: usize = 256;

/// What [`LineReader::next_line`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    /// Bytes consumed, the newline included.
    pub consumed: u64,
    /// The line's length before its newline (possibly more than was kept).
    pub length: u64,
}

/// Reads lines from `R`, keeping at most `max_line_bytes` + 1 bytes of each.
pub struct LineReader<R> {
    reader: R,
    max_line_bytes: usize,
    buf: Vec<u8>,
}

impl<R: BufRead> LineReader<R> {
    /// Lines of `reader`, each kept up to `max_line_bytes` (at least 1).
    pub fn new(reader: R, max_line_bytes: usize) -> Self {
        LineReader {
            reader,
            max_line_bytes: max_line_bytes.max(1),
            buf: Vec::new(),
        }
    }

    /// The kept bytes of the last line read, without its line ending.
    pub fn text(&self) -> &[u8] {
        let mut text = self.buf.as_slice();
        while let Some((b'\n' | b'\r', rest)) = text.split_last() {
            text = rest;
        }
        text
    }

    /// The longest line kept whole.
    pub fn max_line_bytes(&self) -> usize {
        self.max_line_bytes
    }

    /// Sets the longest line kept whole (at least 1).
    pub fn set_max_line_bytes(&mut self, max: usize) {
        self.max_line_bytes = max.max(1);
    }

    /// The capacity of the buffer that holds a line (bounded, however long the lines).
    pub fn held_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The underlying reader.
    pub fn get_ref(&self) -> &R {
        &self.reader
    }

    /// The underlying reader (to seek it, say).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.reader
    }

    /// Reads the next line; `None` at the end.
    pub fn next_line(&mut self) -> io::Result<Option<Line>> {
        self.buf.clear();
        let keep = self
            .max_line_bytes
            .saturating_add(1)
            .max(TOO_LONG_PREVIEW_BYTES);
        let (mut consumed, mut length) = (0_u64, 0_u64);
        loop {
            let chunk = fill(&mut self.reader)?;
            if chunk.is_empty() {
                break;
            }
            let (part, taken, ends) = match memchr::memchr(b'\n', chunk) {
                Some(i) => (&chunk[..i], i + 1, true),
                None => (chunk, chunk.len(), false),
            };
            let room = keep.saturating_sub(self.buf.len()).min(part.len());
            self.buf.extend_from_slice(&part[..room]);
            length += part.len() as u64;
            consumed += taken as u64;
            self.reader.consume(taken);
            if ends {
                break;
            }
        }
        Ok((consumed > 0).then_some(Line { consumed, length }))
    }

    /// Skips `bytes` bytes, returning how many newlines they held, or `None` if the body ends
    /// first.
    pub fn skip(&mut self, mut bytes: u64) -> io::Result<Option<u64>> {
        let mut lines = 0;
        while bytes > 0 {
            let chunk = fill(&mut self.reader)?;
            if chunk.is_empty() {
                return Ok(None);
            }
            let n = chunk
                .len()
                .min(usize::try_from(bytes).unwrap_or(usize::MAX));
            lines += memchr::memchr_iter(b'\n', &chunk[..n]).count() as u64;
            self.reader.consume(n);
            bytes -= n as u64;
        }
        Ok(Some(lines))
    }

    /// From a line start, passes over every line that starts within the next `limit` bytes
    /// (through its newline, even past `limit`): returns the bytes passed over (ending at a
    /// line start, or at the end of the body) and how many lines they held, a last line with
    /// no newline at the end of the body counting as one, as [`LineReader::next_line`] counts
    /// it. Newlines are counted a chunk at a time, not line by line.
    pub fn skip_lines_before(&mut self, limit: u64) -> io::Result<(u64, u64)> {
        let (mut consumed, mut lines) = (0_u64, 0_u64);
        // Whether `consumed` bytes from the start is a line start.
        let mut at_start = true;
        loop {
            let chunk = fill(&mut self.reader)?;
            if chunk.is_empty() {
                lines += u64::from(!at_start);
                break;
            }
            if consumed >= limit && at_start {
                break;
            }
            let take = if consumed < limit {
                // Every byte before the limit is in a line that starts before it.
                let n = chunk
                    .len()
                    .min(usize::try_from(limit - consumed).unwrap_or(usize::MAX));
                lines += memchr::memchr_iter(b'\n', &chunk[..n]).count() as u64;
                at_start = chunk[n - 1] == b'\n';
                n
            } else {
                // Past the limit in a line that started before it: to its end.
                match memchr::memchr(b'\n', chunk) {
                    Some(i) => {
                        lines += 1;
                        at_start = true;
                        i + 1
                    }
                    None => chunk.len(),
                }
            };
            self.reader.consume(take);
            consumed += take as u64;
        }
        Ok((consumed, lines))
    }
}

/// The reader's buffered bytes, read if it has none (empty at the end of the body); a read
/// interrupted by a signal is retried, any other error is returned as it came. (The second
/// `fill_buf` reads nothing once the first has filled the buffer.)
fn fill<R: BufRead>(reader: &mut R) -> io::Result<&[u8]> {
    loop {
        match reader.fill_buf() {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    reader.fill_buf()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the lines and the limit, the consumed bytes add up to the body, each line
        /// is kept whole when short enough, and skipping to any line's end counts the lines
        /// before it.
        #[test]
        fn lines_cover_the_body(lines in prop::collection::vec("[a-z{}\":,]{0,40}", 0..30),
                                max in 1usize..50, cap in 1usize..16) {
            let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
            let mut reader = LineReader::new(io::BufReader::with_capacity(cap, body.as_bytes()), max);
            let mut total = 0;
            for l in &lines {
                let line = reader.next_line().unwrap().unwrap();
                prop_assert_eq!(line.length, l.len() as u64);
                if l.len() <= max {
                    prop_assert_eq!(reader.text(), l.as_bytes());
                }
                total += line.consumed;
            }
            prop_assert_eq!(reader.next_line().unwrap(), None);
            prop_assert_eq!(total, body.len() as u64);
            let mut at = 0;
            for (i, l) in lines.iter().enumerate() {
                at += l.len() as u64 + 1;
                let mut r = LineReader::new(io::BufReader::with_capacity(cap, body.as_bytes()), max);
                prop_assert_eq!(r.skip(at).unwrap(), Some(i as u64 + 1));
            }
            let mut r = LineReader::new(body.as_bytes(), max);
            prop_assert_eq!(r.skip(body.len() as u64 + 1).unwrap(), None);
        }
    }
}
