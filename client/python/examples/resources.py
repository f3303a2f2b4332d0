"""Pattern: resource allocation and fractional resources (the Ray Core tutorial's
section 5).

Tasks ask for logical resources, as Ray's `@ray.remote(num_cpus=...)`: what the
replicas of the deployments leave is what tasks share (`available_resources()` shows
it). `num_cpus=0.5` is a fractional ask; `num_cpus=0` (I/O-bound work) always fits, so
such tasks run side by side, while tasks that each ask for every CPU left run one at a
time. An ask the server can never meet is refused at once, naming the resource: on a
server without a GPU that is `num_gpus`, and custom resources must be declared in the
deployment file (`[server] resources = { licence = 2 }`: see `resources.toml` beside this
script, which this script also runs against).

    PRISM_URL=http://127.0.0.1:8000 python resources.py
"""

import os
import sys
import time
from typing import List

import prism


def check(ok: bool, what: str) -> None:
    if not ok:
        print(f"MISMATCH: {what}", file=sys.stderr)
        sys.exit(1)


prism.init(os.environ.get("PRISM_URL", "http://127.0.0.1:8000"), os.environ.get("PRISM_TOKEN") or None)

resources = prism.resources()
print("total:    ", resources["total"])
print("available:", resources["available"])
cpus = resources["available"]["CPU"]

# A fractional CPU: remote_add with num_cpus=0.5.
value = float(prism.get(prism.task("add", 2.0, 3.0, num_cpus=0.5)))
print(f"remote_add(2, 3) with num_cpus=0.5: {value}")
check(value == 5.0, f"2 + 3 = {value}")


def sleepers(n: int, num_cpus: float) -> float:
    """n tasks of 200 ms each; seconds until all are done."""
    start = time.monotonic()
    refs: List[prism.ObjectRef] = [
        prism.task("square", float(i), num_cpus=num_cpus, fault_injection={"delay_ms": 200}) for i in range(n)
    ]
    values = [float(v) for v in prism.get(refs)]
    check(values == [float(i * i) for i in range(n)], f"squares {values}")
    return time.monotonic() - start


# Logical, not physical: num_cpus=0 tasks all fit at once; tasks asking for every CPU
# tasks have left take turns (6 x 200 ms at least).
n = 6
io_bound = sleepers(n, 0)
print(f"{n} tasks of 200 ms with num_cpus=0: {io_bound:.2f} s")
if cpus > 0:
    exclusive = sleepers(n, cpus)
    print(f"{n} tasks of 200 ms with num_cpus={cpus} (all of it): {exclusive:.2f} s")
    check(exclusive >= n * 0.2 * 0.95, "tasks holding every CPU ran one at a time")
    check(io_bound < exclusive, "num_cpus=0 tasks ran side by side")

# An ask that can never be met is refused at once.
try:
    prism.get(prism.task("add", 2.0, 3.0, num_cpus=cpus + 1000))
    check(False, "an impossible num_cpus was accepted")
except prism.BadRequestError as e:
    print(f"num_cpus={cpus + 1000}: refused, {e.status}: {e.message}")

# Fractional GPUs: four tasks at num_gpus=0.25 would share one card.
gpus = resources["total"]["GPU"]
try:
    value = float(prism.get(prism.task("add", 2.0, 3.0, num_gpus=0.25)))
    print(f"num_gpus=0.25 on a server with {gpus} GPU(s): {value}")
    check(gpus > 0 and value == 5.0, f"num_gpus=0.25 gave {value} with {gpus} GPUs")
except prism.BadRequestError as e:
    print(f"num_gpus=0.25 on a server with {gpus} GPU(s): refused, {e.status}: {e.message}")
    check(gpus == 0 or resources["available"]["GPU"] < 0.25, "num_gpus refused although a GPU is free")

# Custom resources, like Ray's resources={"TPU": 1}.
if "licence" in resources["total"]:
    value = float(prism.get(prism.task("mul", 2.0, 3.0, resources={"licence": 1})))
    print(f"resources={{'licence': 1}} (the server has {resources['total']['licence']}): {value}")
    check(value == 6.0, f"2 * 3 = {value}")
try:
    prism.task("mul", 2.0, 3.0, resources={"TPU": 1})
    check(False, "an undeclared resource was accepted")
except prism.BadRequestError as e:
    print(f"resources={{'TPU': 1}}: refused, {e.status}: {e.message}")
