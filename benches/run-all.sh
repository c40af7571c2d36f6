#!/usr/bin/env bash
# The whole benchmark in one command: the vote workload (issue 5: the peers side by side, the
# full Sardonyx table, the recovery time after a kill -9) and Nexmark beside PyFlink (issue 21),
# printed as one markdown document on stdout (progress on stderr).
#
# Usage (from the repository root):
#   benches/run-all.sh [N_EVENTS=1000000] [RUNS=3] > /tmp/bench-N.md
#
# What it does, in order:
#  1. Installs the peers' venvs under $W (default /tmp/bench-peers) if they are missing, per
#     ../shared/bench-peers/README.md: bytewax==0.21.1, pathway==0.33.0, apache-flink==2.3.0
#     (pathway is 1.6 GB, apache-flink 844 MB and needs Java 17). A venv that already imports
#     its package is left alone; if a pip install into it is running, it waits for that one.
#     INSTALL_PEERS=0 never installs (missing peers are then reported as skipped).
#  2. Generates the vote files (gen_votes.py, seed 42, --vote-id): N events, and N + N/5 (at
#     least N + 200000) for the recovery run: it is killed once N are committed, so the file must
#     go on long enough past N that the run is still going when the kill lands.
#  3. benches/run-peers.sh N RUNS: the Rust baseline, every installed peer and Sardonyx
#     (memory, embedded) through the peers' harness; the ratio to the best peer of this run.
#  4. vote-bench run: Q1-Q3 in every state mode (memory, embedded, cluster) from both sources
#     (file, segments), RUNS runs each; Q4 from the file in every mode, Q4_RUNS runs (default 1:
#     Q4 takes ~100 s per run at 1M events).
#  5. vote-bench recovery: kill -9 after N events and restart, with and without compaction.
#  6. benches/run-nexmark.sh N RUNS: Nexmark Q5, Q7 (window stages) and Q11 over N bids, PyFlink
#     (the standard Nexmark SQL) beside Sardonyx (memory, embedded), through the peers' harness,
#     every answer checked; events/s and events/s per core. The bids file is $NEXMARK_BIDS if
#     set (e.g. /work/nexmark/bids_10m.jsonl for N=10000000), else $W/bids_N.jsonl, generated
#     once (~260 bytes a bid: 2.6 GB at 10M).
#  SKIP_VOTES=1 skips steps 2-5 (the vote part), SKIP_NEXMARK=1 step 6.
#
# Environment: W, CARGO_TARGET_DIR (default /tmp/target-bench), BENCH_PEERS (the peers'
# scripts, default ../shared/bench-peers beside the repository), INSTALL_PEERS (1), PEER_WAIT
# (seconds to wait for a running pip install, 3600), PEERS (which peers to install and run,
# default all three: "bytewax pathway pyflink"),
# MODES (memory,embedded,cluster), SOURCES (file,segments), Q4_RUNS (1), SKIP_Q4 (0),
# RECOVERY_QUERIES (q2), RECOVERY_COMPACT_BYTES (16777216, the sardonyx run default),
# FROM_HEAD (0; 1 builds a clean export of the committed HEAD instead of the working tree),
# SKIP_VOTES (0), SKIP_NEXMARK (0), NEXMARK_BIDS, NEXMARK_QUERIES ("q5 q7 q11").
# Exit status: 0 if every step ran and every answer was right, 1 otherwise (the document still
# prints, with the failures listed at its end).
set -euo pipefail
N=${1:-1000000}; RUNS=${2:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BP=${BENCH_PEERS:-$ROOT/../shared/bench-peers}
[ -d "$BP" ] || { echo "run-all.sh: the peers' scripts are not at $BP (set BENCH_PEERS)" >&2; exit 2; }
B=$(cd "$BP" && pwd); export BENCH_PEERS=$B
export W=${W:-/tmp/bench-peers}; mkdir -p "$W"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/target-bench}
MODES=${MODES:-memory,embedded,cluster}
SOURCES=${SOURCES:-file,segments}
Q4_RUNS=${Q4_RUNS:-1}
RECOVERY_QUERIES=${RECOVERY_QUERIES:-q2}
RECOVERY_COMPACT_BYTES=${RECOVERY_COMPACT_BYTES:-16777216}
STAMP=$(date -u +%Y%m%d-%H%M%S)
OUT=$W/run-all-$N-$STAMP; mkdir -p "$OUT"
log() { echo "[run-all $(date -u +%T)] $*" >&2; }
failed=()

for tool in python3 cargo rustc git /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "run-all.sh: $tool is missing" >&2; exit 2; }
done
case "$N" in ''|*[!0-9]*) echo "run-all.sh: N must be a number, got $N" >&2; exit 2;; esac

# ---- 1. the peers' venvs ------------------------------------------------------------------------
install_peer() { # venv-name pip-spec module
  local name=$1 spec=$2 mod=$3 dir=$W/venv-$1 waited=0
  if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c "import $mod" 2>/dev/null; then
    log "peer $name: installed ($spec)"; return 0
  fi
  # Someone (another run, another session) is installing it right now: wait for that.
  while pgrep -f "venv-$name/bin/pip" >/dev/null; do
    [ "$waited" -eq 0 ] && log "peer $name: a pip install into $dir is running; waiting (up to ${PEER_WAIT:-3600}s)"
    [ "$waited" -ge "${PEER_WAIT:-3600}" ] && { log "peer $name: still installing after ${waited}s; going on without it"; return 0; }
    sleep 10; waited=$((waited + 10))
  done
  if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c "import $mod" 2>/dev/null; then
    log "peer $name: installed ($spec)"; return 0
  fi
  if [ "${INSTALL_PEERS:-1}" != 1 ]; then
    log "peer $name: not installed and INSTALL_PEERS=0: it will be reported as skipped"; return 0
  fi
  log "peer $name: installing $spec into $dir"
  if { [ -x "$dir/bin/pip" ] || python3 -m venv "$dir"; } && "$dir/bin/pip" install -q "$spec" >&2; then
    log "peer $name: installed"
  else
    log "peer $name: installing $spec FAILED; it will be reported as skipped"
    failed+=("installing $spec")
  fi
}
SKIP_VOTES=${SKIP_VOTES:-0}; SKIP_NEXMARK=${SKIP_NEXMARK:-0}
# Only the peers in PEERS (default all three); bytewax and pathway run only in the vote part.
wants() { [[ " ${PEERS:-bytewax pathway pyflink} " == *" $1 "* ]]; }
if [ "$SKIP_VOTES" != 1 ]; then
  wants bytewax && install_peer bytewax bytewax==0.21.1 bytewax
  wants pathway && install_peer pathway pathway==0.33.0 pathway
fi
wants pyflink && install_peer flink apache-flink==2.3.0 pyflink
command -v java >/dev/null || log "no java on PATH: PyFlink will be skipped (it needs Java 17)"

# ---- 2. data and build --------------------------------------------------------------------------
NR=$((N + (N / 5 > 200000 ? N / 5 : 200000)))
DATA=$W/votes_${N}_id.jsonl; RDATA=$W/votes_${NR}_id.jsonl
for f in "$DATA:$N" "$RDATA:$NR"; do
  [ "$SKIP_VOTES" = 1 ] && break
  [ -f "${f%%:*}" ] || { log "generating ${f%%:*}"; python3 "$B/gen_votes.py" "${f%%:*}" -n "${f##*:}" --seed 42 --vote-id >&2; }
done
SRC=$ROOT
# Refresh the index first: files only touched since (e.g. by `cargo fmt`) would read as dirty.
git -C "$ROOT" update-index -q --refresh >/dev/null 2>&1 || true
COMMIT=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo "(not a git checkout)")
if [ "${FROM_HEAD:-0}" = 1 ]; then
  # Build the committed HEAD, not the working tree (which others may be editing).
  COMMIT=$(git -C "$ROOT" rev-parse --short HEAD)
  SRC=$W/src-$COMMIT
  [ -d "$SRC" ] || { mkdir -p "$SRC.tmp" && git -C "$ROOT" archive HEAD | tar -x -C "$SRC.tmp" && mv "$SRC.tmp" "$SRC"; }
  log "building the clean export of HEAD $COMMIT in $SRC"
fi
log "building vote-bench and nexmark-bench (release) in $CARGO_TARGET_DIR"
cargo build --release -q --manifest-path "$SRC/Cargo.toml" -p sardonyx-benches --bin vote-bench --bin nexmark-bench
# One copy of each binary for every step: a later build into the target directory cannot
# change what the rest of this run measures.
cp "$CARGO_TARGET_DIR/release/vote-bench" "$OUT/vote-bench"
cp "$CARGO_TARGET_DIR/release/nexmark-bench" "$OUT/nexmark-bench"
VB=$OUT/vote-bench
export VOTE_BENCH=$VB NEXMARK_BENCH=$OUT/nexmark-bench SARDONYX_VERSION=$COMMIT
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
if [ "$SKIP_VOTES" != 1 ]; then

# ---- 3. side by side ----------------------------------------------------------------------------
log "side by side: benches/run-peers.sh $N $RUNS"
"$ROOT/benches/run-peers.sh" "$N" "$RUNS" > "$OUT/peers.md" || failed+=("benches/run-peers.sh (see its table)")

# ---- 4. the Sardonyx table ----------------------------------------------------------------------
: > "$OUT/sardonyx.md"
log "vote-bench run: q1,q2,q3 x $MODES x $SOURCES, $RUNS runs"
"$VB" run --input "$DATA" --queries q1,q2,q3 --modes "$MODES" --sources "$SOURCES" --runs "$RUNS" \
  --work "$W/vb-work" --results "$OUT/sardonyx.jsonl" > "$OUT/sardonyx-q1-q3.md" \
  || failed+=("vote-bench run q1-q3")
if [ "${SKIP_Q4:-0}" != 1 ]; then
  log "vote-bench run: q4 x $MODES x file, $Q4_RUNS run(s)"
  "$VB" run --input "$DATA" --queries q4 --modes "$MODES" --sources file --runs "$Q4_RUNS" \
    --work "$W/vb-work" --results "$OUT/sardonyx.jsonl" > "$OUT/sardonyx-q4.md" \
    || failed+=("vote-bench run q4")
fi

# ---- 5. recovery --------------------------------------------------------------------------------
log "vote-bench recovery: $RECOVERY_QUERIES, kill -9 after $N of $NR events, compaction on/off"
"$VB" recovery --input "$RDATA" --events "$N" --queries "$RECOVERY_QUERIES" --compaction on,off \
  --compact-bytes "$RECOVERY_COMPACT_BYTES" --work "$W/vb-recovery" --results "$OUT/recovery.jsonl" \
  > "$OUT/recovery.md" || failed+=("vote-bench recovery")
fi  # SKIP_VOTES

# ---- 6. Nexmark beside PyFlink ------------------------------------------------------------------
if [ "$SKIP_NEXMARK" != 1 ]; then
  log "Nexmark side by side: benches/run-nexmark.sh $N $RUNS"
  "$ROOT/benches/run-nexmark.sh" "$N" "$RUNS" > "$OUT/nexmark.md" \
    || failed+=("benches/run-nexmark.sh (see its tables)")
fi
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- the document -------------------------------------------------------------------------------
body() { grep '^|' "$1" 2>/dev/null || echo "(no table: the step failed, see stderr)"; }
{
  echo "# Sardonyx benchmarks: $N events, $RUNS run(s)"
  echo
  echo "Produced by \`benches/run-all.sh $N $RUNS\` at $(date -u '+%Y-%m-%d %H:%M UTC'), Sardonyx \`$COMMIT\`"
  case $COMMIT in
    *-dirty) echo "(\`-dirty\`: built from a working tree with uncommitted changes.) One binary, \`$VB\`, for" ;;
    *) echo "One binary, \`$VB\`, for" ;;
  esac
  echo "every step. Raw results: \`$OUT\`."
  echo
  echo "## Machine"
  echo
  echo "| | |"
  echo "|---|---|"
  echo "| CPU | $(nproc) vCPU, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') |"
  echo "| RAM | $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo), swap $(awk '/SwapTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo) |"
  echo "| Disk ($W) | $(df -T "$W" | awk 'NR==2{print $2" on "$1}') |"
  echo "| OS | $( (. /etc/os-release && echo "$PRETTY_NAME") 2>/dev/null || uname -s), kernel $(uname -r) |"
  echo "| Tools | $(rustc -V), $(python3 -V 2>&1), $(command -v java >/dev/null && java -version 2>&1 | head -1 || echo 'no java') |"
  echo "| Load average | $LOAD_START at the start, $LOAD_END at the end |"
  echo
  if [ "$SKIP_VOTES" = 1 ]; then
  echo "(The vote part was skipped: SKIP_VOTES=1.)"
  else
  echo "## Side by side (the peers' harness: whole-process wall, answers checked)"
  echo
  grep -v '^(results:' "$OUT/peers.md" 2>/dev/null || echo "(run-peers.sh printed nothing, see stderr)"
  echo
  echo "## Sardonyx: every query, state mode and source (\`vote-bench run\`)"
  echo
  echo "Q1-Q3: $RUNS run(s) each, modes $MODES, sources $SOURCES. Q4: file source, $Q4_RUNS run(s)."
  echo "events/s = events / wall of run_job (process start-up excluded); × best peer uses the peers'"
  echo "published figures (../shared/bench-peers/README.md); the side-by-side table above uses this run's."
  echo
  body "$OUT/sardonyx-q1-q3.md"
  [ "${SKIP_Q4:-0}" = 1 ] || body "$OUT/sardonyx-q4.md" | grep -v '^| query\|^|---' || true
  echo
  echo "## Recovery after kill -9 (\`vote-bench recovery\`, exactly-once on the embedded log)"
  echo
  echo "The job runs as a real \`sardonyx run\` process, is killed with SIGKILL once its progress line"
  echo "says it has committed N events, and is started again on the same data directory; it then reads the"
  echo "rest of a $NR-event file. Compaction on = \`--compact-bytes $RECOVERY_COMPACT_BYTES\`; off = never."
  echo "*start → slot recovered*: spawn to the engine's \`windowed slot recovered\` log line; *start →"
  echo "processing again*: spawn to the first progress line (every 10 ms) showing a new batch committed to"
  echo "the log, an upper bound by ≤ 10 ms; *fresh start → first batch*: the same for the first run,"
  echo "which had no state (start-up cost for comparison); *slot recovery ms*: the engine's own report of"
  echo "the slot's recovery (ledger read, replay, dedup filter rebuilt)."
  echo
  body "$OUT/recovery.md"
  fi  # SKIP_VOTES
  echo
  if [ "$SKIP_NEXMARK" != 1 ]; then
    echo "## Nexmark beside PyFlink (\`benches/run-nexmark.sh $N $RUNS\`: the peers' harness, answers checked)"
    echo
    grep -v '^(results:' "$OUT/nexmark.md" 2>/dev/null || echo "(run-nexmark.sh printed nothing, see stderr)"
    echo
  fi
  if [ ${#failed[@]} -gt 0 ]; then
    echo "## Failures"
    echo
    for f in "${failed[@]}"; do echo "- $f"; done
  else
    echo "Every step ran; every answer matched the reference."
  fi
}
log "done: $OUT"
[ ${#failed[@]} -eq 0 ]
