"""The table of benches/grpc.sh: requests/s and p50/p99 per path and concurrency, the
median over the rounds with the range beside it, and each path's throughput as a multiple
of Prism's REST binary (and of Triton's gRPC). Usage: table.py RESULTS_DIR ROUNDS"""
import json
import os
import statistics
import sys

out, rounds = sys.argv[1], int(sys.argv[2])
NAMES = {
    "prism_rest": "Prism REST, binary",
    "prism_grpc": "Prism gRPC",
    "prism_shm_rest": "Prism REST, system shared memory",
    "prism_shm_grpc": "Prism gRPC, system shared memory",
    "triton_grpc": "Triton gRPC (PyTriton)",
    "big_rest": "Prism REST, binary",
    "big_grpc": "Prism gRPC",
    "big_shm_grpc": "Prism gRPC, system shared memory",
}


def runs(name):
    found = []
    for r in range(1, rounds + 1):
        path = os.path.join(out, f"{name}_r{r}.json")
        if os.path.exists(path):
            found.append({p["concurrency"]: p for p in json.load(open(path))["points"]})
    return found


def cell(values, fmt):
    if not values:
        return "–"
    mid = statistics.median(values)
    lo, hi = min(values), max(values)
    spread = "" if f"{lo:{fmt}}" == f"{hi:{fmt}}" else f" ({lo:{fmt}}–{hi:{fmt}})"
    return f"{mid:{fmt}}{spread}"


def table(title, names, baselines, concurrencies):
    print(f"\n### {title}\n")
    head = "| path | c | req/s | p50 ms | p99 ms | errors |" + "".join(f" × {NAMES[b]} |" for b in baselines)
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    data = {n: runs(n) for n in names + baselines}
    for n in names:
        for c in concurrencies:
            pts = [r[c] for r in data[n] if c in r]
            if not pts:
                continue
            ratios = []
            for b in baselines:
                base = [r[c]["throughput"] for r in data[b] if c in r]
                ratios.append(
                    f" {statistics.median(p['throughput'] for p in pts) / statistics.median(base):.2f} |" if base else " – |"
                )
            print(
                f"| {NAMES[n]} | {c} | {cell([p['throughput'] for p in pts], '.0f')} | "
                f"{cell([p['latency_ms_p50'] for p in pts], '.2f')} | {cell([p['latency_ms_p99'] for p in pts], '.2f')} | "
                f"{sum(p['error_count'] for p in pts)} |" + "".join(ratios)
            )


table(
    f"The MLP (784 → 256 → 10), one row a request, {rounds} rounds",
    ["prism_rest", "prism_grpc", "prism_shm_rest", "prism_shm_grpc", "triton_grpc"],
    ["prism_rest", "triton_grpc"],
    [1, 8, 32, 64],
)
table(
    f"A 4 MiB input (1 × 1,048,576 FP32), {rounds} rounds",
    ["big_rest", "big_grpc", "big_shm_grpc"],
    ["big_rest"],
    [1, 8],
)
