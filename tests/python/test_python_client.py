"""Prism's own Python client (`client/python`, imported as `prism`) against the real
server: objects of every datatype and shape, wait and timeouts, delete, tasks and their
failures, inference (and BYTES through a text model), bearer tokens, and every example
script of `client/python/examples` run as a user runs it.

Each API test runs twice, with a JSON-only client (`binary_threshold=None`) and an
all-binary one (`binary_threshold=0`), so both encodings are checked end to end.

Deployments besides the embedded default: `tests/fixtures/encoders/tiny-classifier`
(a BYTES-in, BYTES-out text classifier) and `client/python/examples/resources.toml` (the
`celsius` deployment and a custom resource, `licence`, for `resources.py`).
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import prism

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "client" / "python" / "examples"
CLASSIFIER = ROOT / "tests" / "fixtures" / "encoders" / "tiny-classifier"
TOKEN = "python-client-test-token-0123456789"

MODES = {"json": None, "binary": 0}


@pytest.fixture
def server(request):
    """conftest's server factory under a name that leaves the `prism` module visible."""
    return request.getfixturevalue("prism")


@pytest.fixture(params=sorted(MODES))
def client(request, server):
    """A client of a fresh default server, JSON-only or all-binary."""
    s = server()
    with prism.Client(f"http://{s.url}", binary_threshold=MODES[request.param]) as c:
        yield c


# -- the codec alone -------------------------------------------------------------------


def test_datatypes_map_both_ways():
    names = {
        np.bool_: "BOOL", np.uint8: "UINT8", np.uint16: "UINT16", np.uint32: "UINT32", np.uint64: "UINT64",
        np.int8: "INT8", np.int16: "INT16", np.int32: "INT32", np.int64: "INT64",
        np.float16: "FP16", np.float32: "FP32", np.float64: "FP64",
    }  # fmt: skip
    for dtype, name in names.items():
        assert prism.datatype_of(np.zeros(1, dtype)) == name
        assert prism.dtype_of(name) == np.dtype(dtype)
        assert prism.datatype_of(np.zeros(1, np.dtype(dtype).newbyteorder(">"))) == name
    for strings in (np.array(["a"]), np.array([b"a"]), np.array(["a"], dtype=object)):
        assert prism.datatype_of(strings) == "BYTES"
    assert prism.dtype_of("BYTES") == np.dtype(object)
    assert prism.dtype_of("BF16") == np.dtype(np.float32)
    with pytest.raises(TypeError, match="no V2 datatype"):
        prism.datatype_of(np.zeros(1, np.complex64))


def test_bytes_and_bf16_encode_as_the_binary_extension_says():
    from prism import _codec

    texts = np.array([["héllo", ""], ["a b", "ü"]], dtype=object)
    raw = _codec.to_binary(texts, "BYTES")
    assert raw[:4] == (6).to_bytes(4, "little") and raw[4:10] == "héllo".encode()
    back = _codec.from_binary(raw, "BYTES", [2, 2])
    assert back.dtype == object and back.tolist() == texts.tolist()
    assert _codec.from_json_data(_codec.to_json_data(texts, "BYTES"), "BYTES", [2, 2]).tolist() == texts.tolist()
    assert _codec.to_json_data(np.array([b"x"], dtype=object), "BYTES") == ["x"]
    bf16 = np.array([0x3F80, 0xC000], "<u2").tobytes()  # 1.0, -2.0
    assert _codec.from_binary(bf16, "BF16", [2]).tolist() == [1.0, -2.0]
    with pytest.raises(prism.ProtocolError):
        _codec.from_binary(b"\x05\x00\x00\x00ab", "BYTES", [1])


def test_object_refs_are_hashable_names():
    a = prism.ObjectRef("AB" * 16)
    assert a.hex == "ab" * 16 and str(a) == a.hex and repr(a) == f"ObjectRef({'ab' * 16})"
    assert a == prism.ObjectRef("ab" * 16) and len({a, prism.ObjectRef("ab" * 16)}) == 1
    with pytest.raises(ValueError):
        prism.ObjectRef("nope")


# -- objects -----------------------------------------------------------------------------

DTYPES = [
    np.bool_, np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32, np.int64,
    np.float16, np.float32, np.float64,
]  # fmt: skip
SHAPES = [(), (0,), (3,), (2, 3), (2, 0, 4), (1, 2, 3, 2)]


def sample(dtype, shape, rng):
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    return (rng.standard_normal(shape) * 100).astype(dtype)


def same(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    assert np.array_equal(got, want, equal_nan=want.dtype.kind == "f"), (got, want)


def test_put_and_get_round_trip_every_datatype_and_shape(client):
    rng = np.random.default_rng(0)
    for dtype in DTYPES:
        for shape in SHAPES:
            a = sample(dtype, shape, rng)
            same(client.get(client.put(a)), a)
        if np.dtype(dtype).kind in "iu":
            info = np.iinfo(dtype)
            extremes = np.array([info.min, info.max, 0], dtype=dtype)
            same(client.get(client.put(extremes)), extremes)
    floats = np.array([np.nan, np.inf, -np.inf, -0.0, 1e-38, 3.4e38, 0.1], np.float32)
    same(client.get(client.put(floats)), floats)
    exact = np.array([0.1, 1 / 3, 2.0**-1074, 1.7976931348623157e308], np.float64)
    same(client.get(client.put(exact)), exact)
    # Not C-contiguous, big-endian, Python lists and scalars: all sent as their values.
    m = np.arange(24, dtype=np.int32).reshape(4, 6)
    same(client.get(client.put(m[:, ::2])), m[:, ::2].copy())
    same(client.get(client.put(m.astype(">i4"))), m)
    same(client.get(client.put([[1.5, 2.5]])), np.array([[1.5, 2.5]]))
    same(client.get(client.put(7)), np.array(7))
    # Large enough for the binary extension by default (and through JSON, too).
    big = rng.standard_normal((300, 400)).astype(np.float32)
    ref = client.put(big, ttl_s=60)
    same(client.get(ref), big)
    meta = client.object_meta(ref)
    assert (meta["state"], meta["datatype"], meta["shape"], meta["bytes"]) == ("ready", "FP32", [300, 400], big.nbytes)
    # A list of refs answers a list of arrays, in order.
    refs = [client.put(np.full(2, i, np.int16)) for i in range(5)]
    assert [g.tolist() for g in client.get(refs)] == [[i, i] for i in range(5)]


def test_fp64_json_numbers_are_read_exactly(server):
    """JSON numbers are read to the nearest FP64 (1 value in 8 came back an ulp off before
    serde_json's float_roundtrip)."""
    s = server()
    c = prism.Client(s.url, binary_threshold=None)
    a = np.random.default_rng(0).standard_normal(1000) * 100
    same(c.get(c.put(a)), a)


def test_the_store_refuses_bytes_objects(client):
    for texts in (np.array(["a", "b"]), np.array([b"a"], dtype=object)):
        with pytest.raises(prism.BadRequestError) as e:
            client.put(texts)
        assert e.value.status == 400 and "BYTES" in e.value.message, e.value


def test_delete_then_get_is_not_found(client):
    ref = client.put(np.ones(3, np.float32))
    client.delete(ref)
    with pytest.raises(prism.NotFoundError) as e:
        client.get(ref)
    assert e.value.status == 404 and isinstance(e.value, prism.PrismError)
    assert ref.hex in e.value.message, e.value.message
    with pytest.raises(prism.NotFoundError):
        client.get(ref, timeout=1)
    with pytest.raises(prism.NotFoundError) as e:
        client.delete(ref)
    assert e.value.status == 404
    with pytest.raises(prism.NotFoundError):
        client.object_meta(prism.ObjectRef("0" * 32))
    # Deleting a list deletes each.
    refs = [client.put(np.zeros(1, np.uint8)) for _ in range(3)]
    client.delete(refs)
    for r in refs:
        with pytest.raises(prism.NotFoundError):
            client.get(r)


def test_wait_and_get_honour_their_timeouts(client):
    # num_cpus=0: neither task waits for the other's CPU.
    slow = client.task("square", 3.0, num_cpus=0, fault_injection={"delay_ms": 1500})
    fast = client.task("square", 2.0, num_cpus=0)
    start = time.monotonic()
    ready, not_ready = client.wait([slow, fast], num_returns=2, timeout=0.3)
    took = time.monotonic() - start
    assert (ready, not_ready) == ([fast], [slow]) and 0.25 <= took < 1.4, (ready, not_ready, took)
    assert ready[0] is fast, "wait hands back the refs it was given"
    with pytest.raises(prism.GetTimeoutError) as e:
        client.get(slow, timeout=0.05)
    assert e.value.status == 504 and isinstance(e.value, TimeoutError)
    with pytest.raises(prism.GetTimeoutError):
        client.get([fast, slow], timeout=0.05)
    assert client.object_meta(slow)["state"] == "pending"
    ready, not_ready = client.wait([slow, fast], num_returns=2)
    assert set(ready) == {slow, fast} and not_ready == []
    assert float(client.get(slow, timeout=5)) == 9.0
    with pytest.raises(prism.BadRequestError):
        client.wait([fast], num_returns=2)
    with pytest.raises(prism.BadRequestError):
        client.wait([fast, fast])
    with pytest.raises(prism.NotFoundError):
        client.wait([prism.ObjectRef("f" * 32)])


# -- tasks -------------------------------------------------------------------------------


def test_tasks_chain_refs_and_inline_arrays(client):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    w = rng.standard_normal((4, 2)).astype(np.float32)
    x_ref, w_ref = client.put(x), client.put(w)
    product = client.task("matmul", x_ref, w_ref)
    shifted = client.task("add", product, np.float32(1.0))  # a ref and an inline scalar
    total = client.task("sum", shifted, num_cpus=0.5, ttl_s=30)
    assert isinstance(total, prism.ObjectRef)
    np.testing.assert_allclose(client.get(shifted), x @ w + 1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(client.get(total)), float((x @ w + 1).sum()), rtol=1e-5, atol=1e-5)
    # Inline only, integer arrays: the result is FP32, as every task's.
    y = client.get(client.task("mul", np.array([1, 2, 3], np.int64), np.array([[2], [3]], np.int64)))
    assert y.dtype == np.float32 and y.tolist() == [[2, 4, 6], [3, 6, 9]]
    for op, want in [("neg", -x), ("relu", np.maximum(x, 0)), ("transpose", x.T), ("square", x * x)]:
        np.testing.assert_allclose(client.get(client.task(op, x_ref)), want, rtol=1e-6, err_msg=op)
    soft = client.get(client.task("softmax", x_ref))
    np.testing.assert_allclose(soft.sum(axis=-1), np.ones(3), rtol=1e-5)


def test_task_failures_carry_kind_and_attempts(client):
    failing = client.task("square", 2.0, fault_injection={"error_rate": 1.0}, max_retries=0)
    with pytest.raises(prism.ObjectFailedError) as e:
        client.get(failing)
    err = e.value
    assert isinstance(err, prism.ServerError) and isinstance(err, prism.PrismError)
    assert (err.status, err.kind, err.attempts) == (500, "InjectedFault", 1), err
    assert "fault_injection" in err.message and "InjectedFault" in str(err)
    meta = client.object_meta(failing)
    assert meta["state"] == "failed" and meta["error"]["kind"] == "InjectedFault"
    # Retried when listed, up to max_retries: 1 + 2 executions.
    retried = client.task("square", 2.0, fault_injection={"error_rate": 1.0}, retry_exceptions=["InjectedFault"], max_retries=2)
    with pytest.raises(prism.ObjectFailedError) as e:
        client.get(retried)
    assert (e.value.kind, e.value.attempts) == ("InjectedFault", 3)
    # A shape error found when the task runs (its arguments are refs) lands in the result.
    bad = client.task("add", client.put(np.ones(2, np.float32)), client.put(np.ones(3, np.float32)))
    with pytest.raises(prism.ObjectFailedError) as e:
        client.get(bad)
    assert e.value.kind == "ShapeError" and e.value.attempts == 1, e.value
    # A task over a failed argument fails with that cause.
    with pytest.raises(prism.ObjectFailedError) as e:
        client.get(client.task("neg", failing))
    assert e.value.kind == "InjectedFault", e.value
    # What can be refused at once is: shapes of inline arguments, unknown ops and options,
    # asks that can never be met.
    for call in (
        lambda: client.task("add", np.ones(2), np.ones(3)),
        lambda: client.task("frobnicate", 1.0),
        lambda: client.task("square", 1.0, num_cpu=1),
        lambda: client.task("square", 1.0, num_cpus=1e5),
        lambda: client.task("square", 1.0, resources={"TPU": 1}),
        lambda: client.task("square", 1.0, retry_exceptions=["ModelError"]),
        lambda: client.task("square", prism.ObjectRef("0" * 32)),
    ):
        with pytest.raises((prism.BadRequestError, prism.NotFoundError)) as e:
            call()
        assert e.value.status in (400, 404) and e.value.message, e.value


# -- inference ---------------------------------------------------------------------------


def test_infer_celsius_by_value_and_by_ref(client):
    c = np.array([[100.0], [37.0], [-40.0]], np.float32)
    want = c * 9 / 5 + 32
    out = client.infer("celsius", {"INPUT0": c})
    assert list(out) == ["OUTPUT0"] and out["OUTPUT0"].dtype == np.float32
    np.testing.assert_allclose(out["OUTPUT0"], want, rtol=1e-6)
    # float64 is converted by the server; the outputs can be named.
    out = client.infer("celsius", {"INPUT0": c.astype(np.float64)}, outputs=["OUTPUT0"], request_id="r1")
    np.testing.assert_allclose(out["OUTPUT0"], want, rtol=1e-6)
    # The input read from the store, the output kept there.
    x = client.put(c)
    y = client.infer("celsius", {"INPUT0": x}, outputs={"OUTPUT0": {"object_ref": True}})["OUTPUT0"]
    assert isinstance(y, prism.ObjectRef)
    np.testing.assert_allclose(client.get(y), want, rtol=1e-6)
    # Async: refs at once.
    refs = client.infer_async("celsius", {"INPUT0": c})
    assert set(refs) == {"OUTPUT0"} and isinstance(refs["OUTPUT0"], prism.ObjectRef)
    np.testing.assert_allclose(client.get(refs["OUTPUT0"], timeout=10), want, rtol=1e-6)
    # A pipeline, and a larger model whose input crosses the binary threshold.
    s = client.infer("sum_of_squares", {"A": np.array([1.0, 3.0], np.float32), "B": np.array([2.0, 4.0], np.float32)})
    assert s["OUTPUT0"].tolist() == [5.0, 25.0]
    rows = np.random.default_rng(2).random((32, 784), dtype=np.float32)
    probs = client.infer("mlp", {"INPUT0": rows})["OUTPUT0"]
    assert probs.shape == (32, 10)
    np.testing.assert_allclose(probs.sum(axis=1), np.ones(32), rtol=1e-5)
    assert client.model_metadata("celsius")["inputs"][0]["name"] == "INPUT0"
    with pytest.raises(prism.NotFoundError) as e:
        client.infer("nope", {"INPUT0": c})
    assert e.value.status == 404
    with pytest.raises(prism.BadRequestError) as e:
        client.infer("celsius", {"X": c})
    assert e.value.status == 400 and "INPUT0" in e.value.message, e.value


def test_bytes_travel_through_a_text_model(server, tmp_path):
    config = tmp_path / "clf.toml"
    config.write_text(f'[[deployments]]\nname = "clf"\n[deployments.model]\nhuggingface = "{CLASSIFIER}"\n')
    s = server(config)
    ref = json.loads((CLASSIFIER / "reference.json").read_text())
    names = np.array(["negative", "neutral", "positive"])
    want_labels = list(names[np.argmax(np.array(ref["logits"]), axis=1)])
    for mode, threshold in MODES.items():
        c = prism.Client(s.url, binary_threshold=threshold)
        for texts in (np.array(ref["texts"], dtype=object), np.array([t.encode() for t in ref["texts"]], dtype=object)):
            out = c.infer("clf", {"TEXT": texts})
            np.testing.assert_allclose(out["LOGITS"], np.array(ref["logits"], np.float32), atol=1e-5, err_msg=mode)
            assert out["LABEL"].dtype == object and out["LABEL"].shape == (len(texts),)
            assert list(out["LABEL"]) == want_labels, mode
        c.close()


# -- tokens and the module-level API --------------------------------------------------


def test_a_token_guarded_server_needs_the_bearer_token(server):
    s = server(env={"PRISM_API_TOKEN": TOKEN})
    bare = prism.Client(f"http://{s.url}")
    assert bare.is_live(), "health stays open"
    with pytest.raises(prism.UnauthorizedError) as e:
        bare.put(np.ones(1, np.float32))
    assert e.value.status == 401 and "token" in e.value.message, e.value
    with pytest.raises(prism.UnauthorizedError):
        bare.infer("celsius", {"INPUT0": np.ones((1, 1), np.float32)})
    with pytest.raises(prism.UnauthorizedError):
        prism.Client(s.url, token="wrong-token-wrong-token").resources()
    with pytest.raises(ValueError):
        prism.Client(s.url, token="bad\ntoken")
    c = prism.init(f"http://{s.url}", token=TOKEN)
    try:
        assert prism.client() is c
        ref = prism.put(np.arange(3, dtype=np.float32))
        assert prism.get(prism.task("square", ref)).tolist() == [0.0, 1.0, 4.0]
        out = prism.infer("celsius", {"INPUT0": np.array([[100.0]], np.float32)})
        assert out["OUTPUT0"].tolist() == [[212.0]]
        ready, _ = prism.wait([ref])
        assert ready == [ref]
        assert prism.resources()["total"]["CPU"] > 0
        prism.delete(ref)  # no admin token: the API token opens the admin routes
        with pytest.raises(prism.NotFoundError):
            prism.get(ref)
    finally:
        prism.shutdown()
    assert not prism.is_initialized()
    with pytest.raises(prism.PrismError, match="init"):
        prism.get(ref)


def test_delete_needs_the_admin_token_when_there_is_one(server):
    admin = "python-client-admin-token-9876543210"
    s = server(env={"PRISM_API_TOKEN": TOKEN, "PRISM_ADMIN_TOKEN": admin})
    user = prism.Client(s.url, token=TOKEN)
    ref = user.put(np.ones(2, np.float32))
    with pytest.raises(prism.ForbiddenError) as e:
        user.delete(ref)
    assert e.value.status == 403 and "admin" in e.value.message, e.value
    prism.Client(s.url, token=admin).delete(ref)
    with pytest.raises(prism.NotFoundError):
        user.get(ref)


def test_a_connection_the_server_closed_while_idle_is_opened_again(server, tmp_path):
    config = tmp_path / "idle.toml"
    config.write_text(
        '[server]\nidle_timeout_s = 1\n[[deployments]]\nname = "celsius"\n[deployments.model]\nbuiltin = "celsius"\n'
    )
    s = server(config)
    c = prism.Client(s.url)
    ref = c.put(np.ones(1, np.float32))
    time.sleep(2.5)  # the kept-alive connection is closed by the server meanwhile
    assert c.get(ref).tolist() == [1.0]
    time.sleep(2.5)
    assert c.put(np.zeros(1, np.float32)) != ref


def test_an_unreachable_server_is_a_connection_error():
    with pytest.raises(prism.PrismConnectionError) as e:
        prism.Client("http://127.0.0.1:9").put(np.ones(1))  # port 9: discard, nothing listens
    assert e.value.status is None


# -- the examples ------------------------------------------------------------------------

SCRIPTS = sorted(EXAMPLES.glob("*.py"))


def run_example(script, url, token=None):
    env = {k: v for k, v in os.environ.items() if k not in ("PRISM_URL", "PRISM_TOKEN")}
    env["PRISM_URL"] = f"http://{url}"
    if token:
        env["PRISM_TOKEN"] = token
    p = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, f"{script.name} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
    return p.stdout


def test_there_is_an_example_per_pattern():
    names = {p.stem for p in SCRIPTS}
    assert {"object_store", "object_argument", "chaining", "retries", "resources", "nested", "wait_pipeline", "linear_model"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_example_runs_against_the_default_server(server, script):
    s = server()
    out = run_example(script, s.url)
    assert out.strip(), f"{script.name} printed nothing"


def test_resources_example_with_a_custom_resource(server):
    s = server(EXAMPLES / "resources.toml")
    out = run_example(EXAMPLES / "resources.py", s.url)
    assert "resources={'licence': 1}" in out and "6.0" in out, out


def test_an_example_against_a_token_guarded_server(server):
    s = server(env={"PRISM_API_TOKEN": TOKEN})
    out = run_example(EXAMPLES / "linear_model.py", s.url, token=TOKEN)
    assert "100 C = 212.0 F" in out, out
