"""Pattern: pass an object as a top-level argument (the Ray Core tutorial's section 1.1).

Two 32x32 matrices are put once; ten `compute(x, y) = matmul(x, y).sum()` calls reuse
them by ref, so the matrices cross the network once, not ten times. The server
dereferences the refs (waiting for them if they were still pending) before each task
runs. Tasks compute in float32.

    PRISM_URL=http://127.0.0.1:8000 python object_argument.py
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

rng = np.random.default_rng()
mat1 = rng.random((32, 32), dtype=np.float32)
mat2 = rng.random((32, 32), dtype=np.float32)
mat1_ref = prism.put(mat1)
mat2_ref = prism.put(mat2)
print(mat1_ref)
print(mat2_ref)


def compute(x: prism.ObjectRef, y: prism.ObjectRef) -> prism.ObjectRef:
    """matmul, then sum, chained on the server: only the final scalar comes back."""
    return prism.task("sum", prism.task("matmul", x, y))


collection = [compute(mat1_ref, mat2_ref) for _ in range(10)]
results = [float(v) for v in prism.get(collection)]
print([int(v) for v in results])

want = float(np.matmul(mat1.astype(np.float64), mat2.astype(np.float64)).sum())
print(f"numpy: {want:.4f}, server: {results[0]:.4f}")
check(all(r == results[0] for r in results), "every call saw the same objects")
check(abs(results[0] - want) <= 1e-5 * abs(want), f"matmul().sum() = {results[0]}, numpy says {want}")
prism.delete([mat1_ref, mat2_ref, *collection])
