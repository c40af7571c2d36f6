//! JSON-lines files: one JSON document per line.
//!
//! The source's params (besides `path`, which the engine reads): `max_line_bytes`, the longest
//! line handed over (default 1 MiB, DESIGN §10). A longer line is never held whole in memory:
//! it is read in bounded chunks up to its newline, and handed over as a record with a
//! [`RecordFault::LineTooLong`] and only its first [`TOO_LONG_PREVIEW_BYTES`] bytes; the
//! engine sends it to the error output with its line number, and the next lines go on.
//!
//! Several readers (a task's input peers) can read one file together, each the lines that
//! start in its blocks of the file's bytes, dealt out in turn ([`JsonLinesSource::open_stripe`],
//! [`crate::stripe`]), with the file's own line numbers. The source's `stripe_block_bytes`
//! sets the block size (default [`crate::stripe::DEFAULT_BLOCK_BYTES`]).

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::params::{Fields, Problems};
use crate::source::RecordFault;
use crate::stripe::{Stripe, DEFAULT_BLOCK_BYTES};
use crate::{ConnectorError, Position, Record, Sink, Source, SourceBatch};

/// The default of `max_line_bytes`: 1 MiB.
pub const DEFAULT_MAX_LINE_BYTES: usize = 1 << 20;

use crate::line_reader::LineReader;
pub use crate::line_reader::TOO_LONG_PREVIEW_BYTES;

/// Checks the limits in a JSON-lines source's params (`max_line_bytes`: an integer ≥ 1); the
/// other fields are the engine's (`path`) and are not reported.
pub fn validate_source(params: &Value) -> Problems {
    let mut f = match Fields::new(params) {
        Ok(f) => f,
        Err(p) => return p,
    };
    if f.unsigned("max_line_bytes", false) == Some(0) {
        f.problem("max_line_bytes", "must be at least 1");
    }
    if f.unsigned("stripe_block_bytes", false) == Some(0) {
        f.problem("stripe_block_bytes", "must be at least 1");
    }
    f.into_problems()
}

/// The `stripe_block_bytes` of a JSON-lines source's params (the default when absent).
pub fn stripe_block_bytes(params: &Value) -> Result<u64, ConnectorError> {
    checked_count(params, "stripe_block_bytes", DEFAULT_BLOCK_BYTES)
}

/// The `max_line_bytes` of a JSON-lines source's params (the default when absent).
pub fn max_line_bytes(params: &Value) -> Result<usize, ConnectorError> {
    checked_count(params, "max_line_bytes", DEFAULT_MAX_LINE_BYTES as u64)
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// The count `name` of valid source params ([`validate_source`]; the error names every
/// problem), or `default` when absent.
fn checked_count(params: &Value, name: &str, default: u64) -> Result<u64, ConnectorError> {
    let problems = validate_source(params);
    if !problems.is_empty() {
        return Err(ConnectorError::fatal(
            "sardonyx/jsonl params",
            crate::params::describe(&problems),
        ));
    }
    Ok(params.get(name).and_then(Value::as_u64).unwrap_or(default))
}

/// Reads a JSON-lines file, or one stripe of it (see [`crate::stripe`]: with several readers,
/// each reads the lines that start in its blocks of bytes, and passes over the others').
/// Positions are byte offsets just after a line, in partition 0 (each reader has its own
/// committed positions); blank lines are skipped but still counted, so record indices are the
/// file's line numbers (a reader resumed far into the file counts the lines before it first).
/// Lines longer than `max_line_bytes` come out as faulty records (see the module's
/// documentation).
pub struct JsonLinesSource {
    path: PathBuf,
    lines: LineReader<BufReader<File>>,
    stripe: Stripe,
    /// The offset of the next line.
    offset: u64,
    /// The number of lines before `offset`.
    line: u64,
    /// Payload buffers of records handed back ([`Source::recycle`]), reused for the next
    /// lines: one allocation per line saved.
    spare: Vec<Vec<u8>>,
}

/// Most payload buffers a source keeps for reuse.
const SPARE_BUFFERS: usize = 8192;

/// Largest payload buffer kept for reuse: a rare long line does not stay held.
const SPARE_BUFFER_BYTES: usize = 4096;

/// A copy of `bytes`, in a spare buffer if there is one.
fn copy_into_spare(spare: &mut Vec<Vec<u8>>, bytes: &[u8]) -> Vec<u8> {
    match spare.pop() {
        Some(mut buffer) => {
            buffer.clear();
            buffer.extend_from_slice(bytes);
            buffer
        }
        None => bytes.to_vec(),
    }
}

impl JsonLinesSource {
    /// Opens `path` for reading the whole file from its start.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ConnectorError> {
        Self::open_stripe(path, 0, 1)
    }

    /// Opens `path` for reader `reader` of `readers` (at least 1; `reader` below it): it reads
    /// the lines that start in its blocks of [`DEFAULT_BLOCK_BYTES`] ([`Stripe`]).
    pub fn open_stripe(
        path: impl AsRef<Path>,
        reader: usize,
        readers: usize,
    ) -> Result<Self, ConnectorError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path)
            .map_err(|e| ConnectorError::io(format!("opening {}", path.display()), &e))?;
        Ok(JsonLinesSource {
            path,
            lines: LineReader::new(
                BufReader::with_capacity(1 << 16, file),
                DEFAULT_MAX_LINE_BYTES,
            ),
            stripe: Stripe::new(reader, readers, DEFAULT_BLOCK_BYTES),
            offset: 0,
            line: 0,
            spare: Vec::new(),
        })
    }

    /// Sets the size of the blocks the readers deal out (at least 1; see [`Stripe`]).
    pub fn with_stripe_block_bytes(mut self, block: u64) -> Self {
        self.stripe = self.stripe.with_block(block);
        self
    }

    /// Sets the longest line handed over whole (at least 1).
    pub fn with_max_line_bytes(mut self, max: usize) -> Self {
        self.lines.set_max_line_bytes(max);
        self
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lines this source reads.
    pub fn stripe(&self) -> Stripe {
        self.stripe
    }

    /// Reads the file from its start up to `at`, counting the lines before it: in large blocks
    /// with a vectorized count (a start far into a large file reads the prefix at memory speed,
    /// not line by line). Returns the number of newlines before `at` and the byte before it
    /// (`None` at 0); the reader is left at `at`.
    fn count_lines_to(
        &mut self,
        at: u64,
        context: &dyn Fn() -> String,
    ) -> Result<(u64, Option<u8>), ConnectorError> {
        let len = self.len(context)?;
        if at > len {
            return Err(ConnectorError::fatal(
                context(),
                "position is past the end of the file",
            ));
        }
        self.lines
            .get_mut()
            .seek(SeekFrom::Start(0))
            .map_err(|e| ConnectorError::io(context(), &e))?;
        let mut block = vec![0u8; 1 << 20];
        let mut lines = 0;
        let mut read = 0;
        let mut last = None;
        while read < at {
            let want = block.len().min((at - read) as usize);
            let n = self
                .lines
                .get_mut()
                .read(&mut block[..want])
                .map_err(|e| ConnectorError::io(context(), &e))?;
            if n == 0 {
                return Err(ConnectorError::fatal(
                    context(),
                    "position is past the end of the file",
                ));
            }
            lines += memchr::memchr_iter(b'\n', &block[..n]).count() as u64;
            last = Some(block[n - 1]);
            read += n as u64;
        }
        Ok((lines, last))
    }

    /// The file's current length.
    fn len(&self, context: &dyn Fn() -> String) -> Result<u64, ConnectorError> {
        Ok(self
            .lines
            .get_ref()
            .get_ref()
            .metadata()
            .map_err(|e| ConnectorError::io(context(), &e))?
            .len())
    }
}

impl Source for JsonLinesSource {
    fn poll_batch(
        &mut self,
        max: usize,
        _timeout: Duration,
    ) -> Result<SourceBatch, ConnectorError> {
        let mut out = Vec::with_capacity(max.min(4096));
        let io =
            |e: std::io::Error| ConnectorError::io(format!("reading {}", self.path.display()), &e);
        while out.len() < max {
            if !self.stripe.owns(self.offset) {
                // Other readers' lines, up to this reader's next block: counted, not read one by
                // one and not handed over.
                let limit = self.stripe.next_own_block(self.offset) - self.offset;
                let (consumed, lines) = self.lines.skip_lines_before(limit).map_err(io)?;
                self.offset += consumed;
                self.line += lines;
                if consumed == 0 {
                    break;
                }
                continue;
            }
            let Some(crate::line_reader::Line { consumed, length }) =
                self.lines.next_line().map_err(io)?
            else {
                break;
            };
            self.offset += consumed;
            self.line += 1;
            let position = Position {
                partition: 0,
                offset: self.offset,
            };
            let payload = self.lines.text();
            let limit = self.lines.max_line_bytes();
            if payload.len() > limit {
                out.push(Record {
                    position,
                    index: self.line,
                    payload: payload[..TOO_LONG_PREVIEW_BYTES.min(payload.len())].to_vec(),
                    fault: Some(RecordFault::LineTooLong { length, limit }),
                });
                continue;
            }
            if payload.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            out.push(Record {
                position,
                index: self.line,
                payload: copy_into_spare(&mut self.spare, payload),
                fault: None,
            });
        }
        Ok(if out.is_empty() {
            SourceBatch::Done
        } else {
            SourceBatch::Records(out)
        })
    }

    fn recycle(&mut self, records: Vec<Record>) {
        let room = SPARE_BUFFERS.saturating_sub(self.spare.len());
        self.spare.extend(
            records
                .into_iter()
                .map(|r| r.payload)
                .filter(|p| p.capacity() <= SPARE_BUFFER_BYTES)
                .take(room),
        );
    }

    /// Resumes just after a line this reader read (its committed offset).
    fn seek(&mut self, position: Position) -> Result<(), ConnectorError> {
        let at = position.offset;
        let file = self.path.display().to_string();
        let context = || format!("seeking {file} to byte {at}");
        // Line numbers must stay true after a seek, so count the lines before the position.
        let (mut lines, before) = self.count_lines_to(at, &context)?;
        if before.is_some_and(|b| b != b'\n') {
            // Only the end of a file whose last line has no newline is a boundary there.
            if at != self.len(&context)? {
                return Err(ConnectorError::fatal(
                    context(),
                    "position is not at a line boundary",
                ));
            }
            lines += 1;
        }
        self.offset = at;
        self.line = lines;
        Ok(())
    }

    /// One file is one partition, 0, for each of its readers (the engine registers it before
    /// the first batch, so an empty file holds the watermark back until it is idle or done).
    fn partitions(&self) -> Vec<u32> {
        vec![0]
    }
}

/// Appends records to a JSON-lines file, one per line.
pub struct JsonLinesSink {
    path: PathBuf,
    writer: BufWriter<File>,
}

impl JsonLinesSink {
    /// Creates (truncating) `path`, making its parent folders.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, ConnectorError> {
        Self::open(path, false)
    }

    /// Opens `path` for appending after a crash: a torn last line (a process killed mid-write)
    /// is cut first, so the lines appended from here on stay whole.
    pub fn resume(path: impl AsRef<Path>) -> Result<Self, ConnectorError> {
        let path = path.as_ref();
        cut_torn_line(path)
            .map_err(|e| ConnectorError::io(format!("resuming {}", path.display()), &e))?;
        Self::append(path)
    }

    /// Opens `path` for appending (creating it if needed).
    pub fn append(path: impl AsRef<Path>) -> Result<Self, ConnectorError> {
        Self::open(path, true)
    }

    fn open(path: impl AsRef<Path>, append: bool) -> Result<Self, ConnectorError> {
        let path = path.as_ref().to_path_buf();
        let context = || format!("opening {}", path.display());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| ConnectorError::io(context(), &e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&path)
            .map_err(|e| ConnectorError::io(context(), &e))?;
        Ok(JsonLinesSink {
            path,
            writer: BufWriter::with_capacity(1 << 16, file),
        })
    }
}

impl Sink for JsonLinesSink {
    fn write_batch(&mut self, records: &[Vec<u8>]) -> Result<(), ConnectorError> {
        for r in records {
            self.writer
                .write_all(r)
                .and_then(|()| self.writer.write_all(b"\n"))
                .map_err(|e| ConnectorError::io(format!("writing {}", self.path.display()), &e))?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ConnectorError> {
        self.writer
            .flush()
            .map_err(|e| ConnectorError::io(format!("flushing {}", self.path.display()), &e))
    }
}

/// Cuts a torn last line (a process killed mid-write) off a JSON-lines file that syncs append
/// to, so the lines a resumed job appends stay whole. A missing file is fine.
pub fn cut_torn_line(path: &std::path::Path) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    // Look back in chunks for the last newline.
    let mut end = len;
    let mut buf = vec![0_u8; 64 * 1024];
    loop {
        let start = end.saturating_sub(buf.len() as u64);
        let n = (end - start) as usize;
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            let keep = start + i as u64 + 1;
            if keep < len {
                tracing::warn!(path = %path.display(), cut = len - keep, "cutting a torn last line");
                f.set_len(keep)?;
            }
            return Ok(());
        }
        if start == 0 {
            // No newline at all: the whole file is one torn line.
            return f.set_len(0);
        }
        end = start;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(src: &mut JsonLinesSource, max: usize) -> Vec<Record> {
        match src.poll_batch(max, Duration::ZERO).unwrap() {
            SourceBatch::Records(r) => r,
            other => panic!("expected records, got {other:?}"),
        }
    }

    #[test]
    fn reads_lines_with_numbers_and_resumes_from_a_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, "{\"a\":1}\n\n{\"a\":2}\r\n{\"a\":3}").unwrap();
        let mut src = JsonLinesSource::open(&path).unwrap();
        assert_eq!(src.partitions(), vec![0]);
        let first = records(&mut src, 2);
        assert_eq!(first.len(), 2);
        assert_eq!(
            (first[0].index, first[0].payload.as_slice()),
            (1, &b"{\"a\":1}"[..])
        );
        assert_eq!(
            (first[1].index, first[1].payload.as_slice()),
            (3, &b"{\"a\":2}"[..])
        );
        assert_eq!(first[1].position.offset, 18);
        let rest = records(&mut src, 10);
        assert_eq!(
            (rest[0].index, rest[0].payload.as_slice()),
            (4, &b"{\"a\":3}"[..])
        );
        assert!(matches!(
            src.poll_batch(10, Duration::ZERO).unwrap(),
            SourceBatch::Done
        ));

        let mut again = JsonLinesSource::open(&path).unwrap();
        again.seek(first[1].position).unwrap();
        let resumed = records(&mut again, 10);
        assert_eq!(resumed, rest);
        assert!(again
            .seek(Position {
                partition: 0,
                offset: 5
            })
            .is_err());
    }

    /// Seeking counts the lines before the position across read blocks, to the end of a file
    /// whose last line has no newline, and refuses positions past the end or inside a line.
    /// Records handed back are reused for the next lines: each payload is exactly its line,
    /// however long the line the buffer held before; buffers past the size bound are not kept.
    #[test]
    fn recycled_buffers_hold_exactly_the_next_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        let long = format!("{{\"a\":\"{}\"}}", "x".repeat(SPARE_BUFFER_BYTES));
        let lines = [
            "{\"a\":\"a long line first\"}".to_owned(),
            long.clone(),
            "{\"b\":1}".to_owned(),
            "{\"c\":22}".to_owned(),
            "{\"d\":333}".to_owned(),
            "{}".to_owned(),
        ];
        std::fs::write(&path, lines.join("\n")).unwrap();
        let mut src = JsonLinesSource::open(&path).unwrap();
        let first = records(&mut src, 2);
        src.recycle(first);
        // The long line's buffer is over the bound: only the first one is kept.
        assert_eq!(src.spare.len(), 1);
        let second = records(&mut src, 3);
        assert!(src.spare.is_empty(), "the spare buffer was reused");
        let got: Vec<(u64, &[u8])> = second
            .iter()
            .map(|r| (r.index, r.payload.as_slice()))
            .collect();
        assert_eq!(
            got,
            vec![
                (3, lines[2].as_bytes()),
                (4, lines[3].as_bytes()),
                (5, lines[4].as_bytes())
            ]
        );
        src.recycle(second);
        assert_eq!(src.spare.len(), 3);
        let last = records(&mut src, 10);
        assert_eq!(last.len(), 1);
        assert_eq!((last[0].index, last[0].payload.as_slice()), (6, &b"{}"[..]));
        assert_eq!(src.spare.len(), 2);
    }

    #[test]
    fn seek_keeps_line_numbers_in_a_large_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        let n = 40_000; // ~1.4 MB: more than one read block
        let text: String = (1..=n)
            .map(|i| format!("{{\"vote_id\":{i:>20}}}\n"))
            .collect();
        let line_len = text.len() as u64 / n;
        std::fs::write(&path, format!("{text}{{\"last\":1}}")).unwrap();
        let mut src = JsonLinesSource::open(&path).unwrap();
        let at = |line: u64| Position {
            partition: 0,
            offset: line * line_len,
        };
        src.seek(at(30_000)).unwrap();
        let r = records(&mut src, 1);
        assert_eq!(r[0].index, 30_001);
        assert_eq!(
            r[0].payload,
            format!("{{\"vote_id\":{:>20}}}", 30_001).into_bytes()
        );
        src.seek(at(n)).unwrap();
        let r = records(&mut src, 5);
        assert_eq!(
            (r[0].index, r[0].payload.as_slice()),
            (n + 1, &b"{\"last\":1}"[..])
        );
        let end = r[0].position;
        assert_eq!(end.offset, std::fs::metadata(&path).unwrap().len());
        src.seek(end).unwrap();
        assert!(matches!(
            src.poll_batch(10, Duration::ZERO).unwrap(),
            SourceBatch::Done
        ));
        let beyond = Position {
            partition: 0,
            offset: end.offset + 1,
        };
        assert!(src
            .seek(beyond)
            .unwrap_err()
            .to_string()
            .contains("past the end"));
        let inside = Position {
            partition: 0,
            offset: at(20_000).offset + 3,
        };
        assert!(src
            .seek(inside)
            .unwrap_err()
            .to_string()
            .contains("not at a line boundary"));
    }

    /// A line over `max_line_bytes` comes out as a faulty record with its line number, its
    /// length and only its start; it is read in chunks, never held whole; the lines after it
    /// go through, and positions stay byte offsets, so a resume after it works.
    #[test]
    fn a_line_longer_than_the_limit_is_reported_and_skipped_in_bounded_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        let limit = 1024;
        let huge = format!("{{\"a\":\"{}\"}}", "x".repeat(4 << 20));
        let exact = format!("{{\"a\":\"{}\"}}", "y".repeat(limit - 8));
        assert_eq!(exact.len(), limit);
        let text = format!("{{\"a\":1}}\n{huge}\n{exact}\r\n{exact}z\n\n{{\"a\":2}}\n{huge}");
        std::fs::write(&path, &text).unwrap();
        let mut src = JsonLinesSource::open(&path)
            .unwrap()
            .with_max_line_bytes(limit);
        let got = records(&mut src, 100);
        let summary: Vec<(u64, usize, Option<RecordFault>)> = got
            .iter()
            .map(|r| (r.index, r.payload.len(), r.fault.clone()))
            .collect();
        let too_long = |length: usize| {
            Some(RecordFault::LineTooLong {
                length: length as u64,
                limit,
            })
        };
        assert_eq!(
            summary,
            [
                (1, 7, None),
                (2, TOO_LONG_PREVIEW_BYTES, too_long(huge.len())),
                (3, limit, None),
                (4, TOO_LONG_PREVIEW_BYTES, too_long(limit + 1)),
                (6, 7, None),
                (7, TOO_LONG_PREVIEW_BYTES, too_long(huge.len())),
            ]
        );
        assert_eq!(got[1].payload, huge.as_bytes()[..TOO_LONG_PREVIEW_BYTES]);
        assert_eq!(got[2].payload, exact.as_bytes());
        assert_eq!(got[4].payload, b"{\"a\":2}");
        assert_eq!(got[5].position.offset, text.len() as u64);
        assert_eq!(
            got[1].fault.as_ref().unwrap().to_string(),
            format!(
                "the line is {} bytes long, more than max_line_bytes (1024); it was skipped",
                huge.len()
            )
        );
        // Two 4 MiB lines went through a buffer that never grew past a few times the limit.
        let held = src.lines.held_capacity();
        assert!(held <= 4 * limit, "{held}");
        assert!(matches!(
            src.poll_batch(10, Duration::ZERO).unwrap(),
            SourceBatch::Done
        ));
        // Resuming just after the long line reads on from the next line, numbered right.
        let mut again = JsonLinesSource::open(&path)
            .unwrap()
            .with_max_line_bytes(limit);
        again.seek(got[1].position).unwrap();
        assert_eq!(records(&mut again, 1)[0].index, 3);
    }

    #[test]
    fn max_line_bytes_is_checked() {
        use serde_json::json;
        assert_eq!(
            max_line_bytes(&json!({"path": "in.jsonl"})).unwrap(),
            DEFAULT_MAX_LINE_BYTES
        );
        assert_eq!(
            max_line_bytes(&json!({"path": "in.jsonl", "max_line_bytes": 10})).unwrap(),
            10
        );
        assert_eq!(validate_source(&json!({"path": "p", "other": 1})), []);
        assert_eq!(
            validate_source(&json!({"max_line_bytes": 0})),
            [("max_line_bytes".to_owned(), "must be at least 1".to_owned())]
        );
        assert_eq!(
            stripe_block_bytes(&json!({"path": "in.jsonl"})).unwrap(),
            DEFAULT_BLOCK_BYTES
        );
        assert_eq!(
            stripe_block_bytes(&json!({"stripe_block_bytes": 256})).unwrap(),
            256
        );
        assert_eq!(
            validate_source(&json!({"max_line_bytes": 0, "stripe_block_bytes": 0})),
            [
                ("max_line_bytes".to_owned(), "must be at least 1".to_owned()),
                (
                    "stripe_block_bytes".to_owned(),
                    "must be at least 1".to_owned()
                )
            ]
        );
        assert_eq!(
            validate_source(&json!({"max_line_bytes": "1MiB"})),
            [(
                "max_line_bytes".to_owned(),
                "must be a non-negative integer, got a string".to_owned()
            )]
        );
        assert_eq!(
            max_line_bytes(&json!({"max_line_bytes": -5}))
                .unwrap_err()
                .to_string(),
            "sardonyx/jsonl params: max_line_bytes: must be a non-negative integer, got an integer"
        );
    }

    #[test]
    fn sink_writes_one_record_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/out.jsonl");
        let mut sink = JsonLinesSink::create(&path).unwrap();
        sink.write_batch(&[b"{\"a\":1}".to_vec(), b"{\"a\":2}".to_vec()])
            .unwrap();
        sink.flush().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"a\":2}\n"
        );
        let missing = JsonLinesSource::open(dir.path().join("nope.jsonl"))
            .err()
            .unwrap();
        assert!(!missing.is_retryable());
    }

    /// Every record reader `reader` of `readers` hands over, with blocks of `block` bytes
    /// (lines over `limit` as faults).
    fn read_all(
        path: &Path,
        reader: usize,
        readers: usize,
        block: u64,
        limit: usize,
    ) -> Vec<Record> {
        let src = JsonLinesSource::open_stripe(path, reader, readers)
            .unwrap()
            .with_stripe_block_bytes(block)
            .with_max_line_bytes(limit);
        drain(src, 3)
    }

    /// Every record `src` hands over, polled in batches of `batch`.
    fn drain(mut src: JsonLinesSource, batch: usize) -> Vec<Record> {
        let mut all = Vec::new();
        loop {
            match src.poll_batch(batch, Duration::ZERO).unwrap() {
                SourceBatch::Records(r) => all.extend(r),
                SourceBatch::Done => return all,
                SourceBatch::Idle => panic!("a file is never idle"),
            }
        }
    }

    /// Stripes on a small file: a line longer than a whole block, blank lines, `\r\n`, no
    /// trailing newline, more readers than lines; each reader's records keep the file's line
    /// numbers, and together the readers hand over what one reader does.
    #[test]
    fn readers_of_stripes_hand_over_every_line_once_with_its_line_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        let long = format!("{{\"a\":\"{}\"}}", "x".repeat(60));
        // Offsets: line 1 at 0, line 2 (68 bytes and its newline) at 8, line 3 (blank) at 77,
        // line 4 at 78, line 5 at 87, line 6 (no newline) at 94; 101 bytes.
        let text = format!("{{\"a\":1}}\n{long}\n\n{{\"a\":2}}\r\n{{\"a\":3\n{{\"a\":4}}");
        std::fs::write(&path, &text).unwrap();
        let summary = |records: &[Record]| -> Vec<(u64, String, u64)> {
            records
                .iter()
                .map(|r| {
                    let text = String::from_utf8(r.payload.clone()).unwrap();
                    (r.index, text, r.position.offset)
                })
                .collect()
        };
        let line = |i: u64, t: &str, end: u64| (i, t.to_owned(), end);
        let whole = summary(&read_all(&path, 0, 1, 50, 1000));
        assert_eq!(
            whole,
            [
                line(1, "{\"a\":1}", 8),
                line(2, &long, 77),
                line(4, "{\"a\":2}", 87),
                line(5, "{\"a\":3", 94),
                line(6, "{\"a\":4}", 101),
            ]
        );
        // Two readers, blocks of 50 bytes: the long line starts in the first block, so it is
        // the first reader's though it runs into the second block.
        assert_eq!(summary(&read_all(&path, 0, 2, 50, 1000)), whole[..2]);
        assert_eq!(summary(&read_all(&path, 1, 2, 50, 1000)), whole[2..]);
        // Four readers, blocks of 25: no line starts in the second and third blocks; the fourth
        // holds the blank line and the rest.
        let four: Vec<_> = (0..4)
            .map(|i| summary(&read_all(&path, i, 4, 25, 1000)))
            .collect();
        assert_eq!(four, [&whole[..2], &[], &[], &whole[2..]]);
        // Blocks of 10 over three readers: lines at 0, 8 | 78 | 87, 94 are the first's, the
        // first's, the second's, the third's, the first's ((offset / 10) mod 3).
        let three: Vec<Vec<u64>> = (0..3)
            .map(|i| {
                read_all(&path, i, 3, 10, 1000)
                    .iter()
                    .map(|r| r.index)
                    .collect()
            })
            .collect();
        assert_eq!(three, [vec![1, 2, 6], vec![4], vec![5]]);
        // More readers than lines, blocks of one byte: each line once.
        let mut many: Vec<_> = (0..40)
            .flat_map(|i| summary(&read_all(&path, i, 40, 1, 1000)))
            .collect();
        many.sort();
        assert_eq!(many, whole);
        // Lines over the limit in the second reader's block keep their line numbers.
        let small = read_all(&path, 1, 2, 50, 5);
        let faults: Vec<(u64, bool)> = small.iter().map(|r| (r.index, r.fault.is_some())).collect();
        assert_eq!(faults, [(4, true), (5, true), (6, true)]);
        // An empty file: nothing for anyone.
        std::fs::write(&path, "").unwrap();
        assert!((0..3).all(|i| read_all(&path, i, 3, 50, 1000).is_empty()));
    }

    /// Lines appended after the readers opened the file are dealt out by their blocks as the
    /// others were.
    #[test]
    fn lines_appended_after_opening_are_dealt_out_the_same_way() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"a\":2}\n").unwrap();
        let open = |i| {
            JsonLinesSource::open_stripe(&path, i, 2)
                .unwrap()
                .with_stripe_block_bytes(8)
        };
        let (first, second) = (open(0), open(1));
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"a\":3}\n").unwrap();
        let indices = |src| drain(src, 10).iter().map(|r| r.index).collect::<Vec<_>>();
        assert_eq!(indices(first), [1, 3]);
        assert_eq!(indices(second), [2]);
    }

    /// A reader resumed from a line boundary goes on with its next own line, whoever's lines
    /// lie between.
    #[test]
    fn a_resume_goes_on_with_the_readers_next_own_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        let text: String = (0..10).map(|i| format!("{{\"a\":{i}}}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        // Ten lines of 8 bytes, blocks of 16: the second of two readers owns lines 3, 4, 7, 8.
        let resumed = |offset| {
            let mut src = JsonLinesSource::open_stripe(&path, 1, 2)
                .unwrap()
                .with_stripe_block_bytes(16);
            src.seek(Position {
                partition: 0,
                offset,
            })
            .unwrap();
            drain(src, 4).iter().map(|r| r.index).collect::<Vec<u64>>()
        };
        assert_eq!(resumed(0), [3, 4, 7, 8]);
        assert_eq!(resumed(16), [3, 4, 7, 8]);
        assert_eq!(resumed(32), [7, 8]);
        assert_eq!(resumed(64), Vec::<u64>::new());
    }

    /// Lines: empty, short, long (over a limit of 30), with `\r\n`, blank.
    fn file_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        (
            prop::collection::vec(
                prop_oneof![
                    Just(String::new()),
                    Just("  ".to_owned()),
                    "\\{\"a\":[0-9]{1,5}\\}\r?",
                    "\\{\"b\":\"[a-z]{30,90}\"\\}",
                    "[a-z{]{1,12}",
                ],
                0..25,
            ),
            any::<bool>(),
        )
            .prop_map(|(lines, trailing)| {
                let mut text = lines.join("\n");
                if trailing && !lines.is_empty() {
                    text.push('\n');
                }
                text
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Whatever the file, the number of readers and the block size, the readers together
        /// hand over exactly the records one reader does (same line numbers, same faults, same
        /// end offsets), each once; and each reader resumed from any offset it handed over
        /// reads exactly the rest of its records.
        #[test]
        fn stripes_partition_the_records_and_resume_after_any_of_them(
            text in file_text(), readers in 1usize..9, block in 1u64..120,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("in.jsonl");
            std::fs::write(&path, &text).unwrap();
            let whole = read_all(&path, 0, 1, block, 30);
            let mut together = Vec::new();
            for reader in 0..readers {
                let mine = read_all(&path, reader, readers, block, 30);
                for (k, r) in mine.iter().enumerate() {
                    let mut again = JsonLinesSource::open_stripe(&path, reader, readers)
                        .unwrap()
                        .with_stripe_block_bytes(block)
                        .with_max_line_bytes(30);
                    again.seek(r.position).unwrap();
                    proptest::prop_assert_eq!(drain(again, 2), mine[k + 1..].to_vec());
                }
                together.extend(mine);
            }
            together.sort_by_key(|r| r.index);
            proptest::prop_assert_eq!(together, whole);
        }
    }
}
