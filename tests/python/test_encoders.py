"""Encoder folders through Triton's own client: texts as numpy object arrays (BYTES),
sent and answered in the binary extension, equal to sentence-transformers' vectors."""
import json
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "encoders"


def deployment(tmp_path, **models):
    text = "".join(
        f'[[deployments]]\nname = "{name}"\n[deployments.model]\nhuggingface = "{FIXTURES / folder}"\n'
        for name, folder in models.items()
    )
    path = tmp_path / "encoders.toml"
    path.write_text(text)
    return path


def test_tritonclient_sends_texts_and_reads_embeddings_and_labels(prism, tmp_path):
    server = prism(deployment(tmp_path, mean="tiny-mean", clf="tiny-classifier"))
    client = httpclient.InferenceServerClient(server.url)
    meta = client.get_model_metadata("mean")
    assert meta["inputs"] == [{"name": "TEXT", "datatype": "BYTES", "shape": [-1]}]

    ref = json.loads((FIXTURES / "tiny-mean" / "reference.json").read_text())
    texts = np.array(ref["texts"], dtype=object)
    for binary in (True, False):
        text = httpclient.InferInput("TEXT", [len(texts)], "BYTES")
        text.set_data_from_numpy(texts, binary_data=binary)
        out = httpclient.InferRequestedOutput("EMBEDDING", binary_data=binary)
        got = client.infer("mean", [text], outputs=[out]).as_numpy("EMBEDDING")
        assert got.shape == (len(texts), 64)
        assert np.abs(got - np.array(ref["embeddings"], dtype=np.float32)).max() <= 1e-5

    ref = json.loads((FIXTURES / "tiny-classifier" / "reference.json").read_text())
    texts = np.array(ref["texts"], dtype=object)
    text = httpclient.InferInput("TEXT", [len(texts), 1], "BYTES")
    text.set_data_from_numpy(texts.reshape(-1, 1), binary_data=True)
    answer = client.infer(
        "clf",
        [text],
        outputs=[httpclient.InferRequestedOutput(n, binary_data=True) for n in ("LOGITS", "LABEL")],
    )
    logits = answer.as_numpy("LOGITS")
    assert np.abs(logits - np.array(ref["logits"], dtype=np.float32)).max() <= 1e-5
    names = np.array(["negative", "neutral", "positive"])
    labels = [l.decode() for l in answer.as_numpy("LABEL")]
    assert labels == list(names[np.argmax(np.array(ref["logits"]), axis=1)])
