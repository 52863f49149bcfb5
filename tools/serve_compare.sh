#!/bin/bash
# Throughput of serve at several git revisions, alternated on one warm machine.
#
#   tools/serve_compare.sh ROUNDS SECONDS TASK REV[:FLAGS] ...
#   tools/serve_compare.sh 8 8 fashion_mnist 9f644bd HEAD "HEAD:--grpc-port 8001"
#
# Each revision is checked out once (git worktree, under ${TMPDIR:-/tmp}); every round starts
# each revision's server on core 1 (`python -m serve` from that checkout, artifacts of this
# one) and drives it from core 0 with `python -m benchmarks load` at concurrency 32, then
# prints one line per run; the summary gives each revision's median and mean req/s.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=$1; SECONDS_PER_RUN=$2; TASK=$3; shift 3
ROOT=$(pwd); PY=$ROOT/.venv/bin/python; PORT=8897
declare -A DIRS
for spec in "$@"; do
  rev=${spec%%:*}
  [ -n "${DIRS[$rev]:-}" ] && continue
  dir=${TMPDIR:-/tmp}/serve-compare-$(git rev-parse --short "$rev")
  [ -d "$dir" ] || git worktree add -f "$dir" "$rev" -q
  DIRS[$rev]=$dir
done
results=$(mktemp)
for r in $(seq 1 "$ROUNDS"); do
  for spec in "$@"; do
    rev=${spec%%:*}; flags=""; [ "$spec" != "$rev" ] && flags=${spec#*:}
    (cd "${DIRS[$rev]}" && ARTIFACTS_DIR=$ROOT/artifacts taskset -c 1 "$PY" -m serve \
        --port $PORT --log-level warning $flags > /dev/null 2>&1 &)
    for _ in $(seq 1 150); do
      curl -s "localhost:$PORT/v2/health/ready" | grep -q true && break; sleep 0.2
    done
    line=$(taskset -c 0 "$PY" -m benchmarks load --url "http://127.0.0.1:$PORT" --task "$TASK" \
        --concurrency 32 --duration "$SECONDS_PER_RUN" --artifacts artifacts \
        --reports "${TMPDIR:-/tmp}/serve-compare-reports" 2>&1 | grep '^concurrency' || true)
    pkill -f "serve --port $PORT" || true; sleep 1
    echo "round $r [$spec] $line"
    echo "$spec $(echo "$line" | awk '{print $3}' | tr -d ,)" >> "$results"
  done
done
echo "summary (req/s):"
"$PY" - "$results" <<'PY'
import statistics, sys, collections
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    spec, _, value = line.rstrip("\n").rpartition(" ")
    if value:
        runs[spec].append(float(value))
for spec, values in runs.items():
    print(f"  {spec}: median {statistics.median(values):,.0f}, mean {statistics.mean(values):,.0f},"
          f" {min(values):,.0f}-{max(values):,.0f} over {len(values)} runs")
PY
rm -f "$results"
