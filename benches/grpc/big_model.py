"""A model with a 4 MiB input: one FP32 row of 1,048,576 values through one linear layer
to 1 output (weights 4 MiB). Writes DIR/big.safetensors. Usage: big_model.py DIR"""
import sys

import numpy as np
from safetensors.numpy import save_file

rng = np.random.default_rng(0)
save_file(
    {"w": rng.uniform(-1e-3, 1e-3, (1, 1 << 20)).astype(np.float32), "b": np.zeros(1, dtype=np.float32)},
    f"{sys.argv[1]}/big.safetensors",
)
