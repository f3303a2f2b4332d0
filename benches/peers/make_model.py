"""The MLP every server in the comparison serves: 784 -> 256 (ReLU) -> 10 (softmax),
float32, numpy seed 0, nn.Linear layout and init range. Writes DIR/mlp.safetensors and
DIR/body.json (one V2 JSON request: INPUT0 FP32 [1, 784], uniform[0, 1) values).

Usage: make_model.py DIR"""
import json
import sys

import numpy as np
from safetensors.numpy import save_file

out = sys.argv[1]
rng = np.random.default_rng(0)


def linear(fan_in, fan_out):
    k = 1.0 / np.sqrt(fan_in)
    return (rng.uniform(-k, k, (fan_out, fan_in)).astype(np.float32), rng.uniform(-k, k, fan_out).astype(np.float32))


w1, b1 = linear(784, 256)
w2, b2 = linear(256, 10)
save_file({"fc1.weight": w1, "fc1.bias": b1, "fc2.weight": w2, "fc2.bias": b2}, f"{out}/mlp.safetensors")
x = np.round(np.random.default_rng(1).random(784), 4)
body = {"inputs": [{"name": "INPUT0", "shape": [1, 784], "datatype": "FP32", "data": [float(f"{v:.4f}") for v in x]}]}
with open(f"{out}/body.json", "w") as f:
    json.dump(body, f, separators=(",", ":"))
