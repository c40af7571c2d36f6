//! The dashboard page: the job's figures ([`super::summary`], from the live counters and the
//! sampled history) rendered as HTML by the server — the job's graph with live figures,
//! a table per task (throughput, watermark and its lag, rejected, backpressure), late and
//! duplicate counts, the latest rejections with their reasons, recent firings per window,
//! charts of throughput and watermark lag, and the state log. The page fetches its live part
//! again every two seconds (`/live`); without script it is still complete when loaded.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::chart::{compact_number, graph_picture, line_chart, TaskFigures};
use super::error::MetricsError;
use super::exposition::epoch_seconds;
use super::history::History;
use super::observed::{Observed, ObservedJob};
use super::process;
use super::summary::{task_summaries, THROUGHPUT_WINDOW};

/// The whole page: the live part inside a shell that refreshes it.
pub fn render_page(observed: &Observed, history: &History, now: f64) -> String {
    let title = observed
        .job
        .as_ref()
        .map_or("state log".to_owned(), |j| j.name.clone());
    let live = render_live(observed, history, now);
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sardonyx · {title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
h1 {{ margin-bottom: 0.2em; }} h2 {{ margin-top: 1.4em; font-size: 1.15em; }}
table {{ border-collapse: collapse; margin: 0.4em 0; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 0.25em 0.7em; text-align: left; }}
td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
.muted {{ color: #777; }} .reason {{ color: #a00; }} code {{ font-size: 0.9em; }}
.charts {{ display: flex; flex-wrap: wrap; gap: 1em; }}
</style></head>
<body><div id="live">{live}</div>
<script>
setInterval(function () {{
  fetch('/live').then(function (r) {{ return r.ok ? r.text() : null; }})
    .then(function (html) {{ if (html) document.getElementById('live').innerHTML = html; }})
    .catch(function () {{}});
}}, 2000);
</script></body></html>
"#,
        title = escape(&title)
    )
}

/// The live part of the page (also served alone at `/live`).
pub fn render_live(observed: &Observed, history: &History, now: f64) -> String {
    let mut h = String::new();
    match &observed.job {
        Some(job) => {
            if let Err(e) = job_section(&mut h, job, history, now) {
                let _ = write!(h, "<p class=\"reason\">{}</p>", escape(&error_text(&e)));
            }
        }
        None => h.push_str("<h1>Sardonyx</h1>"),
    }
    log_section(&mut h, observed);
    match &observed.cluster {
        Some(view) => cluster_section(&mut h, &view.snapshot()),
        None => h.push_str(
            "<p class=\"muted\">One process, no cluster: the processes, the ring, the slot \
             owners and the coordination log's time machine appear on the page of a peer \
             process (<code>sardonyx peer --metrics ADDR</code>).</p>",
        ),
    }
    process_line(&mut h);
    h
}

/// The cluster as a peer process sees it: the replica after the last entry it played (the
/// processes in ring order, joins, jobs and slot owners), and a link to the time machine.
fn cluster_section(h: &mut String, c: &crate::cluster::ClusterSnapshot) {
    let me = c.me.map_or("?".to_owned(), |p| p.to_string());
    let _ = write!(
        h,
        "<h2>Cluster · this process {me}</h2><p>{} heartbeats answered by the watched \
         process · {} processes declared gone by this one · \
         <a href=\"/cluster\">time machine</a></p><pre>{}</pre>",
        c.heartbeats_answered,
        c.leaves_appended,
        escape(&c.replica.to_string())
    );
}

/// The time machine (`/cluster?at=N`): the replica after coordination-log entry `at` of the
/// entries this process played, with a slider over them (a form: no script).
pub fn render_time_machine(view: &crate::cluster::ClusterView, at: Option<u64>) -> String {
    let last = view.snapshot().replica.position;
    let at = at.unwrap_or(last).min(last);
    let (replica, entry) = view.at(at);
    let entry = match entry {
        Some(name) => format!("entry {at} of {last}: <code>{name}</code>"),
        None => format!("before entry 1 (of {last})"),
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sardonyx · time machine</title>
<style>body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
input[type=range] {{ width: 30em; }}</style></head>
<body><h1>Coordination log · time machine</h1>
<form method="get" action="/cluster">
<input type="range" name="at" min="0" max="{last}" value="{at}">
<button type="submit">show</button> <a href="/">back</a></form>
<p>{entry}</p><pre>{}</pre></body></html>"#,
        escape(&replica.to_string())
    )
}

fn error_text(e: &MetricsError) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let _ = write!(text, ": {c}");
        cause = c.source();
    }
    text
}

fn job_section(
    h: &mut String,
    job: &ObservedJob,
    history: &History,
    now: f64,
) -> Result<(), MetricsError> {
    let p = &job.progress;
    let tasks = task_summaries(job);
    let counts: BTreeMap<String, u64> = tasks
        .iter()
        .map(|(n, s)| (n.clone(), s.segments_in))
        .collect();
    let throughput = history.throughput(now, &counts, THROUGHPUT_WINDOW);
    let now_ms = epoch_seconds(SystemTime::now()) * 1000.0;
    let up = SystemTime::now()
        .duration_since(job.started)
        .unwrap_or_default()
        .as_secs();
    let _ = write!(
        h,
        "<h1>{}</h1><p class=\"muted\">job · running for {}m {:02}s</p>",
        escape(&job.name),
        up / 60,
        up % 60
    );

    let figures: BTreeMap<String, TaskFigures> = tasks
        .iter()
        .map(|(name, s)| {
            let rate = throughput.get(name).copied().unwrap_or(0.0);
            let f = TaskFigures {
                throughput: format!("{} seg/s · {} in", compact_number(rate), s.segments_in),
                watermark: s.watermark.map_or(String::new(), |wm| {
                    format!(
                        "wm {} · lag {}",
                        clock_time(wm),
                        duration_text((now_ms - wm as f64) / 1000.0)
                    )
                }),
                rejected: if s.rejected > 0 {
                    format!("{} rejected", s.rejected)
                } else {
                    String::new()
                },
            };
            (name.clone(), f)
        })
        .collect();
    h.push_str("<h2>Job graph</h2>");
    h.push_str(&graph_picture(&job.graph, &figures)?);

    h.push_str(
        "<h2>Tasks</h2><table id=\"tasks\"><tr><th>task</th><th>kind</th><th>slots</th>\
         <th>segments in</th><th>segments out</th><th>throughput</th><th>watermark</th>\
         <th>watermark lag</th><th>rejected</th><th>backpressure waits</th></tr>",
    );
    for (name, s) in &tasks {
        let rate = throughput.get(name).copied().unwrap_or(0.0);
        let (wm, lag) = match s.watermark {
            Some(wm) => (
                format!(
                    "<td class=\"watermark\" data-ms=\"{wm}\">{}</td>",
                    utc_time(wm)
                ),
                duration_text((now_ms - wm as f64) / 1000.0),
            ),
            None => (
                "<td class=\"watermark muted\">none yet</td>".to_owned(),
                "–".to_owned(),
            ),
        };
        let _ = write!(
            h,
            "<tr data-task=\"{task}\"><td class=\"task\">{task}</td><td>{kind}</td>\
             <td class=\"n\">{slots}</td><td class=\"n segments-in\">{sin}</td>\
             <td class=\"n\">{sout}</td><td class=\"n throughput\" data-rate=\"{rate:.3}\">{shown}/s</td>\
             {wm}<td class=\"n lag\">{lag}</td><td class=\"n rejected\">{rej}</td>\
             <td class=\"n\">{waits}</td></tr>",
            task = escape(name),
            kind = s.kind,
            slots = s.slots,
            sin = s.segments_in,
            sout = s.segments_out,
            shown = compact_number(rate),
            rej = s.rejected,
            waits = s.backpressure_waits,
        );
    }
    h.push_str("</table>");

    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let triggers = p.triggers();
    let fired: u64 = triggers.iter().map(|t| load(&t.count)).sum();
    let _ = write!(
        h,
        "<p id=\"totals\">written <b>{}</b> · late <b class=\"late\">{}</b> · rejected <b>{}</b> \
         · duplicates dropped <b>{}</b> · unmatched <b>{}</b> · firings <b>{}</b></p>",
        load(&p.written),
        load(&p.late),
        load(&p.rejected),
        load(&p.duplicates),
        load(&p.unmatched),
        fired
    );

    h.push_str("<div class=\"charts\">");
    h.push_str(&line_chart(
        "throughput",
        "segments/s",
        &history.rates(),
        now,
        (560, 260),
    )?);
    h.push_str(&line_chart(
        "watermark lag",
        "lag (s)",
        &history.lags(),
        now,
        (560, 260),
    )?);
    h.push_str("</div>");

    h.push_str("<h2>Latest rejections</h2>");
    let rejections = p.recent_rejections();
    if rejections.is_empty() {
        h.push_str("<p class=\"muted\">none</p>");
    } else {
        h.push_str(
            "<table id=\"rejections\"><tr><th>when</th><th>task</th><th>line</th><th>reason</th>\
             <th>input</th></tr>",
        );
        for r in rejections.iter().rev() {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"reason\">{}</td>\
                 <td><code>{}</code></td></tr>",
                wall_time(r.at),
                escape(&r.task),
                r.line.map_or(String::new(), |l| l.to_string()),
                escape(&r.reason),
                escape(&r.what)
            );
        }
        h.push_str("</table>");
    }

    h.push_str("<h2>Recent firings</h2>");
    if triggers.is_empty() {
        h.push_str("<p class=\"muted\">no triggers</p>");
    }
    for t in &triggers {
        let _ = write!(
            h,
            "<h3>{} · {} <span class=\"muted\">({}, {} firings)</span></h3>",
            escape(&t.window),
            escape(&t.trigger),
            escape(&t.task),
            load(&t.count)
        );
        let recent = t.recent();
        if recent.is_empty() {
            continue;
        }
        h.push_str(
            "<table class=\"firings\"><tr><th>when</th><th>event</th><th>group</th>\
             <th>extent</th><th>state</th></tr>",
        );
        for f in recent.iter().rev() {
            let extent = match (f.lower, f.upper) {
                (Some(l), Some(u)) => format!("{} – {}", utc_time(l), utc_time(u)),
                _ => "global".to_owned(),
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td>\
                 <td><code>{}</code></td></tr>",
                wall_time(f.at),
                escape(&f.event),
                escape(&f.group),
                extent,
                escape(&f.state)
            );
        }
        h.push_str("</table>");
    }
    Ok(())
}

fn log_section(h: &mut String, observed: &Observed) {
    let Some(log) = &observed.log else {
        return;
    };
    let _ = write!(h, "<h2>State log · {}</h2><p>", escape(&log.name));
    if let Some(t) = &log.timing {
        let n = t.appends.load(Ordering::Relaxed) + t.append_errors.load(Ordering::Relaxed);
        let mean_ms = t.append_nanos.load(Ordering::Relaxed) as f64 / n.max(1) as f64 / 1e6;
        let _ = write!(
            h,
            "{} appends · {} bytes · {} compactions · mean append {:.2} ms · ",
            t.appends.load(Ordering::Relaxed),
            t.append_bytes.load(Ordering::Relaxed),
            t.snapshots.load(Ordering::Relaxed),
            mean_ms
        );
    }
    if let Some(s) = log.node.as_ref().and_then(|n| n.status()) {
        let _ = write!(
            h,
            "Raft {} · term {} · last log index {} · applied {}",
            format!("{:?}", s.role).to_lowercase(),
            s.current_term,
            s.last_log_index.map_or("–".to_owned(), |i| i.to_string()),
            s.last_applied.map_or("–".to_owned(), |i| i.to_string())
        );
    }
    h.push_str("</p>");
}

fn process_line(h: &mut String) {
    if let Some(u) = process::usage() {
        let _ = write!(
            h,
            "<p class=\"muted\">process: {:.1} MiB resident · {:.1} s CPU</p>",
            u.resident_bytes as f64 / (1 << 20) as f64,
            u.cpu_seconds
        );
    }
}

/// Escapes text for HTML.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Epoch milliseconds as `2023-11-14T22:13:20.000Z`.
pub fn utc_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
    )
}

/// Epoch milliseconds as `22:13:20`.
fn clock_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or_else(|| ms.to_string(), |t| t.format("%H:%M:%S").to_string())
}

fn wall_time(t: SystemTime) -> String {
    clock_time((epoch_seconds(t) * 1000.0) as i64)
}

/// Seconds as `850ms`, `12.3s`, `4m 5s`, `3h 2m`, `12d 3h`.
pub fn duration_text(seconds: f64) -> String {
    let s = seconds.max(0.0);
    if s < 1.0 {
        format!("{:.0}ms", s * 1000.0)
    } else if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m {}s", (s / 60.0) as u64, s as u64 % 60)
    } else if s < 86_400.0 {
        format!("{}h {}m", (s / 3600.0) as u64, (s as u64 % 3600) / 60)
    } else {
        format!("{}d {}h", (s / 86_400.0) as u64, (s as u64 % 86_400) / 3600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_times_and_durations_are_readable() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(utc_time(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
        let shown: Vec<String> = [0.25, 12.34, 245.0, 10_920.0, 1_047_600.0]
            .into_iter()
            .map(duration_text)
            .collect();
        assert_eq!(shown, ["250ms", "12.3s", "4m 5s", "3h 2m", "12d 3h"]);
    }
}
