"""Prism's Python client: KServe V2 inference plus Ray-style objects, tasks and `wait`,
numpy in and out.

    import numpy as np, prism
    prism.init("http://127.0.0.1:8000")            # token="..." for a guarded server
    x = prism.put(np.arange(4, dtype=np.float32))   # an ObjectRef
    y = prism.task("square", x)                     # runs server-side; a ref at once
    print(prism.get(y))                             # [0. 1. 4. 9.]
    print(prism.infer("celsius", {"INPUT0": np.array([[100.0]], np.float32)}))

The module-level functions call the client `init` set; `Client` is the same API on an
explicit object (several servers, several tokens).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union, overload

import numpy as np

from ._client import DEFAULT_URL, RETRYABLE_KINDS, TASK_OPS, ArrayLike, Client, Input, Output
from ._codec import datatype_of, dtype_of
from . import _errors
from ._errors import *  # noqa: F403 (the error classes, as _errors.__all__ lists them)
from ._errors import PrismError
from ._ref import ObjectRef

__version__ = "0.1.0"

__all__ = [
    "init",
    "is_initialized",
    "shutdown",
    "client",
    "put",
    "get",
    "wait",
    "delete",
    "task",
    "infer",
    "infer_async",
    "object_meta",
    "resources",
    "available_resources",
    "Client",
    "ObjectRef",
    "datatype_of",
    "dtype_of",
    "DEFAULT_URL",
    "TASK_OPS",
    "RETRYABLE_KINDS",
    *_errors.__all__,
]

_default: Optional[Client] = None


def init(
    url: str = DEFAULT_URL,
    token: Optional[str] = None,
    *,
    binary_threshold: Optional[int] = 1 << 16,
    timeout: Optional[float] = None,
) -> Client:
    """Sets the client the module-level functions use (like `ray.init(address)`) and
    returns it. `token` is sent as `Authorization: Bearer <token>`. No request is sent
    here; the first call reaches the server."""
    global _default
    if _default is not None:
        _default.close()
    _default = Client(url, token, binary_threshold=binary_threshold, timeout=timeout)
    return _default


def is_initialized() -> bool:
    """Whether `init` has set a client."""
    return _default is not None


def shutdown() -> None:
    """Forgets the client `init` set (closing its connection)."""
    global _default
    if _default is not None:
        _default.close()
    _default = None


def client() -> Client:
    """The client `init` set; `PrismError` when `init` has not been called."""
    if _default is None:
        raise PrismError("prism.init(url, token) has not been called")
    return _default


def put(value: ArrayLike, *, ttl_s: Optional[float] = None) -> ObjectRef:
    """`Client.put` on the client `init` set: stores an array, returns its ref."""
    return client().put(value, ttl_s=ttl_s)


@overload
def get(refs: ObjectRef, timeout: Optional[float] = None) -> np.ndarray: ...
@overload
def get(refs: Sequence[ObjectRef], timeout: Optional[float] = None) -> List[np.ndarray]: ...


def get(
    refs: Union[ObjectRef, Sequence[ObjectRef]], timeout: Optional[float] = None
) -> Union[np.ndarray, List[np.ndarray]]:
    """`Client.get`: the array of a ref (a list of arrays for a list), waiting at most
    `timeout` seconds."""
    return client().get(refs, timeout)


def wait(
    refs: Sequence[ObjectRef], num_returns: int = 1, timeout: Optional[float] = None
) -> Tuple[List[ObjectRef], List[ObjectRef]]:
    """`Client.wait`: `(ready, not_ready)` once `num_returns` are ready or `timeout`
    seconds passed."""
    return client().wait(refs, num_returns, timeout)


def delete(refs: Union[ObjectRef, Sequence[ObjectRef]]) -> None:
    """`Client.delete`: frees one object or each of a list."""
    client().delete(refs)


def task(op: str, *args: Input, **options: Any) -> ObjectRef:
    """`Client.task`: starts a stateless op over refs and arrays, returns its result's ref."""
    return client().task(op, *args, **options)


def infer(
    model: str,
    inputs: Mapping[str, Input],
    outputs: Optional[Union[Sequence[str], Mapping[str, Mapping[str, Any]]]] = None,
    parameters: Optional[Mapping[str, Any]] = None,
    **kwargs: Any,
) -> Dict[str, Output]:
    """`Client.infer`: runs a model or pipeline, returns its outputs by name."""
    return client().infer(model, inputs, outputs, parameters, **kwargs)


def infer_async(
    model: str,
    inputs: Mapping[str, Input],
    outputs: Optional[Union[Sequence[str], Mapping[str, Mapping[str, Any]]]] = None,
    parameters: Optional[Mapping[str, Any]] = None,
    **kwargs: Any,
) -> Dict[str, ObjectRef]:
    """`Client.infer_async`: queues an inference, returns its outputs' refs at once."""
    return client().infer_async(model, inputs, outputs, parameters, **kwargs)


def object_meta(ref: ObjectRef) -> Dict[str, Any]:
    """`Client.object_meta`: an object's state, datatype, shape and size."""
    return client().object_meta(ref)


def resources() -> Dict[str, Dict[str, float]]:
    """`Client.resources`: total and available logical resources."""
    return client().resources()


def available_resources() -> Dict[str, float]:
    """`Client.available_resources` (like `ray.available_resources()`)."""
    return client().available_resources()
