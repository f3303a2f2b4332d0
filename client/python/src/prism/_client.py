"""`Client`: Prism's REST API from Python, numpy in and out.

Every method is one (or, for lists, a few) HTTP calls; each docstring says which. The
object and task calls are Prism's Ray-like extensions (`/v2/objects`, `/v2/wait`,
`/v2/tasks/{op}`); `infer` is KServe V2 (`/v2/models/{m}/infer`).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union, overload
from urllib.parse import quote

import numpy as np

from . import _codec
from ._errors import PrismError, ProtocolError
from ._http import HEADER_LENGTH, Answer, Http
from ._ref import ObjectRef

__all__ = ["Client", "DEFAULT_URL", "TASK_OPS", "RETRYABLE_KINDS"]

DEFAULT_URL = "http://127.0.0.1:8000"

#: The stateless ops `POST /v2/tasks/{op}` runs.
TASK_OPS = (
    "matmul", "add", "sub", "mul", "div", "sum", "mean", "square", "neg",
    "relu", "sigmoid", "tanh", "softmax", "transpose",
)  # fmt: skip

#: The application error kinds a task may retry (`retry_exceptions=True` names them all).
RETRYABLE_KINDS = ("InjectedFault", "ShapeError")

ArrayLike = Any  # a numpy array, or anything np.asarray takes (scalars, nested lists)
Input = Union[ObjectRef, ArrayLike]
Output = Union[np.ndarray, ObjectRef]


def _json(value: Any) -> bytes:
    # NaN and ±Inf are written as Triton writes them (NaN, Infinity, -Infinity), which
    # Prism accepts inside tensor data.
    return json.dumps(value, separators=(",", ":"), allow_nan=True).encode("utf-8")


def _loads(answer: Answer, what: str) -> Dict[str, Any]:
    try:
        doc = json.loads(answer.body)
    except ValueError as e:
        raise ProtocolError(f"{what}: the answer is not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise ProtocolError(f"{what}: expected a JSON object, got {type(doc).__name__}")
    return doc


def _ref_of(value: Any, what: str) -> ObjectRef:
    if isinstance(value, ObjectRef):
        return value
    raise TypeError(f"{what}: expected an ObjectRef, got {type(value).__name__}")


def _millis(seconds: float) -> int:
    if seconds < 0 or math.isnan(seconds):
        raise ValueError(f"a timeout is a number of seconds ≥ 0, got {seconds}")
    return int(math.ceil(seconds * 1000))


def _split_binary(answer: Answer, what: str) -> Tuple[Dict[str, Any], bytes]:
    """The JSON part of an answer and the bytes after it (none for a JSON answer)."""
    n = answer.headers.get(HEADER_LENGTH.lower())
    if n is None:
        return _loads(answer, what), b""
    try:
        length = int(n)
    except ValueError:
        raise ProtocolError(f"{what}: {HEADER_LENGTH} is {n!r}, not a byte count") from None
    if length > len(answer.body):
        raise ProtocolError(f"{what}: {HEADER_LENGTH} says {length} bytes, the body has {len(answer.body)}")
    try:
        head = json.loads(answer.body[:length])
    except ValueError as e:
        raise ProtocolError(f"{what}: the JSON header does not parse: {e}") from e
    if not isinstance(head, dict):
        raise ProtocolError(f"{what}: the JSON header is not an object")
    return head, answer.body[length:]


class Client:
    """A client for one Prism server (or, for `infer`, any KServe V2 server).

    `url` is the server's HTTP address; `token`, when given, is sent with every call as
    `Authorization: Bearer <token>` (the server's `api_token`, or its `admin_token`).
    Tensors of at least `binary_threshold` bytes travel in the binary tensor extension
    (raw little-endian bytes after a JSON header) and answers are asked for in binary;
    `binary_threshold=None` keeps everything JSON, `0` sends everything binary.
    `timeout` bounds each socket operation (None: wait as long as the server takes).
    Safe to share between threads (each thread keeps its own connection)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: Optional[str] = None,
        *,
        binary_threshold: Optional[int] = 1 << 16,
        timeout: Optional[float] = None,
    ) -> None:
        self._http = Http(url, token, timeout)
        self.binary_threshold = binary_threshold

    @property
    def url(self) -> str:
        """The server's base URL."""
        return self._http.url

    def close(self) -> None:
        """Closes this thread's kept-alive connection."""
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"prism.Client({self.url!r})"

    # -- tensors on the wire ------------------------------------------------------

    def _binary(self, array: np.ndarray, datatype: str) -> Optional[bytes]:
        """`array`'s binary encoding if it should travel binary, else None."""
        if self.binary_threshold is None:
            return None
        if datatype != "BYTES" and array.nbytes < self.binary_threshold:
            return None
        raw = _codec.to_binary(array, datatype)
        return raw if len(raw) >= self.binary_threshold else None

    @property
    def _binary_answers(self) -> bool:
        return self.binary_threshold is not None

    # -- server ---------------------------------------------------------------------

    def is_live(self) -> bool:
        """`GET /v2/health/live`: whether the server answers 200."""
        return self._probe("/v2/health/live")

    def is_ready(self) -> bool:
        """`GET /v2/health/ready`: whether the server is ready (503 while shutting down)."""
        return self._probe("/v2/health/ready")

    def _probe(self, path: str) -> bool:
        try:
            self._http.request("GET", path)
            return True
        except PrismError as e:
            if e.status is None:
                raise
            return False

    def server_metadata(self) -> Dict[str, Any]:
        """`GET /v2`: the server's name, version and extensions."""
        return _loads(self._http.request("GET", "/v2"), "server metadata")

    def model_metadata(self, model: str, version: Optional[str] = None) -> Dict[str, Any]:
        """`GET /v2/models/{model}`: the model's inputs and outputs (names, datatypes,
        shapes)."""
        return _loads(self._http.request("GET", self._model_path(model, version)), f"model {model}")

    def resources(self) -> Dict[str, Dict[str, float]]:
        """`GET /v2/resources`: `{"total": {...}, "available": {...}}` of the logical
        resources (`CPU`, `GPU`, `memory`, `object_store_memory`, custom ones), like
        `ray.cluster_resources()` and `ray.available_resources()`."""
        doc: Dict[str, Dict[str, float]] = _loads(self._http.request("GET", "/v2/resources"), "resources")
        return doc

    def available_resources(self) -> Dict[str, float]:
        """`GET /v2/resources`' `available` part (like `ray.available_resources()`)."""
        return self.resources()["available"]

    def status(self) -> Dict[str, Any]:
        """`GET /v2/status`: deployments, replicas, placement, queue depths, GPUs."""
        return _loads(self._http.request("GET", "/v2/status"), "status")

    # -- objects --------------------------------------------------------------------

    def put(self, value: ArrayLike, *, ttl_s: Optional[float] = None) -> ObjectRef:
        """`POST /v2/objects` (like `ray.put`): stores `value` (a numpy array, or
        anything `np.asarray` takes) and returns its ref. Small arrays go as JSON
        `{"datatype", "shape", "data"}`, large ones as a JSON header
        (`parameters.binary_data_size`) and the raw bytes. The object lives until
        `delete`, or `ttl_s` seconds after its last access (the server's
        `object_store.default_ttl_s` when not given). The store holds numeric tensors
        only: a BYTES (string) array is refused with `BadRequestError`."""
        array = _codec.as_array(value)
        datatype = _codec.datatype_of(array)
        head: Dict[str, Any] = {"datatype": datatype, "shape": list(array.shape)}
        parameters: Dict[str, Any] = {}
        if ttl_s is not None:
            parameters["ttl_s"] = ttl_s
        raw = self._binary(array, datatype)
        if raw is None:
            head["data"] = _codec.to_json_data(array, datatype)
            if parameters:
                head["parameters"] = parameters
            answer = self._http.request("POST", "/v2/objects", _json(head))
        else:
            parameters["binary_data_size"] = len(raw)
            head["parameters"] = parameters
            header = _json(head)
            answer = self._http.request(
                "POST",
                "/v2/objects",
                header + raw,
                {HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"},
            )
        return ObjectRef(_loads(answer, "put")["object_ref"])

    @overload
    def get(self, refs: ObjectRef, timeout: Optional[float] = None) -> np.ndarray: ...
    @overload
    def get(self, refs: Sequence[ObjectRef], timeout: Optional[float] = None) -> List[np.ndarray]: ...

    def get(self, refs, timeout=None):  # type: ignore[no-untyped-def]
        """`GET /v2/objects/{ref}[?timeout_ms=]` (like `ray.get`): waits until the object
        is ready and returns it as a numpy array; for a list of refs, a list of arrays.
        `timeout` (seconds) bounds the whole wait: past it, `GetTimeoutError` (504).
        An object whose work failed raises `ObjectFailedError` with its `kind` and
        `attempts`; an unknown or deleted one `NotFoundError` (404). Answers come in
        binary (`Accept: application/octet-stream`) unless `binary_threshold` is None."""
        if isinstance(refs, ObjectRef):
            return self._get_one(refs, timeout)
        if not isinstance(refs, (list, tuple)):
            raise TypeError(f"get takes an ObjectRef or a list of them, got {type(refs).__name__}")
        deadline = None if timeout is None else time.monotonic() + timeout
        out = []
        for i, r in enumerate(refs):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            out.append(self._get_one(_ref_of(r, f"refs[{i}]"), left))
        return out

    def _get_one(self, ref: ObjectRef, timeout: Optional[float]) -> np.ndarray:
        path = f"/v2/objects/{ref.hex}"
        if timeout is not None:
            path += f"?timeout_ms={_millis(timeout)}"
        accept = "application/octet-stream" if self._binary_answers else "application/json"
        answer = self._http.request("GET", path, headers={"Accept": accept})
        head, rest = _split_binary(answer, f"object {ref.hex}")
        return self._tensor(head, rest, f"object {ref.hex}")

    @staticmethod
    def _tensor(head: Mapping[str, Any], raw: bytes, what: str) -> np.ndarray:
        try:
            datatype, shape = head["datatype"], head["shape"]
        except (KeyError, TypeError):
            raise ProtocolError(f"{what}: the answer has no datatype and shape") from None
        if head.get("data") is not None:
            return _codec.from_json_data(head["data"], datatype, shape)
        size = (head.get("parameters") or {}).get("binary_data_size")
        if size is None:
            raise ProtocolError(f"{what}: the answer has neither data nor binary_data_size")
        return _codec.from_binary(raw[:size], datatype, shape)

    def object_meta(self, ref: ObjectRef) -> Dict[str, Any]:
        """`GET /v2/objects/{ref}/meta`, without waiting: `state` (`pending`, `ready`,
        `spilled`, `failed`), `datatype`, `shape`, `bytes`, and for a failed object its
        `error` (`kind`, `message`, `attempts`)."""
        ref = _ref_of(ref, "ref")
        return _loads(self._http.request("GET", f"/v2/objects/{ref.hex}/meta"), "object meta")

    def delete(self, refs: Union[ObjectRef, Iterable[ObjectRef]]) -> None:
        """`DELETE /v2/objects/{ref}` for one ref or each of a list: frees the object
        (work already using it keeps its bytes). An unknown ref raises `NotFoundError`.
        A server with an `admin_token` needs that token here."""
        for r in [refs] if isinstance(refs, ObjectRef) else list(refs):
            self._http.request("DELETE", f"/v2/objects/{_ref_of(r, 'ref').hex}")

    def wait(
        self,
        refs: Sequence[ObjectRef],
        num_returns: int = 1,
        timeout: Optional[float] = None,
    ) -> Tuple[List[ObjectRef], List[ObjectRef]]:
        """`POST /v2/wait` `{"object_refs", "num_returns", "timeout_ms"}` (like
        `ray.wait`): returns `(ready, not_ready)` once `num_returns` of `refs` are ready
        (done or failed) or `timeout` seconds have passed; `ready` in the order they
        settled, `not_ready` in the order given. The refs must be unique."""
        refs = [_ref_of(r, f"refs[{i}]") for i, r in enumerate(refs)]
        body: Dict[str, Any] = {"object_refs": [r.hex for r in refs], "num_returns": num_returns}
        if timeout is not None:
            body["timeout_ms"] = _millis(timeout)
        answer = _loads(self._http.request("POST", "/v2/wait", _json(body)), "wait")
        by_hex = {r.hex: r for r in refs}

        def pick(names: List[str]) -> List[ObjectRef]:
            return [by_hex.get(h) or ObjectRef(h) for h in names]

        return pick(answer["ready"]), pick(answer["not_ready"])

    # -- tasks ----------------------------------------------------------------------

    def task(self, op: str, *args: Input, **options: Any) -> ObjectRef:
        """`POST /v2/tasks/{op}` `{"args": [...], "options": {...}}`: starts the
        stateless op (`matmul`, `add`, `sub`, `mul`, `div`, `sum`, `mean`, `square`,
        `neg`, `relu`, `sigmoid`, `tanh`, `softmax`, `transpose`) and returns the ref of
        its result at once (a float32 object once it runs). Each argument is an
        `ObjectRef` (sent as `{"object_ref": ...}`, dereferenced server-side: the task
        waits for it) or an array (sent inline as JSON). `options` are Ray's
        `.options()`: `num_cpus` (default 1; fractions and 0 allowed), `num_gpus`,
        `resources` (a dict of custom resources), `max_retries` (default 3, for system
        failures), `retry_exceptions` (a list of error kinds, `InjectedFault`,
        `ShapeError`; True for both), `fault_injection` (`{"error_rate", "delay_ms",
        "delay_rate"}`), `ttl_s`. A request the server refuses at once (an unknown op,
        an ask it can never meet, shapes that do not fit) raises `BadRequestError`; a
        failure while it runs lands in the result, which `get` raises."""
        wire_args: List[Dict[str, Any]] = []
        for a in args:
            if isinstance(a, ObjectRef):
                wire_args.append({"object_ref": a.hex})
            else:
                array = _codec.as_array(a)
                datatype = _codec.datatype_of(array)
                wire_args.append(
                    {"datatype": datatype, "shape": list(array.shape), "data": _codec.to_json_data(array, datatype)}
                )
        wire_options = {k: v for k, v in options.items() if v is not None}
        retry = wire_options.get("retry_exceptions")
        if retry is True:
            wire_options["retry_exceptions"] = list(RETRYABLE_KINDS)
        elif retry is False:
            del wire_options["retry_exceptions"]
        elif retry is not None:
            wire_options["retry_exceptions"] = [k if isinstance(k, str) else k.__name__ for k in retry]
        body = {"args": wire_args, "options": wire_options}
        answer = self._http.request("POST", f"/v2/tasks/{quote(op, safe='')}", _json(body))
        return ObjectRef(_loads(answer, f"task {op}")["object_ref"])

    # -- inference ------------------------------------------------------------------

    @staticmethod
    def _model_path(model: str, version: Optional[str]) -> str:
        path = f"/v2/models/{quote(model, safe='')}"
        if version is not None:
            path += f"/versions/{quote(str(version), safe='')}"
        return path

    def infer(
        self,
        model: str,
        inputs: Mapping[str, Input],
        outputs: Optional[Union[Sequence[str], Mapping[str, Mapping[str, Any]]]] = None,
        parameters: Optional[Mapping[str, Any]] = None,
        *,
        version: Optional[str] = None,
        request_id: Optional[str] = None,
    ) -> Dict[str, Output]:
        """`POST /v2/models/{model}/infer`: runs a model or pipeline and returns its
        outputs by name, as numpy arrays.

        `inputs` maps each input's name to an array (its V2 datatype from the numpy
        dtype; the server converts numeric types to the model's) or to an `ObjectRef`
        (sent as `parameters.object_ref`: the object is read server-side). `outputs`
        names the outputs wanted (all when None), or maps names to their parameters:
        `{"OUTPUT0": {"object_ref": True}}` keeps that output in the store and returns
        its `ObjectRef` instead of the array. `parameters` are the request's (like
        `{"timeout_ms": 50}`). Large inputs travel in the binary extension, and answers
        are asked for in binary (`binary_data_output`) unless `binary_threshold` is None."""
        answer = self._infer(model, inputs, outputs, parameters, version, request_id)
        return self._outputs(answer, model)

    def infer_async(
        self,
        model: str,
        inputs: Mapping[str, Input],
        outputs: Optional[Union[Sequence[str], Mapping[str, Mapping[str, Any]]]] = None,
        parameters: Optional[Mapping[str, Any]] = None,
        *,
        version: Optional[str] = None,
        request_id: Optional[str] = None,
    ) -> Dict[str, ObjectRef]:
        """`infer` with `parameters.async = true`: the server answers 202 at once with
        the refs its outputs will have; `get` or `wait` collects them."""
        params = dict(parameters or {})
        params["async"] = True
        answer = self._infer(model, inputs, outputs, params, version, request_id)
        refs = self._outputs(answer, model)
        for name, value in refs.items():
            if not isinstance(value, ObjectRef):
                raise ProtocolError(f"async infer on {model}: output {name} came back without an object_ref")
        return refs  # type: ignore[return-value]

    def _infer(
        self,
        model: str,
        inputs: Mapping[str, Input],
        outputs: Optional[Union[Sequence[str], Mapping[str, Mapping[str, Any]]]],
        parameters: Optional[Mapping[str, Any]],
        version: Optional[str],
        request_id: Optional[str],
    ) -> Answer:
        wire_inputs: List[Dict[str, Any]] = []
        tail: List[bytes] = []
        for name, value in inputs.items():
            if isinstance(value, ObjectRef):
                wire_inputs.append(
                    {"name": name, "shape": [], "datatype": "", "parameters": {"object_ref": value.hex}}
                )
                continue
            array = _codec.as_array(value)
            datatype = _codec.datatype_of(array)
            entry: Dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": datatype}
            raw = self._binary(array, datatype)
            if raw is None:
                entry["data"] = _codec.to_json_data(array, datatype)
            else:
                entry["parameters"] = {"binary_data_size": len(raw)}
                tail.append(raw)
            wire_inputs.append(entry)
        request: Dict[str, Any] = {"inputs": wire_inputs}
        if request_id is not None:
            request["id"] = request_id
        if outputs is not None:
            if isinstance(outputs, Mapping):
                request["outputs"] = [
                    {"name": n, "parameters": dict(p)} if p else {"name": n} for n, p in outputs.items()
                ]
            else:
                if isinstance(outputs, str):
                    raise TypeError("outputs: expected a list of output names, got a str")
                request["outputs"] = [{"name": n} for n in outputs]
        params = dict(parameters or {})
        if self._binary_answers:
            params.setdefault("binary_data_output", True)
        if params:
            request["parameters"] = params
        header = _json(request)
        path = self._model_path(model, version) + "/infer"
        if not tail:
            return self._http.request("POST", path, header)
        return self._http.request(
            "POST",
            path,
            b"".join([header, *tail]),
            {HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"},
        )

    def _outputs(self, answer: Answer, model: str) -> Dict[str, Output]:
        head, rest = _split_binary(answer, f"infer {model}")
        out: Dict[str, Output] = {}
        offset = 0
        for o in head.get("outputs", []):
            name = o.get("name")
            params = o.get("parameters") or {}
            what = f"infer {model}: output {name}"
            if o.get("data") is None and isinstance(params.get("object_ref"), str):
                out[name] = ObjectRef(params["object_ref"])
                continue
            size = params.get("binary_data_size")
            if o.get("data") is None and size is not None:
                if offset + size > len(rest):
                    raise ProtocolError(f"{what}: the binary part ends before its {size} bytes")
                out[name] = _codec.from_binary(rest[offset : offset + size], o["datatype"], o["shape"])
                offset += size
                continue
            if o.get("data") is None:
                raise ProtocolError(f"{what}: carries no data (written to shared memory?)")
            out[name] = _codec.from_json_data(o["data"], o["datatype"], o["shape"])
        return out
