#!/usr/bin/env bash
# Prism's CPU `linear` against numpy's float32 matmul (OpenBLAS) on the same shapes, in one
# go, interleaved twice so drift shows up in the spread. Prints a table of GFLOP/s medians
# and Prism's ratio to numpy.
#
#   benches/gemm_vs_numpy.sh [SECONDS_PER_SHAPE]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-1}
venv=target/bench-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet numpy threadpoolctl
fi
cargo build --release --quiet -p prism-benches --bin gemm
out=target/gemm-vs-numpy.jsonl
: > "$out"
# numpy at its best here: unset the OpenBLAS core override that slows a current numpy.
numpy() { env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$venv/bin/python" benches/gemm_vs_numpy.py "$secs" >> "$out"; }
for round in 1 2; do
  target/release/gemm 2 "$secs" | sed "s/^{/{\"round\":$round,/" >> "$out"
  numpy
done
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$venv/bin/python" - "$out" <<'PY'
import json, sys
from collections import defaultdict
from threadpoolctl import threadpool_info
import numpy  # noqa: F401  (loads OpenBLAS so threadpoolctl can see it)
rows = [json.loads(l) for l in open(sys.argv[1])]
by = defaultdict(lambda: defaultdict(list))
for r in rows:
    by[(r["m"], r["k"], r["n"])][r["impl"]].append(r["gflops_median"])
blas = [i for i in threadpool_info() if i.get("internal_api") == "openblas"]
if blas:
    print(f"numpy: OpenBLAS {blas[0].get('version')} ({blas[0].get('architecture')}, {blas[0].get('num_threads')} threads)")
print(f"{'shape (m x k x n)':<22}{'prism GFLOP/s':>16}{'numpy GFLOP/s':>16}{'ratio':>8}")
for shape, d in by.items():
    p, n = d["prism"], d["numpy"]
    pm, nm = sorted(p)[len(p) // 2], sorted(n)[len(n) // 2]
    span = lambda v: f"{min(v):.0f}-{max(v):.0f}"
    print(f"{'x'.join(map(str, shape)):<22}{span(p):>16}{span(n):>16}{(sum(p)/len(p))/(sum(n)/len(n)):>8.2f}")
PY
