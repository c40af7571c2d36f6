#!/usr/bin/env bash
# Runs the peers' harness (../shared/bench-peers) and Sardonyx on one vote file and prints one
# table with the ratio of Sardonyx to the best peer per query.
#
# Usage (from the repository root): benches/run-peers.sh [N_EVENTS=1000000] [RUNS=3]
#
# - The data file is generated with --vote-id (Sardonyx deduplicates on it; the peers ignore
#   the extra field) into $W (default /tmp/bench-peers), never into the repository.
# - Peers run only if their venv exists under $W (see ../shared/bench-peers/README.md for the
#   set-up: venv-bytewax, venv-pathway, venv-flink); the one-pass Rust baseline always runs.
#   Peers that are not installed are reported as skipped, not silently left out.
# - Sardonyx runs through the same harness.py (whole-process wall time, /usr/bin/time RSS,
#   answer checked against the peers' reference) as `vote-bench once`, in the state modes of
#   $SARDONYX_MODES (default "memory embedded").
# - Environment: W (scratch, default /tmp/bench-peers), CARGO_TARGET_DIR (default
#   /tmp/target-bench), SARDONYX_MODES, BENCH_PEERS (default ../shared/bench-peers beside the
#   repository; set it when running from a clean export elsewhere).
set -euo pipefail
N=${1:-1000000}; RUNS=${2:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=$(cd "${BENCH_PEERS:-$ROOT/../shared/bench-peers}" && pwd)
W=${W:-/tmp/bench-peers}; mkdir -p "$W"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/target-bench}
MODES=${SARDONYX_MODES:-memory embedded}
DATA=$W/votes_${N}_id.jsonl; REF=$W/ref_${N}_id
RESULTS=$W/results_${N}.jsonl
[ -f "$DATA" ] || python3 "$B/gen_votes.py" "$DATA" -n "$N" --seed 42 --vote-id

echo "== building the reference/baseline and vote-bench (release)" >&2
CARGO_TARGET_DIR=$W/target cargo build --release -q --manifest-path "$B/rust/Cargo.toml"
cargo build --release -q --manifest-path "$ROOT/Cargo.toml" -p sardonyx-benches --bin vote-bench
VB=$CARGO_TARGET_DIR/release/vote-bench
[ -d "$REF" ] || "$W/target/release/reference" "$DATA" "$REF"

H() { python3 "$B/harness.py" --events "$N" --runs "$RUNS" --ref "$REF" --results "$RESULTS" "$@"; }
ver() { "$W/venv-$1/bin/pip" show "$2" 2>/dev/null | awk '/^Version/{print $2}'; }
skipped=()

echo "== rust-baseline-stream (one pass, Q1+Q2)" >&2
H --engine rust-baseline-stream --version "rustc $(rustc -V | cut -d' ' -f2)" --query q2 --out "$W/out_rs" \
  --note "one pass read+serde_json+Q1+Q2" -- "$W/target/release/baseline" stream "$DATA" "$W/out_rs"

SVER="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo export)"
for q in q1 q2 q3 q4; do
  for m in $MODES; do
    echo "== sardonyx $m $q" >&2
    H --engine "sardonyx-$m" --version "$SVER" --query $q --out "$W/out_sx" --note "vote-bench once, 1 peer" -- \
      "$VB" once --input "$DATA" --query $q --mode "$m" --out "$W/out_sx" --work "$W/sx-work"
  done
  if [ -x "$W/venv-bytewax/bin/python" ]; then
    if [ "$q" = q4 ] && [ "$N" -gt 100000 ]; then
      head -100000 "$DATA" > "$W/votes_100k_id.jsonl"
      "$W/target/release/reference" "$W/votes_100k_id.jsonl" "$W/ref_100k_id" 2>/dev/null
      python3 "$B/harness.py" --events 100000 --runs "$RUNS" --ref "$W/ref_100k_id" --results "$RESULTS" \
        --engine bytewax --version "$(ver bytewax bytewax)" --query q4 --out "$W/out_bw" -- \
        "$W/venv-bytewax/bin/python" "$B/engines/bytewax_votes.py" q4 "$W/votes_100k_id.jsonl" "$W/out_bw"
    else
      H --engine bytewax --version "$(ver bytewax bytewax)" --query $q --out "$W/out_bw" -- \
        "$W/venv-bytewax/bin/python" "$B/engines/bytewax_votes.py" $q "$DATA" "$W/out_bw"
    fi
  else skipped+=("bytewax $q"); fi
  if [ -x "$W/venv-pathway/bin/python" ]; then
    H --engine pathway --version "$(ver pathway pathway)" --query $q --out "$W/out_pw" -- \
      "$W/venv-pathway/bin/python" "$B/engines/pathway_votes.py" $q "$DATA" "$W/out_pw"
  else skipped+=("pathway $q"); fi
  if [ -x "$W/venv-flink/bin/python" ]; then
    H --engine pyflink --version "$(ver flink apache-flink)" --query $q --out "$W/out_fl" --note "parallelism 1" -- \
      "$W/venv-flink/bin/python" "$B/engines/flink_votes.py" $q "$DATA" "$W/out_fl"
  else skipped+=("pyflink $q"); fi
done

echo
python3 "$B/table.py" "$RESULTS"
echo
# Ratio of Sardonyx to the best peer measured in this run (the Rust baseline is not a peer).
python3 - "$RESULTS" <<'EOF'
import json, sys
recs = {}
for l in open(sys.argv[1]):
    r = json.loads(l); recs[(r["engine"], r["query"])] = r
peers = ("bytewax", "pathway", "pyflink")
print("| query | sardonyx mode | sardonyx ev/s | best peer (this run) | peer ev/s | ratio |")
print("|---|---|---|---|---|---|")
for q in ("q1", "q2", "q3", "q4"):
    best = max((r for (e, qq), r in recs.items() if qq == q and e in peers and r["correct"]),
               key=lambda r: r["eps"], default=None)
    for (e, qq), r in sorted(recs.items()):
        if qq != q or not e.startswith("sardonyx-"):
            continue
        if not r["correct"]:
            print(f"| {q} | {e[9:]} | wrong answer: no figure | | | |"); continue
        if best is None:
            print(f"| {q} | {e[9:]} | {r['eps']} | (no peer installed) | | |")
        else:
            print(f"| {q} | {e[9:]} | {r['eps']} | {best['engine']} | {best['eps']} | {r['eps'] / best['eps']:.2f} |")
EOF
if [ ${#skipped[@]} -gt 0 ]; then
  echo; echo "skipped (venv not under $W): ${skipped[*]}"
fi
