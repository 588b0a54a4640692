"""Open Inference Protocol (KServe V2) tensors: decoding requests and encoding responses.

Both JSON tensors and the binary tensor data extension are supported. A binary request is a
JSON header of ``Inference-Header-Content-Length`` bytes followed by the raw tensors, in input
order, each announced by ``parameters.binary_data_size``; fixed-size datatypes are raw
little-endian row-major bytes, ``BYTES`` elements are a 4-byte little-endian length and the bytes.
Responses carry outputs in binary when the request asks for it (``binary_data_output`` for all,
``outputs[i].parameters.binary_data`` per output), the way ``tritonclient.http`` does by default.

Every request is validated against the model's signature before it reaches a queue: unknown or
missing inputs, wrong datatype, wrong shape, a data length that does not match the shape, and
NaN/Inf where the model does not allow them all raise ``InvalidInput`` naming the input.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import orjson

from flywheel.serving._errors import InvalidInput

# Open Inference Protocol datatype -> little-endian numpy dtype (BYTES: object arrays of bytes).
V2_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("bool"),
    "UINT8": np.dtype("uint8"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("int8"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype("object"),
}
_KIND_NAMES = {
    "b": "BOOL",
    "u1": "UINT8",
    "u2": "UINT16",
    "u4": "UINT32",
    "u8": "UINT64",
    "i1": "INT8",
    "i2": "INT16",
    "i4": "INT32",
    "i8": "INT64",
    "f2": "FP16",
    "f4": "FP32",
    "f8": "FP64",
}
MAX_NAMED_IN_ERRORS = 8


class TensorSpecLike(Protocol):
    """What the codec needs of ``flywheel.registry.TensorSpec``."""

    @property
    def name(self) -> str: ...
    @property
    def datatype(self) -> str: ...
    @property
    def shape(self) -> tuple[int, ...]: ...


class SignatureLike(Protocol):
    """What the codec needs of ``flywheel.registry.Signature``."""

    @property
    def inputs(self) -> tuple[TensorSpecLike, ...]: ...
    @property
    def outputs(self) -> tuple[TensorSpecLike, ...]: ...


def datatype_of(array: np.ndarray) -> str:
    """The V2 datatype of a numpy array (strings, bytes and objects are ``BYTES``)."""
    kind = array.dtype.kind
    if kind in "USO":
        return "BYTES"
    if kind == "b":
        return "BOOL"
    name = _KIND_NAMES.get(f"{kind}{array.dtype.itemsize}")
    if name is None:
        raise InvalidInput(f"numpy dtype {array.dtype} has no Open Inference Protocol datatype")
    return name


@dataclass(slots=True)
class RequestedOutput:
    """An output the client asked for, and whether it wants it as binary data."""

    name: str
    binary: bool | None = None


@dataclass(slots=True)
class InferenceRequest:
    """A decoded, validated inference request."""

    inputs: dict[str, np.ndarray]
    rows: int
    id: str | None = None
    outputs: list[RequestedOutput] | None = None
    binary_output: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def timeout_us(self) -> int | None:
        """Triton's per-request ``timeout`` parameter, in microseconds (None if absent)."""
        value = self.parameters.get("timeout")
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return int(value)
        return None


def _names(items: Iterable[str]) -> str:
    listed = list(items)
    shown = ", ".join(repr(n) for n in listed[:MAX_NAMED_IN_ERRORS])
    return shown + (", ..." if len(listed) > MAX_NAMED_IN_ERRORS else "") or "none"


def _shape_of(raw: Any, where: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in raw
    ):
        raise InvalidInput(f"{where}: 'shape' must be a list of integers, got {raw!r:.80}")
    if any(d < 0 for d in raw):
        raise InvalidInput(f"{where}: 'shape' {raw} has a negative dimension")
    return tuple(raw)


def _check_shape(shape: tuple[int, ...], spec: TensorSpecLike, where: str) -> None:
    expected = tuple(spec.shape)
    ok = len(shape) == len(expected) and all(
        e == -1 or e == d for e, d in zip(expected, shape, strict=True)
    )
    if not ok:
        shown = "[" + ", ".join("-1" if e == -1 else str(e) for e in expected) + "]"
        raise InvalidInput(f"{where}: shape {list(shape)} does not match the signature {shown}")


def _from_json_data(data: Any, datatype: str, count: int, where: str) -> np.ndarray:
    dtype = V2_DTYPES[datatype]
    if not isinstance(data, list):
        data = [data]
    try:
        if datatype == "BYTES":
            flat = np.asarray(data, dtype=object).ravel()
            out = np.empty(flat.shape, dtype=object)
            for i, item in enumerate(flat):
                if isinstance(item, str):
                    out[i] = item.encode("utf-8")
                elif isinstance(item, bytes):
                    out[i] = item
                else:
                    raise InvalidInput(f"{where}: BYTES elements must be strings, got {item!r:.40}")
            arr = out
        elif dtype.kind == "f":
            arr = np.asarray(data, dtype=dtype)
        else:
            arr = np.asarray(data)
            if arr.size and datatype == "BOOL" and arr.dtype.kind != "b":
                raise InvalidInput(f"{where}: BOOL data must be true/false, got {arr.dtype.kind!r}")
            if arr.size and datatype != "BOOL" and arr.dtype.kind not in "iu":
                raise InvalidInput(f"{where}: {datatype} data must be integers")
            if arr.size and datatype != "BOOL":
                info = np.iinfo(dtype)
                if arr.min() < info.min or arr.max() > info.max:
                    raise InvalidInput(f"{where}: a value is out of range for {datatype}")
            arr = arr.astype(dtype, copy=False)
    except InvalidInput:
        raise
    except (ValueError, TypeError, OverflowError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise InvalidInput(f"{where}: data cannot be read as {datatype}: {reason}") from None
    if arr.size != count:
        raise InvalidInput(f"{where}: data has {arr.size} elements; shape needs {count}")
    return arr


def _decode_bytes_elements(buf: memoryview, count: int, where: str) -> np.ndarray:
    out = np.empty(count, dtype=object)
    pos = 0
    for i in range(count):
        if pos + 4 > len(buf):
            raise InvalidInput(f"{where}: binary BYTES data ends after {i} of {count} elements")
        (n,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        if pos + n > len(buf):
            raise InvalidInput(f"{where}: binary BYTES element {i} runs past its data")
        out[i] = bytes(buf[pos : pos + n])
        pos += n
    if pos != len(buf):
        raise InvalidInput(f"{where}: binary BYTES data has {len(buf) - pos} extra bytes")
    return out


def decode_request(
    body: bytes,
    header_length: int | None,
    signature: SignatureLike,
    *,
    model: str,
    allow_nan: bool = False,
) -> InferenceRequest:
    """Parse and validate one V2 inference request body against ``signature``.

    Args:
        body: the whole request body.
        header_length: the ``Inference-Header-Content-Length`` header (binary extension), or None.
        signature: the model's inputs and outputs.
        model: the model or endpoint name, for error messages.
        allow_nan: accept NaN and infinities in floating-point inputs.

    Raises:
        InvalidInput: the message names the input and what is wrong with it.
    """
    if header_length is None:
        header, binary = body, memoryview(b"")
    else:
        if header_length < 0 or header_length > len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length is {header_length}, "
                f"but the body has {len(body)} bytes"
            )
        header, binary = body[:header_length], memoryview(body)[header_length:]
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the request is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInput("the request must be a JSON object with an 'inputs' list")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("the request needs a non-empty 'inputs' list")
    parameters = doc.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be an object")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        request_id = str(request_id)

    specs = {s.name: s for s in signature.inputs}
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, raw in enumerate(raw_inputs):
        if not isinstance(raw, dict):
            raise InvalidInput(f"inputs[{i}] must be an object with name, shape, datatype, data")
        name = raw.get("name")
        if not isinstance(name, str):
            raise InvalidInput(f"inputs[{i}] needs a string 'name'")
        where = f"input {name!r}"
        spec = specs.get(name)
        if spec is None:
            raise InvalidInput(
                f"{where} is not an input of {model!r}; its inputs are {_names(specs)}"
            )
        if name in inputs:
            raise InvalidInput(f"{where} is given twice")
        datatype = raw.get("datatype")
        if datatype not in V2_DTYPES:
            raise InvalidInput(
                f"{where}: datatype {datatype!r} is not one of {', '.join(V2_DTYPES)}"
            )
        if datatype != spec.datatype:
            raise InvalidInput(
                f"{where}: datatype {datatype} given; {model!r} expects {spec.datatype}"
            )
        shape = _shape_of(raw.get("shape"), where)
        _check_shape(shape, spec, where)
        count = math.prod(shape)
        params = raw.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidInput(f"{where}: 'parameters' must be an object")
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInput(f"{where}: binary_data_size must be a non-negative integer")
            if header_length is None:
                raise InvalidInput(
                    f"{where} has binary_data_size but the request has no "
                    "Inference-Header-Content-Length header"
                )
            if offset + size > len(binary):
                raise InvalidInput(
                    f"{where}: binary_data_size {size} runs past the end of the body "
                    f"({len(binary) - offset} bytes left)"
                )
            chunk = binary[offset : offset + size]
            offset += size
            if datatype == "BYTES":
                arr = _decode_bytes_elements(chunk, count, where)
            else:
                dtype = V2_DTYPES[datatype]
                if size != count * dtype.itemsize:
                    raise InvalidInput(
                        f"{where}: binary_data_size is {size} bytes; shape {list(shape)} of "
                        f"{datatype} needs {count * dtype.itemsize}"
                    )
                # A copy: runtimes (torch) want writable arrays, and models may write in place.
                arr = np.frombuffer(chunk, dtype=dtype).copy()
        else:
            if "data" not in raw:
                raise InvalidInput(f"{where} has neither 'data' nor binary_data_size")
            arr = _from_json_data(raw["data"], datatype, count, where)
        arr = arr.reshape(shape)
        if not allow_nan and arr.dtype.kind == "f" and arr.size and not np.isfinite(arr).all():
            raise InvalidInput(f"{where} contains NaN or infinity, which {model!r} does not accept")
        inputs[name] = arr
    if offset != len(binary):
        raise InvalidInput(
            f"the body has {len(binary) - offset} bytes of binary data that no input claims"
        )
    missing = [n for n in specs if n not in inputs]
    if missing:
        raise InvalidInput(f"input {missing[0]!r} is missing; {model!r} needs {_names(specs)}")
    rows = _batch_rows(inputs, signature)

    outputs: list[RequestedOutput] | None = None
    raw_outputs = doc.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise InvalidInput("'outputs' must be a list")
        known = {s.name for s in signature.outputs}
        outputs = []
        for j, out in enumerate(raw_outputs):
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise InvalidInput(f"outputs[{j}] must be an object with a string 'name'")
            if known and out["name"] not in known:
                raise InvalidInput(
                    f"output {out['name']!r} is not an output of {model!r}; "
                    f"its outputs are {_names(known)}"
                )
            oparams = out.get("parameters") or {}
            binary_flag = oparams.get("binary_data") if isinstance(oparams, dict) else None
            outputs.append(
                RequestedOutput(out["name"], bool(binary_flag) if binary_flag is not None else None)
            )
    return InferenceRequest(
        inputs=inputs,
        rows=rows,
        id=request_id,
        outputs=outputs,
        binary_output=bool(parameters.get("binary_data_output", False)),
        parameters=parameters,
    )


def _batch_rows(inputs: dict[str, np.ndarray], signature: SignatureLike) -> int:
    rows: int | None = None
    for spec in signature.inputs:
        arr = inputs[spec.name]
        if arr.ndim == 0:
            continue
        if rows is None:
            rows = int(arr.shape[0])
        elif arr.shape[0] != rows:
            raise InvalidInput(
                f"input {spec.name!r} has batch size {arr.shape[0]}; the other inputs have {rows}"
            )
    if rows == 0:
        raise InvalidInput("the request's batch is empty (batch dimension 0)")
    return rows or 1


def _bytes_payload(arr: np.ndarray) -> bytes:
    parts: list[bytes] = []
    for item in arr.ravel():
        b = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


def _json_data(arr: np.ndarray) -> list[Any]:
    if arr.dtype.kind in "USO":
        return [
            x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in arr.ravel()
        ]
    flat: list[Any] = arr.ravel().tolist()
    return flat


def encode_response(
    *,
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: dict[str, np.ndarray],
    requested: Sequence[RequestedOutput] | None,
    binary_default: bool,
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """The V2 response body and, when any output is binary, the JSON header's length.

    Outputs are those ``requested`` (in that order) or all of them. Each is binary when its own
    ``binary_data`` flag says so, else when ``binary_default`` (``binary_data_output``) is set.
    """
    if requested is None:
        chosen = [(name, binary_default) for name in outputs]
    else:
        chosen = [(r.name, binary_default if r.binary is None else r.binary) for r in requested]
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, binary in chosen:
        arr = outputs.get(name)
        if arr is None:
            raise InvalidInput(f"output {name!r} was not produced; outputs are {_names(outputs)}")
        arr = np.asarray(arr)
        datatype = datatype_of(arr)
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if binary:
            if datatype == "BYTES":
                raw = _bytes_payload(arr)
            else:
                raw = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            tensor["data"] = _json_data(arr)
        tensors.append(tensor)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    if parameters:
        doc["parameters"] = parameters
    doc["outputs"] = tensors
    header = orjson.dumps(doc)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def encode_request(
    inputs: dict[str, np.ndarray],
    *,
    binary: bool = False,
    request_id: str | None = None,
    outputs: Sequence[str] | None = None,
    binary_output: bool = False,
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """Encode a V2 request (JSON or binary tensors); used by the shadow mirror, tests, benchmarks.

    Returns the body and, for a binary body, the value of ``Inference-Header-Content-Length``.
    """
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, value in inputs.items():
        arr = np.asarray(value)
        datatype = datatype_of(arr)
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if binary:
            raw = (
                _bytes_payload(arr)
                if datatype == "BYTES"
                else np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
            )
            tensor["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            tensor["data"] = _json_data(arr)
        tensors.append(tensor)
    doc: dict[str, Any] = {"inputs": tensors}
    if request_id is not None:
        doc["id"] = request_id
    params = dict(parameters or {})
    if binary_output:
        params["binary_data_output"] = True
    if params:
        doc["parameters"] = params
    if outputs is not None:
        doc["outputs"] = [{"name": n} for n in outputs]
    header = orjson.dumps(doc)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def decode_response(body: bytes, header_length: int | None) -> dict[str, np.ndarray]:
    """The output tensors of a V2 response (JSON or binary) as numpy arrays."""
    header = body if header_length is None else body[:header_length]
    binary = memoryview(body)[len(header) :]
    doc = orjson.loads(header)
    result: dict[str, np.ndarray] = {}
    offset = 0
    for out in doc.get("outputs", []):
        datatype, shape = out["datatype"], tuple(out["shape"])
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            chunk = binary[offset : offset + size]
            offset += size
            if datatype == "BYTES":
                arr = _decode_bytes_elements(chunk, math.prod(shape), out["name"])
            else:
                arr = np.frombuffer(chunk, dtype=V2_DTYPES[datatype]).copy()
        elif datatype == "BYTES":
            arr = np.array([s.encode() for s in out["data"]], dtype=object)
        else:
            arr = np.asarray(out["data"], dtype=V2_DTYPES[datatype])
        result[out["name"]] = arr.reshape(shape)
    return result


__all__ = [
    "V2_DTYPES",
    "InferenceRequest",
    "RequestedOutput",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
]
