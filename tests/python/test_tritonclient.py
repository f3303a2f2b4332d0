"""Triton's own Python client (`tritonclient.http`) against Prism, unchanged."""

import numpy as np
import pytest
import tritonclient.http as httpclient
from safetensors.numpy import save_file
from tritonclient.utils import InferenceServerException


def infer(client, model, x, binary, dtype="FP32", name="INPUT0", out="OUTPUT0"):
    inp = httpclient.InferInput(name, list(x.shape), dtype)
    inp.set_data_from_numpy(x, binary_data=binary)
    r = client.infer(model, [inp], outputs=[httpclient.InferRequestedOutput(out, binary_data=binary)])
    return r.as_numpy(out)


def test_default_models_health_metadata_config_and_stats(prism):
    server = prism()
    c = httpclient.InferenceServerClient(url=server.url)
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready("celsius") and c.is_model_ready("mlp")
    meta = c.get_server_metadata()
    assert meta["name"] == "prism" and "binary_tensor_data" in meta["extensions"]
    m = c.get_model_metadata("mlp")
    assert m["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 784]}]
    cfg = c.get_model_config("mlp")
    assert cfg["max_batch_size"] == 32 and cfg["input"][0]["dims"] == [784]
    index = c.get_model_repository_index()
    assert [e["name"] for e in index] == ["celsius", "mlp", "sum_of_squares"]

    for binary in (True, False):
        y = infer(c, "celsius", np.array([[100.0], [-40.0]], dtype=np.float32), binary)
        np.testing.assert_array_equal(y, [[212.0], [-40.0]])
    x = np.random.default_rng(0).random((4, 784), dtype=np.float32)
    yb, yj = infer(c, "mlp", x, True), infer(c, "mlp", x, False)
    assert yb.shape == (4, 10) and yb.dtype == np.float32
    np.testing.assert_allclose(yb, yj, rtol=0, atol=0)
    np.testing.assert_allclose(yb.sum(axis=1), 1.0, rtol=1e-5)
    # Other wire datatypes are converted to the model's FP32.
    y = infer(c, "celsius", np.array([[100]], dtype=np.int64), True, dtype="INT64")
    np.testing.assert_array_equal(y, [[212.0]])

    stats = c.get_inference_statistics("celsius")["model_stats"][0]
    assert stats["inference_count"] == 5 and stats["inference_stats"]["success"]["count"] == 3


def test_errors_reach_the_client_with_their_message(prism):
    c = httpclient.InferenceServerClient(url=prism().url)
    inp = httpclient.InferInput("INPUT0", [1, 783], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 783), dtype=np.float32))
    with pytest.raises(InferenceServerException, match=r"expected shape \[-1, 784\].*got \[1, 783\]"):
        c.infer("mlp", [inp])
    with pytest.raises(InferenceServerException, match="unknown model `nope`"):
        c.get_model_metadata("nope")


def test_a_safetensors_mlp_matches_numpy(prism, tmp_path):
    rng = np.random.default_rng(1)
    w1 = rng.uniform(-0.1, 0.1, (256, 784)).astype(np.float32)
    b1 = rng.uniform(-0.1, 0.1, 256).astype(np.float32)
    w2 = rng.uniform(-0.1, 0.1, (10, 256)).astype(np.float32)
    b2 = rng.uniform(-0.1, 0.1, 10).astype(np.float32)
    save_file({"fc1.weight": w1, "fc1.bias": b1, "fc2.weight": w2, "fc2.bias": b2}, str(tmp_path / "mlp.safetensors"))
    (tmp_path / "mlp.toml").write_text("""
[[deployments]]
name = "mlp"
[deployments.model]
weights = "mlp.safetensors"
layers = [
  { op = "linear", weight = "fc1.weight", bias = "fc1.bias" },
  { op = "relu" },
  { op = "linear", weight = "fc2.weight", bias = "fc2.bias" },
  { op = "softmax" },
]
inputs  = [{ name = "INPUT0",  datatype = "FP32", shape = [-1, 784] }]
outputs = [{ name = "OUTPUT0", datatype = "FP32", shape = [-1, 10] }]
""")
    c = httpclient.InferenceServerClient(url=prism(tmp_path / "mlp.toml").url)
    x = rng.random((8, 784), dtype=np.float32)
    h = np.maximum(x.astype(np.float64) @ w1.T + b1, 0)
    z = h @ w2.T + b2
    ref = np.exp(z - z.max(axis=1, keepdims=True))
    ref /= ref.sum(axis=1, keepdims=True)
    for binary in (True, False):
        np.testing.assert_allclose(infer(c, "mlp", x, binary), ref, rtol=1e-5, atol=1e-7)


def test_unload_and_load_through_the_repository_api(prism, affine):
    """Triton's explicit model control: unload, then load again after the weights file was
    replaced (written beside it and renamed over it)."""
    c = httpclient.InferenceServerClient(url=prism(affine.config).url)
    x = np.array([[3.0]], dtype=np.float32)
    np.testing.assert_array_equal(infer(c, "affine", x, True, name="x", out="y"), [[7.0]])
    assert "model_repository" in c.get_server_metadata()["extensions"]

    c.unload_model("affine")
    assert not c.is_model_ready("affine")
    assert c.get_model_repository_index() == [{"name": "affine", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}]
    with pytest.raises(InferenceServerException, match="not ready"):
        infer(c, "affine", x, True, name="x", out="y")

    affine.write(-1.0, 0.5)
    c.load_model("affine")
    assert c.is_model_ready("affine")
    np.testing.assert_array_equal(infer(c, "affine", x, False, name="x", out="y"), [[-2.5]])
    with pytest.raises(InferenceServerException, match="`config` is not supported"):
        c.load_model("affine", config='{"max_batch_size": 8}')
