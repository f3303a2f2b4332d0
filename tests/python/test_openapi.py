"""The REST API's OpenAPI description (`GET /v2/openapi.json`, kept beside the router in
server/src/api/openapi.json) checked against the running server by schemathesis: every
operation is called with examples, boundary cases and generated requests, valid and not,
and each answer must be one the description lists, in its content type and schema; no
answer is a server error; routes the description guards refuse a request without the
token; and requests the description calls invalid are refused."""
import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

from conftest import ROOT

API_TOKEN = "schemathesis-api-token"
ADMIN_TOKEN = "schemathesis-admin-token"

# A server error is always a failure, but for what the description lists as the state
# of the server rather than of the request: a model another generated request unloaded
# (503), an object not ready within the timeout_ms asked for (504), a store filled by
# generated puts (507).
CONFIG = """
# Long enough chains that a put's or a task's ref reaches get, meta and delete.
[phases.stateful]
max-steps = 40

[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "503", "504", "507"]

# Where a request's validity depends on more than its shape, a well-formed request may
# rightly be refused (400), so "valid requests are accepted" is not checked there: an
# inference's inputs are the model's (a static description of the protocol cannot list
# them); a tensor's data must have as many elements as its shape says, and a task's
# arguments the shapes its op takes; a wait's num_returns is at most its refs; a
# shared-memory key must name an object that
# exists on the host.
[[operations]]
include-path-regex = "/infer$"
checks.positive_data_acceptance.enabled = false

[[operations]]
include-path-regex = "^/v2/objects$|^/v2/tasks/|^/v2/wait$"
checks.positive_data_acceptance.enabled = false

[[operations]]
include-path-regex = "/register$"
checks.positive_data_acceptance.enabled = false
"""


def server_config(tmp_path):
    """The embedded default deployment file, with shared memory allowed (so that its
    routes are exercised, not only refused)."""
    default = (ROOT / "config" / "src" / "default.toml").read_text()
    config = tmp_path / "prism.toml"
    config.write_text(default.replace("[server]\n", "[server]\nallow_shared_memory = true\n", 1))
    return config


def test_the_description_is_served(prism, tmp_path):
    s = prism(server_config(tmp_path), env={"PRISM_API_TOKEN": API_TOKEN})
    request = urllib.request.Request(
        f"http://{s.url}/v2/openapi.json", headers={"Authorization": f"Bearer {API_TOKEN}"}
    )
    with urllib.request.urlopen(request) as r:
        assert r.headers["Content-Type"] == "application/json"
        served = json.load(r)
    assert served == json.loads((ROOT / "server" / "src" / "api" / "openapi.json").read_text())
    assert served["openapi"].startswith("3.1")


def test_the_server_answers_as_its_description_says(prism, tmp_path):
    s = prism(server_config(tmp_path), env={"PRISM_API_TOKEN": API_TOKEN, "PRISM_ADMIN_TOKEN": ADMIN_TOKEN})
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    run = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            f"http://{s.url}/v2/openapi.json",
            "--header", f"Authorization: Bearer {ADMIN_TOKEN}",
            "--max-examples", "25",
            "--seed", "20261204",
            # One worker: schemathesis' workers are threads, and CPython 3.11 keeps the AST
            # constructor's recursion depth per interpreter, not per thread, so two threads
            # parsing at once can fail with "AST constructor recursion depth mismatch"
            # (python/cpython#106905; seen in a clean-clone CI run).
            "--workers", "1",
            "--request-timeout", "30",
            "--suppress-health-check", "too_slow,filter_too_much",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    report = run.stdout + run.stderr
    assert run.returncode == 0, report + "\nthe server's last lines:\n" + "".join(s.log[-10:])
    described = json.loads((ROOT / "server" / "src" / "api" / "openapi.json").read_text())
    operations = sum(len(ops) for ops in described["paths"].values())
    # Every operation was called, but GET /v2/openapi.json, which schemathesis loads
    # the description from rather than tests.
    selected = re.search(r"Selected: (\d+)/(\d+)", report)
    tested = re.search(r"Tested: (\d+)", report)
    assert selected and tested, report
    assert int(tested.group(1)) == int(selected.group(2)) == operations - 1, report
