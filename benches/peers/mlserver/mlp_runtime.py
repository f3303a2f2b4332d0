"""MLServer custom runtime serving the comparison's MLP (adaptive batching in model-settings.json)."""
import os
import sys

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

# run.sh copies mlp_np.py beside this file.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mlp_np import MLP  # noqa: E402


class MLPRuntime(MLModel):
    async def load(self) -> bool:
        self.mlp = MLP()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        y = self.mlp(NumpyCodec.decode_input(payload.inputs[0]))
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("OUTPUT0", y)])
