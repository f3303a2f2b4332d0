#!/usr/bin/env bash
# Prism side by side with its peers, in one run, on the same MLP (784 -> 256 -> 10, one
# safetensors file), with max_batch_size 32 and a 2 ms batch window everywhere, driven by
# the same load generator (`prism bench`) at concurrency 1, 8, 32, 64:
#
#   * Triton (the tritonserver in nvidia-pytriton 0.7.0), MLServer 1.7.1, Ray Serve 2.60.0,
#     and the no-op V2 baseline (benches/src/bin/noop-v2.rs: parses the request, answers a
#     fixed body), the ceiling of the HTTP path on this machine;
#   * table 1, "V2": each V2 server in its best V2 form (binary tensors for Prism and Triton;
#     MLServer has no binary extension, so JSON);
#   * table 2, "plain JSON": the same V2-shaped JSON body POSTed to every server, Ray Serve
#     included (it has no V2 protocol; its route is hand-written), only the status checked:
#     like for like.
#
# Installs the peers into virtual environments under target/peers (first run: minutes).
#
#   benches/peers/run.sh [DURATION] [WARMUP] [ROUNDS]      (defaults 10s, 3s, 2)
set -euo pipefail
cd "$(dirname "$0")/../.."
here=$PWD/benches/peers
work=$PWD/target/peers
duration=${1:-10s}
warmup=${2:-3s}
rounds=${3:-2}
mkdir -p "$work/results"
export PEERS_DIR=$work OPENBLAS_NUM_THREADS=1

install() { # venv packages...
  local venv=$work/$1; shift
  if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.done" ]; then
    echo "installing $* into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$@"
    touch "$venv/.done"
  fi
}
install venv-ray "ray[serve]==2.60.0" numpy safetensors
install venv-triton "nvidia-pytriton==0.7.0" numpy safetensors
install venv-mlserver "mlserver==1.7.1" "uvloop==0.21.0" numpy safetensors # 1.7.1's workers crash with uvloop 0.23

"$work/venv-ray/bin/python" "$here/make_model.py" "$work"
cp "$here/prism.toml" "$work/prism.toml"
rm -rf "$work/mlserver" && cp -r "$here/mlserver" "$work/mlserver" && cp "$here/mlp_np.py" "$work/mlserver/"
cat > "$work/mlserver/settings.json" <<JSON
{"host": "127.0.0.1", "http_port": 18120, "grpc_port": 18121, "metrics_port": 18122, "debug": false}
JSON
cargo build --release --quiet -p prism-server -p prism-client -p prism-benches
prism=$PWD/target/release/prism

declare -A PORT=([prism]=18100 [noop]=18140 [triton]=18110 [mlserver]=18120 [ray]=18130)
pid=
start() {
  local log=$work/results/$1.log
  case $1 in
    prism) target/release/prism-server --config "$work/prism.toml" --http-addr 127.0.0.1:${PORT[prism]} > "$log" 2>&1 & ;;
    noop) target/release/noop-v2 127.0.0.1:${PORT[noop]} > "$log" 2>&1 & ;;
    # PyTriton's Python-backend stub links the venv's base libpython.
    triton) LD_LIBRARY_PATH=$(dirname "$(readlink -f "$work/venv-triton/bin/python")")/../lib \
              "$work/venv-triton/bin/python" "$here/pytriton_mlp.py" ${PORT[triton]} > "$log" 2>&1 & ;;
    mlserver) (cd "$work/mlserver" && PYTHONDONTWRITEBYTECODE=1 exec "$work/venv-mlserver/bin/mlserver" start .) > "$log" 2>&1 & ;;
    # Ray starts its workers at nice 15 unless told otherwise: a fair run needs 0.
    ray) RAY_worker_niceness=0 "$work/venv-ray/bin/python" "$here/ray_serve_mlp.py" ${PORT[ray]} > "$log" 2>&1 & ;;
  esac
  pid=$!
  for _ in $(seq 180); do
    if curl -sf -o /dev/null -H 'Content-Type: application/json' --data @"$work/body.json" \
         http://127.0.0.1:${PORT[$1]}/v2/models/mlp/infer; then return 0; fi
    kill -0 $pid 2>/dev/null || { echo "$1 exited; see $log" >&2; return 1; }
    sleep 1
  done
  echo "$1 did not answer in 180 s; see $log" >&2
  return 1
}
stop() {
  kill $pid 2>/dev/null || true
  wait $pid 2>/dev/null || true
  [ "$1" = ray ] && "$work/venv-ray/bin/ray" stop --force > /dev/null 2>&1 || true
  sleep 2
}
trap 'stop x' EXIT

bench() { # server table format [extra args...]
  local server=$1 table=$2 format=$3; shift 3
  "$prism" --url http://127.0.0.1:${PORT[$server]} bench -m mlp --format "$format" -c 1,8,32,64 \
    --duration "$duration" --warmup "$warmup" --quiet --out "$work/results/${server}_${table}_r${round}.json" "$@" \
    > /dev/null 2> "$work/results/${server}_${table}_r${round}.err"
  echo "round $round: $server $table done" >&2
}

for round in $(seq "$rounds"); do
  for server in prism noop triton mlserver ray; do
    start $server || continue
    case $server in
      prism | noop | triton) bench $server v2 binary ;;
      mlserver) bench $server v2 json --input-file "$work/body.json" ;;
    esac
    bench $server plain plain --input-file "$work/body.json"
    stop $server
  done
done

python3 "$here/table.py" "$work/results" "$rounds" | tee "$work/results/table.md"
