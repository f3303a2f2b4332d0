"""Models trained in scikit-learn, exported to safetensors, served by Prism: the answers
equal scikit-learn's own (float32 tolerance)."""
import numpy as np
import pytest
import tritonclient.http as httpclient
from safetensors.numpy import save_file
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier

CONFIG = """
[[deployments]]
name = "digits_{activation}"
num_replicas = 2

[deployments.model]
weights = "digits_{activation}.safetensors"
layers = [
  {{ op = "matmul", weight = "coefs_0" }},      # scikit-learn keeps [in, out]
  {{ op = "add", tensor = "intercepts_0" }},
  {{ op = "{op}" }},
  {{ op = "linear", weight = "out.weight", bias = "out.bias" }},   # [out, in], as PyTorch
  {{ op = "softmax" }},
]
inputs  = [{{ name = "INPUT0",  datatype = "FP32", shape = [-1, 64] }}]
outputs = [{{ name = "OUTPUT0", datatype = "FP32", shape = [-1, 10] }}]

[deployments.batching]
max_batch_size = 64
"""

OPS = {"relu": "relu", "tanh": "tanh", "logistic": "sigmoid"}


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_mlp_classifiers_answer_like_scikit_learn(prism, tmp_path):
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    configs = []
    models = {}
    for activation, op in OPS.items():
        clf = MLPClassifier(hidden_layer_sizes=(32,), activation=activation, max_iter=300, random_state=0)
        clf.fit(X[:1200], y[:1200])
        save_file(
            {
                "coefs_0": clf.coefs_[0].astype(np.float32),
                "intercepts_0": clf.intercepts_[0].astype(np.float32),
                "out.weight": np.ascontiguousarray(clf.coefs_[1].T).astype(np.float32),
                "out.bias": clf.intercepts_[1].astype(np.float32),
            },
            str(tmp_path / f"digits_{activation}.safetensors"),
        )
        configs.append(CONFIG.format(activation=activation, op=op))
        models[f"digits_{activation}"] = clf
    (tmp_path / "digits.toml").write_text("\n".join(configs))

    c = httpclient.InferenceServerClient(url=prism(tmp_path / "digits.toml").url)
    test = X[1200:1264]
    for name, clf in models.items():
        want = clf.predict_proba(test)
        inp = httpclient.InferInput("INPUT0", list(test.shape), "FP32")
        inp.set_data_from_numpy(test)
        got = c.infer(name, [inp]).as_numpy("OUTPUT0")
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=name)
        assert (got.argmax(axis=1) == clf.predict(test)).all(), name
