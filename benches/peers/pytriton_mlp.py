"""Triton peer (the tritonserver bundled with nvidia-pytriton): the MLP as model "mlp",
dynamic batching with max_batch_size 32 and a 2 ms queue delay. Usage: pytriton_mlp.py PORT
(gRPC on PORT+1, metrics on PORT+2)."""
import os
import sys

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mlp_np import MLP  # noqa: E402

port = int(sys.argv[1])
mlp = MLP()


@batch
def infer_fn(INPUT0):
    return {"OUTPUT0": mlp(INPUT0)}


cfg = TritonConfig(http_address="127.0.0.1", http_port=port, grpc_address="127.0.0.1", grpc_port=port + 1,
                   metrics_address="127.0.0.1", metrics_port=port + 2)
# PyTriton locks the statistics endpoints behind a random token unless one is given.
with Triton(config=cfg, security_config=TritonSecurityConfig(access_token="prism-bench")) as triton:
    triton.bind(
        model_name="mlp",
        infer_func=infer_fn,
        inputs=[Tensor(name="INPUT0", dtype=np.float32, shape=(784,))],
        outputs=[Tensor(name="OUTPUT0", dtype=np.float32, shape=(10,))],
        config=ModelConfig(max_batch_size=32, batcher=DynamicBatcher(max_queue_delay_microseconds=2000)),
        strict=True,
    )
    triton.serve()
