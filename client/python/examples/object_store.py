"""Pattern: the object store (the Ray Core tutorial's section 1).

A large matrix is put into the server's store once (`ray.put`), and fetched back
(`ray.get`): equal to the original, but a new array, not the same object. It travels in
the binary tensor extension (raw bytes after a JSON header), not as JSON numbers.

    PRISM_URL=http://127.0.0.1:8000 python object_store.py
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

large_matrix = np.random.rand(1024, 1024)  # float64, 8 MiB (the tutorial's is 1 GiB)
print(f"large_matrix has: {large_matrix.nbytes / 2**20:.2f} MiB")

obj_ref = prism.put(large_matrix)
print(obj_ref)

meta = prism.object_meta(obj_ref)
print(f"in the store: {meta['datatype']} {meta['shape']}, {meta['bytes']} bytes, {meta['state']}")
check(meta["datatype"] == "FP64" and meta["shape"] == [1024, 1024], f"meta {meta}")
check(meta["bytes"] == large_matrix.nbytes, "stored size")

large_mat_from_object_store = prism.get(obj_ref)
print("equal:", np.array_equal(large_mat_from_object_store, large_matrix))
print("same object:", large_mat_from_object_store is large_matrix)
check(np.array_equal(large_mat_from_object_store, large_matrix), "the matrix came back different")
check(large_mat_from_object_store is not large_matrix, "get returned the original")

# Objects are immutable and live until deleted (or their time-to-live passes).
prism.delete(obj_ref)
try:
    prism.get(obj_ref)
    check(False, "a deleted object was still there")
except prism.NotFoundError as e:
    print(f"after delete: {e.status} {e.message}")
