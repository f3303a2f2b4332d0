"""Pattern: task retries (the Ray Core tutorial's section 3).

`incorrect_square` fails half of its executions with the error kind `InjectedFault`
(`fault_injection.error_rate = 0.5`). Application errors are not retried by default, as
in Ray: some of the ten fail, each with its kind and attempt count. With
`retry_exceptions=["InjectedFault"]` and `max_retries=100`, all ten succeed. System
failures (a panic) are retried `max_retries` times (default 3) without being listed.

    PRISM_URL=http://127.0.0.1:8000 python retries.py
"""

import os
import sys

import prism


def check(ok: bool, what: str) -> None:
    if not ok:
        print(f"MISMATCH: {what}", file=sys.stderr)
        sys.exit(1)


prism.init(os.environ.get("PRISM_URL", "http://127.0.0.1:8000"), os.environ.get("PRISM_TOKEN") or None)

INCORRECT = {"num_cpus": 0.25, "fault_injection": {"error_rate": 0.5}}

refs = [prism.task("square", 4.0, **INCORRECT) for _ in range(10)]
failures = 0
for r in refs:
    try:
        value = prism.get(r)
        print(f"ok: {float(value)}")
        check(float(value) == 16.0, f"4^2 = {value}")
    except prism.ObjectFailedError as e:
        failures += 1
        print(f"failed: kind {e.kind}, {e.attempts} attempt(s): {e.message}")
        check(e.status == 500 and e.kind == "InjectedFault" and e.attempts == 1, f"failure {e!r}")
if failures:
    print(f"At least one of the tasks failed ({failures} of 10)")
else:
    print("none of the 10 failed this time (chance 1/1024)")

# Retrying the application error: .options(retry_exceptions=[...], max_retries=...).
correct = dict(INCORRECT, retry_exceptions=["InjectedFault"], max_retries=100)
outputs = [float(v) for v in prism.get([prism.task("square", 4.0, **correct) for _ in range(10)])]
print(f"with retry_exceptions: {outputs}")
check(outputs == [16.0] * 10, f"outputs {outputs}")

# Retries are bounded: always failing, max_retries=2 means 3 executions, then the error.
try:
    prism.get(prism.task("square", 4.0, fault_injection={"error_rate": 1.0}, retry_exceptions=True, max_retries=2))
    check(False, "a task that always fails succeeded")
except prism.ObjectFailedError as e:
    print(f"always failing, max_retries=2: kind {e.kind} after {e.attempts} attempts")
    check(e.kind == "InjectedFault" and e.attempts == 3, f"attempts {e.attempts}")
