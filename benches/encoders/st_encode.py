"""sentence-transformers' side of benches/encoders.sh: `encode(batch_size=32)` on
`SENTENCES` sentences of `WORDS` words (the same generator as Prism's `encode` binary),
with torch on 2 threads; and one sentence encoded alone. Prints one JSON line.

    python st_encode.py MODEL_DIR WORDS SENTENCES ROUNDS
"""
import json
import statistics
import sys
import time

import torch
from sentence_transformers import SentenceTransformer

VOCAB = ["the", "model", "serves", "requests", "in", "batches", "on", "graphics", "cards", "and", "answers",
         "quickly", "while", "a", "queue", "holds", "what", "waits", "for", "its", "turn", "every", "replica",
         "computes"]


def sentences(n, words):
    return [" ".join(VOCAB[(i * 7 + j * 13 + (i * j) % 5) % len(VOCAB)] for j in range(words)) for i in range(n)]


def main():
    model_dir, words, n, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(2)
    model = SentenceTransformer(model_dir, device="cpu")
    texts = sentences(n, words)
    model.encode(texts[:64], batch_size=32)
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        model.encode(texts, batch_size=32)
        rates.append(n / (time.perf_counter() - start))
    alone = []
    for text in texts[:50]:
        start = time.perf_counter()
        model.encode([text], batch_size=1)
        alone.append((time.perf_counter() - start) * 1e3)
    tokens = sum(len(model.tokenizer(t)["input_ids"]) for t in texts) / n
    print(json.dumps({
        "words": words,
        "tokens_per_sentence": round(tokens, 1),
        "sentences_per_s": round(statistics.median(rates), 1),
        "min": round(min(rates), 1),
        "max": round(max(rates), 1),
        "alone_ms_p50": round(statistics.median(alone), 2),
    }))


if __name__ == "__main__":
    main()
