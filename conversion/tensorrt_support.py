"""Will TensorRT's ONNX parser take this graph? A static check that runs without TensorRT (``maskrcnn-deploy check
model.onnx --target tensorrt``).

The graph checked is the one the engine builder hands to the parser: the export with its ``MultiLevelRoIAlign``
local function stripped (:func:`deploy_sdk.conversion.tensorrt_build.prepare_onnx_for_tensorrt`), so that node
must resolve to this project's plugin and every other node to a built-in importer. Each node is checked for

- the operator: supported by the parser of that TensorRT major version (or, in a custom domain, expanded from a
  model-local function, or our plugin);
- the element types of its data inputs against the types the parser lists for the operator (int64 where only
  int32 is taken, uint8 anywhere but a Cast, fp64, ...); index / shape / parameter inputs (Gather indices, Reshape
  shape, TopK K, NMS thresholds) are not data inputs and are not checked against that list;
- the operator's documented restrictions that a graph can violate statically (attribute values, inputs that must
  be build-time constants, TopK's K bound, the NMS layer's rank-3 inputs, the number of boxes its TopK stage
  considers, zero Q/DQ zero points, pooling rank and dilations, the opset range).

Sources (facts read, nothing copied; re-check them when a new TensorRT major version is added):

- TensorRT 10: the ONNX-TensorRT parser's operator support matrix, ``docs/operators.md`` of github.com/onnx/
  onnx-tensorrt at the TensorRT 10.15 GA release (2026-02-02; "opset 9 to opset 24"), the latest 10.x table.
  Where the parser's importer is more permissive than that table, the importer wins and the entry says so:
  ``onnxOpImporters.cpp`` (release 10.1) converts ``Clip`` on INT32/INT64 inputs into element-wise min/max.
- TensorRT 11: the 10.15 table plus the parser changes in the TensorRT 11.0-11.5 release notes (11.0: ``Swish``
  added; 11.2: ``DFT`` through a cuFFT plugin, 5-D ``GridSample``; 11.5: ONNX opset 25, ``Squeeze`` without
  axes) and NVIDIA's ONNX opset guide for 11.x (opsets 9-25). No 11.x operators table was available here; no
  operator was removed from the parser in those notes (the removed *plugins*, e.g. the old ``nms``, are not ONNX
  operators the export uses).
- The NMS layer (``INMSLayer``, TensorRT 10 operator docs): boxes and scores rank 3, at most 5000 boxes per batch
  item considered by score (2000 on SM 5.3 / 6.2 devices).

What a static check cannot see: shape values only known at run time (a dynamic K or box count is reported as a
warning with the bound TensorRT needs), tactic availability on a given GPU, and the plugin library being loaded
(the engine builder does that).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, FrozenSet, List, Optional, Sequence, Set, Tuple, Union

from deploy_sdk.errors import DeploySdkError, require
from deploy_sdk.plugins import MULTILEVEL_OP, SINGLE_LEVEL_OP

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "TRT_VERSIONS",
    "Finding",
    "Report",
    "SupportTable",
    "support_table",
    "check_model",
    "check_file",
    "run_check",
]

# ------------------------------------------------------------------------------------------------ the tables

# Type names as the operators table writes them -> ONNX TensorProto element types.
_TYPE_CODES = {
    "FP32": 1, "UINT8": 2, "INT8": 3, "INT32": 6, "INT64": 7, "BOOL": 9, "FP16": 10, "DOUBLE": 11, "BF16": 16,
    "FP8": 17, "INT4": 22, "FP4": 23,
}  # fmt: skip
_TYPE_NAMES = {
    1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 8: "string", 9: "bool",
    10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 14: "complex64", 15: "complex128", 16: "bfloat16",
    17: "float8e4m3fn", 18: "float8e4m3fnuz", 19: "float8e5m2", 20: "float8e5m2fnuz", 21: "uint4", 22: "int4",
    23: "float4e2m1",
}  # fmt: skip

F = "FP32 FP16 BF16"
FI = "FP32 FP16 BF16 INT32 INT64"
FIB = "FP32 FP16 BF16 INT32 INT64 BOOL"

# TensorRT 10.15 (latest 10.x) ONNX parser: operator -> the types it lists (space separated). Written from the
# operators table (see the module docstring); grouped by type set rather than alphabetically to keep it short.
_TRT10_TYPES: Dict[str, str] = {}
for _ops, _types in (
    (
        "Acos Acosh Asin Asinh Atan Atanh AveragePool BatchNormalization Ceil Celu Clip Conv ConvTranspose Cos Cosh "
        "CumSum Dropout Einsum Elu Erf Exp Floor Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool GroupNormalization "
        "GRU HardSigmoid HardSwish Hardmax ImageScaler InstanceNormalization IsInf LayerNormalization LeakyRelu Log "
        "LogSoftmax LRN LSTM LpNormalization LpPool MatMul MaxPool MeanVarianceNormalization ParametricSoftplus PRelu "
        "QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Reciprocal Resize "
        "RMSNormalization RNN RotaryEmbedding Round ScaledTanh Scan Selu Sigmoid Sin Sinh Softmax Softplus Softsign "
        "Sqrt Tan Tanh ThresholdedRelu Upsample",
        F,
    ),
    (
        "Abs Add ArgMax ArgMin DepthToSpace Div Equal Greater GreaterOrEqual IsNaN Less LessOrEqual Max Min Mod Mul "
        "Neg Pad Pow Range ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd "
        "ReduceSum ReduceSumSquare Relu Scatter ScatterElements ScatterND Shrink Sign SpaceToDepth Sub Sum TopK",
        FI,
    ),
    (
        "Concat Expand EyeLike Flatten Gather GatherElements GatherND Identity If Loop OneHot Reshape ReverseSequence "
        "Shape Size Slice Split Squeeze Tile Transpose Trilu Unsqueeze Where",
        FIB,
    ),
    ("And Not Or Xor", "BOOL"),
    ("Cast CastLike", FIB + " UINT8"),
    ("ConstantOfShape", FIB + " FP8 FP4 INT4"),
    # INT8 added to the table's list: quantized weights are INT8 constants feeding DequantizeLinear, whose own
    # row (INT8 input) is what the table documents.
    ("Constant", FIB + " FP8 FP4 INT4 INT8"),
    (
        "BlackmanWindow DeformConv GridSample HammingWindow HannWindow Mish NonMaxSuppression NonZero RoiAlign",
        "FP32 FP16",
    ),
    ("DequantizeLinear", "INT8 FP8 FP4 INT4"),
    ("Gelu", F + " INT8 INT32 INT64"),
    ("Mean", F + " FP8 INT32 INT64"),
    ("Attention", F + " INT8 FP8"),
    ("TensorScatter", F + " INT32"),
    ("STFT", "FP32"),
):
    for _op in _ops.split():
        _TRT10_TYPES[_op] = _types

# The importer is more permissive than the table: Clip on INT32/INT64 becomes element-wise max/min
# (onnxOpImporters.cpp, DEFINE_BUILTIN_OP_IMPORTER(Clip)).
_TRT10_TYPES["Clip"] = FI

# Listed as not supported ("N") in the 10.15 table.
_TRT10_UNSUPPORTED = frozenset(
    "AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Col2Im CenterCropPad Compress "
    "ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear ImageDecoder MatMulInteger MaxRoiPool MaxUnpool "
    "MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional OptionalGetElement OptionalHasElement "
    "QLinearConv QLinearMatMul RegexFullMatch SequenceAt SequenceConstruct SequenceEmpty SequenceErase SequenceInsert "
    "SequenceLength SequenceMap SoftmaxCrossEntropyLoss SplitToSequence StringConcat StringNormalizer StringSplit "
    "TfIdfVectorizer Unique".split()
)


@dataclass(frozen=True)
class SupportTable:
    """What one TensorRT major version's ONNX parser takes."""

    version: str
    source: str
    min_opset: int
    max_opset: int
    types: Dict[str, Optional[str]]  # operator -> listed types (None: supported, types not published)
    unsupported: FrozenSet[str]
    #: Max boxes per batch item the NMS layer considers (by score) on current GPUs (INMSLayer TopK box limit).
    nms_topk_box_limit: int = 5000
    #: TopK's K must be below this (operators table, TopK row).
    topk_max_k: int = 3840

    def listed_types(self, op: str) -> Optional[Set[int]]:
        text = self.types.get(op)
        return None if text is None else {_TYPE_CODES[t] for t in text.split()}


_SOURCE_10 = (
    "onnx/onnx-tensorrt docs/operators.md at the TensorRT 10.15 GA parser release (2026-02-02), plus "
    "onnxOpImporters.cpp (Clip on INT32/INT64)"
)
_SOURCE_11 = (
    _SOURCE_10 + "; TensorRT 11.0-11.5 release notes (parser: Swish 11.0, DFT and 5-D GridSample 11.2, "
    "opset 25 and axis-less Squeeze 11.5) and NVIDIA's ONNX opset guide for 11.x"
)

_TABLES: Dict[str, SupportTable] = {
    "10": SupportTable("10", _SOURCE_10, 9, 24, dict(_TRT10_TYPES), _TRT10_UNSUPPORTED),
    "11": SupportTable(
        "11",
        _SOURCE_11,
        9,
        25,
        {**_TRT10_TYPES, "Swish": None, "DFT": "FP32 FP16"},  # Swish: the notes list no types
        _TRT10_UNSUPPORTED - {"DFT"},
    ),  # fmt: skip
}
TRT_VERSIONS = tuple(_TABLES)


def support_table(version: Union[str, int]) -> SupportTable:
    """The table of TensorRT major version ``version`` ("10" or "11"; "10.x" is read as "10")."""
    key = str(version).strip().split(".")[0]
    if key not in _TABLES:
        raise DeploySdkError(
            f"TensorRT version {version!r} is not known to the compatibility check; choose one of "
            f"{', '.join(TRT_VERSIONS)} (e.g. --trt-version 10)"
        )
    return _TABLES[key]


# Data inputs (positions) of operators whose other inputs are indices, shapes or scalar parameters. Operators not
# listed: every input is a data input. Constant / ConstantOfShape: the output type is checked instead.
_DATA_INPUTS: Dict[str, Tuple[int, ...]] = {
    **{
        op: (0,)
        for op in (
            "Gather GatherElements GatherND Slice Reshape Expand Tile Unsqueeze Squeeze TopK Resize Upsample Split "
            "CumSum Shape Size Flatten Transpose Identity ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax "
            "ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare QuantizeLinear DequantizeLinear ArgMax ArgMin "
            "NonZero Dropout Trilu EyeLike ReverseSequence DepthToSpace SpaceToDepth LayerNormalization "
            "InstanceNormalization BatchNormalization GroupNormalization Softmax LogSoftmax Cast"
        ).split()
    },
    "Pad": (0, 2),
    "ScatterElements": (0, 2),
    "ScatterND": (0, 2),
    "Scatter": (0, 2),
    "Where": (1, 2),
    "NonMaxSuppression": (0, 1),
    "OneHot": (2,),
    "RoiAlign": (0, 1),
    "Constant": (),
    "ConstantOfShape": (),
    "If": (),
    "Loop": (),
    "Scan": (),
}
_OUTPUT_TYPED = {"Constant", "ConstantOfShape", "Cast", "CastLike"}

_REDUCE_OPS = frozenset(
    "ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum "
    "ReduceSumSquare".split()
)

# The plugin this project ships for its custom node (deploy_sdk.plugins): op name -> data input types.
_OUR_PLUGIN_OPS = {MULTILEVEL_OP: "FP32 FP16", SINGLE_LEVEL_OP: "FP32 FP16"}


# ------------------------------------------------------------------------------------------------ findings


@dataclass
class Finding:
    """One node TensorRT's parser would refuse (``severity`` "error") or may mishandle at run time ("warning")."""

    severity: str
    node: str
    op: str
    domain: str
    input_types: List[str]
    attributes: Dict[str, object]
    problem: str

    def line(self) -> str:
        op = f"{self.domain}::{self.op}" if self.domain not in ("", "ai.onnx") else self.op
        attrs = ", ".join(f"{k}={v}" for k, v in self.attributes.items())
        return (f"{self.severity.upper()}: {op} node {self.node!r} (inputs {', '.join(self.input_types) or '-'}"
                f"{'; ' + attrs if attrs else ''}): {self.problem}")  # fmt: skip


@dataclass
class Report:
    version: str
    source: str
    nodes_checked: int
    findings: List[Finding] = field(default_factory=list)

    @property
    def errors(self) -> List[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> List[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        verdict = "compatible" if self.ok else "NOT compatible"
        return (f"TensorRT {self.version}.x: {verdict}: {self.nodes_checked} nodes checked, {len(self.errors)} "
                f"unsupported, {len(self.warnings)} warning(s)")  # fmt: skip


# ------------------------------------------------------------------------------------------------ the check


class _Graph:
    """Element types, constant values and integer upper bounds of a graph's tensors."""

    def __init__(self, model):
        import onnx
        from onnx import numpy_helper

        self.onnx = onnx
        self.inference_error: Optional[str] = None
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception as exc:  # a graph shape inference cannot take: types come from what is declared
            inferred = model
            self.inference_error = str(exc).splitlines()[0][:200]
        g = inferred.graph
        self.types: Dict[str, int] = {}
        self.shapes: Dict[str, Optional[List[Optional[int]]]] = {}
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            tt = vi.type.tensor_type
            if tt.elem_type:
                self.types[vi.name] = tt.elem_type
            if tt.HasField("shape"):
                self.shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        self.values: Dict[str, np.ndarray] = {}
        for init in g.initializer:
            self.types[init.name] = init.data_type
            self.shapes[init.name] = list(init.dims)
            self.values[init.name] = numpy_helper.to_array(init)
        for node in model.graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for a in node.attribute:
                    if a.name == "value":
                        self.values[node.output[0]] = numpy_helper.to_array(a.t)
                        self.types[node.output[0]] = a.t.data_type
        self.constant: Set[str] = set(self.values)
        self.upper: Dict[str, float] = {}
        for name, value in self.values.items():
            try:
                self.upper[name] = float(value.max()) if value.size else float("-inf")
            except (TypeError, ValueError):
                pass
        self._propagate(model.graph.node)

    def _propagate(self, nodes) -> None:
        # Build-time constants (every input constant, a deterministic op) and upper bounds of the small integer
        # tensors the export computes top-k sizes with: Min / ReduceMin take the least known bound (the minimum of
        # a Concat is at most each non-empty part's bound), shape moves (Reshape, Unsqueeze, Squeeze, Cast,
        # Identity, Flatten) keep it, Concat takes the largest.
        random_ops = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial"}
        concat_parts: Dict[str, List[str]] = {}
        for node in nodes:
            ins = [i for i in node.input if i]
            if (
                node.op_type not in random_ops
                and node.op_type != "Constant"
                and ins
                and all(i in self.constant for i in ins)
            ):
                self.constant.update(o for o in node.output if o)
            if not node.output or not ins:
                continue
            out, op = node.output[0], node.op_type
            bounds = [self.upper[i] for i in ins if i in self.upper]
            if op == "Min" and bounds:
                self.upper[out] = min(bounds)
            elif op == "ReduceMin":
                parts = [self.upper[p] for p in concat_parts.get(ins[0], []) if p in self.upper]
                if ins[0] in self.upper:
                    parts.append(self.upper[ins[0]])
                if parts:
                    self.upper[out] = min(parts)
            elif op in ("Reshape", "Unsqueeze", "Squeeze", "Cast", "Identity", "Flatten") and ins[0] in self.upper:
                self.upper[out] = self.upper[ins[0]]
            elif op == "Concat":
                concat_parts[out] = ins
                if len(bounds) == len(ins):
                    self.upper[out] = max(bounds)

    def type_name(self, name: str) -> str:
        if not name:
            return "-"
        code = self.types.get(name)
        return _TYPE_NAMES.get(code, "?") if code else "?"


def _attributes(node) -> Dict[str, object]:
    from onnx import helper

    out: Dict[str, object] = {}
    for a in node.attribute:
        if a.name == "value" or a.type in (a.GRAPH, a.GRAPHS, a.TENSOR, a.TENSORS):
            out[a.name] = f"<{a.name}>"
            continue
        value = helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        elif isinstance(value, (list, tuple)):
            value = [v.decode(errors="replace") if isinstance(v, bytes) else v for v in value]
            if len(value) > 8:
                value = value[:8] + ["..."]
        out[a.name] = value
    return out


def _attr(node, name: str, default):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


_RESIZE_CTM = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
_RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}


def _restrictions(node, g: _Graph, table: SupportTable) -> List[Tuple[str, str]]:
    """(severity, problem) for each documented restriction ``node`` violates."""
    op = node.op_type
    ins = list(node.input)
    problems: List[Tuple[str, str]] = []

    def need_constant(index: int, what: str, phrase: str = "must be a build-time constant") -> None:
        if len(ins) > index and ins[index] and ins[index] not in g.constant:
            problems.append(("error", f"{what} {phrase} (it is computed at run time)"))

    if op == "TopK":
        if int(_attr(node, "sorted", 1)) != 1:
            problems.append(("error", "sorted=0 is not supported (TensorRT's TopK always sorts)"))
        k = ins[1] if len(ins) > 1 else ""
        bound = g.upper.get(k)
        if bound is None:
            problems.append(("warning", f"K is only known at run time; TensorRT requires K < {table.topk_max_k}"))
        elif bound >= table.topk_max_k:
            problems.append(("error", f"K can be up to {int(bound)}; TensorRT requires K < {table.topk_max_k}"))
    elif op in _REDUCE_OPS:
        need_constant(1, "the axes input", "must be an initializer")
    elif op in ("Squeeze", "Unsqueeze"):
        if len(ins) < 2 or not ins[1]:
            if op == "Squeeze" and table.version == "10" and not _attr(node, "axes", None):
                problems.append(("error", "Squeeze without axes is only supported from TensorRT 11.5"))
        else:
            need_constant(1, "the axes input")
    elif op == "CumSum":
        need_constant(1, "the axis input")
    elif op == "OneHot":
        need_constant(1, "the depth input")
    elif op == "Dropout":
        if len(ins) > 2 and ins[2]:
            need_constant(2, "training_mode")
    elif op == "Resize" or op == "Upsample":
        ctm = _attr(node, "coordinate_transformation_mode", "half_pixel")
        mode = _attr(node, "mode", "nearest")
        if ctm not in _RESIZE_CTM:
            problems.append(("error", f"coordinate_transformation_mode {ctm!r} is not supported"))
        if mode not in ("nearest", "linear"):
            problems.append(("error", f"mode {mode!r} is not supported (nearest or linear only)"))
        if mode == "nearest" and _attr(node, "nearest_mode", "round_prefer_floor") not in _RESIZE_NEAREST:
            problems.append(("error", f"nearest_mode {_attr(node, 'nearest_mode', '')!r} is not supported"))
        if int(_attr(node, "antialias", 0)):
            problems.append(("error", "antialias=1 is not supported"))
        if _attr(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
            problems.append(("error", "keep_aspect_ratio_policy other than 'stretch' is not supported"))
    elif op == "ScatterND":
        if _attr(node, "reduction", "none") != "none":
            problems.append(("error", f"reduction {_attr(node, 'reduction', '')!r} is not supported (none only)"))
    elif op in ("MaxPool", "AveragePool", "LpPool"):
        kernel = _attr(node, "kernel_shape", [])
        if len(kernel) not in (2, 3):
            problems.append(("error", f"{len(kernel)}-D pooling is not supported (2-D or 3-D only)"))
        if any(d != 1 for d in _attr(node, "dilations", [])):
            problems.append(("error", "dilations other than 1 are not supported"))
        if op == "MaxPool" and len(node.output) > 1 and node.output[1]:
            problems.append(("error", "the Indices output is not supported"))
    elif op == "Constant":
        for a in node.attribute:
            if a.name in ("sparse_value", "value_string", "value_strings"):
                problems.append(("error", f"the {a.name} attribute is not supported"))
    elif op in ("QuantizeLinear", "DequantizeLinear"):
        zp = ins[2] if len(ins) > 2 else ""
        if zp:
            value = g.values.get(zp)
            if value is None:
                problems.append(("error", "the zero point must be a constant (and zero)"))
            elif value.size and bool((value.astype("float64") != 0).any()):
                problems.append(("error", "the zero point must be zero (symmetric quantization only)"))
    elif op == "LayerNormalization":
        if any(o for o in list(node.output)[1:]):
            problems.append(("error", "only the first output (Y) is supported"))
    elif op == "NonMaxSuppression":
        for index, what in ((0, "boxes"), (1, "scores")):
            shape = g.shapes.get(ins[index]) if len(ins) > index else None
            if shape is not None and len(shape) != 3:
                problems.append(("error", f"{what} must be 3-D for the NMS layer, got rank {len(shape)}"))
        if int(_attr(node, "center_point_box", 0)) not in (0, 1):
            problems.append(("error", "center_point_box must be 0 or 1"))
        if len(ins) > 3 and ins[3] in g.values:
            iou = float(g.values[ins[3]].reshape(-1)[0]) if g.values[ins[3]].size else 0.0
            if not 0.0 <= iou <= 1.0:
                problems.append(("error", f"iou_threshold {iou} is outside [0, 1]"))
        shape = g.shapes.get(ins[0]) if ins else None
        boxes = shape[1] if shape is not None and len(shape) == 3 else None
        limit = table.nms_topk_box_limit
        if boxes is not None and boxes > limit:
            problems.append(("error", f"{boxes} boxes per batch item; the NMS layer considers at most {limit} "
                                      "(by score) and would drop the rest"))  # fmt: skip
    return problems


def _check_node(node, g: _Graph, table: SupportTable, functions, report: Report, where: str = "") -> None:
    name = where + (node.name or f"<{node.op_type} #{report.nodes_checked}>")
    report.nodes_checked += 1
    op, domain = node.op_type, node.domain or ""
    in_types = [g.type_name(i) for i in node.input]

    def add(severity: str, problem: str) -> None:
        report.findings.append(Finding(severity, name, op, domain, in_types, _attributes(node), problem))

    if domain not in ("", "ai.onnx"):
        function = functions.get((domain, op))
        if function is not None:  # the parser expands a model-local function: check its body
            for inner in function.node:
                _check_node(inner, g, table, functions, report, where=f"{name}/")
            return
        if op in _OUR_PLUGIN_OPS:
            allowed = {_TYPE_CODES[t] for t in _OUR_PLUGIN_OPS[op].split()}
            data = node.input[1:] if op == MULTILEVEL_OP else node.input[:1]  # features: levels / X
            bad = [g.type_name(i) for i in data if g.types.get(i) and g.types[i] not in allowed]
            if bad:
                add("error", f"this project's {op} plugin takes float32 or float16 features, got {', '.join(bad)}")
            return
        add("error", f"custom op with no model-local function and no known plugin: TensorRT needs a plugin "
                     f"registered as {op!r} (load it with the plugin library before parsing)")  # fmt: skip
        return

    if op in table.unsupported:
        add("error", f"{op} is not supported by TensorRT {table.version}'s ONNX parser")
        return
    if op not in table.types:
        add("error", f"{op} is not in TensorRT {table.version}'s ONNX operator support table")
        return
    listed = table.listed_types(op)
    if listed is not None:
        positions = _DATA_INPUTS.get(op)
        indices = range(len(node.input)) if positions is None else [p for p in positions if p < len(node.input)]
        names = [node.input[i] for i in indices if node.input[i]]
        if op in _OUTPUT_TYPED:
            names += [o for o in node.output if o]
        bad = sorted({g.type_name(n) for n in names if g.types.get(n) and g.types[n] not in listed})
        takes = ", ".join(sorted(_TYPE_NAMES[c] for c in listed))
        if bad == ["float64"]:  # the parser's "limited support": computed as float32, clamped to +-FLT_MAX
            add("warning", f"float64 is computed as float32 by TensorRT (values clamped to +-FLT_MAX); {op} takes "
                           f"{takes}")  # fmt: skip
        elif bad:
            add("error", f"type {', '.join(bad)} is not supported for {op} (TensorRT {table.version} takes {takes})")
    for severity, problem in _restrictions(node, g, table):
        add(severity, problem)


def check_model(model, version: Union[str, int] = "10") -> Report:
    """Check an ONNX ``ModelProto`` as TensorRT ``version``'s parser would see it.

    A graph with ``MultiLevelRoIAlign`` nodes is checked in its stripped form (the engine builder's
    ``prepare_onnx_for_tensorrt``): those nodes must resolve to this project's plugin.
    """
    from deploy_sdk.conversion import graph_passes

    table = support_table(version)
    g = _Graph(model)  # types inferred with the local functions present (the stripped node has no schema)
    if graph_passes.roi_align_nodes(model):
        model = graph_passes.strip_roi_align_functions(model)
    report = Report(table.version, table.source, 0)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and not table.min_opset <= opset <= table.max_opset:
        report.findings.append(Finding(
            "error", "<model>", "opset", "", [], {"opset": opset},
            f"opset {opset} is outside TensorRT {table.version}'s range {table.min_opset}-{table.max_opset}; "
            "re-export with --opset in that range",
        ))  # fmt: skip
    if g.inference_error:
        report.findings.append(Finding(
            "warning", "<model>", "shape inference", "", [], {},
            f"ONNX shape inference failed ({g.inference_error}); types of intermediate tensors are unchecked",
        ))  # fmt: skip
    functions = {(f.domain, f.name): f for f in model.functions}
    for node in model.graph.node:
        _check_node(node, g, table, functions, report)
    for vi in list(model.graph.input) + list(model.graph.output):
        code = vi.type.tensor_type.elem_type
        if code and code not in {_TYPE_CODES[t] for t in (FIB + " UINT8").split()}:
            report.findings.append(Finding(
                "error", vi.name, "graph input/output", "", [_TYPE_NAMES.get(code, "?")], {},
                f"network inputs and outputs of type {_TYPE_NAMES.get(code, '?')} are not supported",
            ))  # fmt: skip
    return report


def check_file(path: Union[str, os.PathLike[str]], version: Union[str, int] = "10") -> Report:
    """:func:`check_model` on an ONNX file; a missing or unreadable file is a :class:`DeploySdkError`."""
    onnx = require("onnx", "convert", "the TensorRT compatibility check")
    path = Path(path)
    if not path.is_file():
        raise DeploySdkError(
            f"ONNX model {path} does not exist; export one with: maskrcnn-deploy export CKPT -o {path}"
        )
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # DecodeError and friends have no common base
        raise DeploySdkError(f"{path} is not a readable ONNX model ({exc}); re-export it") from exc
    return check_model(model, version)


def run_check(args: argparse.Namespace, out: Callable[[str], None] = print) -> int:
    """``maskrcnn-deploy check MODEL --target tensorrt [--trt-version V]``: print the report, 0 if clean else 1."""
    versions: Sequence[str] = [args.trt_version] if getattr(args, "trt_version", None) else list(TRT_VERSIONS)
    ok = True
    for version in versions:
        report = check_file(args.model, version)
        out(f"TensorRT {report.version}.x parser support per: {report.source}")
        for finding in report.findings:
            out(finding.line())
        out(report.summary())
        ok = ok and report.ok
    return 0 if ok else 1
