"""numpy's float32 `linear` (x @ W.T + b) over the same shapes and method as
`prism-benches`' `gemm` binary; prints one JSON line per shape."""
import json
import sys
import time

import numpy as np

SHAPES = [(1, 784, 256), (8, 784, 256), (32, 784, 256), (64, 1024, 1024), (256, 784, 256),
          (512, 512, 512), (1024, 1024, 1024), (2048, 2048, 2048)]
budget = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
rng = np.random.default_rng(0)
for m, k, n in SHAPES:
    x = rng.uniform(-1, 1, (m, k)).astype(np.float32)
    w = rng.uniform(-1, 1, (n, k)).astype(np.float32)
    b = rng.uniform(-1, 1, n).astype(np.float32)
    run = lambda: x @ w.T + b
    run()
    t = time.perf_counter(); run(); once = max(time.perf_counter() - t, 1e-7)
    reps = max(1, int(np.ceil(0.01 / once)))
    flops = 2.0 * m * n * k
    samples = []
    start = time.perf_counter()
    while len(samples) < 5 or (time.perf_counter() - start < budget and len(samples) < 200):
        t = time.perf_counter()
        for _ in range(reps):
            run()
        samples.append(flops * reps / (time.perf_counter() - t) / 1e9)
    samples.sort()
    q = lambda p: samples[round((len(samples) - 1) * p)]
    print(json.dumps({"impl": "numpy", "m": m, "k": k, "n": n, "gflops_median": round(q(0.5), 2),
                      "gflops_p10": round(q(0.1), 2), "gflops_p90": round(q(0.9), 2), "samples": len(samples)}))
