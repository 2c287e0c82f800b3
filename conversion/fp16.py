"""fp16 conversion of a deployment graph: the network in fp16, the detection logic in fp32, explicit Casts between.

TensorRT 11 builds strongly typed networks only, so the precision of every tensor must be written into the graph.
The pass is written here rather than taken from onnxconverter-common's ``float16`` converter because the split is
by *role*, not by op type: an ``Add`` in the FPN is safe in fp16, an ``Add`` in box decoding is not, and the
converter's op/node block lists cannot express that without listing hundreds of nodes; it also does not look
inside model-local functions (the RoIAlign node's body), which must stay consistent with the node's input types.

What runs in fp16: every node whose name lies in one of the network's module scopes (``NETWORK_SCOPES``: backbone,
FPN, RPN head convolutions, box head, box predictor, mask head, mask predictor). The TorchScript exporter names
nodes after the module that created them (``/backbone/body/layer1/.../Conv``), and the export module keeps all
detection logic outside those modules (root scope). Everything else stays fp32:

- input normalization (mean/std on 0–255 pixels) and the graph inputs and outputs (types unchanged);
- anchors, box decoding (``exp`` of deltas, multiply by anchor sizes) and clipping: coordinates up to ~1333 px
  have a resolution of 0.5–1 px in fp16, and ``exp`` overflows fp16 above 11;
- level assignment, top-k and ``NonMaxSuppression`` inputs: fp16 ties and rounded IoUs change which boxes survive;
- softmax / sigmoid of the class and mask logits (computed from fp16 logits, in fp32);
- the ``MultiLevelRoIAlign`` node: its rois are coordinates, and its function body runs ONNX ``RoiAlign``, which
  requires rois and features of one type, so its features are cast to fp32 at its input.

Inputs that ONNX defines as float32 whatever the data type (``Resize`` roi/scales) are never converted.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Sequence, Set, Union

import numpy as np

from deploy_sdk.conversion.graph_file import load_deployment_graph, require_fp32, write_deployment_graph
from deploy_sdk.errors import DeploySdkError, EngineError, require

__all__ = ["NETWORK_SCOPES", "Fp16Report", "convert_model_to_fp16", "convert_file_to_fp16"]

NETWORK_SCOPES = (
    "/backbone/",
    "/rpn_head/",
    "/box_head/",
    "/box_predictor/",
    "/mask_head/",
    "/mask_predictor/",
)
# Ops left as they are even inside a network scope: constants are folded by every runtime anyway, and a Cast
# decides its own output type.
_NEVER_CONVERTED_OPS = {"Constant", "Cast"}
# Inputs that the ONNX spec types independently of the data (must stay float32).
_FP32_ONLY_INPUTS = {"Resize": {1, 2, 3}, "Upsample": {1}}
FP16_MAX = float(np.finfo(np.float16).max)


@dataclass
class Fp16Report:
    """What :func:`convert_model_to_fp16` did: nodes converted, Casts inserted, initializers stored as fp16."""

    fp16_nodes: List[str] = field(default_factory=list)
    casts_to_fp16: int = 0
    casts_to_fp32: int = 0
    fp16_initializers: int = 0


def _float_tensors(model) -> Set[str]:
    """Names of all float32 tensors of the main graph (after shape inference, which the export guarantees)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=False)
    names = set()
    for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            names.add(value.name)
    names.update(i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == onnx.TensorProto.FLOAT:
                    names.update(node.output)
    return names


def convert_model_to_fp16(model, scopes: Sequence[str] = NETWORK_SCOPES, exclude_nodes: Iterable[str] = ()) -> tuple:
    """Return ``(fp16_model, report)``: a converted copy of ``model`` (an ``onnx.ModelProto``).

    Nodes named under ``scopes`` (except ``exclude_nodes``) compute in fp16; their float32 weights are stored as
    fp16 (a copy is kept in fp32 if an fp32 node also reads them); a ``Cast`` to fp16 is inserted where an fp16
    node reads a tensor produced in fp32, and a ``Cast`` to fp32 where an fp32 node or a graph output reads a
    tensor produced in fp16. Graph inputs and outputs keep their types.
    """
    onnx = require("onnx", "convert", "fp16 conversion")
    from onnx import TensorProto, helper, numpy_helper

    out = type(model)()
    out.CopyFrom(model)
    graph = out.graph
    floats = _float_tensors(out)
    excluded = set(exclude_nodes)
    is_fp16 = [
        node.op_type not in _NEVER_CONVERTED_OPS
        and node.domain in ("", "ai.onnx")
        and node.name not in excluded
        and any(node.name.startswith(scope) for scope in scopes)
        for node in graph.node
    ]
    if not any(is_fp16):
        raise DeploySdkError(
            f"no node of the graph lies in the network scopes {list(scopes)}; was it exported by "
            "'maskrcnn-deploy export'?"
        )
    report = Fp16Report(fp16_nodes=[n.name for n, f in zip(graph.node, is_fp16) if f])

    produced_fp16: Set[str] = set()
    for node, fp16 in zip(graph.node, is_fp16):
        if fp16:
            produced_fp16.update(o for o in node.output if o in floats)

    initializers = {init.name: init for init in graph.initializer}
    fp32_readers: Dict[str, int] = defaultdict(int)
    for node, fp16 in zip(graph.node, is_fp16):
        keep_fp32 = _FP32_ONLY_INPUTS.get(node.op_type, set()) if fp16 else None
        for index, name in enumerate(node.input):
            if keep_fp32 is None or index in keep_fp32:
                fp32_readers[name] += 1
    graph_outputs = {o.name for o in graph.output}

    def fp16_name(name: str) -> str:
        return name + "__fp16"

    new_nodes = []
    cast_to_fp16_done: Set[str] = set()
    converted_inits: Set[str] = set()
    for node, fp16 in zip(graph.node, is_fp16):
        if not fp16:
            # fp32 node reading an fp16-produced tensor: it reads the Cast-back output, which keeps the old name.
            new_nodes.append(node)
            continue
        keep_fp32 = _FP32_ONLY_INPUTS.get(node.op_type, set())
        for index, name in enumerate(node.input):
            if not name or index in keep_fp32 or name not in floats:
                continue
            if name in produced_fp16:
                node.input[index] = fp16_name(name)
            elif name in initializers:
                array = numpy_helper.to_array(initializers[name])
                if np.abs(array).max(initial=0.0) > FP16_MAX:
                    raise EngineError(
                        f"weight {name!r} of node {node.name!r} exceeds the fp16 range (|x| up to "
                        f"{np.abs(array).max():.3g} > {FP16_MAX:.0f}); keep the node fp32 with --exclude {node.name}"
                    )
                if fp32_readers.get(name):
                    node.input[index] = fp16_name(name)
                    if name not in converted_inits:
                        graph.initializer.append(numpy_helper.from_array(array.astype(np.float16), fp16_name(name)))
                else:
                    if name not in converted_inits:
                        initializers[name].CopyFrom(numpy_helper.from_array(array.astype(np.float16), name))
                if name not in converted_inits:
                    converted_inits.add(name)
                    report.fp16_initializers += 1
            else:
                # Produced in fp32 (a graph input, an fp32 node or a Constant): one shared Cast per tensor.
                if name not in cast_to_fp16_done:
                    cast_to_fp16_done.add(name)
                    new_nodes.append(
                        helper.make_node(
                            "Cast", [name], [fp16_name(name)], name=f"{name}__cast_fp16", to=TensorProto.FLOAT16
                        )
                    )
                    report.casts_to_fp16 += 1
                node.input[index] = fp16_name(name)
        new_nodes.append(node)
        for index, name in enumerate(node.output):
            if name not in produced_fp16:
                continue
            node.output[index] = fp16_name(name)
            if fp32_readers.get(name) or name in graph_outputs:
                new_nodes.append(
                    helper.make_node("Cast", [fp16_name(name)], [name], name=f"{name}__cast_fp32", to=TensorProto.FLOAT)
                )
                report.casts_to_fp32 += 1
    # Detach the nodes from the repeated field before clearing it (they are views into it).
    detached = []
    for node in new_nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        detached.append(copy)
    del graph.node[:]
    graph.node.extend(detached)
    # Stale fp32 annotations of converted tensors would contradict the new types; shape inference rebuilds them.
    del graph.value_info[:]
    out = onnx.shape_inference.infer_shapes(out, strict_mode=True)
    return out, report


def convert_file_to_fp16(
    onnx_path: Union[str, os.PathLike],
    output_path: Union[str, os.PathLike],
    scopes: Sequence[str] = NETWORK_SCOPES,
    exclude_nodes: Iterable[str] = (),
) -> Fp16Report:
    """Convert the fp32 deployment graph at ``onnx_path``; write it atomically to ``output_path``.

    The result passes ``onnx.checker`` (full check) before it is written; its metadata says ``precision = "fp16"``.
    """
    model, metadata = load_deployment_graph(onnx_path, "fp16 conversion")
    require_fp32(metadata, onnx_path, "convert")
    converted, report = convert_model_to_fp16(model, scopes, exclude_nodes)
    metadata.precision = "fp16"
    write_deployment_graph(converted, metadata, output_path)
    return report
