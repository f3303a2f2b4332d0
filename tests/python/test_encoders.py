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


def test_the_openai_client_gets_the_same_embeddings(prism, tmp_path):
    import openai

    server = prism(deployment(tmp_path, mean="tiny-mean", clf="tiny-classifier"))
    client = openai.OpenAI(base_url=f"http://{server.url}/v1", api_key="not-checked")
    ref = json.loads((FIXTURES / "tiny-mean" / "reference.json").read_text())
    want = np.array(ref["embeddings"], dtype=np.float32)
    # The client asks for base64 by default, and decodes it.
    for fmt in (openai.NOT_GIVEN, "float"):
        r = client.embeddings.create(model="mean", input=ref["texts"], encoding_format=fmt)
        got = np.array([d.embedding for d in r.data], dtype=np.float32)
        assert np.abs(got - want).max() <= 1e-5
        assert [d.index for d in r.data] == list(range(len(ref["texts"])))
        assert r.usage.prompt_tokens == sum(min(n, 24) for n in ref["tokens"])
    one = client.embeddings.create(model="mean", input=ref["texts"][0])
    assert np.abs(np.array(one.data[0].embedding) - want[0]).max() <= 1e-5
    assert [m.id for m in client.models.list()] == ["mean"]
    try:
        client.embeddings.create(model="nope", input="x")
        raise AssertionError("an unknown model is refused")
    except openai.NotFoundError as e:
        assert "unknown model `nope`" in str(e)
    try:
        client.embeddings.create(model="clf", input="x")
        raise AssertionError("a classifier is not an embedding model")
    except openai.BadRequestError as e:
        assert "not an embedding model" in str(e)
