#!/usr/bin/env bash
# The soak: DURATION (default 60 s) of closed-loop load at concurrency C (default 64),
# half over REST and half over gRPC, against the MLP with faults injected (1% of batches
# fail, 5% are delayed 20 ms, 0.2% break their replica, which is restarted), the model
# reloaded halfway, and SIGTERM at the end while the load goes on. It reports:
#
#   * requests sent, answered (by HTTP status / gRPC code), refused after the stop (never
#     processed: the listener was closed), and LOST (sent, never answered): must be 0;
#   * replica restarts (prism_replica_restarts_total) and retries, before the stop;
#   * the server's RSS at start, peak and end (VmRSS, sampled every 0.5 s).
#
#   benches/soak.sh [DURATION_S] [CONCURRENCY]
# Output: target/soak/report.json (and the server's log beside it).
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-60}
concurrency=${2:-64}
work=$PWD/target/soak
rm -rf "$work"
mkdir -p "$work"
cat > "$work/soak.toml" <<'EOF'
[server]
http_addr = "127.0.0.1:18300"
grpc_addr = "127.0.0.1:18301"
shutdown_timeout_s = 30

[[deployments]]
name = "soak"
num_replicas = 2
max_retries = 5
max_restarts = 1000
retry_exceptions = ["InjectedFault"]

[deployments.model]
builtin = "mlp"

[deployments.batching]
max_batch_size = 32
batch_wait_timeout_ms = 2

[deployments.fault_injection]
error_rate = 0.01
delay_ms = 20
delay_rate = 0.05
break_rate = 0.002
EOF

cargo build --release --quiet -p prism-server -p prism-benches --bin prism-server --bin soak
target/release/prism-server --config "$work/soak.toml" > "$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -sf http://127.0.0.1:18300/v2/health/ready > /dev/null && break
  sleep 0.1
done

rss() { awk '/VmRSS/ {print $2}' "/proc/$server/status" 2>/dev/null || echo 0; }
rss_start=$(rss)
(
  while kill -0 "$server" 2>/dev/null; do
    rss >> "$work/rss.txt"
    sleep 0.5
  done
) &
sampler=$!

target/release/soak --url http://127.0.0.1:18300 --grpc-url http://127.0.0.1:18301 \
  --concurrency "$concurrency" > "$work/load.json" &
load=$!

sleep $((duration / 2))
reload=$(curl -s -o /dev/null -w '%{http_code}' -X POST http://127.0.0.1:18300/v2/repository/models/soak/load)
sleep $((duration - duration / 2))
metrics=$(curl -s http://127.0.0.1:18300/metrics)
rss_end=$(rss)
kill -TERM "$server"
wait "$load"
wait "$server" || true
wait "$sampler" 2>/dev/null || true
rss_peak=$(sort -n "$work/rss.txt" | tail -1)
metric() { echo "$metrics" | awk -v k="$1" '$1 == k {s += $2} END {print s + 0}'; }

python3 - "$work" "$reload" "$rss_start" "$rss_peak" "$rss_end" \
  "$(metric 'prism_replica_restarts_total{model="soak"}')" \
  "$(metric 'prism_inference_retries_total{model="soak",reason="Panic"}')" \
  "$(metric 'prism_inference_retries_total{model="soak",reason="InjectedFault"}')" <<'PY'
import json, sys
work, reload, start, peak, end, restarts, crash_retries, fault_retries = sys.argv[1:]
load = json.load(open(f"{work}/load.json"))
report = {
    **load,
    "reload_status": int(reload),
    "replica_restarts": float(restarts),
    "crash_retries": float(crash_retries),
    "injected_fault_retries": float(fault_retries),
    "rss_mib": {k: round(int(v) / 1024, 1) for k, v in (("start", start), ("peak", peak), ("end_before_sigterm", end))},
}
json.dump(report, open(f"{work}/report.json", "w"), indent=2)
print(json.dumps(report, indent=2))
sys.exit(1 if report["lost"] else 0)
PY
