"""Pattern: actors (the Ray Core tutorial's section 8, the activity): the `LinearModel`
actor holds its weights (w0 = 32, w1 = 9/5) and converts Celsius to Fahrenheit.

In Prism a stateful actor is a deployment's replica: it loads its weights once and
serves every call. This one is the `celsius` deployment of the default deployment file
(y = 9/5 x + 32), called through V2 inference. The tutorial's `Accounting` actor, whose
calls mutate its state, has no counterpart: replicas serve models, whose state is their
weights.

    PRISM_URL=http://127.0.0.1:8000 python linear_model.py
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

w0, w1 = 32.0, 9 / 5

# model.convert.remote(100)
fahrenheit = prism.infer("celsius", {"INPUT0": np.array([[100.0]], np.float32)})["OUTPUT0"]
print(f"100 C = {float(fahrenheit[0, 0])} F")
check(fahrenheit.tolist() == [[212.0]], f"100 C = {fahrenheit}")

# Many conversions in one call (one row each; the server batches rows across calls too).
celsius = np.array([[-40.0], [0.0], [36.6], [100.0]], np.float32)
out = prism.infer("celsius", {"INPUT0": celsius})["OUTPUT0"]
want = w1 * celsius + w0
for c, f in zip(celsius[:, 0], out[:, 0]):
    print(f"{c:6.1f} C = {f:6.1f} F")
check(np.allclose(out, want, rtol=1e-6), f"{out} != {want}")

# The input by ref, and the output kept in the store: the actor reads and writes
# objects, and the answer feeds a task without coming back.
x_ref = prism.put(celsius)
y_ref = prism.infer("celsius", {"INPUT0": x_ref}, outputs={"OUTPUT0": {"object_ref": True}})["OUTPUT0"]
print(f"by ref: {x_ref} -> {y_ref}")
back = prism.get(prism.task("sub", y_ref, w0))  # (F - 32) = 9/5 C
check(np.allclose(back, w1 * celsius, rtol=1e-5, atol=1e-5), f"F - 32 = {back}")
prism.delete([x_ref, y_ref])
