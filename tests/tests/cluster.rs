//! The cluster's membership with real processes (DESIGN §6): a `sardonyx log-server` and
//! `sardonyx peer` processes on loopback. Peers join through the coordination log and form one
//! ring; a peer killed with SIGKILL is declared gone by the process that watches it, and the
//! ring closes around it; a new peer joins; a peer stopped with SIGTERM leaves at once. Every
//! peer's replica after every entry (written by `--trace-replicas`) equals what `sardonyx replay
//! --to N` plays from the log: the time machine shows what the live processes held. And the
//! peers go on through the loss of the log cluster's Raft leader.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Not a test: the entry point of the `sardonyx` processes the tests start.
#[test]
fn child_process() {
    child_main();
}

/// Upper bound on any one wait (each is awaited on an event; this only ends a broken run).
const WAIT: Duration = Duration::from_secs(60);

fn start_peer(dir: &Path, log: &str, name: &str) -> Proc {
    start_peer_with(dir, log, name, &[])
}

/// Starts a peer process (heartbeats every 100 ms, declared gone after 1 s) with `more`
/// arguments, and waits until it is in the ring.
fn start_peer_with(dir: &Path, log: &str, name: &str, more: &[&str]) -> Proc {
    let trace = dir
        .join(format!("{name}.trace.jsonl"))
        .display()
        .to_string();
    let mut args = vec![
        "peer",
        "--log",
        log,
        "--listen",
        "127.0.0.1:0",
        "--slots",
        "2",
        "--heartbeat-ms",
        "100",
        "--failure-timeout-ms",
        "1000",
        "--trace-replicas",
        &trace,
    ];
    args.extend_from_slice(more);
    let mut p = Proc::start_with_env(&args, dir, &[("SARDONYX_LOG", "info")]);
    let joined = p.wait_line(WAIT, |l| l.contains("joined the cluster"));
    assert!(
        joined.is_some(),
        "{name} did not join:\n{}",
        p.seen.join("\n")
    );
    p
}

/// `sardonyx ARGS…` run to its end: its standard output (stderr lines are kept apart by
/// [`Proc`], so the output is filtered to the lines that are not logs).
fn run(dir: &Path, args: &[&str]) -> String {
    let (status, lines) = Proc::start(args, dir).finish(WAIT);
    assert!(
        status.success(),
        "sardonyx {args:?} failed:\n{}",
        lines.join("\n")
    );
    lines.join("\n")
}

fn status(dir: &Path, log: &str) -> Value {
    let out = run(dir, &["cluster-status", "--log", log, "--json"]);
    json_line(&out)
}

/// The JSON object printed on one line of `out` (after the test harness's own words).
fn json_line(out: &str) -> Value {
    let line = out
        .lines()
        .find_map(|l| l.find('{').map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("no JSON line in:\n{out}"));
    serde_json::from_str(line).unwrap()
}

fn ring(status: &Value) -> Vec<String> {
    status["ring"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect()
}

/// The `host:port` of a process's metrics endpoint, from the line it prints.
fn metrics_address(p: &Proc) -> String {
    let line = p
        .seen
        .iter()
        .find(|l| l.contains("metrics: http://"))
        .expect("the metrics line");
    let at = line.find("http://").unwrap() + "http://".len();
    line[at..].split('/').next().unwrap().to_owned()
}

/// The body of `GET path` from `addr` (HTTP/1.1, one request per connection).
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connecting to the metrics endpoint");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "GET {path}: {response}"
    );
    response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn peers_join_a_killed_peer_is_declared_gone_and_replay_shows_what_each_peer_held() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let addr = format!("127.0.0.1:{}", free_port());
    let data = dir.join("log").display().to_string();
    let spec = format!("1={addr}");
    let mut server = Proc::start(
        &[
            "log-server",
            "--id",
            "1",
            "--listen",
            &addr,
            "--data",
            &data,
            "--cluster",
            &spec,
        ],
        dir,
    );
    assert!(
        server
            .wait_line(WAIT, |l| l.contains("listening on"))
            .is_some(),
        "the log server did not start:\n{}",
        server.seen.join("\n")
    );

    let mut a = start_peer_with(dir, &addr, "a", &["--metrics", "127.0.0.1:0"]);
    let metrics = metrics_address(&a);
    let mut b = start_peer(dir, &addr, "b");
    let mut c = start_peer(dir, &addr, "c");
    let ids = [id_of(&a), id_of(&b), id_of(&c)];
    let before = status(dir, &addr);
    let mut members = ring(&before);
    members.sort();
    let mut want = ids.to_vec();
    want.sort();
    assert_eq!(members, want, "one ring over the three peers: {before:#}");

    // Kill b: the process watching it (its predecessor in the ring) declares it gone.
    let r = ring(&before);
    let at = r.iter().position(|p| *p == ids[1]).unwrap();
    let watcher = &r[(at + r.len() - 1) % r.len()];
    b.kill9();
    let watching = if *watcher == ids[0] { &mut a } else { &mut c };
    let declared = watching.wait_line(WAIT, |l| l.contains("it leaves the cluster"));
    assert!(
        declared.is_some_and(|l| l.contains(&ids[1])),
        "the watcher never declared b gone:\n{}",
        watching.seen.join("\n")
    );
    // Await the leave in the log: the surviving peers log their new watch.
    let rewatched = watching.wait_line(WAIT, |l| l.contains("watching"));
    assert!(rewatched.is_some(), "{}", watching.seen.join("\n"));
    let after = status(dir, &addr);
    let mut members = ring(&after);
    members.sort();
    let mut want = vec![ids[0].clone(), ids[2].clone()];
    want.sort();
    assert_eq!(members, want, "the ring closed around b: {after:#}");
    assert_eq!(after["departed"], serde_json::json!([ids[1]]));

    // A new peer joins the two; then one stops gracefully and leaves at once.
    let d = start_peer(dir, &addr, "d");
    assert_eq!(ring(&status(dir, &addr)).len(), 3);
    c.signal("TERM");
    let (code, lines) = c.finish(WAIT);
    assert!(code.success(), "{}", lines.join("\n"));
    assert!(
        lines.iter().any(|l| l.contains("left the cluster")),
        "{}",
        lines.join("\n")
    );
    let last = status(dir, &addr);
    let mut members = ring(&last);
    members.sort();
    let mut want = vec![ids[0].clone(), id_of(&d)];
    want.sort();
    assert_eq!(members, want, "c left: {last:#}");

    // The time machine: every replica a peer held equals the replay to its position.
    let end = last["position"].as_u64().unwrap();
    let mut replayed = Vec::new();
    for n in 0..=end {
        let out = run(
            dir,
            &["replay", "--log", &addr, "--to", &n.to_string(), "--json"],
        );
        let v = json_line(&out);
        assert_eq!(v["position"], n);
        replayed.push(v["replica"].clone());
    }
    assert_eq!(replayed[end as usize], last);
    let mut compared = 0;
    for name in ["a", "b", "c", "d"] {
        let trace = std::fs::read_to_string(dir.join(format!("{name}.trace.jsonl"))).unwrap();
        for line in trace.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            let n = v["position"].as_u64().unwrap();
            assert_eq!(v["replica"], replayed[n as usize], "{name} after entry {n}");
            compared += 1;
        }
    }
    // a saw every entry; b up to its death; c up to its leave; d from its join's prefix on.
    assert!(compared as u64 >= end + 3, "{compared} replicas compared");
    // a's metrics and its time machine page say the same as the log.
    let deadline = std::time::Instant::now() + WAIT;
    let scrape = loop {
        let scrape = http_get(&metrics, "/metrics");
        if scrape.contains(&format!("sardonyx_cluster_log_position {end}\n")) {
            break scrape;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a never played entry {end}:\n{scrape}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        scrape.contains("sardonyx_cluster_processes 2\n"),
        "{scrape}"
    );
    assert!(
        scrape.contains("sardonyx_cluster_joining_processes 0\n"),
        "{scrape}"
    );
    let declared = if *watcher == ids[0] { 1 } else { 0 };
    let leaves = format!("sardonyx_cluster_leaves_appended_total {declared}\n");
    assert!(scrape.contains(&leaves), "{scrape}");
    let answered = scrape
        .lines()
        .find_map(|l| l.strip_prefix("sardonyx_cluster_heartbeats_answered_total "))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(answered.is_some_and(|n| n > 0), "{scrape}");
    for n in [1, 4, end] {
        let page = http_get(&metrics, &format!("/cluster?at={n}"));
        let shown = page
            .split("<pre>")
            .nth(1)
            .and_then(|p| p.split("</pre>").next())
            .expect("the replica on the page")
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&");
        let text = run(dir, &["replay", "--log", &addr, "--to", &n.to_string()]);
        let at = text
            .find(&format!("at entry {n}:"))
            .expect("the replica's first line");
        let want: String = text[at..]
            .lines()
            .take_while(|l| !l.starts_with("test ") && !l.starts_with("running"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(shown.trim_end(), want.trim_end(), "the time machine at {n}");
    }

    // Past the end is refused with the reason.
    let past = (end + 1).to_string();
    let (code, lines) = Proc::start(&["replay", "--log", &addr, "--to", &past], dir).finish(WAIT);
    assert!(!code.success());
    let want = format!("--to {past}: the coordination log ends at entry {end}");
    assert!(
        lines.iter().any(|l| l.contains(&want)),
        "{}",
        lines.join("\n")
    );
    drop((a, d, server));
}

/// Peers keep playing the coordination log when its Raft leader is killed: a peer joins through
/// the two servers left, and a peer killed afterwards is still declared gone.
#[test]
fn peers_go_on_through_the_loss_of_the_log_leader() {
    use sardonyx_state_log::Role;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut servers, log) = start_log_servers(dir, 3);
    let addrs: Vec<String> = log.split(',').map(str::to_owned).collect();
    let a = start_peer(dir, &log, "a");
    let mut b = start_peer(dir, &log, "b");
    let ids = [id_of(&a), id_of(&b)];

    // Kill the Raft leader of the log cluster.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let leader = rt
        .block_on(sardonyx_state_log::status(&addrs))
        .into_iter()
        .find(|s| s.role == Role::Leader)
        .and_then(|s| s.id)
        .expect("a leader");
    servers[leader as usize - 1].kill9();

    // A third peer joins through the servers left; then b is killed and declared gone.
    let c = start_peer(dir, &log, "c");
    let mut members = ring(&status(dir, &log));
    members.sort();
    let mut want = vec![ids[0].clone(), ids[1].clone(), id_of(&c)];
    want.sort();
    assert_eq!(
        members, want,
        "three peers in the ring with the leader gone"
    );
    b.kill9();
    let mut watchers = [a, c];
    let r = ring(&status(dir, &log));
    let at = r.iter().position(|p| *p == ids[1]).unwrap();
    let watcher = &r[(at + r.len() - 1) % r.len()];
    let w = watchers
        .iter_mut()
        .find(|p| id_of(p) == *watcher)
        .expect("b's watcher is a or c");
    let declared = w.wait_line(WAIT, |l| l.contains("it leaves the cluster"));
    assert!(
        declared.is_some_and(|l| l.contains(&ids[1])),
        "b's watcher never declared it gone:\n{}",
        w.seen.join("\n")
    );
    let rewatched = w.wait_line(WAIT, |l| l.contains("watching"));
    assert!(rewatched.is_some(), "{}", w.seen.join("\n"));
    let after = status(dir, &log);
    assert_eq!(ring(&after).len(), 2, "{after:#}");
    assert_eq!(after["departed"], serde_json::json!([ids[1]]));
}
