"""Prints the comparison's two tables from the results of run.sh: throughput and p50/p99
latency at each concurrency, as the range over the rounds, and Prism's throughput as a
multiple of each server's (below 1 against the no-op baseline: the share of the HTTP
ceiling Prism reaches). Usage: table.py RESULTS_DIR ROUNDS"""
import json
import os
import sys

out, rounds = sys.argv[1], int(sys.argv[2])
NAMES = {"prism": "Prism", "noop": "no-op V2 baseline", "triton": "Triton (PyTriton)", "mlserver": "MLServer", "ray": "Ray Serve"}


def points(server, table):
    runs = []
    for r in range(1, rounds + 1):
        path = os.path.join(out, f"{server}_{table}_r{r}.json")
        if os.path.exists(path):
            runs.append(json.load(open(path)))
    return runs


def span(values, fmt):
    lo, hi = min(values), max(values)
    return f"{lo:{fmt}}" if f"{lo:{fmt}}" == f"{hi:{fmt}}" else f"{lo:{fmt}}–{hi:{fmt}}"


for table, title in (("v2", "V2 (binary tensors for Prism, the baseline and Triton; JSON for MLServer)"),
                     ("plain", "plain JSON (the same V2-shaped JSON body to every server)")):
    prism = points("prism", table)
    print(f"\n### {title}\n")
    print("| server | format | concurrency | req/s | p50 ms | p99 ms | errors | Prism ÷ server |")
    print("|---|---|---|---|---|---|---|---|")
    for server in NAMES:
        runs = points(server, table)
        if not runs:
            continue
        for i, p in enumerate(runs[0]["points"]):
            thr = [r["points"][i]["throughput"] for r in runs]
            p50 = [r["points"][i]["latency_ms_p50"] for r in runs]
            p99 = [r["points"][i]["latency_ms_p99"] for r in runs]
            errs = sum(r["points"][i]["error_count"] for r in runs)
            ratio = ""
            if prism and server != "prism":
                mine = sum(r["points"][i]["throughput"] for r in prism) / len(prism)
                r = mine / (sum(thr) / len(thr)) if sum(thr) else float("inf")
                ratio = f"{r:.2f}×" if r < 2 else f"{r:.1f}×"
            print(f"| {NAMES[server]} | {runs[0]['format']} | {p['concurrency']} | {span(thr, ',.0f')} | "
                  f"{span(p50, '.2f')} | {span(p99, '.2f')} | {errs} | {ratio} |")
