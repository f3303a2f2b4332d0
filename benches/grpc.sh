#!/usr/bin/env bash
# The three ways a V2 request reaches Prism, in one run, against Triton's gRPC:
#
#   * the peers' MLP (784 -> 256 -> 10, max_batch_size 32, 2 ms window) at concurrency
#     1, 8, 32, 64: Prism over REST with binary tensors, over gRPC, with the tensors in
#     system shared memory (over REST and over gRPC), and Triton's gRPC (the tritonserver
#     in nvidia-pytriton 0.7.0, gRPC on 18111) serving the same file;
#   * a model with a 4 MiB input (one row of 1,048,576 FP32) at concurrency 1 and 8: REST
#     binary, gRPC, and gRPC with the input in shared memory.
#
# Every point is driven by `prism bench`, rounds interleaved; the table (medians and
# ranges over the rounds) goes to target/grpc-bench/results/table.md.
#
#   benches/grpc.sh [DURATION] [WARMUP] [ROUNDS]      (defaults 8s, 2s, 2)
set -euo pipefail
cd "$(dirname "$0")/.."
here=$PWD/benches
work=$PWD/target/grpc-bench
duration=${1:-8s}
warmup=${2:-2s}
rounds=${3:-2}
mkdir -p "$work/results"
rm -f "$work"/results/*.json

triton_venv=$PWD/target/peers/venv-triton
if [ ! -x "$triton_venv/bin/python" ] || [ ! -f "$triton_venv/.done" ]; then
  echo "installing nvidia-pytriton into $triton_venv" >&2
  python3 -m venv "$triton_venv"
  "$triton_venv/bin/pip" install --quiet --disable-pip-version-check "nvidia-pytriton==0.7.0" numpy safetensors
  touch "$triton_venv/.done"
fi
"$triton_venv/bin/python" "$here/peers/make_model.py" "$work"
"$triton_venv/bin/python" "$here/grpc/big_model.py" "$work"
cp "$here/grpc/prism.toml" "$work/prism.toml"
cargo build --release --quiet -p prism-server -p prism-client
prism=$PWD/target/release/prism

pids=()
target/release/prism-server --config "$work/prism.toml" > "$work/results/prism.log" 2>&1 &
pids+=($!)
export PEERS_DIR=$work OPENBLAS_NUM_THREADS=1
LD_LIBRARY_PATH=$(dirname "$(readlink -f "$triton_venv/bin/python")")/../lib \
  "$triton_venv/bin/python" "$here/peers/pytriton_mlp.py" 18110 > "$work/results/triton.log" 2>&1 &
pids+=($!)
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
for port in 18100 18110; do
  for _ in $(seq 180); do
    curl -sf -o /dev/null "http://127.0.0.1:$port/v2/models/mlp/ready" && break
    sleep 1
  done
  curl -sf -o /dev/null "http://127.0.0.1:$port/v2/models/mlp/ready" || { echo "no server on $port; see $work/results" >&2; exit 1; }
done

run() { # name url model concurrency [bench args...]
  local name=$1 url=$2 model=$3 c=$4; shift 4
  "$prism" --url "$url" bench -m "$model" -c "$c" --duration "$duration" --warmup "$warmup" --quiet \
    --out "$work/results/${name}_r${round}.json" "$@" > /dev/null 2> "$work/results/${name}_r${round}.err"
  echo "round $round: $name done" >&2
}

for round in $(seq "$rounds"); do
  run prism_rest http://127.0.0.1:18100 mlp 1,8,32,64
  run prism_grpc http://127.0.0.1:18100 mlp 1,8,32,64 --protocol grpc --grpc-url http://127.0.0.1:18101
  run prism_shm_rest http://127.0.0.1:18100 mlp 1,8,32,64 --shared-memory system
  run prism_shm_grpc http://127.0.0.1:18100 mlp 1,8,32,64 --shared-memory system --protocol grpc --grpc-url http://127.0.0.1:18101
  run triton_grpc http://127.0.0.1:18110 mlp 1,8,32,64 --protocol grpc --grpc-url http://127.0.0.1:18111
  run big_rest http://127.0.0.1:18100 big 1,8
  run big_grpc http://127.0.0.1:18100 big 1,8 --protocol grpc --grpc-url http://127.0.0.1:18101
  run big_shm_grpc http://127.0.0.1:18100 big 1,8 --shared-memory system --protocol grpc --grpc-url http://127.0.0.1:18101
done

python3 "$here/grpc/table.py" "$work/results" "$rounds" | tee "$work/results/table.md"
