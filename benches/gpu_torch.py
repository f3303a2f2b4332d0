"""PyTorch on the same GPU as Prism, host-to-device copy and answer back included (as
Prism's GpuModel::forward and GpuEncoder::forward do). Prints one line per (dtype, batch).

    gpu_torch.py                 the 784 -> 256 (ReLU) -> 10 (softmax) MLP, fp32 and bf16,
                                 at batch 1, 32, 256, 1024
    gpu_torch.py --encoder DIR   writes DIR (if missing): a random BERT of all-MiniLM-L6-v2's
                                 shape (384 wide, 6 layers, 12 heads) with the tiny fixture's
                                 tokenizer, then times it (mean pooling, L2 normalisation) at
                                 1, 32 and 256 texts of 128 tokens, fp32 and bf16
"""
import json
import os
import shutil
import sys
import time

import torch

dev = torch.device("cuda:0")
torch.backends.cuda.matmul.allow_tf32 = False


def make_encoder(out):
    """A MiniLM-shaped folder from tests/fixtures/encoders/tiny-mean and random weights."""
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel

    src = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "encoders", "tiny-mean")
    shutil.copytree(src, out)
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    cfg.update(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
               max_position_embeddings=512, layer_norm_eps=1e-12, initializer_range=0.02)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(out, "tokenizer_config.json")) as f:
        tok = json.load(f)
    tok["model_max_length"] = 256
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(tok, f, indent=2)
    torch.manual_seed(0)
    model = BertModel(BertConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "dtype")}),
                      add_pooling_layer=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(out, "model.safetensors"))
    os.remove(os.path.join(out, "reference.json"))


def time_encoder(folder, tokens=128):
    from transformers import BertModel

    for dtype in (torch.float32, torch.bfloat16):
        model = BertModel.from_pretrained(folder, add_pooling_layer=False).to(dev, dtype).eval()
        vocab = model.config.vocab_size
        for texts in (1, 32, 256):
            ids = torch.randint(0, vocab, (texts, tokens)).pin_memory()
            mask = torch.ones(texts, tokens, dtype=torch.int64).pin_memory()

            def once():
                i, m = ids.to(dev, non_blocking=True), mask.to(dev, non_blocking=True)
                h = model(input_ids=i, attention_mask=m).last_hidden_state
                w = m.unsqueeze(-1).to(h.dtype)
                pooled = (h * w).sum(1) / w.sum(1).clamp(min=1e-9)
                return torch.nn.functional.normalize(pooled.float(), dim=1).cpu()

            with torch.inference_mode():
                for _ in range(5):
                    once()
                torch.cuda.synchronize()
                n, start = 0, time.perf_counter()
                while time.perf_counter() - start < 1.0:
                    once()
                    n += 1
                secs = time.perf_counter() - start
            print(f"torch {str(dtype).split('.')[-1]:<9}{texts:<8}{tokens:>10}{n * texts / secs:>14.0f}{secs * 1e3 / n:>14.3f}")


if len(sys.argv) == 3 and sys.argv[1] == "--encoder":
    if not os.path.isdir(sys.argv[2]):
        make_encoder(sys.argv[2])
    time_encoder(sys.argv[2])
    sys.exit(0)

for dtype in (torch.float32, torch.bfloat16):
    mlp = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10), torch.nn.Softmax(dim=1))
    mlp = mlp.to(dev, dtype).eval()
    for rows in (1, 32, 256, 1024):
        x = torch.rand(rows, 784).pin_memory()
        with torch.inference_mode():
            for _ in range(20):
                mlp(x.to(dev, dtype, non_blocking=True)).float().cpu()
            torch.cuda.synchronize()
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < 1.0:
                mlp(x.to(dev, dtype, non_blocking=True)).float().cpu()
                n += 1
            secs = time.perf_counter() - start
        print(f"torch {str(dtype).split('.')[-1]:<9}{rows:<8}{n * rows / secs:>14.0f}{secs * 1e3 / n:>14.3f}")
