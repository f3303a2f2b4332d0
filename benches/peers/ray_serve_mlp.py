"""Ray Serve peer: the MLP behind @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002).

Ray Serve does not speak V2: this route takes the same V2-shaped JSON body at
POST /v2/models/mlp/infer and answers V2-shaped JSON, hand-written. Usage: ray_serve_mlp.py PORT"""
import json
import os
import sys
import time

import numpy as np
import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mlp_np import MLP  # noqa: E402


# Without max_ongoing_requests above the batch size, @serve.batch never sees more than 5.
@serve.deployment(max_ongoing_requests=128)
class MLPDeployment:
    def __init__(self):
        self.mlp = MLP()

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def infer_batch(self, xs):
        y = self.mlp(np.concatenate(xs, axis=0))
        return [y[i : i + 1] for i in range(y.shape[0])]

    async def __call__(self, request: Request):
        inp = json.loads(await request.body())["inputs"][0]
        y = await self.infer_batch(np.asarray(inp["data"], dtype=np.float32).reshape(1, 784))
        out = {"model_name": "mlp", "outputs": [{"name": "OUTPUT0", "shape": [1, 10], "datatype": "FP32", "data": y.ravel().tolist()}]}
        return Response(json.dumps(out), media_type="application/json")


if __name__ == "__main__":
    ray.init(num_cpus=2, include_dashboard=False)
    quiet = {"enable_access_log": False, "log_level": "WARNING"}
    serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[1])}, logging_config=quiet)
    serve.run(MLPDeployment.options(logging_config=quiet).bind(), name="mlp", route_prefix="/v2/models/mlp/infer")
    print("READY", flush=True)
    while True:
        time.sleep(3600)
