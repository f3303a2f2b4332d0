"""Pattern: pipeline data processing with `wait` (the Ray Core tutorial's section 7).

Fifteen `expensive_square`s of random duration (fault injection delays 70% of them by
300 ms) are submitted at once; each result is processed as soon as it is ready (`wait`
with `num_returns=1`), then the same in batches of three (section 7.1). Fetching a few
at a time keeps the client's memory bounded (section 7.2).

    PRISM_URL=http://127.0.0.1:8000 python wait_pipeline.py
"""

import os
import sys
from typing import List

import prism


def check(ok: bool, what: str) -> None:
    if not ok:
        print(f"MISMATCH: {what}", file=sys.stderr)
        sys.exit(1)


prism.init(os.environ.get("PRISM_URL", "http://127.0.0.1:8000"), os.environ.get("PRISM_TOKEN") or None)

N = 15


def expensive_squares(n: int) -> List[prism.ObjectRef]:
    opts = {"num_cpus": 0.05, "fault_injection": {"delay_ms": 300, "delay_rate": 0.7}}
    return [prism.task("square", float(i), **opts) for i in range(n)]


# Process each item as soon as it becomes available.
expensive_compute = expensive_squares(N)
ready_refs, not_ready_refs = prism.wait(expensive_compute)
results = []
while True:
    check(len(ready_refs) == 1, f"len(ready_refs) should be 1, got {len(ready_refs)}")
    value = float(prism.get(ready_refs[0]))
    results.append(value)
    if not not_ready_refs:
        print(f"I'm the last item: {ready_refs[0]}; result: {value}")
        break
    print(f"{ready_refs[0]} is ready; result: {value}")
    print(f"{len(not_ready_refs)} items not ready...")
    ready_refs, not_ready_refs = prism.wait(not_ready_refs)
check(sorted(results) == [float(i * i) for i in range(N)], f"results {sorted(results)}")

# A timeout returns whatever is ready by then.
refs = expensive_squares(N)
ready, not_ready = prism.wait(refs, num_returns=N, timeout=0.05)
print(f"after 50 ms: {len(ready)} ready, {len(not_ready)} not")
check(len(ready) + len(not_ready) == N, "wait lost refs")
check(set(ready) | set(not_ready) == set(refs), "wait returned other refs")
prism.get(refs)

# Batch processing: wait for BATCH_SIZE refs at a time.
BATCH_SIZE = 3
expensive_compute = expensive_squares(N)
not_ready_refs = expensive_compute
batches = []
while not_ready_refs:
    k = min(BATCH_SIZE, len(not_ready_refs))
    ready_refs, not_ready_refs = prism.wait(not_ready_refs, num_returns=k)
    check(len(ready_refs) == k, f"wait(num_returns={k}) gave {len(ready_refs)}")
    values = [float(v) for v in prism.get(ready_refs)]
    print(f"{ready_refs} are ready; results: {values}")
    print(f"{len(not_ready_refs)} items not ready...")
    batches.append(values)
check(sorted(v for b in batches for v in b) == [float(i * i) for i in range(N)], "batched results")
prism.delete(expensive_compute)
