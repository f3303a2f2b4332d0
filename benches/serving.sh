#!/usr/bin/env bash
# Prism against the no-op V2 baseline (the ceiling of the HTTP path on this machine), in
# one go, with the same load generator: JSON and binary, closed loop at concurrency 1, 8,
# 32, 64, two interleaved rounds. Prints Prism's throughput and latency and its ratio to
# the baseline; writes every result under target/bench-serving/.
#
#   benches/serving.sh [DURATION] [WARMUP]     (defaults 10s, 2s)
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10s}
warmup=${2:-2s}
out=target/bench-serving
mkdir -p "$out"
cargo build --release --quiet -p prism-server -p prism-client -p prism-benches
prism=target/release/prism

target/release/prism-server --http-addr 127.0.0.1:18000 > "$out/prism-server.log" 2>&1 &
server=$!
target/release/noop-v2 127.0.0.1:18010 > "$out/noop.log" 2>&1 &
noop=$!
trap 'kill $server $noop 2>/dev/null || true' EXIT
ready=0
for _ in $(seq 50); do
  curl -sf localhost:18000/v2/health/ready >/dev/null && curl -sf localhost:18010/v2/health/ready >/dev/null && ready=1 && break
  sleep 0.2
done
[ $ready = 1 ] || { echo "the servers did not become ready; see $out/prism-server.log and $out/noop.log" >&2; exit 1; }

for round in 1 2; do
  for format in json binary; do
    for target in prism noop; do
      port=$([ $target = prism ] && echo 18000 || echo 18010)
      $prism --url http://127.0.0.1:$port bench -m mlp --format $format -c 1,8,32,64 \
        --duration "$duration" --warmup "$warmup" --quiet --out "$out/${target}_${format}_r${round}.json" \
        > /dev/null 2> "$out/${target}_${format}_r${round}.err" \
        || { echo "prism bench failed against $target ($format): see $out/${target}_${format}_r${round}.err" >&2; exit 1; }
      echo "round $round: $target $format done" >&2
    done
  done
done

python3 - "$out" <<'PY'
import json, sys, os, statistics
out = sys.argv[1]
def load(target, fmt, rnd):
    return json.load(open(os.path.join(out, f"{target}_{fmt}_r{rnd}.json")))["points"]
print(f"{'format':<8}{'conc':>5}{'prism req/s':>16}{'noop req/s':>16}{'ratio':>12}{'prism p50 ms':>14}{'prism p99 ms':>14}")
for fmt in ("json", "binary"):
    rounds = [(load("prism", fmt, r), load("noop", fmt, r)) for r in (1, 2)]
    for i, point in enumerate(rounds[0][0]):
        p = [r[0][i]["throughput"] for r in rounds]
        n = [r[1][i]["throughput"] for r in rounds]
        ratios = [a / b for a, b in zip(p, n)]
        p50 = [r[0][i]["latency_ms_p50"] for r in rounds]
        p99 = [r[0][i]["latency_ms_p99"] for r in rounds]
        span = lambda v, f: f"{min(v):{f}}-{max(v):{f}}"
        print(f"{fmt:<8}{point['concurrency']:>5}{span(p, '.0f'):>16}{span(n, '.0f'):>16}{span(ratios, '.2f'):>12}"
              f"{span(p50, '.3f'):>14}{span(p99, '.3f'):>14}")
PY
