#!/usr/bin/env bash
# Nexmark side by side: PyFlink running the standard Nexmark SQL (benches/peers/flink_nexmark.py)
# and Sardonyx (`nexmark-bench once`, in memory and exactly-once on the embedded log) over the
# SAME bids file, each run through the peers' harness (../shared/bench-peers/harness.py: whole-
# process wall, peak RSS, every answer checked against the exact reference), and prints one
# markdown table per query with events/s, events/s per core and the ratio Sardonyx / PyFlink.
#
# Usage (from the repository root): benches/run-nexmark.sh [N_BIDS=1000000] [RUNS=1]
#
# Queries: Q5's window stage (HOP 2 s / 10 s, bids per auction), Q7's (TUMBLE 10 s, max price),
# Q11 (SESSION 10 s gap, bids per bidder). Q12 fires on processing time, so it has no exact
# answer to compare: it is not run side by side (nexmark-bench runs it alone).
#
# - The bids file: $NEXMARK_BIDS if set (it must hold exactly N lines, e.g.
#   /work/nexmark/bids_10m.jsonl for N=10000000), else $W/bids_N.jsonl, generated with
#   `nexmark-bench generate --events N` if missing (same N, same bytes; ~260 bytes a bid).
# - The reference CSVs: `nexmark-bench reference` into $W/nexmark-ref-<file name>/ (once).
# - Sardonyx: `nexmark-bench once --no-check` (runs the job and writes the CSV; the harness
#   checks it), modes $SARDONYX_MODES (default "memory embedded"), one peer.
# - PyFlink: $W/venv-flink/bin/python benches/peers/flink_nexmark.py (apache-flink 2.3.0,
#   parallelism 1, streaming mode, window TVFs; Java 17). Skipped, with why, when the venv does
#   not import pyflink, when java is missing, or when PEERS (default "pyflink") omits it.
#   benches/run-all.sh installs the venv.
# - CPU time: every command runs under benches/peers/cputime.py, which records the user+system
#   time of the command's whole process tree (a child subreaper: PyFlink's JVM, which its
#   Python driver does not wait for, is counted too). events/s per core = events / those CPU
#   seconds (median over the runs), whole process including start-up, for every engine alike.
# - Environment: W (scratch, default /tmp/bench-peers), CARGO_TARGET_DIR (default
#   /tmp/target-bench), BENCH_PEERS (default ../shared/bench-peers beside the repository),
#   NEXMARK_BIDS, NEXMARK_QUERIES (default "q5 q7 q11"), SARDONYX_MODES, PEERS, NEXMARK_BENCH
#   (a nexmark-bench binary to use instead of building one), SARDONYX_VERSION (its name in the
#   table).
# - stdout: the tables; stderr: progress. Exit status 1 if any answer was wrong or a run failed.
set -euo pipefail
N=${1:-1000000}; RUNS=${2:-1}
case "$N$RUNS" in ''|*[!0-9]*) echo "run-nexmark.sh: N and RUNS must be numbers" >&2; exit 2;; esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BP=${BENCH_PEERS:-$ROOT/../shared/bench-peers}
[ -f "$BP/harness.py" ] || { echo "run-nexmark.sh: the peers' harness is not at $BP (set BENCH_PEERS)" >&2; exit 2; }
B=$(cd "$BP" && pwd)
W=${W:-/tmp/bench-peers}; mkdir -p "$W"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/target-bench}
MODES=${SARDONYX_MODES:-memory embedded}
QUERIES=${NEXMARK_QUERIES:-q5 q7 q11}
PEERS=${PEERS:-pyflink}
PEERDIR=$ROOT/benches/peers
STAMP=$(date -u +%Y%m%d-%H%M%S)
RESULTS=$W/nexmark_results_${N}_$STAMP.jsonl   # the harness's records, this invocation only
CPULOG=$W/nexmark_cpu_${N}_$STAMP.jsonl        # cputime.py's records, this invocation only
: > "$RESULTS"; : > "$CPULOG"
log() { echo "[run-nexmark $(date -u +%T)] $*" >&2; }
for tool in python3 /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "run-nexmark.sh: $tool is missing" >&2; exit 2; }
done

# ---- nexmark-bench -------------------------------------------------------------------------------
if [ -n "${NEXMARK_BENCH:-}" ]; then
  NB=$NEXMARK_BENCH  # built by the caller (run-all.sh): one binary for every step
else
  log "building nexmark-bench (release) in $CARGO_TARGET_DIR"
  cargo build --release -q --manifest-path "$ROOT/Cargo.toml" -p sardonyx-benches --bin nexmark-bench
  NB=$CARGO_TARGET_DIR/release/nexmark-bench
fi

# ---- the bids file and the references ------------------------------------------------------------
DATA=${NEXMARK_BIDS:-$W/bids_$N.jsonl}
if [ ! -f "$DATA" ]; then
  [ -z "${NEXMARK_BIDS:-}" ] || { echo "run-nexmark.sh: NEXMARK_BIDS=$DATA does not exist" >&2; exit 2; }
  log "generating $DATA ($N bids)"
  "$NB" generate --events "$N" --out "$DATA.tmp" && mv "$DATA.tmp" "$DATA"
fi
lines=$(wc -l < "$DATA")
[ "$lines" -eq "$N" ] || { echo "run-nexmark.sh: $DATA has $lines bids, not $N" >&2; exit 2; }
REF=$W/nexmark-ref-$(basename "$DATA" .jsonl)
for q in $QUERIES; do
  [ -f "$REF/$q.csv" ] || { log "reference $q → $REF"; "$NB" reference --input "$DATA" --query "$q" --out "$REF" >&2; }
done

# ---- peers ---------------------------------------------------------------------------------------
why=""
if [[ " $PEERS " != *" pyflink "* ]]; then why="not in PEERS ($PEERS)"
elif [ ! -x "$W/venv-flink/bin/python" ]; then why="no venv at $W/venv-flink"
elif ! "$W/venv-flink/bin/python" -c "import pyflink" 2>/dev/null; then why="$W/venv-flink does not import pyflink (not installed, or still installing)"
elif ! command -v java >/dev/null; then why="no java on PATH (PyFlink needs Java 17)"
fi
FVER=$("$W/venv-flink/bin/pip" show apache-flink 2>/dev/null | awk '/^Version/{print $2}' || true)
[ -z "$why" ] && log "peer pyflink: apache-flink $FVER" || log "peer pyflink SKIPPED: $why"

# ---- the runs ------------------------------------------------------------------------------------
SVER=${SARDONYX_VERSION:-$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo export)}
# H ENGINE VERSION QUERY OUT NOTE -- CMD...: the harness, with the command under cputime.py.
H() {
  local engine=$1 version=$2 q=$3 out=$4 note=$5; shift 6
  python3 "$B/harness.py" --engine "$engine" --version "$version" --query "$q" --events "$N" \
    --runs "$RUNS" --ref "$REF" --out "$out" --results "$RESULTS" --note "$note" -- \
    python3 "$PEERDIR/cputime.py" --log "$CPULOG" --label "$engine $q" -- "$@" >&2
}
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
for q in $QUERIES; do
  for m in $MODES; do
    log "sardonyx $m $q"
    H "sardonyx-$m" "$SVER" "$q" "$W/nx_out_sx" "nexmark-bench once --no-check, 1 peer" -- \
      "$NB" once --input "$DATA" --query "$q" --mode "$m" --no-check --out "$W/nx_out_sx" --work "$W/nx-work"
  done
  if [ -z "$why" ]; then
    log "pyflink $q"
    H pyflink "$FVER" "$q" "$W/nx_out_fl" "parallelism 1" -- \
      "$W/venv-flink/bin/python" "$PEERDIR/flink_nexmark.py" "$q" "$DATA" "$W/nx_out_fl"
  fi
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
rm -rf "$W/nx-work" "$W/nx_out_sx" "$W/nx_out_fl"

# ---- the tables ----------------------------------------------------------------------------------
status=0
SKIPPED="$why" QUERIES="$QUERIES" python3 - "$RESULTS" "$CPULOG" "$N" "$DATA" "$LOAD_START" "$LOAD_END" <<'EOF' || status=$?
import json, os, statistics, sys
results, cpulog, n, data, load0, load1 = sys.argv[1:]
recs = {}
for l in open(results):
    r = json.loads(l); recs[(r["engine"], r["query"])] = r
cpu = {}  # "engine query" -> CPU seconds of each successful run
for l in open(cpulog):
    c = json.loads(l)
    if c["rc"] == 0:
        cpu.setdefault(c["label"], []).append(c["cpu_s"])
def fmt(x): return f"{x:,.0f}".replace(",", " ")
titles = {"q5": "Q5 window stage: bids per auction, HOP 10 s / 2 s",
          "q7": "Q7 window stage: max price per TUMBLE 10 s",
          "q11": "Q11: bids per bidder per SESSION (10 s gap)"}
print(f"Bids file `{data}` ({n} bids; events = bids only, 46 of every 50 Nexmark events). "
      f"Load average {load0} at the start, {load1} at the end.")
wrong = []
for q in os.environ["QUERIES"].split():
    print(f"\n#### {titles.get(q, q)}\n")
    print("| engine | mode | wall s | events/s | CPU s | events/s per core | peak RSS MiB (largest process / tree) | correct | × PyFlink (events/s) | × PyFlink (per core) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for (e, qq), r in recs.items():
        if qq != q: continue
        c = cpu.get(f"{e} {q}")
        cs = statistics.median(c) if c and r["correct"] else None
        per_core = r["events"] / cs if cs else None
        rows.append((e, r, cs, per_core))
    fl = next(((r, pc) for e, r, cs, pc in rows if e == "pyflink" and r["correct"]), None)
    for e, r, cs, pc in rows:
        engine, mode = ("pyflink", "streaming SQL, parallelism 1") if e == "pyflink" else ("sardonyx", e.split("-", 1)[1])
        if not r["correct"]:
            wrong.append(f"{e} {q}: {r['detail']}")
            print(f"| {engine} {r['version']} | {mode} | – | – | – | – | – | **WRONG**: {r['detail']} | – | – |")
            continue
        ratio = f"{r['eps'] / fl[0]['eps']:.2f}×" if fl and e != "pyflink" else "–"
        pratio = f"{pc / fl[1]:.2f}×" if fl and fl[1] and pc and e != "pyflink" else "–"
        print(f"| {engine} {r['version']} | {mode} | {r['wall_s']:.2f} | {fmt(r['eps'])} | {cs:.2f} | {fmt(pc)} | "
              f"{r['peak_rss_mib']} / {r['peak_tree_rss_mib']} | yes ({r['detail']}) | {ratio} | {pratio} |")
print("\nwall = the whole process (PyFlink: JVM and MiniCluster start-up included), median of the runs;"
      " CPU s = user+system of the whole process tree (benches/peers/cputime.py); per core = events / CPU s."
      " Q12 is not compared: it fires on processing time, so there is no exact answer.")
skipped = os.environ.get("SKIPPED", "")
if skipped:
    print(f"\nPyFlink skipped (not measured in this run): {skipped}")
if wrong:
    print("\nWrong answers or failed runs (no figure for them):\n")
    for w in wrong: print(f"- {w}")
    sys.exit(1)
EOF
echo
echo "(results: $RESULTS, $CPULOG)"
exit $status
