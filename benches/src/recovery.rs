//! Recovery time after a kill -9 (`vote-bench recovery`).
//!
//! One case: a query's job (exactly-once on the embedded log, under a data directory of its own)
//! runs as a real `sardonyx run` process; once its progress line says it has committed `N` events
//! (fully processed, their input positions in the log; reads run ahead of that) it is killed with
//! SIGKILL; the same command is started again on the same data directory and
//! reads the rest of the file. The restart is timed from the instant before `spawn` to:
//!
//! - **slot recovered**: the engine's `windowed slot recovered` log line (tracing, INFO, target
//!   `sardonyx::runtime::slot_log`) reaches us: the process started, opened the embedded log,
//!   took over the job and rebuilt the windowed slot (snapshot + ledger tail replayed, dedup
//!   filter rebuilt). The engine also reports that slot's own share (`millis`) when the run ends.
//! - **processing again**: the first progress line (`--progress-ms 10`) whose `logged` count is
//!   above zero, i.e. the first *new* batch after recovery has been read, applied to the window
//!   and committed to the log. The progress line is printed every 10 ms (the CLI's minimum), so
//!   this is an upper bound, at most ~10 ms late. The engine has no event of its own for "first
//!   batch committed after recovery"; a tracing line there (or a `Progress` timestamp) would
//!   make it exact.
//!
//! The answer (the trigger's sync file, written by both processes: syncs resume by appending) is
//! compared with the reference; a wrong answer gets no figure.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::{
    check, dir_bytes, parse_recovered, progress_count, vote_job, Answer, Query, Reference,
    SlotRecoveryLine, Source,
};

/// How `sardonyx` is started.
#[derive(Debug, Clone)]
pub enum Launcher {
    /// This executable, whose first argument `sardonyx` runs the engine's command line
    /// (`sardonyx::cli::main_from`: the very same code as the `sardonyx` binary).
    Internal(PathBuf),
    /// A `sardonyx` binary.
    Binary(PathBuf),
}

impl Launcher {
    fn command(&self, args: &[String]) -> Command {
        match self {
            Launcher::Internal(exe) => {
                let mut c = Command::new(exe);
                c.arg("sardonyx").args(args);
                c
            }
            Launcher::Binary(bin) => {
                let mut c = Command::new(bin);
                c.args(args);
                c
            }
        }
    }
}

/// What every case shares.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The vote file (with `vote_id`), more than the largest kill point.
    pub input: PathBuf,
    /// How to start `sardonyx`.
    pub launcher: Launcher,
    /// Scratch directory: one sub-directory per case, wiped first.
    pub work: PathBuf,
    /// Peers of the windowed task.
    pub peers: usize,
    /// Batch size of the input and the windowed task (default: the engine's).
    pub batch_size: Option<usize>,
    /// Give up on a process after this long.
    pub timeout: Duration,
}

/// One measurement: a query killed after `kill_at` events, compacting past `compact_bytes`
/// (`None`: never).
#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// The query.
    pub query: Query,
    /// Kill once the progress line says at least this many events were committed.
    pub kill_at: u64,
    /// `--compact-bytes` (`None`: compaction off, i.e. `u64::MAX`).
    pub compact_bytes: Option<u64>,
}

/// The figures of one case (one JSON line with `--results`).
#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    /// `q1` … `q4`.
    pub query: String,
    /// The kill point asked for.
    pub kill_at: u64,
    /// `--compact-bytes` (`None`: off).
    pub compact_bytes: Option<u64>,
    /// Events in the file.
    pub events: u64,
    /// First run: the `read` count of the progress line that triggered the kill.
    pub read_at_kill: u64,
    /// First run: its `logged` count (segments committed to the log).
    pub logged_at_kill: u64,
    /// First run: `slot compacted` log lines seen before the kill.
    pub compactions_before_kill: u64,
    /// First run: spawn → first progress line with `logged` > 0, s (a start without state).
    pub fresh_first_batch_secs: Option<f64>,
    /// First run: spawn → kill, s.
    pub killed_after_secs: f64,
    /// Bytes under the data directory right after the kill (RocksDB: the log, dedup filters).
    pub data_bytes_at_kill: u64,
    /// Restart: spawn → the `windowed slot recovered` line (the last one, with several peers), s.
    pub slot_recovered_secs: Option<f64>,
    /// Restart: spawn → first progress line with `read` > 0, s.
    pub reading_again_secs: Option<f64>,
    /// Restart: spawn → first progress line with `logged` > 0 (processing again), s.
    pub processing_again_secs: Option<f64>,
    /// Restart: spawn → exit (the rest of the input processed), s.
    pub restart_wall_secs: f64,
    /// Restart: events it read (the input resumed at `events − this`).
    pub read_after_restart: u64,
    /// What the engine reported recovering, per windowed slot.
    pub slots: Vec<SlotRecoveryLine>,
    /// `Ok(rows)` if the final answer equals the reference, else the differences.
    pub verdict: Result<usize, String>,
}

/// A `sardonyx` process whose output lines arrive with the instant they were read.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
    started: Instant,
    seen: Vec<String>,
}

impl Proc {
    fn start(launcher: &Launcher, args: &[String], cwd: &Path) -> anyhow::Result<Proc> {
        let mut cmd = launcher.command(args);
        cmd.env(
            "SARDONYX_LOG",
            "warn,sardonyx::runtime::slot_log=info,sardonyx::cli=info",
        )
        .env("NO_COLOR", "1")
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd.spawn().context("starting sardonyx")?;
        let (tx, rx) = mpsc::channel();
        let out: [Box<dyn std::io::Read + Send>; 2] = [
            Box::new(child.stdout.take().context("stdout")?),
            Box::new(child.stderr.take().context("stderr")?),
        ];
        for stream in out {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if tx.send((Instant::now(), strip_ansi(&line))).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Proc {
            child,
            lines: rx,
            started,
            seen: Vec::new(),
        })
    }

    /// The next line (with seconds since spawn), `None` once the process ended and its output
    /// is drained, an error past the deadline.
    fn next(&mut self, deadline: Instant) -> anyhow::Result<Option<(f64, String)>> {
        loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .with_context(|| format!("timed out; output:\n{}", self.tail()))?;
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok((at, line)) => {
                    self.seen.push(line.clone());
                    let t = at.saturating_duration_since(self.started).as_secs_f64();
                    return Ok(Some((t, line)));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(None),
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
            }
        }
    }

    fn kill9(&mut self) {
        // Child::kill sends SIGKILL on Unix.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn tail(&self) -> String {
        let n = self.seen.len();
        self.seen[n.saturating_sub(40)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill9();
        }
    }
}

/// Drops ANSI escape sequences (in case the log is coloured anyway).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs one case (see the module docs).
pub fn measure(setup: &Setup, case: Case, reference: &Reference) -> anyhow::Result<Recovery> {
    let q = case.query;
    if case.kill_at >= reference.events {
        bail!(
            "the kill point {} is not below the {} events of {}: the job would finish first",
            case.kill_at,
            reference.events,
            setup.input.display()
        );
    }
    let name = format!(
        "{}-{}-{}",
        q.name(),
        case.kill_at,
        if case.compact_bytes.is_some() {
            "compact"
        } else {
            "nocompact"
        }
    );
    let dir = setup.work.join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let input = setup
        .input
        .canonicalize()
        .with_context(|| format!("input {}", setup.input.display()))?;
    let sync = dir.join("firings.jsonl");
    let job = vote_job(
        q,
        &Source::File(input.display().to_string()),
        &sync.display().to_string(),
        setup.peers,
        setup.batch_size,
    );
    let job_path = dir.join("job.json");
    std::fs::write(&job_path, serde_json::to_string_pretty(&job)?)?;
    let data = dir.join("data");
    let compact = case.compact_bytes.unwrap_or(u64::MAX);
    let args: Vec<String> = [
        "run",
        &job_path.display().to_string(),
        "--data",
        &data.display().to_string(),
        "--errors",
        &dir.join("errors.jsonl").display().to_string(),
        "--progress-ms",
        "10",
        "--compact-bytes",
        &compact.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();

    // 1. A fresh run, killed with SIGKILL once it has committed `kill_at` events. (Killed after
    //    reading them instead, a small N could be killed before anything was committed: the
    //    restart then had nothing to recover and read everything again.)
    let mut fresh_args = args.clone();
    fresh_args.push("--fresh".into());
    let mut p = Proc::start(&setup.launcher, &fresh_args, &dir)?;
    let deadline = Instant::now() + setup.timeout;
    let (mut fresh_first_batch, mut compactions) = (None, 0);
    let (read_at_kill, logged_at_kill, killed_after) = loop {
        let Some((t, line)) = p.next(deadline)? else {
            bail!(
                "the first run ended before committing {} events:\n{}",
                case.kill_at,
                p.tail()
            );
        };
        if line.contains("slot compacted") {
            compactions += 1;
        }
        let logged = progress_count(&line, "logged").unwrap_or(0);
        if logged > 0 && fresh_first_batch.is_none() {
            fresh_first_batch = Some(t);
        }
        if progress_count(&line, "committed").is_some_and(|c| c >= case.kill_at) {
            p.kill9();
            break (progress_count(&line, "read").unwrap_or(0), logged, t);
        }
    };
    drop(p);
    let data_bytes_at_kill = dir_bytes(&data);

    // 2. The same command on the same data directory.
    let mut p = Proc::start(&setup.launcher, &args, &dir)?;
    let deadline = Instant::now() + setup.timeout;
    let (mut slot_recovered, mut reading_again, mut processing_again) = (None, None, None);
    let mut slots = Vec::new();
    let mut read_after_restart = None;
    let mut last_t = 0.0;
    while let Some((t, line)) = p.next(deadline)? {
        last_t = t;
        if line.contains("windowed slot recovered") {
            slot_recovered = Some(t);
        }
        if reading_again.is_none() && progress_count(&line, "read").is_some_and(|n| n > 0) {
            reading_again = Some(t);
        }
        if processing_again.is_none() && progress_count(&line, "logged").is_some_and(|n| n > 0) {
            processing_again = Some(t);
        }
        if let Some(r) = parse_recovered(&line) {
            slots.push(r);
        }
        // The summary: "<job>: read N records, wrote …".
        if let Some((_, rest)) = line.split_once(": read ") {
            if rest.contains(" records, wrote ") {
                read_after_restart = rest.split(' ').next().and_then(|n| n.parse().ok());
            }
        }
    }
    let status = p.child.wait()?;
    let restart_wall = p.started.elapsed().as_secs_f64().max(last_t);
    if !status.success() {
        bail!("the restarted run failed ({status}):\n{}", p.tail());
    }
    let read_after_restart = read_after_restart
        .with_context(|| format!("no summary line from the restarted run:\n{}", p.tail()))?;

    let answer = Answer::from_sync_file(q, &sync)?;
    let mut verdict = check(&reference.rows[&q], &answer.rows);
    if verdict.is_ok() && slots.is_empty() {
        verdict = Err("the restarted run reported no slot recovery".into());
    }
    if verdict.is_ok() && read_after_restart >= reference.events {
        verdict = Err(format!(
            "the restarted run read all {read_after_restart} events again: it did not resume"
        ));
    }
    Ok(Recovery {
        query: q.name().into(),
        kill_at: case.kill_at,
        compact_bytes: case.compact_bytes,
        events: reference.events,
        read_at_kill,
        logged_at_kill,
        compactions_before_kill: compactions,
        fresh_first_batch_secs: fresh_first_batch,
        killed_after_secs: killed_after,
        data_bytes_at_kill,
        slot_recovered_secs: slot_recovered,
        reading_again_secs: reading_again,
        processing_again_secs: processing_again,
        restart_wall_secs: restart_wall,
        read_after_restart,
        slots,
        verdict,
    })
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1 << 20) as f64)
}

fn secs(s: Option<f64>) -> String {
    s.map_or("–".into(), |s| format!("{s:.3}"))
}

impl Recovery {
    /// The header of [`Recovery::markdown`]'s rows.
    pub const HEADER: &'static str = "| query | N (at kill: read / logged) | compaction | compactions before kill | log on disk at kill MiB | recovery read: snapshot / records / MiB / ids into the dedup filter | dedup filter | slot recovery ms (engine) | start → slot recovered s | start → processing again s | fresh start → first batch s | restart wall s (rest of input) | input resumed at | correct |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|";

    /// One markdown row; no figure for a wrong answer.
    pub fn markdown(&self) -> String {
        let compaction = match self.compact_bytes {
            Some(b) => format!("on ({} MiB)", mib(b)),
            None => "off".into(),
        };
        let head = format!(
            "| {} | {} ({} / {}) | {compaction} |",
            self.query, self.kill_at, self.read_at_kill, self.logged_at_kill
        );
        match &self.verdict {
            Err(e) => format!("{head} – | – | – | – | – | – | – | – | – | – | NO: {e} |"),
            Ok(rows) => {
                let s = &self.slots;
                let snap = if s.iter().all(|r| r.snapshot.is_some()) {
                    "yes"
                } else if s.iter().any(|r| r.snapshot.is_some()) {
                    "some"
                } else {
                    "no"
                };
                let sum = |f: fn(&SlotRecoveryLine) -> u64| s.iter().map(f).sum::<u64>();
                let ms = s.iter().map(|r| r.millis).max().unwrap_or(0);
                let mut filters: Vec<&str> = s.iter().map(|r| r.filter.as_str()).collect();
                filters.dedup();
                let filter = filters.join(", ");
                format!(
                    "{head} {} | {} | {snap} / {} / {} / {} | {filter} | {ms} | {} | {} | {} | {:.3} | {} | yes ({rows} rows) |",
                    self.compactions_before_kill,
                    mib(self.data_bytes_at_kill),
                    sum(|r| r.records_scanned),
                    mib(sum(|r| r.bytes_read)),
                    sum(|r| r.ids),
                    secs(self.slot_recovered_secs),
                    secs(self.processing_again_secs),
                    secs(self.fresh_first_batch_secs),
                    self.restart_wall_secs,
                    self.events - self.read_after_restart.min(self.events),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m x"),
            "2026  INFO x"
        );
    }
}
