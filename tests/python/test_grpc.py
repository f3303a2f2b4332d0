"""Triton's own gRPC client (`tritonclient.grpc`) against Prism, unchanged: health,
metadata, configuration, statistics, inference equal to REST's (tensors and texts), many
calls in flight, streams, the repository, error codes, and system shared memory through
`tritonclient.utils.shared_memory`, over gRPC and REST alike."""
import json
import os
import queue
import re
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

import proto_compat

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "encoders"


def clients(server):
    return grpcclient.InferenceServerClient(server.grpc_url), httpclient.InferenceServerClient(server.url)


def mlp_input(module, x, name="INPUT0", dtype="FP32"):
    i = module.InferInput(name, list(x.shape), dtype)
    i.set_data_from_numpy(x)
    return i


def code(e):
    return e.value.status()


def test_the_protos_are_wire_compatible_with_tritonclients():
    assert proto_compat.differences() == []


def test_health_metadata_config_statistics_and_index(prism):
    server = prism()
    g, _ = clients(server)
    assert g.is_server_live() and g.is_server_ready()
    assert g.is_model_ready("mlp") and g.is_model_ready("celsius")
    meta = g.get_server_metadata()
    assert meta.name == "prism" and "statistics" in meta.extensions
    assert "system_shared_memory" not in meta.extensions, "off by default"
    m = g.get_model_metadata("mlp")
    assert [(t.name, t.datatype, list(t.shape)) for t in m.inputs] == [("INPUT0", "FP32", [-1, 784])]
    assert [(t.name, list(t.shape)) for t in m.outputs] == [("OUTPUT0", [-1, 10])]
    cfg = g.get_model_config("mlp").config
    assert cfg.max_batch_size == 32 and list(cfg.input[0].dims) == [784]
    assert cfg.dynamic_batching.default_queue_policy.max_queue_size > 0
    assert cfg.instance_group[0].kind == 2  # KIND_CPU
    # The same configuration as REST's JSON.
    rest = httpclient.InferenceServerClient(server.url).get_model_config("mlp")
    assert cfg.name == rest["name"] and cfg.max_batch_size == rest["max_batch_size"]
    assert [list(o.dims) for o in cfg.output] == [o["dims"] for o in rest["output"]]
    index = g.get_model_repository_index()
    assert [m.name for m in index.models] == ["celsius", "mlp", "sum_of_squares"]

    g.infer("celsius", [mlp_input(grpcclient, np.array([[1.0], [2.0]], dtype=np.float32))])
    stats = g.get_inference_statistics("celsius").model_stats[0]
    assert stats.inference_count == 2 and stats.inference_stats.success.count == 1
    assert stats.batch_stats[0].batch_size == 2
    every = g.get_inference_statistics().model_stats
    assert {s.name for s in every} == {"celsius", "mlp"}


def test_inference_answers_equal_rests(prism, tmp_path):
    config = tmp_path / "both.toml"
    config.write_text(
        (Path(__file__).resolve().parents[2] / "config" / "src" / "default.toml").read_text()
        + "".join(
            f'\n[[deployments]]\nname = "{n}"\n[deployments.model]\nhuggingface = "{FIXTURES / f}"\n'
            for n, f in (("mean", "tiny-mean"), ("clf", "tiny-classifier"))
        )
    )
    g, h = clients(prism(config))
    x = np.random.default_rng(0).random((5, 784), dtype=np.float32)
    yg = g.infer("mlp", [mlp_input(grpcclient, x)]).as_numpy("OUTPUT0")
    yh = h.infer("mlp", [mlp_input(httpclient, x)]).as_numpy("OUTPUT0")
    assert yg.shape == (5, 10) and yg.dtype == np.float32
    np.testing.assert_array_equal(yg, yh)
    # Other wire datatypes are converted to the model's FP32, as over REST.
    y = g.infer("celsius", [mlp_input(grpcclient, np.array([[100]], dtype=np.int64), dtype="INT64")])
    np.testing.assert_array_equal(y.as_numpy("OUTPUT0"), [[212.0]])

    ref = json.loads((FIXTURES / "tiny-mean" / "reference.json").read_text())
    texts = np.array(ref["texts"], dtype=object)
    text = grpcclient.InferInput("TEXT", [len(texts)], "BYTES")
    text.set_data_from_numpy(texts)
    got = g.infer("mean", [text]).as_numpy("EMBEDDING")
    assert np.abs(got - np.array(ref["embeddings"], dtype=np.float32)).max() <= 1e-5

    ref = json.loads((FIXTURES / "tiny-classifier" / "reference.json").read_text())
    texts = np.array(ref["texts"], dtype=object)
    text = grpcclient.InferInput("TEXT", [len(texts)], "BYTES")
    text.set_data_from_numpy(texts)
    answer = g.infer("clf", [text], outputs=[grpcclient.InferRequestedOutput(n) for n in ("LOGITS", "LABEL")])
    assert np.abs(answer.as_numpy("LOGITS") - np.array(ref["logits"], dtype=np.float32)).max() <= 1e-5
    names = np.array(["negative", "neutral", "positive"])
    assert [l.decode() for l in answer.as_numpy("LABEL")] == list(names[np.argmax(np.array(ref["logits"]), axis=1)])


def test_64_calls_in_flight_are_each_answered_with_their_own_rows(prism):
    g, _ = clients(prism())
    rng = np.random.default_rng(1)
    xs = [rng.random((1 + i % 3, 784), dtype=np.float32) for i in range(64)]
    done = queue.Queue()
    for i, x in enumerate(xs):
        g.async_infer("mlp", [mlp_input(grpcclient, x)], partial_callback(done, i), request_id=str(i))
    answers = {}
    for _ in xs:
        i, result, error = done.get(timeout=60)
        assert error is None, error
        answers[i] = result
    ref = {i: g.infer("mlp", [mlp_input(grpcclient, x)]).as_numpy("OUTPUT0") for i, x in enumerate(xs)}
    for i, result in answers.items():
        assert result.get_response().id == str(i)
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), ref[i], rtol=1e-6, atol=1e-7)


def partial_callback(q, i):
    return lambda result, error: q.put((i, result, error))


def test_a_stream_answers_every_request_and_an_error_in_it_does_not_end_it(prism):
    g, _ = clients(prism())
    answers = queue.Queue()
    g.start_stream(callback=lambda result, error: answers.put((result, error)))
    for i in range(16):
        if i == 5:
            bad = grpcclient.InferInput("INPUT0", [1, 3], "FP32")
            bad.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
            g.async_stream_infer("mlp", [bad], request_id="bad")
        g.async_stream_infer("celsius", [mlp_input(grpcclient, np.array([[float(i)]], dtype=np.float32))], request_id=str(i))
    got, errors = {}, []
    for _ in range(17):
        result, error = answers.get(timeout=60)
        if error is not None:
            errors.append(str(error))
        else:
            got[result.get_response().id] = result.as_numpy("OUTPUT0")[0, 0]
    g.stop_stream()
    assert sorted(got) == sorted(str(i) for i in range(16))
    for i in range(16):
        np.testing.assert_allclose(got[str(i)], i * 9 / 5 + 32, rtol=1e-6)
    assert len(errors) == 1 and "expected shape [-1, 784]" in errors[0] and "[1, 3]" in errors[0]


def test_the_repository_loads_and_unloads_over_grpc(prism, affine):
    g, _ = clients(prism(affine.config))
    x = np.array([[3.0]], dtype=np.float32)
    assert g.infer("affine", [mlp_input(grpcclient, x, name="x")]).as_numpy("y")[0, 0] == 7.0
    g.unload_model("affine")
    assert not g.is_model_ready("affine")
    index = g.get_model_repository_index().models
    assert [(m.name, m.state, m.reason) for m in index] == [("affine", "UNAVAILABLE", "unloaded")]
    with pytest.raises(InferenceServerException) as e:
        g.infer("affine", [mlp_input(grpcclient, x, name="x")])
    assert code(e) == "StatusCode.UNAVAILABLE" and "not ready" in e.value.message()
    affine.write(-1.0, 0.5)
    g.load_model("affine")
    assert g.infer("affine", [mlp_input(grpcclient, x, name="x")]).as_numpy("y")[0, 0] == -2.5
    with pytest.raises(InferenceServerException) as e:
        g.load_model("affine", config='{"max_batch_size": 8}')
    assert code(e) == "StatusCode.INVALID_ARGUMENT" and "`config` is not supported" in e.value.message()


def test_errors_carry_their_code_and_the_rest_message(prism, tmp_path):
    (tmp_path / "slow.toml").write_text("""
[[deployments]]
name = "slow"
[deployments.model]
builtin = "celsius"
[deployments.fault_injection]
delay_ms = 2000
""")
    server = prism(tmp_path / "slow.toml")
    g, h = clients(server)
    with pytest.raises(InferenceServerException) as e:
        g.get_model_metadata("nope")
    assert code(e) == "StatusCode.NOT_FOUND" and "unknown model `nope`" in e.value.message()
    bad = grpcclient.InferInput("INPUT0", [1, 2], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 2), dtype=np.float32))
    with pytest.raises(InferenceServerException) as e:
        g.infer("slow", [bad])
    assert code(e) == "StatusCode.INVALID_ARGUMENT"
    hbad = httpclient.InferInput("INPUT0", [1, 2], "FP32")
    hbad.set_data_from_numpy(np.zeros((1, 2), dtype=np.float32))
    with pytest.raises(InferenceServerException) as rest:
        h.infer("slow", [hbad])
    assert e.value.message() == rest.value.message(), "one message, whichever protocol"
    # The `timeout` parameter (microseconds) is the request's deadline over gRPC too.
    x = mlp_input(grpcclient, np.array([[1.0]], dtype=np.float32))
    with pytest.raises(InferenceServerException) as e:
        g.infer("slow", [x], timeout=100_000)
    assert code(e) == "StatusCode.DEADLINE_EXCEEDED" and "timed out" in e.value.message()
    # A client deadline travels as grpc-timeout: the request's deadline on the server.
    with pytest.raises(InferenceServerException) as e:
        g.infer("slow", [x], client_timeout=0.2)
    assert code(e) == "StatusCode.DEADLINE_EXCEEDED"
    # A call the client cancels drops its queued request (counted as cancelled).
    call = g.async_infer("slow", [x], lambda result, error: None)
    time.sleep(0.3)
    call.cancel()
    deadline = time.time() + 10
    while True:
        metrics = urllib.request.urlopen(f"http://{server.url}/metrics").read().decode()
        outcome = lambda o: float(re.search(rf'prism_inference_requests_total{{model="slow",outcome="{o}"}} (\S+)', metrics).group(1))
        if outcome("cancelled") + outcome("timeout") >= 3 or time.time() > deadline:
            break
        time.sleep(0.05)
    assert outcome("cancelled") >= 1, metrics
    assert outcome("timeout") + outcome("cancelled") == 3 and outcome("success") == 0
    with pytest.raises(InferenceServerException) as e:
        g.register_system_shared_memory("r", "/prism_nothing", 8)
    assert code(e) == "StatusCode.PERMISSION_DENIED" and "allow_shared_memory" in e.value.message()


def shm_server(prism, tmp_path):
    config = tmp_path / "shm.toml"
    default = (Path(__file__).resolve().parents[2] / "config" / "src" / "default.toml").read_text()
    config.write_text(default.replace("[server]\n", "[server]\nallow_shared_memory = true\n", 1))
    return prism(config)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_system_shared_memory_carries_inputs_and_outputs(prism, tmp_path, protocol):
    server = shm_server(prism, tmp_path)
    g, h = clients(server)
    client, module = (g, grpcclient) if protocol == "grpc" else (h, httpclient)
    x = np.random.default_rng(2).random((4, 784), dtype=np.float32)
    suffix = f"{os.getpid()}_{protocol}"
    inp = shm.create_shared_memory_region("in", f"/prism_in_{suffix}", x.nbytes)
    out = shm.create_shared_memory_region("out", f"/prism_out_{suffix}", 64 + 160)
    try:
        shm.set_shared_memory_region(inp, [x])
        client.register_system_shared_memory("in", f"/prism_in_{suffix}", x.nbytes)
        # The output region starts 64 bytes into its object.
        client.register_system_shared_memory("out", f"/prism_out_{suffix}", 160, offset=64)
        status = client.get_system_shared_memory_status()
        names = sorted(status.regions) if protocol == "grpc" else sorted(r["name"] for r in status)
        assert names == ["in", "out"]
        assert "system_shared_memory" in list(g.get_server_metadata().extensions)

        i = module.InferInput("INPUT0", [4, 784], "FP32")
        i.set_shared_memory("in", x.nbytes)
        o = module.InferRequestedOutput("OUTPUT0")
        o.set_shared_memory("out", 160)
        answer = client.infer("mlp", [i], outputs=[o])
        described = answer.get_output("OUTPUT0")
        if protocol == "grpc":
            assert list(described.shape) == [4, 10]
            assert described.parameters["shared_memory_byte_size"].int64_param == 160
        else:
            assert described["shape"] == [4, 10] and described["parameters"]["shared_memory_byte_size"] == 160
        whole = shm.get_contents_as_numpy(out, np.uint8, [64 + 160])
        assert not whole[:64].any(), "nothing written before the region's offset"
        y = whole[64:].view(np.float32).reshape(4, 10)
        ref = client.infer("mlp", [mlp_input(module, x)]).as_numpy("OUTPUT0")
        np.testing.assert_array_equal(y, ref)

        # An output that does not fit, a place beyond the region, an unknown region.
        small = module.InferRequestedOutput("OUTPUT0")
        small.set_shared_memory("out", 40)
        with pytest.raises(InferenceServerException, match="does not fit in the 40 bytes"):
            client.infer("mlp", [i], outputs=[small])
        beyond = module.InferInput("INPUT0", [4, 784], "FP32")
        beyond.set_shared_memory("in", x.nbytes, offset=16)
        with pytest.raises(InferenceServerException, match="beyond shared memory region `in`"):
            client.infer("mlp", [beyond])
        client.unregister_system_shared_memory("nope")  # not an error, as with Triton
        with pytest.raises(InferenceServerException, match="`nope` is not registered"):
            client.get_system_shared_memory_status("nope")
        with pytest.raises(InferenceServerException, match="does not name a region"):
            client.register_system_shared_memory("evil", "/../etc/passwd", 8)
        client.unregister_system_shared_memory()
        unregistered = module.InferInput("INPUT0", [4, 784], "FP32")
        unregistered.set_shared_memory("in", x.nbytes)
        with pytest.raises(InferenceServerException, match="`in` is not registered"):
            client.infer("mlp", [unregistered])
    finally:
        shm.destroy_shared_memory_region(inp)
        shm.destroy_shared_memory_region(out)
