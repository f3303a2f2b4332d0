#!/usr/bin/env bash
# Old against new: the serving path of a git ref against this working tree, both built
# side by side (release) and run interleaved in one go, so that the machine's noise falls
# on both alike.
#
#   benches/ab.sh OLD_REF [DURATION] [ROUNDS]      (defaults: 6s windows, 3 rounds)
#
# Each round, in alternating order (old first in odd rounds, new first in even ones):
#   * `prism bench` on the default `mlp`, JSON and binary, concurrency 1 and 32, against
#     the old and the new `prism-server` (the load generator is this tree's, for both);
#   * the criterion benches `router` and `batcher` (benches/benches/serving.rs) of each.
# Prints, per cell, the median and the range over the rounds for old and new, and the
# ratio of the medians (new / old: above 1 is faster for throughput, slower for times).
# Everything it measured is under target/ab/.
set -euo pipefail
cd "$(dirname "$0")/.."
old_ref=${1:?usage: benches/ab.sh OLD_REF [DURATION] [ROUNDS]}
duration=${2:-6s}
rounds=${3:-3}
out=target/ab
old_src=$out/old-src
mkdir -p "$out"

# The old tree: the ref's files, with a target folder of its own (kept between runs).
mkdir -p "$old_src"
find "$old_src" -mindepth 1 -maxdepth 1 ! -name target -exec rm -rf {} +
git archive "$old_ref" | tar -x -C "$old_src"
echo "building $old_ref and the working tree (release)..." >&2
log=$PWD/$out
(cd "$old_src" && cargo build --release --quiet -p prism-server && cargo bench --no-run -p prism-benches --bench serving 2> "$log/old-bench-build.log")
cargo build --release --quiet -p prism-server -p prism-client
cargo bench --no-run -p prism-benches --bench serving 2> "$log/new-bench-build.log"
bench_bin() { # the newest criterion `serving` executable under $1
  ls -t "$1"/target/release/deps/serving-* 2>/dev/null | grep -v '\.d$' | head -n 1
}
old_bench=$(bench_bin "$old_src")
new_bench=$(bench_bin .)
prism=target/release/prism

"$old_src/target/release/prism-server" --http-addr 127.0.0.1:18100 > "$out/old-server.log" 2>&1 &
old_pid=$!
target/release/prism-server --http-addr 127.0.0.1:18200 > "$out/new-server.log" 2>&1 &
new_pid=$!
trap 'kill $old_pid $new_pid 2>/dev/null || true' EXIT
for port in 18100 18200; do
  for _ in $(seq 100); do
    curl -sf "localhost:$port/v2/health/ready" > /dev/null && break
    sleep 0.2
  done
  curl -sf "localhost:$port/v2/health/ready" > /dev/null || { echo "the server on $port did not become ready (see $out/*-server.log)" >&2; exit 1; }
done

run_side() { # side round
  local side=$1 round=$2 port bench home
  port=$([ "$side" = old ] && echo 18100 || echo 18200)
  bench=$([ "$side" = old ] && echo "$old_bench" || echo "$new_bench")
  for format in json binary; do
    $prism --url "http://127.0.0.1:$port" bench -m mlp --format $format -c 1,32 --duration "$duration" --warmup 2s \
      --quiet --out "$out/${side}_${format}_r${round}.json" > /dev/null 2> "$out/${side}_${format}_r${round}.err" \
      || { echo "prism bench failed against $side ($format): see $out/${side}_${format}_r${round}.err" >&2; exit 1; }
  done
  home="$out/criterion-$side"
  CRITERION_HOME="$home" "$bench" --bench --noplot --warm-up-time 1 --measurement-time 4 'router|batcher' \
    > "$out/${side}_criterion_r${round}.txt" 2>&1
  echo "round $round: $side done" >&2
}

for round in $(seq "$rounds"); do
  if [ $((round % 2)) = 1 ]; then run_side old "$round"; run_side new "$round"; else run_side new "$round"; run_side old "$round"; fi
done

python3 - "$out" "$rounds" <<'PY'
import json, os, re, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
units = {"ns": 1e-3, "µs": 1.0, "us": 1.0, "ms": 1e3, "s": 1e6}
def criterion(side, r):
    times, name = {}, None
    for line in open(os.path.join(out, f"{side}_criterion_r{r}.txt")):
        m = re.match(r"^(\S+)\s*(time:.*)?$", line.rstrip())
        if m and not line.startswith(" "):
            name = m.group(1)
        t = re.search(r"time:\s+\[(\S+) (\S+) (\S+) (\S+) (\S+) (\S+)\]", line)
        if t and name:
            times[name] = float(t.group(3)) * units[t.group(4)]
    return times
def cell(values, fmt):
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"
print(f"{'what':<34}{'old: median (range)':>28}{'new: median (range)':>28}{'new/old':>9}")
for fmt in ("json", "binary"):
    pts = {s: [json.load(open(os.path.join(out, f"{s}_{fmt}_r{r}.json")))["points"] for r in range(1, rounds + 1)] for s in ("old", "new")}
    for i, p in enumerate(pts["old"][0]):
        c = p["concurrency"]
        for key, label, f in (("throughput", "req/s", ".0f"), ("latency_ms_p50", "p50 ms", ".3f"), ("latency_ms_p99", "p99 ms", ".3f")):
            o = [run[i][key] for run in pts["old"]]
            n = [run[i][key] for run in pts["new"]]
            print(f"{f'prism bench {fmt} c={c} {label}':<34}{cell(o, f):>28}{cell(n, f):>28}{statistics.median(n) / statistics.median(o):>9.3f}")
crit = {s: [criterion(s, r) for r in range(1, rounds + 1)] for s in ("old", "new")}
for name in sorted(crit["old"][0]):
    o = [c[name] for c in crit["old"] if name in c]
    n = [c[name] for c in crit["new"] if name in c]
    if o and n:
        print(f"{f'criterion {name} µs':<34}{cell(o, '.2f'):>28}{cell(n, '.2f'):>28}{statistics.median(n) / statistics.median(o):>9.3f}")
PY
