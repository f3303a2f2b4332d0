"""Pattern: nested tasks (the Ray Core tutorial's section 6).

The tutorial's `main` task schedules two `expensive_square`s and a `remote_add` and
returns the sum. In Prism that graph is the pipeline `sum_of_squares` of the default
deployment, run server-side: both squares run in parallel and the intermediates stay in
the store. The same graph is then built from the client with tasks and refs.

    PRISM_URL=http://127.0.0.1:8000 python nested.py
"""

import os
import sys

import numpy as np

import prism


def check(ok: bool, what: str) -> None:
    if not ok:
        print(f"MISMATCH: {what}", file=sys.stderr)
        sys.exit(1)


prism.init(os.environ.get("PRISM_URL", "http://127.0.0.1:8000"), os.environ.get("PRISM_TOKEN") or None)

# main() = expensive_square(1) + expensive_square(2), one call.
out = prism.infer("sum_of_squares", {"A": np.array([1.0], np.float32), "B": np.array([2.0], np.float32)})
print(f"sum_of_squares(1, 2) = {out['OUTPUT0']}")
check(out["OUTPUT0"].tolist() == [5.0], f"1^2 + 2^2 = {out['OUTPUT0']}")

# Over vectors, and asynchronously: a ref at once, the value when it is ready.
rng = np.random.default_rng(3)
a = rng.standard_normal(8).astype(np.float32)
b = rng.standard_normal(8).astype(np.float32)
refs = prism.infer_async("sum_of_squares", {"A": a, "B": b})
print(f"async: {refs}")
got = prism.get(refs["OUTPUT0"])
print(f"A^2 + B^2 = {got}")
check(np.allclose(got, a * a + b * b, rtol=1e-6), "A^2 + B^2")

# The same graph from the client: two squares in parallel, their refs into the add.
square_ref_1 = prism.task("square", 1.0, num_cpus=0.5)
square_ref_2 = prism.task("square", 2.0, num_cpus=0.5)
add_ref = prism.task("add", square_ref_1, square_ref_2)
total = float(prism.get(add_ref))
print(f"square(1) + square(2) with tasks: {total}")
check(total == 5.0, f"1^2 + 2^2 = {total}")
