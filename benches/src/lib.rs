//! Benchmarks of Sardonyx: criterion micro-benchmarks for the hot paths (`benches/`), the
//! `vote-bench` macro benchmark (the vote workload of `../shared/bench-peers`) and
//! `nexmark-bench` (window stages of Nexmark queries; see [`nexmark`]).
//!
//! This library holds what both share and what must be obviously right: the four vote queries
//! as Sardonyx jobs ([`vote_job`]), an independent reference answer computed with plain
//! `BTreeMap`s ([`Reference`]), and the fold of a job's trigger firings into the same canonical
//! rows ([`Answer`]), so a benchmark can refuse to print a figure for a wrong answer.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use sardonyx::job::builder::JobBuilder;
use sardonyx::job::{AggregationDef, Span, TaskSpec, TriggerDef, WindowDef};
use sardonyx::Job;
use serde::Deserialize;

pub mod nexmark;
pub mod recovery;

/// The 1-minute fixed window of Q2, in milliseconds.
pub const Q2_RANGE_MS: i64 = 60_000;
/// The range of Q3's sliding windows (1 hour).
pub const Q3_RANGE_MS: i64 = 3_600_000;
/// The slide of Q3's sliding windows (20 minutes).
pub const Q3_SLIDE_MS: i64 = 1_200_000;
/// The session gap of Q4 (5 minutes).
pub const Q4_GAP_MS: i64 = 300_000;
/// The watermark's allowed out-of-orderness (6 minutes: the workload is at most 5 minutes out
/// of order, so no event is late).
pub const MAX_OUT_OF_ORDER_MS: i64 = 360_000;

/// The best peer's events/s per query, from `../shared/bench-peers/README.md` (1M events,
/// 2 vCPU, one worker each, median of 3): bytewax for Q1–Q3, PyFlink for Q4.
pub const BEST_PEER: [(Query, &str, f64); 4] = [
    (Query::Q1, "bytewax 0.21.1", 321_448.0),
    (Query::Q2, "bytewax 0.21.1", 119_351.0),
    (Query::Q3, "bytewax 0.21.1", 94_870.0),
    (Query::Q4, "pyflink 2.3.0", 34_715.0),
];

/// One of the four vote queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Query {
    /// Total votes per candidate (global window).
    Q1,
    /// Votes per candidate per 1-minute fixed window.
    Q2,
    /// Votes per candidate in 1-hour windows sliding every 20 minutes.
    Q3,
    /// Votes per voter session (5-minute gap).
    Q4,
}

impl Query {
    /// All four, in order.
    pub const ALL: [Query; 4] = [Query::Q1, Query::Q2, Query::Q3, Query::Q4];

    /// `q1` … `q4`.
    pub fn name(self) -> &'static str {
        match self {
            Query::Q1 => "q1",
            Query::Q2 => "q2",
            Query::Q3 => "q3",
            Query::Q4 => "q4",
        }
    }

    /// Parses `q1` … `q4` (case-insensitive).
    pub fn parse(s: &str) -> Option<Query> {
        Query::ALL
            .into_iter()
            .find(|q| q.name().eq_ignore_ascii_case(s.trim()))
    }

    /// The header of the canonical CSV (`../shared/bench-peers` format).
    pub fn csv_header(self) -> &'static str {
        match self {
            Query::Q1 => "candidate,count",
            Query::Q2 | Query::Q3 => "window_start,candidate,count",
            Query::Q4 => "voter_id,session_start,count",
        }
    }

    /// The best peer's name and events/s for this query.
    pub fn best_peer(self) -> (&'static str, f64) {
        let (_, name, eps) = BEST_PEER[self as usize];
        (name, eps)
    }
}

/// Where the job reads votes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The built-in `sardonyx/jsonl` input on this file.
    File(String),
    /// The built-in `sardonyx/channel` input on this channel name (segments handed over in
    /// memory; see `Registry::input_channel`).
    Channel(String),
}

/// The job of one query: an input (with a 6-minute watermark) → a grouped `sardonyx/identity`
/// task holding the query's window (deduplicated on `vote_id` when the run has a state log) →
/// a `sardonyx/null` output. The window's watermark trigger syncs every firing as one JSON line
/// to `sync_path` (built-in `sardonyx/jsonl` sync).
pub fn vote_job(
    query: Query,
    source: &Source,
    sync_path: &str,
    peers: usize,
    batch_size: Option<usize>,
) -> Job {
    let mut input = match source {
        Source::File(path) => {
            TaskSpec::input("read-votes", "sardonyx/jsonl").param("path", path.as_str())
        }
        Source::Channel(name) => {
            TaskSpec::input("read-votes", "sardonyx/channel").param("channel", name.as_str())
        }
    }
    .watermark("event_time", Span::millis(MAX_OUT_OF_ORDER_MS));
    let group = if query == Query::Q4 {
        "voter_id"
    } else {
        "candidate"
    };
    let mut count = TaskSpec::function("count", "sardonyx/identity")
        .group_by_key(group)
        .uniqueness_key("vote_id")
        .n_peers(peers);
    if let Some(n) = batch_size {
        input = input.batch_size(n);
        count = count.batch_size(n);
    }
    let id = query.name();
    let window = match query {
        Query::Q1 => WindowDef::global(id, "count", AggregationDef::count()),
        Query::Q2 => WindowDef::fixed(
            id,
            "count",
            "event_time",
            Span::millis(Q2_RANGE_MS),
            AggregationDef::count(),
        ),
        Query::Q3 => WindowDef::sliding(
            id,
            "count",
            "event_time",
            Span::millis(Q3_RANGE_MS),
            Span::millis(Q3_SLIDE_MS),
            AggregationDef::count(),
        ),
        Query::Q4 => WindowDef::session(
            id,
            "count",
            "event_time",
            Span::millis(Q4_GAP_MS),
            AggregationDef::count(),
        ),
    };
    JobBuilder::new()
        .id(format!("vote-bench-{id}"))
        .edge("read-votes", "count")
        .edge("count", "done")
        .task(input)
        .task(count)
        .task(TaskSpec::output("done", "sardonyx/null"))
        .window(window)
        .trigger(TriggerDef::watermark(id, "closed").sync_jsonl(sync_path))
        .build()
}

/// One vote as the workload writes it.
#[derive(Debug, Clone, Deserialize)]
pub struct Vote {
    /// Unique id (`gen_votes.py --vote-id`); optional for the reference.
    #[serde(default)]
    pub vote_id: Option<u64>,
    /// The voter.
    pub voter_id: u64,
    /// The candidate.
    pub candidate: String,
    /// Event time, epoch milliseconds.
    pub event_time: i64,
}

/// Canonical answer rows of one query: the CSV row without its count → the count.
pub type Rows = BTreeMap<String, i64>;

/// A progress bar of the records `progress` has read (of about `total`, counted as `what`) on
/// a terminal (stderr), updated every 100 ms until it is finished; `None` when stderr is not a
/// terminal. Call within a tokio runtime.
pub fn read_progress_bar(
    progress: &std::sync::Arc<sardonyx::runtime::Progress>,
    total: u64,
    what: &str,
) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} {{pos}}/~{{len}} {what} {{per_sec}} {{elapsed}}"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (b, p) = (bar.clone(), progress.clone());
    tokio::spawn(async move {
        while !b.is_finished() {
            b.set_position(p.read.load(std::sync::atomic::Ordering::Relaxed));
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
    Some(bar)
}

/// One key's sessions, the plain way: its event `times` sorted, a gap greater than `gap` starts
/// a new session (DESIGN §4: sessions merge when the gap between them is ≤ `timeout_gap`).
/// Gives `(start, last, count)` per session in time order, and how many consecutive times are
/// exactly `gap` apart (where engines differ). `times` must not be empty.
pub fn sessions(mut times: Vec<i64>, gap: i64) -> (Vec<(i64, i64, i64)>, u64) {
    times.sort_unstable();
    let (mut out, mut at_gap) = (Vec::new(), 0);
    let (mut start, mut prev, mut n) = (times[0], times[0], 0_i64);
    for &t in &times {
        if t - prev == gap {
            at_gap += 1;
        }
        if t - prev > gap {
            out.push((start, prev, n));
            start = t;
            n = 0;
        }
        n += 1;
        prev = t;
    }
    out.push((start, prev, n));
    (out, at_gap)
}

/// The exact answers to Q1–Q4, computed the plain way (no windows, no engine).
#[derive(Debug, Default, Clone)]
pub struct Reference {
    /// Events read.
    pub events: u64,
    /// Whether every line carried a `vote_id`.
    pub all_have_vote_id: bool,
    /// Consecutive events of one voter exactly `Q4_GAP_MS` apart (their sessionization differs
    /// between engines; Sardonyx merges at a gap ≤ the timeout, Flink at < it).
    pub exact_gap_pairs: u64,
    /// Rows per query.
    pub rows: BTreeMap<Query, Rows>,
}

impl Reference {
    /// Reads a JSON-lines vote file and computes all four answers.
    pub fn from_file(path: &Path) -> anyhow::Result<Reference> {
        let f = std::fs::File::open(path)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
        let mut votes = Vec::new();
        for (i, line) in BufReader::with_capacity(1 << 20, f).lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let v: Vote = serde_json::from_str(&line)
                .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), i + 1))?;
            votes.push(v);
        }
        Ok(Reference::from_votes(&votes))
    }

    /// Computes all four answers from votes in memory.
    pub fn from_votes(votes: &[Vote]) -> Reference {
        let mut q1: BTreeMap<&str, i64> = BTreeMap::new();
        let mut q2: BTreeMap<(i64, &str), i64> = BTreeMap::new();
        let mut q3: BTreeMap<(i64, &str), i64> = BTreeMap::new();
        let mut per_voter: BTreeMap<u64, Vec<i64>> = BTreeMap::new();
        for v in votes {
            let c = v.candidate.as_str();
            *q1.entry(c).or_default() += 1;
            *q2.entry((v.event_time.div_euclid(Q2_RANGE_MS) * Q2_RANGE_MS, c))
                .or_default() += 1;
            // Every window [s, s + range) with s a multiple of the slide that holds the event.
            let last = v.event_time.div_euclid(Q3_SLIDE_MS) * Q3_SLIDE_MS;
            let mut s = last;
            while s + Q3_RANGE_MS > v.event_time {
                *q3.entry((s, c)).or_default() += 1;
                s -= Q3_SLIDE_MS;
            }
            per_voter.entry(v.voter_id).or_default().push(v.event_time);
        }
        // Sessions: sort each voter's times; a gap greater than Q4_GAP_MS starts a new one
        // (DESIGN §4: sessions merge when the gap between them is ≤ timeout_gap).
        let mut q4 = Rows::new();
        let mut exact = 0;
        for (voter, ts) in per_voter {
            let (split, at_gap) = sessions(ts, Q4_GAP_MS);
            exact += at_gap;
            for (start, _, n) in split {
                q4.insert(format!("{voter},{start}"), n);
            }
        }
        let mut rows = BTreeMap::new();
        rows.insert(
            Query::Q1,
            q1.into_iter().map(|(c, n)| (c.to_owned(), n)).collect(),
        );
        rows.insert(
            Query::Q2,
            q2.into_iter()
                .map(|((w, c), n)| (format!("{w},{c}"), n))
                .collect(),
        );
        rows.insert(
            Query::Q3,
            q3.into_iter()
                .map(|((w, c), n)| (format!("{w},{c}"), n))
                .collect(),
        );
        rows.insert(Query::Q4, q4);
        Reference {
            events: votes.len() as u64,
            all_have_vote_id: votes.iter().all(|v| v.vote_id.is_some()),
            exact_gap_pairs: exact,
            rows,
        }
    }
}

/// The fields of a synced firing (a line of `sardonyx/jsonl`) that an [`Answer`] needs.
#[derive(Deserialize)]
struct SyncedFiring<'a> {
    #[serde(borrow)]
    group: GroupText<'a>,
    #[serde(default)]
    lower: Option<i64>,
    #[serde(default)]
    state: Option<i64>,
}

/// A firing's group as the canonical CSV writes it: a string's text, or an integer's digits.
struct GroupText<'a>(std::borrow::Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for GroupText<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = GroupText<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                s: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(GroupText(s.into()))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(GroupText(s.to_owned().into()))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Self::Value, E> {
                Ok(GroupText(n.to_string().into()))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Self::Value, E> {
                Ok(GroupText(n.to_string().into()))
            }
        }
        d.deserialize_any(Visit(std::marker::PhantomData))
    }
}

/// A job's answer folded from its sync's firings: the latest state per extent and group
/// (accumulating refinement, so a later firing of one extent supersedes an earlier one).
#[derive(Debug, Default, Clone)]
pub struct Answer {
    /// The rows.
    pub rows: Rows,
    /// Firings read.
    pub firings: u64,
}

impl Answer {
    /// Folds the JSON lines written by the built-in `sardonyx/jsonl` sync.
    ///
    /// Q4 writes ~0.66 firings per event, so this reads each line into one reused buffer,
    /// deserializes only the three fields it needs (borrowing the group's text) and sorts the
    /// rows once instead of inserting them one by one into the map.
    pub fn from_sync_file(query: Query, path: &Path) -> anyhow::Result<Answer> {
        let mut a = Answer::default();
        let f = match std::fs::File::open(path) {
            Ok(f) => f,
            // No firing at all (e.g. an empty input).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(a),
            Err(e) => anyhow::bail!("cannot open {}: {e}", path.display()),
        };
        let mut reader = BufReader::with_capacity(1 << 20, f);
        let mut line = Vec::new();
        let mut rows: Vec<(String, i64)> = Vec::new();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            let text = line.trim_ascii();
            if text.is_empty() {
                continue;
            }
            let bad = || String::from_utf8_lossy(text).into_owned();
            let firing: SyncedFiring<'_> = serde_json::from_slice(text)
                .map_err(|e| anyhow::anyhow!("malformed firing ({e}): {}", bad()))?;
            let state = firing
                .state
                .ok_or_else(|| anyhow::anyhow!("firing without an integer state: {}", bad()))?;
            let group = firing.group.0;
            let key = match (query, firing.lower) {
                (Query::Q1, _) => group.into_owned(),
                (Query::Q2 | Query::Q3, Some(lower)) => format!("{lower},{group}"),
                (Query::Q4, Some(lower)) => format!("{group},{lower}"),
                (_, None) => anyhow::bail!("firing without an integer lower bound: {}", bad()),
            };
            rows.push((key, state));
            a.firings += 1;
        }
        // Accumulating refinement: of several firings of one extent and group the last one
        // holds the answer. The sort is stable, so the last of each run of equal keys is it.
        rows.sort_by(|x, y| x.0.cmp(&y.0));
        let mut last: Vec<(String, i64)> = Vec::with_capacity(rows.len());
        for row in rows {
            match last.last_mut() {
                Some(prev) if prev.0 == row.0 => *prev = row,
                _ => last.push(row),
            }
        }
        a.rows = last.into_iter().collect();
        Ok(a)
    }

    /// Writes the canonical CSV (`../shared/bench-peers` format) into `dir/<query>.csv`.
    pub fn write_csv(&self, query: Query, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let f = std::fs::File::create(dir.join(format!("{}.csv", query.name())))?;
        let mut w = std::io::BufWriter::new(f);
        writeln!(w, "{}", query.csv_header())?;
        for (k, n) in &self.rows {
            writeln!(w, "{k},{n}")?;
        }
        w.flush()
    }
}

/// Compares an answer with the reference: `Ok(rows)` when equal, else a short description of
/// the differences.
pub fn check(expected: &Rows, got: &Rows) -> Result<usize, String> {
    if expected == got {
        return Ok(expected.len());
    }
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(3)
        .collect();
    let n_missing = expected.keys().filter(|k| !got.contains_key(*k)).count();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .take(3)
        .collect();
    let n_extra = got.keys().filter(|k| !expected.contains_key(*k)).count();
    let wrong: Vec<_> = expected
        .iter()
        .filter_map(|(k, n)| got.get(k).filter(|m| *m != n).map(|m| (k, n, m)))
        .collect();
    Err(format!(
        "expected {} rows, got {}: {n_missing} missing (e.g. {missing:?}), {n_extra} extra \
         (e.g. {extra:?}), {} with a wrong count (e.g. {:?})",
        expected.len(),
        got.len(),
        wrong.len(),
        wrong.iter().take(3).collect::<Vec<_>>()
    ))
}

/// A field of `/proc/self/status` in KiB (`VmHWM`: peak resident set; `VmRSS`: current).
pub fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// The `p`-quantile (0..=1) of sorted samples (nearest rank).
pub fn quantile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// The number after `key ` in a progress line of `sardonyx run` when its output is not a
/// terminal (`progress: read 1200 · written 0 · rejected 0 · logged 1000`).
pub fn progress_count(line: &str, key: &str) -> Option<u64> {
    let rest = line.strip_prefix("progress: ")?;
    rest.split(" · ").find_map(|part| {
        let (k, v) = part.split_once(' ')?;
        (k == key).then(|| v.parse().ok())?
    })
}

/// What `sardonyx run` says it read to recover one windowed slot (its line
/// `recovered LEDGER: snapshot at P|none, S records scanned, B bytes read, R batches replayed,
/// F fenced, I ids, dedup filter reused|rebuilt|off, P firings synced again, M ms`, printed when
/// the run ends).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SlotRecoveryLine {
    /// The slot's ledger.
    pub ledger: String,
    /// The position the snapshot covers, if recovery started from one.
    pub snapshot: Option<u64>,
    /// Ledger records visited.
    pub records_scanned: u64,
    /// Bytes read (snapshot and entries).
    pub bytes_read: u64,
    /// Batch records replayed.
    pub batches: u64,
    /// Ids inserted into the dedup filter.
    pub ids: u64,
    /// How the dedup filter was brought up to date: `reused`, `rebuilt` or `off`.
    pub filter: String,
    /// The slot's own recovery time (ledger read, replay, dedup filter brought up to date), ms.
    pub millis: u64,
}

/// Parses a `recovered …` line of `sardonyx run` (see [`SlotRecoveryLine`]).
pub fn parse_recovered(line: &str) -> Option<SlotRecoveryLine> {
    let rest = line.strip_prefix("recovered ")?;
    let (ledger, rest) = rest.split_once(": snapshot ")?;
    let (snap, rest) = rest.split_once(", ")?;
    let snapshot = match snap {
        "none" => None,
        s => Some(s.strip_prefix("at ")?.parse().ok()?),
    };
    // The remaining parts are "<number> <what>".
    let mut n = BTreeMap::new();
    let mut filter = String::new();
    for part in rest.split(", ") {
        if let Some(how) = part.strip_prefix("dedup filter ") {
            how.clone_into(&mut filter);
            continue;
        }
        let (v, what) = part.split_once(' ')?;
        n.insert(what, v.parse::<u64>().ok()?);
    }
    Some(SlotRecoveryLine {
        ledger: ledger.to_owned(),
        snapshot,
        records_scanned: *n.get("records scanned")?,
        bytes_read: *n.get("bytes read")?,
        batches: *n.get("batches replayed")?,
        ids: *n.get("ids")?,
        filter,
        millis: *n.get("ms")?,
    })
}

/// Total size of the files under `dir` (recursively), bytes; 0 if it does not exist.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vote(id: u64, voter: u64, c: &str, t: i64) -> Vote {
        Vote {
            vote_id: Some(id),
            voter_id: voter,
            candidate: c.into(),
            event_time: t,
        }
    }

    #[test]
    fn reference_by_hand() {
        let t0 = 1_700_000_000_000; // 22:13:20 — not aligned to a minute
        let votes = [
            vote(0, 1, "a", t0),
            vote(1, 2, "b", t0 + 40_000),  // next minute
            vote(2, 1, "a", t0 + 300_000), // exactly the gap: same session
            vote(3, 1, "a", t0 + 600_001), // gap 300 001: new session
        ];
        let r = Reference::from_votes(&votes);
        assert_eq!(r.exact_gap_pairs, 1);
        assert_eq!(r.rows[&Query::Q1]["a"], 3);
        assert_eq!(r.rows[&Query::Q2][&format!("{},a", t0 - 20_000)], 1);
        assert_eq!(r.rows[&Query::Q2][&format!("{},b", t0 + 40_000)], 1);
        // t0 is in the hour windows starting at t0 - 20:00 (rounded to the slide) and the two
        // before it.
        let s = t0.div_euclid(Q3_SLIDE_MS) * Q3_SLIDE_MS;
        for k in 0..3 {
            assert!(r.rows[&Query::Q3].contains_key(&format!("{},a", s - k * Q3_SLIDE_MS)));
        }
        assert_eq!(r.rows[&Query::Q4][&format!("1,{t0}")], 2);
        assert_eq!(r.rows[&Query::Q4][&format!("1,{}", t0 + 600_001)], 1);
    }

    #[test]
    fn answer_keeps_the_last_firing_of_each_extent_and_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firings.jsonl");
        std::fs::write(
            &path,
            concat!(
                r#"{"window":"q4","group":7,"lower":100,"upper":100,"state":1}"#,
                "\n",
                r#"{"window":"q4","group":12,"lower":5,"upper":9,"state":4}"#,
                "\n",
                "\n",
                r#"{"window":"q4","group":7,"lower":100,"upper":160,"state":3}"#,
                "\n",
                r#"{"window":"q4","group":7,"lower":100,"upper":170,"state":2}"#,
                "\n",
            ),
        )
        .unwrap();
        let a = Answer::from_sync_file(Query::Q4, &path).unwrap();
        assert_eq!(a.firings, 4);
        let rows: Vec<_> = a.rows.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        assert_eq!(rows, [("12,5", 4), ("7,100", 2)]);

        std::fs::write(
            &path,
            concat!(
                r#"{"group":"cand_01","lower":-9223372036854775808,"state":1}"#,
                "\n",
                r#"{"group":"cand_00","lower":-9223372036854775808,"state":5}"#,
                "\n",
                r#"{"group":"cand_01","lower":-9223372036854775808,"state":2}"#,
                "\n",
            ),
        )
        .unwrap();
        let a = Answer::from_sync_file(Query::Q1, &path).unwrap();
        let rows: Vec<_> = a.rows.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        assert_eq!(rows, [("cand_00", 5), ("cand_01", 2)]);

        std::fs::write(&path, r#"{"group":"cand_01","lower":0,"state":1.5}"#).unwrap();
        let e = Answer::from_sync_file(Query::Q2, &path)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("malformed firing (invalid type: floating point `1.5`"),
            "{e}"
        );
    }

    #[test]
    fn quantiles() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&v, 0.5), Some(2.0));
        assert_eq!(quantile(&v, 0.99), Some(4.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn jobs_validate() {
        let registry = sardonyx::Registry::new();
        for q in Query::ALL {
            vote_job(q, &Source::File("x.jsonl".into()), "/tmp/s.jsonl", 1, None)
                .validate(&registry)
                .unwrap();
        }
    }

    #[test]
    fn cli_lines() {
        let l = "progress: read 1200 · committed 800 · written 7 · rejected 0 · logged 1000";
        assert_eq!(progress_count(l, "read"), Some(1200));
        assert_eq!(progress_count(l, "committed"), Some(800));
        assert_eq!(progress_count(l, "logged"), Some(1000));
        assert_eq!(progress_count("read 3", "read"), None);
        let r = "recovered vote-bench-q2/g1/count/0: snapshot at 41, 3 records scanned, \
                 123456 bytes read, 2 batches replayed, 0 fenced, 2000 ids, dedup filter \
                 reused, 12 firings synced again, 87 ms";
        let got = parse_recovered(r).unwrap();
        assert_eq!(got.ledger, "vote-bench-q2/g1/count/0");
        assert_eq!(got.snapshot, Some(41));
        assert_eq!(got.filter, "reused");
        assert_eq!(
            (
                got.records_scanned,
                got.bytes_read,
                got.batches,
                got.ids,
                got.millis
            ),
            (3, 123_456, 2, 2000, 87)
        );
        let none = r.replace("snapshot at 41", "snapshot none");
        assert_eq!(parse_recovered(&none).unwrap().snapshot, None);
    }
}
