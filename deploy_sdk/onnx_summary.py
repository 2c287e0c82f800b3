"""What an ONNX file holds, read without the ``onnx`` package: inputs, outputs, ops, opsets, metadata, weights.

``maskrcnn-deploy inspect`` runs on the runtime-only install (numpy + onnxruntime), where ``onnx`` is absent and
an ONNX Runtime session would say nothing about ops or opsets. An ONNX file is a protobuf ``ModelProto``; the few
fields needed here are read directly from the wire format (varints and length-delimited fields, see
https://protobuf.dev/programming-guides/encoding/ and onnx/onnx.proto for the field numbers). Large weights
are skipped by their length, never copied.
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple, Union

from deploy_sdk.errors import EngineError

__all__ = ["OnnxSummary", "TensorInfo", "read_onnx_summary", "ELEM_TYPES"]

# onnx.TensorProto.DataType
ELEM_TYPES = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    8: "string",
    9: "bool",
    10: "float16",
    11: "float64",
    12: "uint32",
    13: "uint64",
    16: "bfloat16",
    17: "float8e4m3fn",
    19: "float8e5m2",
    21: "uint4",
    22: "int4",
}
_ELEM_BITS = {
    1: 32,
    2: 8,
    3: 8,
    4: 16,
    5: 16,
    6: 32,
    7: 64,
    9: 8,
    10: 16,
    11: 64,
    12: 32,
    13: 64,
    16: 16,
    17: 8,
    19: 8,
    21: 4,
    22: 4,
}

# Field numbers (onnx.proto)
_MODEL_IR_VERSION, _MODEL_PRODUCER, _MODEL_PRODUCER_VERSION, _MODEL_GRAPH = 1, 2, 3, 7
_MODEL_OPSET, _MODEL_METADATA, _MODEL_FUNCTIONS = 8, 14, 25
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT = 1, 5, 11, 12
_NODE_OP_TYPE, _NODE_DOMAIN = 4, 7
_FUNCTION_NAME, _FUNCTION_NODE, _FUNCTION_DOMAIN = 1, 7, 10


@dataclass
class TensorInfo:
    """A graph input or output: name, element type and shape (ints, or names of dynamic dimensions)."""

    name: str
    dtype: str
    shape: List[Union[int, str]]

    def shape_text(self) -> str:
        return "[" + ", ".join(str(d) for d in self.shape) + "]"


@dataclass
class OnnxSummary:
    ir_version: int = 0
    producer: str = ""
    opsets: Dict[str, int] = field(default_factory=dict)  # domain ("" = ai.onnx) -> version
    metadata_props: Dict[str, str] = field(default_factory=dict)
    inputs: List[TensorInfo] = field(default_factory=list)
    outputs: List[TensorInfo] = field(default_factory=list)
    ops: Dict[Tuple[str, str], int] = field(default_factory=dict)  # (domain, op_type) -> count, top-level nodes
    functions: List[Tuple[str, str, int]] = field(default_factory=list)  # (domain, name, nodes in its body)
    weights: Dict[str, Tuple[int, int]] = field(default_factory=dict)  # dtype -> (tensors, bytes)

    @property
    def num_nodes(self) -> int:
        return sum(self.ops.values())


def read_onnx_summary(path: Union[str, os.PathLike[str]]) -> OnnxSummary:
    """Read :class:`OnnxSummary` from the ONNX file ``path``; :class:`EngineError` if it is not one."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise EngineError(f"{path} is empty, not an ONNX model")
    raw = path.read_bytes()
    head = raw[:512]
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        start = head.decode("ascii").strip().splitlines()[:1]
        raise EngineError(
            f"{path} is a text file (it starts with {(start[0][:40] if start else '')!r}), not an "
            "ONNX model; export one with: maskrcnn-deploy export CHECKPOINT -o MODEL.onnx"
        )
    data = memoryview(raw)  # slices of it are views: weights are skipped, not copied
    try:
        return _model(data)
    except IndexError:
        raise EngineError(
            f"{path} is not a readable ONNX model (its data ends in the middle of a field); is the "
            "file complete? Copy or export it again"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise EngineError(
            f"{path} is not a readable ONNX model ({exc}); is the file complete? Copy or export it again"
        ) from None


def _fields(buf: memoryview) -> Iterator[Tuple[int, int, Union[int, memoryview]]]:
    """(field number, wire type, value) of each field of one protobuf message: ints for varints and fixed-width
    fields, a memoryview for length-delimited ones."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise ValueError("a field runs past the end of the data")
            yield number, wire, buf[pos : pos + length]
            pos += length
        elif wire == 1:
            yield number, wire, int.from_bytes(buf[pos : pos + 8], "little")
            pos += 8
        elif wire == 5:
            yield number, wire, int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def _varint(buf: memoryview, pos: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("malformed varint")


def _data(value: Union[int, memoryview]) -> memoryview:
    """The bytes of a length-delimited field (wire type 2, which the callers check)."""
    if isinstance(value, int):  # a damaged file: the caller turns ValueError into a one-line EngineError
        raise ValueError(f"a length-delimited protobuf field was expected, got the number {value}")
    return value


def _text(value) -> str:
    return bytes(value).decode("utf-8")


def _model(buf: memoryview) -> OnnxSummary:
    out = OnnxSummary()
    graph: Optional[memoryview] = None
    for number, wire, value in _fields(buf):
        if number == _MODEL_IR_VERSION and wire == 0:
            out.ir_version = int(value)
        elif number == _MODEL_PRODUCER and wire == 2:
            out.producer = _text(value) + out.producer
        elif number == _MODEL_PRODUCER_VERSION and wire == 2:
            out.producer = out.producer + " " + _text(value)
        elif number == _MODEL_OPSET and wire == 2:
            entry = {n: v for n, _, v in _fields(_data(value))}
            out.opsets[_text(entry.get(1, b""))] = int(entry.get(2, 0))
        elif number == _MODEL_METADATA and wire == 2:
            entry = {n: v for n, _, v in _fields(_data(value))}
            out.metadata_props[_text(entry.get(1, b""))] = _text(entry.get(2, b""))
        elif number == _MODEL_GRAPH and wire == 2:
            graph = _data(value)
        elif number == _MODEL_FUNCTIONS and wire == 2:
            out.functions.append(_function(_data(value)))
    if graph is None or out.ir_version == 0:
        raise ValueError("no graph in the file")
    _graph(graph, out)
    out.producer = out.producer.strip()
    return out


def _function(buf: memoryview) -> Tuple[str, str, int]:
    name = domain = ""
    nodes = 0
    for number, wire, value in _fields(buf):
        if number == _FUNCTION_NAME and wire == 2:
            name = _text(value)
        elif number == _FUNCTION_DOMAIN and wire == 2:
            domain = _text(value)
        elif number == _FUNCTION_NODE and wire == 2:
            nodes += 1
    return domain, name, nodes


def _graph(buf: memoryview, out: OnnxSummary) -> None:
    ops: Dict[Tuple[str, str], int] = collections.Counter()
    initializer_names = set()
    inputs = []
    weights: Dict[str, List[int]] = {}
    for number, wire, value in _fields(buf):
        if wire != 2:
            continue
        if number == _GRAPH_NODE:
            op_type = domain = ""
            for n, w, v in _fields(_data(value)):
                if n == _NODE_OP_TYPE and w == 2:
                    op_type = _text(v)
                elif n == _NODE_DOMAIN and w == 2:
                    domain = _text(v)
            ops[(domain, op_type)] += 1
        elif number == _GRAPH_INITIALIZER:
            name, dtype, nbytes = _initializer(_data(value))
            initializer_names.add(name)
            entry = weights.setdefault(dtype, [0, 0])
            entry[0] += 1
            entry[1] += nbytes
        elif number == _GRAPH_INPUT:
            inputs.append(_value_info(_data(value)))
        elif number == _GRAPH_OUTPUT:
            out.outputs.append(_value_info(_data(value)))
    # Before IR version 4 initializers were listed among the inputs too; they are weights, not inputs.
    out.inputs = [i for i in inputs if i.name not in initializer_names]
    out.ops = dict(ops)
    out.weights = {k: (v[0], v[1]) for k, v in weights.items()}


def _initializer(buf: memoryview) -> Tuple[str, str, int]:
    dims: List[int] = []
    elem = 0
    name = ""
    for number, wire, value in _fields(buf):
        if number == 1:  # dims: repeated int64, packed (wire 2) or not (wire 0)
            if wire == 0:
                dims.append(int(value))
            else:
                packed, pos = _data(value), 0
                while pos < len(packed):
                    d, pos = _varint(packed, pos)
                    dims.append(d)
        elif number == 2 and wire == 0:
            elem = int(value)
        elif number == 8 and wire == 2:
            name = _text(value)
    count = 1
    for d in dims:
        count *= d
    return name, ELEM_TYPES.get(elem, f"type {elem}"), count * _ELEM_BITS.get(elem, 0) // 8


def _value_info(buf: memoryview) -> TensorInfo:
    name, dtype, shape = "", "?", []  # type: Tuple[str, str, List[Union[int, str]]]
    for number, wire, value in _fields(buf):
        if number == 1 and wire == 2:
            name = _text(value)
        elif number == 2 and wire == 2:
            for n, w, tensor in _fields(_data(value)):
                if n == 1 and w == 2:  # TypeProto.tensor_type
                    dtype, shape = _tensor_type(_data(tensor))
    return TensorInfo(name, dtype, shape)


def _tensor_type(buf: memoryview) -> Tuple[str, List[Union[int, str]]]:
    dtype, shape = "?", []  # type: Tuple[str, List[Union[int, str]]]
    for number, wire, value in _fields(buf):
        if number == 1 and wire == 0:
            dtype = ELEM_TYPES.get(int(value), f"type {value}")
        elif number == 2 and wire == 2:
            for n, w, dim in _fields(_data(value)):
                if n != 1 or w != 2:
                    continue
                d: Optional[Union[int, str]] = None
                for dn, dw, dv in _fields(_data(dim)):
                    if dn == 1 and dw == 0:
                        d = int(dv)
                    elif dn == 2 and dw == 2:
                        d = _text(dv)
                shape.append("?" if d is None else d)
    return dtype, shape
