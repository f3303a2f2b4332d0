#!/usr/bin/env bash
# Triton's own load generator against Prism: perf_analyzer 2.60.0 over gRPC, with the
# tensors sent and with them in system shared memory, and over REST for reference, on the
# peers' MLP (benches/grpc/prism.toml), at concurrency 1, 8, 32, 64.
#
# perf_analyzer 2.60.0 ships only as a manylinux_2_38 wheel (glibc 2.38); on Debian 12 it
# runs with Debian 13's libc6, libstdc++6 and libgcc-s1 through their loader. Both are
# fetched into target/peers/pa on the first run (the wheel from PyPI, the libraries with
# apt-get download from the machine's Debian mirror; needs root for apt's lists).
#
#   benches/peers/perf_analyzer.sh [MEASUREMENT_MS] [STABILITY_PERCENT]   (defaults 5000, 10)
#
# STABILITY_PERCENT is perf_analyzer's -s: how far apart its last three windows may be
# before it takes a measurement (10 is its default; on a shared VM whose steal time
# comes and goes, some points never settle within 10%, and fail).
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$PWD/target/peers/pa
interval=${1:-5000}
stability=${2:-10}
mkdir -p "$work/results"

if [ ! -x "$work/perf_analyzer/bin/perf_analyzer" ]; then
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" download --quiet --no-deps "perf-analyzer==2.60.0" --platform manylinux_2_38_x86_64 \
    --only-binary=:all: -d "$work/dl"
  (cd "$work" && python3 -m zipfile -e dl/perf_analyzer-2.60.0-py3-none-manylinux_2_38_x86_64.whl . \
    && chmod +x perf_analyzer/bin/perf_analyzer)
fi
T=$work/trixie
if [ ! -x "$T/root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" ]; then
  mkdir -p "$T/lists/partial" "$T/cache/archives/partial" "$T/debs" "$T/root"
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" > "$T/sources.list"
  O=(-o "Dir::Etc::SourceList=$T/sources.list" -o Dir::Etc::SourceParts=/dev/null -o "Dir::State::Lists=$T/lists"
     -o "Dir::Cache=$T/cache" -o Dir::State::status=/dev/null -o APT::Architecture=amd64)
  apt-get "${O[@]}" update -qq && (cd "$T/debs" && apt-get "${O[@]}" download -qq libc6 libstdc++6 libgcc-s1)
  for d in "$T"/debs/*.deb; do dpkg-deb -x "$d" "$T/root"; done
fi
# Its shared-memory code loads the CUDA runtime (unversioned libcudart.so) even for
# system shared memory: the one of NVIDIA's wheel in target/cuda-venv (scripts/test
# installs it), under that name.
mkdir -p "$work/cudart"
cudart=$(echo "$PWD"/target/cuda-venv/lib/python3*/site-packages/nvidia/cu13/lib/libcudart.so.13)
[ -f "$cudart" ] && ln -sf "$cudart" "$work/cudart/libcudart.so"
pa() {
  "$T/root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" \
    --library-path "$T/root/usr/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu:$work/cudart" \
    "$work/perf_analyzer/bin/perf_analyzer" "$@"
}

models=$PWD/target/grpc-bench
mkdir -p "$models"
target/py-venv/bin/python benches/peers/make_model.py "$models"
target/py-venv/bin/python benches/grpc/big_model.py "$models"
cp benches/grpc/prism.toml "$models/prism.toml"
cargo build --release --quiet -p prism-server -p prism-client
target/release/prism-server --config "$models/prism.toml" > "$work/results/prism.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 60); do curl -sf -o /dev/null http://127.0.0.1:18100/v2/health/ready && break; sleep 1; done

run() { # name [perf_analyzer args...]
  local name=$1; shift
  pa -m mlp --measurement-interval "$interval" -s "$stability" -f "$work/results/$name.csv" "$@" \
    > "$work/results/$name.log" 2>&1 || { echo "$name failed: see $work/results/$name.log" >&2; return 0; }
  echo "$name done" >&2
}
# 1, 8, 32 and 64 in flight: one run per concurrency (perf_analyzer's range is arithmetic).
for c in 1 8 32 64; do
  run "grpc_c$c" -i grpc -u 127.0.0.1:18101 --concurrency-range "$c:$c"
  run "grpc_shm_c$c" -i grpc -u 127.0.0.1:18101 --concurrency-range "$c:$c" --shared-memory system --output-shared-memory-size 40
  run "rest_c$c" -i http -u 127.0.0.1:18100 --concurrency-range "$c:$c"
done
target/py-venv/bin/python - "$work/results" <<'PY'
import csv, os, sys
out = sys.argv[1]
print("| path | c | infer/s | p50 ms | p99 ms |")
print("|---|---|---|---|---|")
for path in ("grpc", "grpc_shm", "rest"):
    for c in (1, 8, 32, 64):
        f = os.path.join(out, f"{path}_c{c}.csv")
        if not os.path.exists(f):
            continue
        row = next(csv.DictReader(open(f)))
        print(f"| {path} | {c} | {float(row['Inferences/Second']):.0f} | {int(row['p50 latency']) / 1000:.2f} | {int(row['p99 latency']) / 1000:.2f} |")
PY
