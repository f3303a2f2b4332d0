"""The comparison's MLP in numpy, for the Python peers. Weights from $PEERS_DIR/mlp.safetensors."""
import os

import numpy as np
from safetensors.numpy import load_file


class MLP:
    def __init__(self):
        d = load_file(os.path.join(os.environ["PEERS_DIR"], "mlp.safetensors"))
        self.w1t = np.ascontiguousarray(d["fc1.weight"].T)
        self.b1 = d["fc1.bias"]
        self.w2t = np.ascontiguousarray(d["fc2.weight"].T)
        self.b2 = d["fc2.bias"]

    def __call__(self, x):
        x = np.asarray(x, dtype=np.float32).reshape(-1, 784)
        h = x @ self.w1t
        h += self.b1
        np.maximum(h, 0, out=h)
        z = h @ self.w2t
        z += self.b2
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z
