"""KServe v2 tensors over HTTP: the JSON encoding and Triton's binary-data extension.

A request body is a JSON header, optionally followed by raw tensor bytes; the header's length is
in the `Inference-Header-Content-Length` HTTP header, and each input sent in binary says its size in
`parameters.binary_data_size` (inputs' bytes follow in the order of the inputs). BYTES tensors in
binary are a sequence of (uint32 little-endian length, bytes) elements. tritonclient.http sends
every input in binary by default and, without requested outputs, asks for binary outputs
(`parameters.binary_data_output`), so both encodings are needed in each direction.

Tensors are numpy arrays here; BYTES tensors are object arrays of `bytes`.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np

from ingot.serve.errors import loads_json

HEADER_LENGTH = "inference-header-content-length"

# KServe datatype -> numpy dtype (BYTES: object arrays of bytes)
DTYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
          "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
          "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_}


class KServeError(Exception):
    """A protocol error: HTTP answers {"error": message} with `status`; gRPC maps status to a code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def bad(message: str) -> KServeError:
    return KServeError(400, message)


@dataclass
class RequestedOutput:
    name: str
    binary: bool


@dataclass
class InferRequest:
    id: str
    parameters: dict
    inputs: dict[str, np.ndarray]  # name -> tensor, shaped as sent
    outputs: list[RequestedOutput] | None  # None: every output


def decode_request(body: bytes, header_length: str | None) -> InferRequest:
    """Parse an infer request body (JSON, or JSON + binary tensors); KServeError 400 when malformed."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise bad(f"Inference-Header-Content-Length {header_length!r} is not a length within the body")
        head, binary = body[:int(header_length)], memoryview(body)[int(header_length):]
    else:
        head, binary = body, memoryview(b"")
    try:
        request = loads_json(head)
    except ValueError as exc:  # not JSON, not UTF-8, or NaN / Infinity
        raise bad(f"the request header is not valid JSON: {exc}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise bad("the request must be a JSON object with a list of 'inputs'")
    parameters = _object(request.get("parameters", {}), "parameters")
    inputs, offset = {}, 0
    for spec in request["inputs"]:
        tensor, used = _decode_input(spec, binary[offset:])
        name = spec["name"]
        if name in inputs:
            raise bad(f"input '{name}' is given twice")
        inputs[name], offset = tensor, offset + used
    if offset != len(binary):
        raise bad(f"the body holds {len(binary) - offset} bytes of binary data that no input claims")
    outputs = None
    if "outputs" in request:
        if not isinstance(request["outputs"], list):
            raise bad("'outputs' must be a list")
        default = bool(parameters.get("binary_data_output", False))
        outputs = [RequestedOutput(_name(o), bool(_object(o.get("parameters", {}), "outputs.parameters")
                                                   .get("binary_data", default))) for o in request["outputs"]]
    return InferRequest(str(request.get("id", "")), parameters, inputs, outputs)


def _object(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise bad(f"'{where}' must be a JSON object")
    return value


def _name(spec) -> str:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise bad("every input and output needs a 'name' (a string)")
    return spec["name"]


def _decode_input(spec, binary: memoryview) -> tuple[np.ndarray, int]:
    """One input tensor and how many bytes of the binary section it used."""
    name = _name(spec)
    datatype, shape = spec.get("datatype"), spec.get("shape")
    if datatype not in DTYPES:
        raise bad(f"input '{name}': datatype {datatype!r} is not one of {sorted(DTYPES)}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise bad(f"input '{name}': shape {shape!r} must be a list of non-negative integers")
    count = int(np.prod(shape)) if shape else 1
    size = _object(spec.get("parameters", {}), f"{name}.parameters").get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or size > len(binary):
            raise bad(f"input '{name}': binary_data_size {size!r} is more than the body holds")
        return from_binary(name, datatype, shape, count, bytes(binary[:size])), size
    if "data" not in spec:
        raise bad(f"input '{name}' has neither 'data' nor a binary_data_size")
    return _from_json(name, datatype, shape, count, spec["data"]), 0


def _from_json(name: str, datatype: str, shape: list[int], count: int, data) -> np.ndarray:
    flat = np.asarray(data, dtype=object).reshape(-1) if isinstance(data, list) else np.asarray([data], dtype=object)
    if flat.size != count:
        raise bad(f"input '{name}': shape {shape} needs {count} elements, 'data' has {flat.size}")
    try:
        if datatype == "BYTES":
            values = [v.encode("utf-8") if isinstance(v, str) else None for v in flat]
            if None in values:
                raise ValueError("BYTES data must be strings")
            out = np.empty(count, dtype=object)
            out[:] = values
            return out.reshape(shape)
        if datatype == "BOOL" and not all(isinstance(v, bool) for v in flat):
            raise ValueError("BOOL data must be true or false")
        if datatype != "BOOL" and any(isinstance(v, (bool, str)) or v is None for v in flat):
            raise ValueError(f"{datatype} data must be numbers")
        return np.array(list(flat), dtype=DTYPES[datatype]).reshape(shape)
    except (ValueError, TypeError, OverflowError) as exc:
        raise bad(f"input '{name}': {exc}") from None


def from_binary(name: str, datatype: str, shape: list[int], count: int, raw: bytes) -> np.ndarray:
    if datatype != "BYTES":
        dtype = np.dtype(DTYPES[datatype])
        if len(raw) != count * dtype.itemsize:
            raise bad(f"input '{name}': shape {shape} of {datatype} is {count * dtype.itemsize} bytes, "
                      f"binary_data_size is {len(raw)}")
        return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)
    values, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise bad(f"input '{name}': a BYTES element's 4-byte length is cut short")
        (length,) = struct.unpack_from("<I", raw, offset)
        if offset + 4 + length > len(raw):
            raise bad(f"input '{name}': a BYTES element says {length} bytes, fewer remain")
        values.append(raw[offset + 4:offset + 4 + length])
        offset += 4 + length
    if len(values) != count:
        raise bad(f"input '{name}': shape {shape} needs {count} elements, the binary data holds {len(values)}")
    out = np.empty(count, dtype=object)
    out[:] = values
    return out.reshape(shape)


def serialize_bytes(values) -> bytes:
    """BYTES elements in the binary encoding: each as uint32 little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def datatype_of(array: np.ndarray) -> str:
    if array.dtype == np.object_:
        return "BYTES"
    return next(k for k, v in DTYPES.items() if np.dtype(v) == array.dtype)


def encode_response(header: dict, outputs: dict[str, np.ndarray],
                    requested: list[RequestedOutput] | None, binary_default: bool) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length (for the HTTP header).
    `requested` None returns every output, in binary if binary_default."""
    chosen = requested if requested is not None else [RequestedOutput(n, binary_default) for n in outputs]
    tensors, blobs = [], []
    for want in chosen:
        if want.name not in outputs:
            raise bad(f"unknown output '{want.name}': this model's outputs are {sorted(outputs)}")
        array = outputs[want.name]
        tensor = {"name": want.name, "datatype": datatype_of(array), "shape": list(array.shape)}
        if want.binary:
            raw = serialize_bytes(array.reshape(-1)) if array.dtype == np.object_ else array.astype(
                array.dtype.newbyteorder("<")).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            flat = array.reshape(-1)
            tensor["data"] = [v.decode("utf-8", "replace") for v in flat] if array.dtype == np.object_ \
                else flat.tolist()
        tensors.append(tensor)
    head = json.dumps({**header, "outputs": tensors}).encode("utf-8")
    return (head, None) if not blobs else (head + b"".join(blobs), len(head))
