"""numpy arrays to V2 tensors and back: datatypes, JSON `data` and the binary tensor
encoding.

On the wire a tensor is `{"datatype", "shape", "data"}` with `data` flat and row-major
(JSON), or its little-endian bytes after a JSON header whose `binary_data_size`
parameter counts them (Triton's binary tensor data extension); a `BYTES` element is then
a 4-byte little-endian length followed by its bytes.
"""

from __future__ import annotations

import struct
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import numpy as np

from ._errors import ProtocolError

__all__ = [
    "datatype_of",
    "dtype_of",
    "to_json_data",
    "from_json_data",
    "to_binary",
    "from_binary",
    "as_array",
]

# numpy dtype -> V2 datatype, for every numeric type V2 and numpy share.
_V2_OF: Dict[np.dtype, str] = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.uint16): "UINT16",
    np.dtype(np.uint32): "UINT32",
    np.dtype(np.uint64): "UINT64",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
}

# V2 datatype -> numpy dtype (little-endian, as the wire). BF16 has no numpy type: it
# is read into float32, exactly (a bfloat16 is the top half of a float32).
_NUMPY_OF: Dict[str, np.dtype] = {v: k.newbyteorder("<") for k, v in _V2_OF.items()}
_NUMPY_OF["BF16"] = np.dtype("<f4")


def datatype_of(array: np.ndarray) -> str:
    """The V2 datatype of `array`'s dtype: `FP32` for float32, ..., and `BYTES` for
    arrays of strings or bytes (numpy `U`, `S`, or `object` holding str/bytes)."""
    dt = array.dtype
    if dt.kind in "USO":
        return "BYTES"
    try:
        return _V2_OF[np.dtype(dt.type)]
    except KeyError:
        raise TypeError(
            f"numpy dtype {dt} has no V2 datatype; use one of bool, (u)int8-64, float16/32/64, or str/bytes"
        ) from None


def dtype_of(datatype: str) -> np.dtype:
    """The numpy dtype an answer of V2 `datatype` is read into (`object` for BYTES,
    float32 for BF16)."""
    if datatype == "BYTES":
        return np.dtype(object)
    try:
        return _NUMPY_OF[datatype]
    except KeyError:
        raise ProtocolError(f"unknown datatype {datatype!r}") from None


def as_array(value: Any) -> np.ndarray:
    """`value` as a numpy array (a scalar or nested list becomes one, as `np.asarray`
    makes it)."""
    return value if isinstance(value, np.ndarray) else np.asarray(value)


def _text(item: Any) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item).decode("utf-8")
    if isinstance(item, np.str_):
        return str(item)
    raise TypeError(f"a BYTES tensor holds str or bytes elements, got {type(item).__name__}")


def _raw(item: Any) -> bytes:
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, str):
        return item.encode("utf-8")
    raise TypeError(f"a BYTES tensor holds str or bytes elements, got {type(item).__name__}")


def to_json_data(array: np.ndarray, datatype: str) -> List[Any]:
    """`array`'s elements, flat and row-major, as JSON values: numbers (NaN and ±Inf as
    Triton writes them), booleans, or strings for BYTES (bytes decoded as UTF-8, since
    JSON carries text)."""
    flat = array.reshape(-1)
    if datatype == "BYTES":
        return [_text(x) for x in flat.tolist()]
    return flat.tolist()


def from_json_data(data: Sequence[Any], datatype: str, shape: Sequence[int]) -> np.ndarray:
    """The array that JSON `data` (flat or nested) of `datatype` and `shape` holds."""
    dt = dtype_of(datatype)
    shape = tuple(int(d) for d in shape)
    if datatype == "BYTES":
        flat = np.empty(_count(shape), dtype=object)
        items = list(_flatten(data))
        if len(items) != flat.size:
            raise ProtocolError(f"shape {list(shape)} needs {flat.size} values, the answer has {len(items)}")
        for i, x in enumerate(items):
            flat[i] = x
        return flat.reshape(shape)
    values = np.array(data, dtype=np.float64 if datatype in ("FP16", "BF16") else dt)
    if values.size != _count(shape):
        raise ProtocolError(f"shape {list(shape)} needs {_count(shape)} values, the answer has {values.size}")
    return values.reshape(shape).astype(dt.newbyteorder("="), copy=False)


def _flatten(data: Any) -> Iterator[Any]:
    for x in data:
        if isinstance(x, list):
            yield from _flatten(x)
        else:
            yield x


def _count(shape: Tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def to_binary(array: np.ndarray, datatype: str) -> bytes:
    """`array`'s bytes in the binary tensor encoding: little-endian, row-major; for BYTES
    each element as a 4-byte little-endian length, then its bytes (str as UTF-8)."""
    if datatype == "BYTES":
        parts: List[bytes] = []
        for x in array.reshape(-1).tolist():
            b = _raw(x)
            parts.append(struct.pack("<I", len(b)))
            parts.append(b)
        return b"".join(parts)
    wire = _NUMPY_OF[datatype]
    return np.ascontiguousarray(array, dtype=wire).tobytes()


def from_binary(raw: bytes, datatype: str, shape: Sequence[int]) -> np.ndarray:
    """The array of `datatype` and `shape` whose binary encoding is `raw`."""
    shape = tuple(int(d) for d in shape)
    n = _count(shape)
    if datatype == "BYTES":
        out = np.empty(n, dtype=object)
        i = pos = 0
        view = memoryview(raw)
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise ProtocolError("truncated BYTES element length")
            (length,) = struct.unpack_from("<I", raw, pos)
            pos += 4
            if pos + length > len(raw):
                raise ProtocolError("truncated BYTES element")
            if i >= n:
                raise ProtocolError(f"shape {list(shape)} needs {n} BYTES elements, the answer has more")
            out[i] = bytes(view[pos : pos + length]).decode("utf-8", errors="replace")
            i += 1
            pos += length
        if i != n:
            raise ProtocolError(f"shape {list(shape)} needs {n} BYTES elements, the answer has {i}")
        return out.reshape(shape)
    if datatype == "BF16":
        half = np.frombuffer(raw, dtype="<u2")
        if half.size != n:
            raise ProtocolError(f"shape {list(shape)} needs {n} BF16 values, the answer has {half.size}")
        return (half.astype(np.uint32) << 16).view(np.float32).reshape(shape)
    wire = dtype_of(datatype)
    if len(raw) != n * wire.itemsize:
        raise ProtocolError(
            f"shape {list(shape)} of {datatype} needs {n * wire.itemsize} bytes, the answer has {len(raw)}"
        )
    # A writable copy in native byte order, like any array a caller makes.
    return np.frombuffer(raw, dtype=wire).astype(wire.newbyteorder("="), copy=True).reshape(shape)
