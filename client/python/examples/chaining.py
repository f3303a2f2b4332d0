"""Pattern: chaining tasks and passing data (the Ray Core tutorial's section 2).

`expensive_square(2)` (every execution sleeps 200 ms, by fault injection), then
`remote_add(1, square_ref)` given the ref itself: the intermediate never comes back to
the client; the second task waits for the first on the server. The anti-pattern (get the
square, send it back) is timed beside it. Refs nested inside a container (the tutorial's
`remote_add.remote([ref], [ref])`) have no counterpart: a task argument is a ref or a
tensor.

    PRISM_URL=http://127.0.0.1:8000 python chaining.py
"""

import os
import sys
import time

import numpy as np

import prism


def check(ok: bool, what: str) -> None:
    if not ok:
        print(f"MISMATCH: {what}", file=sys.stderr)
        sys.exit(1)


prism.init(os.environ.get("PRISM_URL", "http://127.0.0.1:8000"), os.environ.get("PRISM_TOKEN") or None)

EXPENSIVE = {"fault_injection": {"delay_ms": 200, "delay_rate": 1.0}}


def expensive_square(x) -> prism.ObjectRef:
    return prism.task("square", x, **EXPENSIVE)


def remote_add(a, b) -> prism.ObjectRef:
    return prism.task("add", a, b)


# Anti-pattern: fetch the intermediate to the driver, then send it back.
start = time.monotonic()
square_value = prism.get(expensive_square(2.0))
sum_value = prism.get(remote_add(1.0, square_value))
print(f"anti-pattern: 1 + 2^2 = {float(sum_value)} ({time.monotonic() - start:.2f} s, two round trips)")

# Chained: the second task takes the first one's ref.
start = time.monotonic()
square_ref = expensive_square(2.0)
sum_ref = remote_add(1.0, square_ref)
print(f"submitted both at once: {square_ref} -> {sum_ref}")
sum_value = prism.get(sum_ref)
print(f"chained: 1 + 2^2 = {float(sum_value)} ({time.monotonic() - start:.2f} s)")
check(float(sum_value) == 5.0, f"1 + 2^2 = {sum_value}")

# A longer chain over matrices: relu(x @ x.T - 1), three tasks, one fetch.
x = np.random.default_rng(7).standard_normal((4, 3)).astype(np.float32)
x_ref = prism.put(x)
gram = prism.task("matmul", x_ref, prism.task("transpose", x_ref))
out = prism.get(prism.task("relu", prism.task("sub", gram, 1.0)))
want = np.maximum(x @ x.T - 1.0, 0.0)
print("relu(x @ x.T - 1) =\n", out)
check(out.shape == want.shape and np.allclose(out, want, rtol=1e-5, atol=1e-5), "relu(x @ x.T - 1)")
