#!/usr/bin/env bash
# The vote job (examples/votes.json) on a cluster of peer processes, beside `sardonyx run`, on one
# machine; and the failover time after `kill -9` of a peer process. Prints markdown tables on
# stdout (progress on stderr).
#
# Usage (from the repository root, after `cargo build --release -p sardonyx`):
#   benches/cluster.sh VOTES.jsonl [RUNS=1] > /tmp/cluster.md
#
# VOTES.jsonl: votes as the demo writes them (`sardonyx demo votes --events N --dir D` leaves
# D/votes.jsonl), or the peers' generator's (`gen_votes.py --vote-id`).
# What it does:
#  1. Starts 3 log servers (a fresh Raft log under $WORK, default /tmp/sardonyx-cluster-bench).
#  2. For 1, 2 and 3 peer processes (6, 3 and 2 slots each: the job has 6 slots), submits the job
#     RUNS times with `submit --wait` and times it from submission to completion; reads the bytes
#     the processes' messengers wrote (from their run-end log lines).
#  3. Times `sardonyx run` of the same job on the same log cluster (--log) and on the embedded log.
#  4. Failover: 3 peer processes; kills the one that reads the input with SIGKILL once half the
#     votes are in the output, and reads from the survivors' logs when the leave was appended,
#     when their new run started, and when its last moved slot had recovered from its ledger.
# Environment: SARDONYX (the binary, default target/release/sardonyx), WORK, COMPACT_BYTES (the
# peers' --compact-bytes; default theirs, 4 MiB).
set -euo pipefail
VOTES=$(realpath "$1"); RUNS=${2:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
S=${SARDONYX:-$ROOT/target/release/sardonyx}
WORK=${WORK:-/tmp/sardonyx-cluster-bench}
[ -x "$S" ] || { echo "cluster.sh: no binary at $S (cargo build --release -p sardonyx)" >&2; exit 2; }
rm -rf "$WORK"; mkdir -p "$WORK"; cd "$WORK"
log() { echo "[cluster.sh $(date -u +%T)] $*" >&2; }
EVENTS=$(wc -l < "$VOTES")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

P1=$((17000 + RANDOM % 2000)); P2=$((P1 + 1)); P3=$((P1 + 2))
L=127.0.0.1:$P1,127.0.0.1:$P2,127.0.0.1:$P3
for i in 1 2 3; do
  port=$((P1 + i - 1))
  "$S" log-server --id "$i" --listen "127.0.0.1:$port" --data "log$i" \
    --cluster "1=127.0.0.1:$P1,2=127.0.0.1:$P2,3=127.0.0.1:$P3" > "log$i.out" 2>&1 &
  PIDS+=($!)
done
until "$S" log-status --log "$L" 2>/dev/null | grep -q leader; do sleep 0.2; done

job() { # id → a job file reading $VOTES, writing under each process's own directory
  sed -e "s#examples/votes.jsonl#$VOTES#" -e "s#\"id\": \"vote-count\"#\"id\": \"$1\"#" \
    "$ROOT/examples/votes.json" > "$1.json"
  echo "$WORK/$1.json"
}
now() { date +%s.%N; }
peers=()
start_peers() { # count slots
  peers=()
  for k in $(seq 1 "$1"); do
    local d=$WORK/peer-$1-$k; mkdir -p "$d"
    (cd "$d" && SARDONYX_LOG=info exec "$S" peer --log "$L" --listen 127.0.0.1:0 --slots "$2" \
       --data data --progress-ms 100 ${COMPACT_BYTES:+--compact-bytes $COMPACT_BYTES} > "$d.log" 2>&1) &
    peers+=($!); PIDS+=($!)
    until grep -q "joined the cluster" "$d.log" 2>/dev/null; do sleep 0.05; done
  done
}
stop_peers() {
  for p in "${peers[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${peers[@]}"; do wait "$p" 2>/dev/null || true; done
}
bytes_written() { # the peers' last run-end lines: their messengers' bytes written, summed
  local sum=0
  for k in $(seq 1 "$1"); do
    local b
    b=$(grep "run ended" "$WORK/peer-$1-$k.log" | tail -1 | sed 's/\x1b\[[0-9;]*m//g' \
      | grep -o 'messaging_bytes_written=[0-9]*' | cut -d= -f2 || true)
    sum=$((sum + ${b:-0}))
  done
  echo "$sum"
}

echo "# The vote job on a cluster of peer processes ($EVENTS votes, $RUNS run(s))"
echo
echo "Machine: $(nproc) cores, $(free -g | awk '/Mem/{print $2}') GiB; binary $S; $(date -u +%F)."
echo
echo "| how | processes | wall s (median) | votes/s | bytes between processes per vote |"
echo "|---|---:|---:|---:|---:|"
for n in 1 2 3; do
  slots=$(( (6 + n - 1) / n ))
  log "$n peer process(es), $slots slots each"
  start_peers "$n" "$slots"
  times=()
  for r in $(seq 1 "$RUNS"); do
    f=$(job "votes-$n-$r")
    t0=$(now); "$S" submit "$f" --log "$L" --wait > "submit-$n-$r.out" 2>&1; t1=$(now)
    times+=("$(printf '%.2f' "$(echo "$t1 - $t0" | bc)")")
  done
  med=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
  b=$(bytes_written "$n")
  per=$(echo "scale=1; $b / ($EVENTS * $RUNS)" | bc)
  echo "| peer processes (\`submit --wait\`) | $n | $med | $(echo "$EVENTS / $med" | bc) | $per |"
  stop_peers
done
for how in log embedded; do
  times=()
  for r in $(seq 1 "$RUNS"); do
    f=$(job "run-$how-$r"); d=$WORK/run-$how-$r; mkdir -p "$d"
    args=(run "$f" --data data)
    [ "$how" = log ] && args+=(--log "$L")
    t0=$(now); (cd "$d" && "$S" "${args[@]}" > out 2>&1); t1=$(now)
    times+=("$(printf '%.2f' "$(echo "$t1 - $t0" | bc)")")
  done
  med=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
  echo "| \`sardonyx run\` ($how log) | 1 | $med | $(echo "$EVENTS / $med" | bc) | – |"
done

log "failover: 3 peer processes, kill -9 of the input's process half-way"
start_peers 3 4
f=$(job votes-failover)
"$S" submit "$f" --log "$L" --wait > submit-failover.out 2>&1 &
submit=$!
reader=""
until [ -n "$reader" ]; do
  reader=$("$S" cluster-status --log "$L" --json | python3 -c '
import json,sys
r=json.load(sys.stdin)
j=[j for j in r["jobs"] if j["spec"]["id"]=="votes-failover"]
print(j[0]["tasks"][0]["slots"][0].get("owner") or "" if j and j[0]["tasks"] else "")')
  sleep 0.1
done
max_read() { # the greatest `read` in the last progress line of each peer
  for l in "$WORK"/peer-3-*.log; do
    grep "^progress" "$l" | tail -1 | grep -o 'read [0-9]*' | cut -d' ' -f2
  done | sort -n | tail -1
}
until [ "$(max_read)" -gt $((EVENTS / 2)) ] 2>/dev/null; do sleep 0.05; done
victim=""
for k in 1 2 3; do
  grep -q "process=$reader" "$WORK/peer-3-$k.log" && victim=$k
done
kill -9 "${peers[$((victim - 1))]}"; tk=$(now)
wait "$submit"; tdone=$(now)
ts() { date -d "$1" +%s.%N; }
survivors=(); for k in 1 2 3; do [ "$k" != "$victim" ] && survivors+=("$WORK/peer-3-$k.log"); done
strip() { sed 's/\x1b\[[0-9;]*m//g' "$@"; }
leave=$(strip "${survivors[@]}" | grep "it leaves the cluster" | awk '{print $1}' | sort | head -1)
started=$(strip "${survivors[@]}" | grep "starting this process's run" | awk '{print $1}' | sort | tail -1)
recovered=$(strip "${survivors[@]}" | grep "windowed slot recovered" | awk '{print $1}' | sort | tail -1)
echo
echo "Failover (3 peer processes, 4 slots each; the input's process killed with SIGKILL after $((EVENTS / 2)) votes read; heartbeats 200 ms, failure timeout 2 s):"
echo
echo "| from the kill to | s |"
echo "|---|---:|"
secs() { printf '%.2f' "$(echo "$1 - $tk" | bc)"; }
echo "| the watcher appending \`leave_cluster\` | $(secs "$(ts "$leave")") |"
echo "| the survivors' new run started | $(secs "$(ts "$started")") |"
echo "| every slot of the new run recovered from its ledger (processing again) | $(secs "$(ts "$recovered")") |"
echo "| the job completed | $(secs "$tdone") |"
grep -q "completed" submit-failover.out || { echo "the failover job did not complete:" >&2; cat submit-failover.out >&2; exit 1; }
stop_peers
