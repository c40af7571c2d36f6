//! Nexmark through the real engine: the bids of the standard benchmark's generator (the
//! `nexmark` crate, RisingWave's port of the Beam/Flink generator) as JSON lines, four Nexmark
//! queries (two of them only their window stage) as Sardonyx jobs, and an exact reference for
//! each.
//!
//! What is and is not Nexmark here:
//! - **Events** are the generator's own bids, with its default shape (46 bids in every 50
//!   events, 1 000 active people, 100 auctions in flight, hot auctions and bidders) at a fixed
//!   base time ([`BASE_TIME_MS`]) and a fixed rate (default [`DEFAULT_RATE`] events/s, the
//!   generator's default), so the same count gives the same file byte for byte. Persons and
//!   auctions are not written: no query here joins them. Each line carries the Nexmark event id
//!   of its bid (`event_id`, unique: the generator seeds each event's random choices with it),
//!   which the exactly-once jobs deduplicate on.
//! - **Q5** is only its window stage: bids per auction in 10 s windows sliding every 2 s (the
//!   "hottest auction" selection over those counts is not done).
//! - **Q7** is only its window stage: the highest price in each fixed 10 s window (the join
//!   back to the bids that carry that price is not done).
//! - **Q11** is whole: bids per bidder in sessions closed by 10 s without a bid. Sessions merge
//!   when the gap is ≤ 10 s (DESIGN §4); a pair of one bidder's bids exactly 10 s apart is
//!   counted in [`Reference::exact_gap_pairs`], as engines differ there.
//! - **Q12** counts bids per bidder in a global window fired every 10 s of processing time
//!   (accumulating), in place of Nexmark's processing-time tumbling windows. Which firing sees
//!   which bid depends on timing, so only the counts at job completion are checked: the last
//!   firing of each bidder.
//! - The crate draws its random choices with `rand`'s `SmallRng` where the Java generator uses
//!   `java.util.Random`, so the values are the standard's distributions, not the Java
//!   generator's bytes: another engine compared with this one must read the same file.
//!
//! Every windowed job reads the bids with the `sardonyx/jsonl` input, its watermark on
//! `date_time` [`MAX_OUT_OF_ORDER_MS`] behind the greatest event time (the watermark of
//! Flink's Nexmark DDL), and syncs firings to a JSON-lines file that [`answer_from_sync_file`]
//! folds into canonical rows.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use nexmark::config::NexmarkConfig;
use nexmark::event::{Event, EventType};
use nexmark::EventGenerator;
use sardonyx::job::builder::JobBuilder;
use sardonyx::job::{AggregationDef, Span, TaskSpec, TriggerDef, WindowDef};
use sardonyx::plugin::{SyncContext, SyncPlugin, SyncSink};
use sardonyx::runtime::{run_job_with_progress, Progress, StateOptions};
use sardonyx::{Job, Map, Registry, RunOptions, Value};
use serde::{Deserialize, Serialize};

use crate::{check, proc_status_kib, Rows};

/// The event time of the first event: 2026-01-01T00:00:00Z, epoch milliseconds.
pub const BASE_TIME_MS: u64 = 1_767_225_600_000;
/// The generator's default rate, events (of all three kinds) per second of event time.
pub const DEFAULT_RATE: usize = 10_000;
/// The range of Q5's sliding windows (10 s).
pub const Q5_RANGE_MS: i64 = 10_000;
/// The slide of Q5's sliding windows (2 s).
pub const Q5_SLIDE_MS: i64 = 2_000;
/// The range of Q7's fixed windows (10 s).
pub const Q7_RANGE_MS: i64 = 10_000;
/// The session gap of Q11 (10 s).
pub const Q11_GAP_MS: i64 = 10_000;
/// The processing-time period of Q12's timer (10 s).
pub const Q12_PERIOD_MS: i64 = 10_000;
/// The watermark's allowed out-of-orderness (4 s, as in Flink's Nexmark table definitions;
/// the generator's bids come in event-time order, so none is late).
pub const MAX_OUT_OF_ORDER_MS: i64 = 4_000;

/// The generator's fixed settings: everything else is `NexmarkConfig`'s default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneratorSettings {
    /// Events (persons, auctions and bids) per second of event time.
    pub rate: usize,
    /// Event time of the first event, epoch milliseconds.
    pub base_time_ms: u64,
}

impl Default for GeneratorSettings {
    fn default() -> Self {
        GeneratorSettings {
            rate: DEFAULT_RATE,
            base_time_ms: BASE_TIME_MS,
        }
    }
}

impl GeneratorSettings {
    /// The generator's configuration: its defaults with this base time and a constant rate
    /// (first rate = next rate, so no sine shape), first event id and number 0.
    pub fn config(&self) -> NexmarkConfig {
        NexmarkConfig {
            base_time: self.base_time_ms,
            first_rate: self.rate,
            next_rate: self.rate,
            first_event_id: 0,
            first_event_number: 0,
            ..NexmarkConfig::default()
        }
    }
}

/// One bid as a line of the bids file: the generator's `Bid` with its Nexmark event id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BidLine {
    /// The auction bid on.
    pub auction: u64,
    /// The person bidding.
    pub bidder: u64,
    /// The price, in cents.
    pub price: u64,
    /// The channel the bid came through.
    pub channel: String,
    /// The bid's URL.
    pub url: String,
    /// Event time, epoch milliseconds.
    pub date_time: i64,
    /// Padding to the standard's average bid size.
    pub extra: String,
    /// The Nexmark event id (unique over persons, auctions and bids; the uniqueness key).
    pub event_id: u64,
}

/// The bids of the generator in order, each with its event id.
pub fn bids(settings: GeneratorSettings) -> impl Iterator<Item = BidLine> {
    let config = settings.config();
    // With first_event_id and first_event_number 0 an event's id is its global event number,
    // which the type-filtered generator reports as its global offset before each event.
    let mut generator = EventGenerator::new(config).with_type_filter(EventType::Bid);
    std::iter::from_fn(move || {
        let event_id = generator.global_offset();
        match generator.next()? {
            Event::Bid(b) => Some(BidLine {
                auction: b.auction as u64,
                bidder: b.bidder as u64,
                price: b.price as u64,
                channel: b.channel,
                url: b.url,
                date_time: i64::try_from(b.date_time).unwrap_or(i64::MAX),
                extra: b.extra,
                event_id,
            }),
            // The type filter yields bids only.
            _ => None,
        }
    })
}

/// Writes the first `n` bids as JSON lines to `out`, calling `progress` with the count written
/// every 4 096 bids and at the end.
pub fn write_bids(
    n: u64,
    settings: GeneratorSettings,
    out: impl Write,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<()> {
    let mut w = std::io::BufWriter::with_capacity(1 << 20, out);
    let mut written = 0;
    for bid in bids(settings).take(usize::try_from(n)?) {
        serde_json::to_writer(&mut w, &bid)?;
        w.write_all(b"\n")?;
        written += 1;
        if written % 4096 == 0 {
            progress(written);
        }
    }
    anyhow::ensure!(written == n, "the generator stopped after {written} bids");
    w.flush()?;
    progress(written);
    Ok(())
}

/// One of the Nexmark queries run here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NexmarkQuery {
    /// Q5's window stage: bids per auction, 10 s windows sliding every 2 s.
    Q5,
    /// Q7's window stage: the highest price per fixed 10 s window.
    Q7,
    /// Q11: bids per bidder per session (10 s gap).
    Q11,
    /// Q12: bids per bidder in a global window fired by a 10 s processing-time timer.
    Q12,
}

impl NexmarkQuery {
    /// All four, in order.
    pub const ALL: [NexmarkQuery; 4] = [
        NexmarkQuery::Q5,
        NexmarkQuery::Q7,
        NexmarkQuery::Q11,
        NexmarkQuery::Q12,
    ];

    /// `q5`, `q7`, `q11`, `q12`.
    pub fn name(self) -> &'static str {
        match self {
            NexmarkQuery::Q5 => "q5",
            NexmarkQuery::Q7 => "q7",
            NexmarkQuery::Q11 => "q11",
            NexmarkQuery::Q12 => "q12",
        }
    }

    /// Parses a query's name (case-insensitive).
    pub fn parse(s: &str) -> Option<NexmarkQuery> {
        NexmarkQuery::ALL
            .into_iter()
            .find(|q| q.name().eq_ignore_ascii_case(s.trim()))
    }

    /// Whether the query's job writes its canonical CSV itself, a row per firing (through
    /// [`CSV_SYNC`]), as PyFlink's CSV sink does: every query whose extents fire once (a
    /// watermark trigger, and nothing late in the generator's files). Q12's timer fires a group
    /// again and again, so its answer is folded from its firings after the job
    /// ([`answer_from_sync_file`]).
    pub fn writes_csv(self) -> bool {
        self != NexmarkQuery::Q12
    }

    /// The header of the canonical CSV; the last column is the row's value.
    pub fn csv_header(self) -> &'static str {
        match self {
            NexmarkQuery::Q5 => "window_start,auction,count",
            NexmarkQuery::Q7 => "window_start,max_price",
            // session_end: the time of the session's last bid (Flink's SESSION_END is 10 s later).
            NexmarkQuery::Q11 => "bidder,session_start,session_end,count",
            NexmarkQuery::Q12 => "bidder,count",
        }
    }
}

/// How a query's job is shaped beyond the query itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobOptions {
    /// Peers of the windowed task (Q7, ungrouped, needs exactly 1).
    pub peers: usize,
    /// Batch size of the input and the windowed task (default: the engine's).
    pub batch_size: Option<usize>,
    /// Q12's timer period, milliseconds (the query's is [`Q12_PERIOD_MS`]; tests shorten it so
    /// the timer fires during a short run).
    pub q12_period_ms: i64,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            peers: 1,
            batch_size: None,
            q12_period_ms: Q12_PERIOD_MS,
        }
    }
}

/// Where a query's job sends its firings.
#[derive(Debug, Clone, Copy)]
pub enum FiringsTo<'a> {
    /// JSON lines at this path (the built-in `sardonyx/jsonl` sync).
    JsonLines(&'a str),
    /// The query's canonical CSV at this path ([`CSV_SYNC`]; only for queries that
    /// [`NexmarkQuery::writes_csv`]).
    Csv(&'a str),
}

/// The job of one query: `read-bids` (`sardonyx/jsonl` on `input`, watermark on `date_time`)
/// → `window` (`sardonyx/identity` holding the query's window, deduplicated on `event_id`
/// when the run has a state log) → `done` (`sardonyx/null`). Firings, accumulating, go to
/// `firings`.
pub fn nexmark_job(
    query: NexmarkQuery,
    input: &str,
    firings: FiringsTo<'_>,
    options: JobOptions,
) -> Job {
    let mut read = TaskSpec::input("read-bids", "sardonyx/jsonl")
        .param("path", input)
        .watermark("date_time", Span::millis(MAX_OUT_OF_ORDER_MS));
    let mut window_task = TaskSpec::function("window", "sardonyx/identity")
        .uniqueness_key("event_id")
        .n_peers(options.peers);
    window_task = match query {
        NexmarkQuery::Q5 => window_task.group_by_key("auction"),
        // Nexmark's Q7 takes the maximum over all bids of a window: no grouping.
        NexmarkQuery::Q7 => window_task,
        NexmarkQuery::Q11 | NexmarkQuery::Q12 => window_task.group_by_key("bidder"),
    };
    if let Some(n) = options.batch_size {
        read = read.batch_size(n);
        window_task = window_task.batch_size(n);
    }
    let id = query.name();
    let (window, trigger) = match query {
        NexmarkQuery::Q5 => (
            WindowDef::sliding(
                id,
                "window",
                "date_time",
                Span::millis(Q5_RANGE_MS),
                Span::millis(Q5_SLIDE_MS),
                AggregationDef::count(),
            ),
            TriggerDef::watermark(id, "closed"),
        ),
        NexmarkQuery::Q7 => (
            WindowDef::fixed(
                id,
                "window",
                "date_time",
                Span::millis(Q7_RANGE_MS),
                AggregationDef::max("price"),
            ),
            TriggerDef::watermark(id, "closed"),
        ),
        NexmarkQuery::Q11 => (
            WindowDef::session(
                id,
                "window",
                "date_time",
                Span::millis(Q11_GAP_MS),
                AggregationDef::count(),
            ),
            TriggerDef::watermark(id, "closed"),
        ),
        NexmarkQuery::Q12 => (
            WindowDef::global(id, "window", AggregationDef::count()),
            TriggerDef::timer(id, "every-period", Span::millis(options.q12_period_ms)),
        ),
    };
    JobBuilder::new()
        .id(format!("nexmark-{id}"))
        .edge("read-bids", "window")
        .edge("window", "done")
        .task(read)
        .task(window_task)
        .task(TaskSpec::output("done", "sardonyx/null"))
        .window(window)
        .trigger(match firings {
            FiringsTo::JsonLines(path) => trigger.accumulating().sync_jsonl(path),
            FiringsTo::Csv(path) => trigger
                .accumulating()
                .sync(CSV_SYNC)
                .param("path", path)
                .param("query", query.name()),
        })
        .build()
}

/// The name under which [`csv_sync`] is registered.
pub const CSV_SYNC: &str = "nexmark/csv";

/// The `nexmark/csv` sync function: params `path` (the CSV file, emptied and given its header
/// when opened) and `query` (one that [`NexmarkQuery::writes_csv`]). Each firing becomes one
/// row of the query's canonical CSV, written out at each flush; a firing whose fields are not
/// the integers the row needs is an error naming the field. Every `nexmark-bench` run starts
/// fresh, so the sink does not look at `resuming`: it always starts the file again.
pub fn csv_sync() -> SyncPlugin {
    fn query_of(params: &Map) -> Option<NexmarkQuery> {
        params
            .get("query")
            .and_then(Value::as_str)
            .and_then(NexmarkQuery::parse)
            .filter(|q| q.writes_csv())
    }
    SyncPlugin {
        check: Arc::new(|params: &Map| {
            let mut problems = Vec::new();
            if params.get("path").and_then(Value::as_str).is_none() {
                problems.push(("path".into(), "must be a string (the CSV file)".into()));
            }
            if query_of(params).is_none() {
                problems.push(("query".into(), "must be \"q5\", \"q7\" or \"q11\"".into()));
            }
            problems
        }),
        open: Arc::new(|cx: &SyncContext<'_>| {
            let path = cx.params.get("path").and_then(Value::as_str);
            let (Some(path), Some(query)) = (path, query_of(cx.params)) else {
                return Err("nexmark/csv: params not checked".into());
            };
            let open = || -> std::io::Result<std::fs::File> {
                if let Some(dir) = Path::new(path).parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let mut file = std::fs::File::create(path)?;
                writeln!(file, "{}", query.csv_header())?;
                Ok(file)
            };
            let file = open().map_err(|e| format!("nexmark/csv: {path}: {e}"))?;
            Ok(Box::new(CsvSync {
                query,
                file,
                pending: String::new(),
            }) as Box<dyn SyncSink>)
        }),
    }
}

/// The sink of [`csv_sync`].
struct CsvSync {
    query: NexmarkQuery,
    file: std::fs::File,
    pending: String,
}

impl SyncSink for CsvSync {
    fn sync(&mut self, firing: &Map) -> Result<(), String> {
        use std::fmt::Write as _;
        let int = |field: &str| match firing.get(field) {
            Some(Value::Int(i)) => Ok(*i),
            other => Err(format!(
                "nexmark/csv: firing field \"{field}\" is {other:?}, not an integer"
            )),
        };
        // Every field is read before anything is written: a bad firing leaves no partial row.
        let p = &mut self.pending;
        let written = match self.query {
            NexmarkQuery::Q5 => {
                let (lower, group, state) = (int("lower")?, int("group")?, int("state")?);
                writeln!(p, "{lower},{group},{state}")
            }
            NexmarkQuery::Q7 => {
                let (lower, state) = (int("lower")?, int("state")?);
                writeln!(p, "{lower},{state}")
            }
            NexmarkQuery::Q11 => {
                let (group, lower) = (int("group")?, int("lower")?);
                let (upper, state) = (int("upper")?, int("state")?);
                writeln!(p, "{group},{lower},{upper},{state}")
            }
            NexmarkQuery::Q12 => unreachable!("q12 does not write its CSV (checked at open)"),
        };
        written.expect("writing to a String cannot fail");
        Ok(())
    }

    fn flush(&mut self) -> Result<(), String> {
        self.file
            .write_all(self.pending.as_bytes())
            .map_err(|e| format!("nexmark/csv: {e}"))?;
        self.pending.clear();
        Ok(())
    }
}

/// Reads a canonical CSV `query`'s job wrote ([`CSV_SYNC`]) into rows; a row whose key comes
/// twice (an extent that fired twice) is an error.
pub fn rows_from_csv(query: NexmarkQuery, path: &Path) -> anyhow::Result<Rows> {
    let f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut lines = BufReader::with_capacity(1 << 20, f).lines();
    let header = lines.next().transpose()?.unwrap_or_default();
    anyhow::ensure!(
        header == query.csv_header(),
        "{}: header {header:?}",
        path.display()
    );
    let mut rows = Rows::new();
    for line in lines {
        let line = line?;
        let (key, value) = line
            .rsplit_once(',')
            .with_context(|| format!("{}: row without a value: {line}", path.display()))?;
        let value: i64 = value
            .parse()
            .with_context(|| format!("{}: row {line}", path.display()))?;
        anyhow::ensure!(
            rows.insert(key.to_owned(), value).is_none(),
            "{}: row {key} twice (an extent fired twice)",
            path.display()
        );
    }
    Ok(rows)
}

/// The fields of a bid line the reference needs.
#[derive(Debug, Clone, Copy, Deserialize)]
struct BidFields {
    auction: u64,
    bidder: u64,
    price: i64,
    date_time: i64,
}

/// The exact answer of one query over a bids file, computed the plain way (no windows, no
/// engine): `BTreeMap`s keyed by what the CSV's rows are keyed by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reference {
    /// Bids read.
    pub events: u64,
    /// Bids whose event time is below the greatest event time before them (0 for the
    /// generator's files).
    pub out_of_order: u64,
    /// Q11: consecutive bids of one bidder exactly the gap apart (same session here; engines
    /// whose sessions merge only at a gap < 10 s split them).
    pub exact_gap_pairs: u64,
    /// The canonical rows: the CSV row without its last column → the last column.
    pub rows: Rows,
}

impl Reference {
    /// Reads a bids file and computes `query`'s answer.
    pub fn from_file(query: NexmarkQuery, path: &Path) -> anyhow::Result<Reference> {
        let f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
        let mut bids = Vec::new();
        let mut fold = ReferenceFold::new(query);
        for (i, line) in BufReader::with_capacity(1 << 20, f).lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let b: BidFields = serde_json::from_str(&line)
                .with_context(|| format!("{}:{}", path.display(), i + 1))?;
            bids.push(b);
            if bids.len() == 4096 {
                fold.add(&bids);
                bids.clear();
            }
        }
        fold.add(&bids);
        Ok(fold.finish())
    }

    /// Computes `query`'s answer over bids in memory, given as
    /// `(auction, bidder, price, date_time)`.
    pub fn from_bids(query: NexmarkQuery, bids: &[(u64, u64, i64, i64)]) -> Reference {
        let mut fold = ReferenceFold::new(query);
        let bids: Vec<BidFields> = bids
            .iter()
            .map(|&(auction, bidder, price, date_time)| BidFields {
                auction,
                bidder,
                price,
                date_time,
            })
            .collect();
        fold.add(&bids);
        fold.finish()
    }
}

/// The reference's state while bids are read.
struct ReferenceFold {
    query: NexmarkQuery,
    events: u64,
    out_of_order: u64,
    greatest: i64,
    /// Q5: (window start, auction) → bids.
    per_auction_window: BTreeMap<(i64, u64), i64>,
    /// Q7: window start → highest price.
    max_per_window: BTreeMap<i64, i64>,
    /// Q11: bidder → every bid's event time.
    times_per_bidder: BTreeMap<u64, Vec<i64>>,
    /// Q12: bidder → bids.
    per_bidder: BTreeMap<u64, i64>,
}

impl ReferenceFold {
    fn new(query: NexmarkQuery) -> Self {
        ReferenceFold {
            query,
            events: 0,
            out_of_order: 0,
            greatest: i64::MIN,
            per_auction_window: BTreeMap::new(),
            max_per_window: BTreeMap::new(),
            times_per_bidder: BTreeMap::new(),
            per_bidder: BTreeMap::new(),
        }
    }

    fn add(&mut self, bids: &[BidFields]) {
        for b in bids {
            self.events += 1;
            if b.date_time < self.greatest {
                self.out_of_order += 1;
            }
            self.greatest = self.greatest.max(b.date_time);
            let t = b.date_time;
            match self.query {
                NexmarkQuery::Q5 => {
                    // Every window [s, s + range) with s a multiple of the slide that holds t.
                    let mut s = t.div_euclid(Q5_SLIDE_MS) * Q5_SLIDE_MS;
                    while s + Q5_RANGE_MS > t {
                        *self.per_auction_window.entry((s, b.auction)).or_default() += 1;
                        s -= Q5_SLIDE_MS;
                    }
                }
                NexmarkQuery::Q7 => {
                    let s = t.div_euclid(Q7_RANGE_MS) * Q7_RANGE_MS;
                    let max = self.max_per_window.entry(s).or_insert(b.price);
                    *max = (*max).max(b.price);
                }
                NexmarkQuery::Q11 => self.times_per_bidder.entry(b.bidder).or_default().push(t),
                NexmarkQuery::Q12 => *self.per_bidder.entry(b.bidder).or_default() += 1,
            }
        }
    }

    fn finish(self) -> Reference {
        let mut exact_gap_pairs = 0;
        let rows: Rows = match self.query {
            NexmarkQuery::Q5 => self
                .per_auction_window
                .into_iter()
                .map(|((s, auction), n)| (format!("{s},{auction}"), n))
                .collect(),
            NexmarkQuery::Q7 => self
                .max_per_window
                .into_iter()
                .map(|(s, max)| (s.to_string(), max))
                .collect(),
            NexmarkQuery::Q11 => {
                // Each bidder's sessions (a gap greater than the timeout starts a new one).
                let mut rows = Rows::new();
                for (bidder, ts) in self.times_per_bidder {
                    let (split, at_gap) = crate::sessions(ts, Q11_GAP_MS);
                    exact_gap_pairs += at_gap;
                    for (start, last, n) in split {
                        rows.insert(format!("{bidder},{start},{last}"), n);
                    }
                }
                rows
            }
            NexmarkQuery::Q12 => self
                .per_bidder
                .into_iter()
                .map(|(bidder, n)| (bidder.to_string(), n))
                .collect(),
        };
        Reference {
            events: self.events,
            out_of_order: self.out_of_order,
            exact_gap_pairs,
            rows,
        }
    }
}

/// A line of the built-in `sardonyx/jsonl` sync, the fields an answer needs.
#[derive(Deserialize)]
struct Firing {
    group: Option<i64>,
    lower: Option<i64>,
    upper: Option<i64>,
    state: Option<i64>,
}

/// A job's answer folded from its sync file: the last firing of each extent and group
/// (accumulating refinement: a later firing supersedes an earlier one), as canonical rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NexmarkAnswer {
    /// The rows, keyed as [`Reference::rows`].
    pub rows: Rows,
    /// Firings read.
    pub firings: u64,
}

/// A firing's group and lower bound (both null for some windows).
type ExtentOfGroup = (Option<i64>, Option<i64>);
/// The upper bound and the state of the latest firing of an extent and group.
type LatestFiring = (Option<i64>, i64);

/// Folds the firings a query's job wrote to `path` (none if the file does not exist).
pub fn answer_from_sync_file(query: NexmarkQuery, path: &Path) -> anyhow::Result<NexmarkAnswer> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(NexmarkAnswer::default()),
        Err(e) => return Err(e).with_context(|| format!("open {}", path.display())),
    };
    let mut last: BTreeMap<ExtentOfGroup, LatestFiring> = BTreeMap::new();
    let mut firings = 0;
    for line in BufReader::with_capacity(1 << 20, f).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let firing: Firing =
            serde_json::from_str(&line).with_context(|| format!("malformed firing: {line}"))?;
        let state = firing
            .state
            .with_context(|| format!("firing without an integer state: {line}"))?;
        let needs_lower = query != NexmarkQuery::Q12;
        anyhow::ensure!(
            !needs_lower || firing.lower.is_some(),
            "firing without a lower bound: {line}"
        );
        anyhow::ensure!(
            (query == NexmarkQuery::Q7) == firing.group.is_none(),
            "firing with an unexpected group: {line}"
        );
        let lower = if needs_lower { firing.lower } else { None };
        last.insert((firing.group, lower), (firing.upper, state));
        firings += 1;
    }
    let mut rows = Rows::new();
    for ((group, lower), (upper, state)) in last {
        let (group, lower) = (group.unwrap_or(0), lower.unwrap_or(0));
        let key = match query {
            NexmarkQuery::Q5 => format!("{lower},{group}"),
            NexmarkQuery::Q7 => lower.to_string(),
            NexmarkQuery::Q11 => {
                let upper = upper
                    .with_context(|| format!("session {group},{lower} without an upper bound"))?;
                format!("{group},{lower},{upper}")
            }
            NexmarkQuery::Q12 => group.to_string(),
        };
        rows.insert(key, state);
    }
    Ok(NexmarkAnswer { rows, firings })
}

/// Writes `rows` as the canonical CSV of `query` to `dir/<query>.csv`; returns its path.
pub fn write_csv(query: NexmarkQuery, rows: &Rows, dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{}.csv", query.name()));
    let mut w = std::io::BufWriter::new(std::fs::File::create(&path)?);
    writeln!(w, "{}", query.csv_header())?;
    for (k, n) in rows {
        writeln!(w, "{k},{n}")?;
    }
    w.flush()?;
    Ok(path)
}

/// Where a run keeps its window state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// In memory only (no log, no dedup).
    Memory,
    /// Exactly-once on the embedded log (one in-process Raft node on RocksDB, fsync on).
    Embedded,
}

/// One run of one query.
#[derive(Debug, Clone)]
pub struct OnceSpec {
    /// The bids file.
    pub input: PathBuf,
    /// The query.
    pub query: NexmarkQuery,
    /// Where state lives.
    pub mode: Mode,
    /// The job's shape.
    pub job: JobOptions,
    /// Where the canonical CSV goes (`<query>.csv`).
    pub out: PathBuf,
    /// Scratch directory (sync output, state log, error file); wiped first.
    pub work: PathBuf,
    /// Whether to compute the reference after the job and compare (false: only run the job and
    /// write the CSV, for a harness that checks the CSV itself and times the whole process).
    pub check: bool,
}

/// What one run did (the JSON line `nexmark-bench once` prints).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OnceFigures {
    /// The query's name.
    pub query: String,
    /// Where state lived.
    pub mode: Mode,
    /// Bids read by the job.
    pub events: u64,
    /// Wall time of the job (start to every peer finished), seconds.
    pub secs: f64,
    /// CPU time (user + system, all threads) the process spent in that time, seconds (from
    /// `/proc/self/stat`; 0 where it cannot be read): events per CPU second is the per-core
    /// throughput.
    #[serde(default)]
    pub cpu_secs: f64,
    /// Peak resident set of the process when the job had finished, KiB.
    pub peak_rss_kib: u64,
    /// Records appended to the state log (0 in memory mode).
    pub logged_records: u64,
    /// Their bytes.
    pub logged_bytes: u64,
    /// Trigger firings.
    pub fired: u64,
    /// Late bids.
    pub late: u64,
    /// Rejected bids.
    pub rejected: u64,
    /// Bids skipped as already applied.
    pub duplicates: u64,
    /// Rows of the answer.
    pub rows: usize,
    /// Whether the answer equals the reference exactly (`None`: not checked, `OnceSpec::check`
    /// was false).
    pub correct: Option<bool>,
    /// How the answer differs from the reference, when it does.
    pub difference: Option<String>,
}

/// Runs `spec.query`'s job over `spec.input` in this process, writes the answer's canonical CSV
/// to `spec.out`, and (when `spec.check`) compares it with the reference (computed after the
/// job, so it is not in the peak RSS). `progress` receives the engine's live counters.
pub async fn run_once(spec: &OnceSpec, progress: Arc<Progress>) -> anyhow::Result<OnceFigures> {
    anyhow::ensure!(
        spec.query != NexmarkQuery::Q7 || spec.job.peers == 1,
        "q7 has no grouping: each of several peers would keep its own maximum of a window"
    );
    if spec.work.exists() {
        std::fs::remove_dir_all(&spec.work)?;
    }
    std::fs::create_dir_all(&spec.work)?;
    let input = spec
        .input
        .canonicalize()
        .with_context(|| format!("input {}", spec.input.display()))?;
    // The queries whose extents fire once write their CSV during the job, as PyFlink's sink
    // does; Q12's firings are folded into it afterwards.
    let csv_path = spec.out.join(format!("{}.csv", spec.query.name()));
    let sync_path = spec.work.join("firings.jsonl");
    let (csv, jsonl) = (
        csv_path.display().to_string(),
        sync_path.display().to_string(),
    );
    let firings = if spec.query.writes_csv() {
        FiringsTo::Csv(&csv)
    } else {
        FiringsTo::JsonLines(&jsonl)
    };
    let job = nexmark_job(spec.query, &input.display().to_string(), firings, spec.job);
    let state_dir = spec.work.join("state");
    let mut embedded = None;
    let state = match spec.mode {
        Mode::Memory => None,
        Mode::Embedded => {
            let log = sardonyx_state_log::EmbeddedLog::open(state_dir.join("log")).await?;
            embedded = Some(log.clone());
            Some(StateOptions::new(Arc::new(log), &state_dir))
        }
    };
    let options = RunOptions {
        errors_path: spec.work.join("errors.jsonl"),
        state,
        ..RunOptions::default()
    };
    let mut registry = Registry::new();
    registry.register_sync(CSV_SYNC, csv_sync());
    let cpu = || sardonyx::metrics::process::usage().map_or(0.0, |u| u.cpu_seconds);
    let cpu_before = cpu();
    let started = Instant::now();
    let report = run_job_with_progress(&job, &registry, options, progress).await;
    let secs = started.elapsed().as_secs_f64();
    let cpu_secs = (cpu() - cpu_before).max(0.0);
    if let Some(log) = embedded {
        log.close().await?;
    }
    let report = report?;
    let peak_rss_kib = proc_status_kib("VmHWM").unwrap_or(0);

    let answer = if spec.query.writes_csv() {
        // Read back only to check it (a harness checks the CSV itself).
        let rows = if spec.check {
            rows_from_csv(spec.query, &csv_path)?
        } else {
            Rows::new()
        };
        NexmarkAnswer {
            rows,
            firings: report.fired,
        }
    } else {
        let answer = answer_from_sync_file(spec.query, &sync_path)?;
        write_csv(spec.query, &answer.rows, &spec.out)?;
        answer
    };
    let verdict = if spec.check {
        let reference = Reference::from_file(spec.query, &input)?;
        let mut verdict = check(&reference.rows, &answer.rows).map(|_| ());
        if verdict.is_ok() && report.read != reference.events {
            verdict = Err(format!(
                "the job read {} bids, the file has {}",
                report.read, reference.events
            ));
        }
        Some(verdict)
    } else {
        None
    };
    let (logged_records, logged_bytes, _) = report.logged;
    Ok(OnceFigures {
        query: spec.query.name().into(),
        mode: spec.mode,
        events: report.read,
        secs,
        cpu_secs,
        peak_rss_kib,
        logged_records,
        logged_bytes,
        fired: report.fired,
        late: report.late,
        rejected: report.rejected,
        duplicates: report.duplicates,
        rows: if spec.query.writes_csv() {
            report.fired as usize
        } else {
            answer.rows.len()
        },
        correct: verdict.as_ref().map(Result::is_ok),
        difference: verdict.and_then(Result::err),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event time 1.5 s past a multiple of 10 s.
    const T0: i64 = 1_767_225_601_500;

    fn rows(r: &Rows) -> Vec<(&str, i64)> {
        r.iter().map(|(k, n)| (k.as_str(), *n)).collect()
    }

    #[test]
    fn reference_by_hand() {
        let bids = [
            (1, 7, 300, T0),
            (2, 8, 500, T0 + 1_000),
            (1, 7, 200, T0 + 11_500), // next fixed window; bidder 7: gap 11.5 s, new session
            (1, 8, 100, T0 + 11_000), // bidder 8: gap exactly 10 s, same session
            (1, 7, 900, T0 + 21_500), // gap exactly 10 s after T0 + 11.5 s
        ];
        let q = |query| Reference::from_bids(query, &bids);
        let base = T0 - 1_500; // the fixed window holding T0
                               // T0 is in the windows starting at T0 rounded down to 2 s and the four before them.
        let q5 = q(NexmarkQuery::Q5);
        let s = T0.div_euclid(2_000) * 2_000;
        assert_eq!(s, T0 - 1_500);
        for k in 0..5 {
            assert_eq!(q5.rows[&format!("{},1", s - k * 2_000)], 1, "window {k}");
        }
        assert!(!q5.rows.contains_key(&format!("{},1", s - 10_000)));
        // T0 + 11.5 s and T0 + 11 s (s + 13 s, s + 12.5 s) are both in [s + 4 s, s + 14 s).
        assert_eq!(q5.rows[&format!("{},1", s + 4_000)], 2);
        assert_eq!(q5.rows[&format!("{},2", s)], 1);
        assert_eq!(q5.events, 5);
        assert_eq!(q5.out_of_order, 1);

        let q7 = q(NexmarkQuery::Q7);
        let expected: Rows = [(base, 500), (base + 10_000, 200), (base + 20_000, 900)]
            .into_iter()
            .map(|(w, max)| (w.to_string(), max))
            .collect();
        assert_eq!(q7.rows, expected);

        let q11 = q(NexmarkQuery::Q11);
        assert_eq!(q11.exact_gap_pairs, 2);
        let expected: Rows = [
            (format!("7,{T0},{T0}"), 1),
            (format!("7,{},{}", T0 + 11_500, T0 + 21_500), 2),
            (format!("8,{},{}", T0 + 1_000, T0 + 11_000), 2),
        ]
        .into_iter()
        .collect();
        assert_eq!(q11.rows, expected);

        let q12 = q(NexmarkQuery::Q12);
        assert_eq!(rows(&q12.rows), [("7", 3), ("8", 2)]);
    }

    #[test]
    fn answer_keeps_the_last_firing_of_each_extent_and_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firings.jsonl");
        std::fs::write(
            &path,
            concat!(
                r#"{"window":"q12","group":7,"lower":null,"upper":null,"state":1,"event":"timer"}"#,
                "\n",
                r#"{"window":"q12","group":9,"lower":null,"upper":null,"state":4,"event":"timer"}"#,
                "\n\n",
                r#"{"window":"q12","group":7,"lower":null,"upper":null,"state":3,"event":"job_completed"}"#,
                "\n",
            ),
        )
        .unwrap();
        let a = answer_from_sync_file(NexmarkQuery::Q12, &path).unwrap();
        assert_eq!(a.firings, 3);
        assert_eq!(rows(&a.rows), [("7", 3), ("9", 4)]);

        std::fs::write(
            &path,
            concat!(
                r#"{"group":null,"lower":10000,"upper":19999,"state":5}"#,
                "\n",
                r#"{"group":null,"lower":0,"upper":9999,"state":8}"#,
                "\n",
            ),
        )
        .unwrap();
        let a = answer_from_sync_file(NexmarkQuery::Q7, &path).unwrap();
        assert_eq!(rows(&a.rows), [("0", 8), ("10000", 5)]);
        // A grouped firing is not Q7's.
        let e = answer_from_sync_file(NexmarkQuery::Q5, &path)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("firing with an unexpected group"), "{e}");

        std::fs::write(&path, r#"{"group":3,"lower":5,"upper":9,"state":2}"#).unwrap();
        let a = answer_from_sync_file(NexmarkQuery::Q11, &path).unwrap();
        assert_eq!(rows(&a.rows), [("3,5,9", 2)]);
        assert_eq!(
            answer_from_sync_file(NexmarkQuery::Q11, &dir.path().join("none.jsonl")).unwrap(),
            NexmarkAnswer::default()
        );
    }

    #[test]
    fn event_ids_are_the_unfiltered_streams() {
        // The type-filtered generator gives the same bids, with the same ids, as the full
        // stream of persons, auctions and bids.
        let settings = GeneratorSettings {
            rate: 500,
            ..GeneratorSettings::default()
        };
        let full: Vec<(u64, nexmark::event::Bid)> = EventGenerator::new(settings.config())
            .take(1_000)
            .enumerate()
            .filter_map(|(i, e)| match e {
                Event::Bid(b) => Some((i as u64, b)),
                _ => None,
            })
            .collect();
        assert_eq!(full.len(), 920);
        let filtered: Vec<BidLine> = bids(settings).take(920).collect();
        for ((id, b), line) in full.iter().zip(&filtered) {
            assert_eq!(line.event_id, *id);
            assert_eq!(
                (line.auction, line.bidder, line.price, line.date_time),
                (
                    b.auction as u64,
                    b.bidder as u64,
                    b.price as u64,
                    b.date_time as i64
                )
            );
            assert_eq!(
                (&line.channel, &line.url, &line.extra),
                (&b.channel, &b.url, &b.extra)
            );
        }
        // 500 events/s: one every 2 ms from the base time.
        assert_eq!(filtered[0].event_id, 4);
        assert_eq!(filtered[0].date_time, BASE_TIME_MS as i64 + 8);
        assert_eq!(filtered[46].event_id, 54);
    }

    /// The CSV sync names its bad params, writes one canonical row per firing (header first),
    /// and refuses a firing without the integers a row needs; reading the CSV back refuses a
    /// row that comes twice.
    #[test]
    fn the_csv_sync_writes_canonical_rows() {
        let plugin = csv_sync();
        let problems = (plugin.check)(&Map::new());
        assert_eq!(
            problems,
            [
                (
                    "path".to_string(),
                    "must be a string (the CSV file)".to_string()
                ),
                (
                    "query".to_string(),
                    "must be \"q5\", \"q7\" or \"q11\"".to_string()
                ),
            ]
        );
        let mut q12 = Map::new();
        q12.insert("path", "x.csv");
        q12.insert("query", "q12");
        assert_eq!((plugin.check)(&q12).len(), 1, "q12 folds its firings");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out").join("q5.csv");
        let mut params = Map::new();
        params.insert("path", path.display().to_string());
        params.insert("query", "q5");
        assert!((plugin.check)(&params).is_empty());
        let cx = SyncContext {
            params: &params,
            resuming: false,
        };
        let mut sink = (plugin.open)(&cx).unwrap();
        let firing = |group: i64, lower: i64, state: i64| {
            let mut f = Map::new();
            f.insert("window", "q5");
            f.insert("group", group);
            f.insert("lower", lower);
            f.insert("upper", lower + 10_000);
            f.insert("state", state);
            f
        };
        sink.sync(&firing(1001, 20_000, 13)).unwrap();
        sink.sync(&firing(1000, 20_000, 758)).unwrap();
        let mut bad = firing(1002, 22_000, 1);
        bad.insert("state", Value::Null);
        assert_eq!(
            sink.sync(&bad).unwrap_err(),
            "nexmark/csv: firing field \"state\" is Some(Null), not an integer"
        );
        sink.flush().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "window_start,auction,count\n20000,1001,13\n20000,1000,758\n"
        );
        let rows = rows_from_csv(NexmarkQuery::Q5, &path).unwrap();
        assert_eq!(
            rows.into_iter().collect::<Vec<_>>(),
            [
                ("20000,1000".to_string(), 758),
                ("20000,1001".to_string(), 13)
            ]
        );
        sink.sync(&firing(1000, 20_000, 759)).unwrap();
        sink.flush().unwrap();
        let e = rows_from_csv(NexmarkQuery::Q5, &path).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("row 20000,1000 twice (an extent fired twice)"),
            "{e}"
        );
    }

    #[test]
    fn jobs_validate() {
        let mut registry = Registry::new();
        registry.register_sync(CSV_SYNC, csv_sync());
        for q in NexmarkQuery::ALL {
            nexmark_job(
                q,
                "bids.jsonl",
                FiringsTo::JsonLines("/tmp/s.jsonl"),
                JobOptions::default(),
            )
            .validate(&registry)
            .unwrap();
            if q.writes_csv() {
                nexmark_job(
                    q,
                    "bids.jsonl",
                    FiringsTo::Csv("/tmp/q.csv"),
                    JobOptions::default(),
                )
                .validate(&registry)
                .unwrap();
            }
            assert_eq!(NexmarkQuery::parse(&q.name().to_uppercase()), Some(q));
        }
    }
}
