"""Graph passes on exported deployment graphs.

:func:`strip_roi_align_functions` prepares a graph for TensorRT: TensorRT's ONNX parser expands a node's
model-local function when the model has one, and only otherwise looks the op up in the plugin registry. Removing
the `MultiLevelRoIAlign` function makes the parser create this project's plugin (creator name
``MultiLevelRoIAlign``, version "1") from the node's attributes, which are checked here against the contract so a
mismatch fails at export time rather than inside the TensorRT builder.
"""

from __future__ import annotations

from typing import List

from deploy_sdk.conversion.roi_align_function import ROI_ALIGN_ATTRIBUTES, ROI_ALIGN_DOMAIN, ROI_ALIGN_OP
from deploy_sdk.errors import EngineError

__all__ = ["strip_roi_align_functions", "roi_align_nodes", "check_roi_align_node"]


def roi_align_nodes(model) -> List:
    """The `MultiLevelRoIAlign` nodes of ``model``'s main graph, in graph order."""
    return [n for n in model.graph.node if n.domain == ROI_ALIGN_DOMAIN and n.op_type == ROI_ALIGN_OP]


def check_roi_align_node(node) -> None:
    """Raise :class:`EngineError` unless ``node`` carries exactly the attributes the plugin creator parses, each of
    the right ONNX type, with values it accepts."""
    from onnx import AttributeProto

    found = {a.name: AttributeProto.AttributeType.Name(a.type) for a in node.attribute}
    if found != ROI_ALIGN_ATTRIBUTES:
        raise EngineError(
            f"RoIAlign node {node.name!r} has attributes {found}; the plugin expects {ROI_ALIGN_ATTRIBUTES}. "
            "Re-export the model with this SDK's 'maskrcnn-deploy export'."
        )
    values = {a.name: a for a in node.attribute}
    levels = len(node.input) - 1
    if len(values["spatial_scales"].floats) != levels:
        raise EngineError(
            f"RoIAlign node {node.name!r} has {len(values['spatial_scales'].floats)} spatial_scales for "
            f"{levels} feature maps"
        )
    if values["mode"].s.decode() != "avg":
        raise EngineError(f"RoIAlign node {node.name!r} has mode {values['mode'].s.decode()!r}; exports use 'avg'")


def strip_roi_align_functions(model):
    """Return a copy of ``model`` without the `MultiLevelRoIAlign` local function (other functions kept).

    The nodes stay as they are (same op, domain, inputs, outputs and attributes); each is checked with
    :func:`check_roi_align_node`. Raises :class:`EngineError` when the graph has no such node.
    """
    out = type(model)()
    out.CopyFrom(model)
    nodes = roi_align_nodes(out)
    if not nodes:
        raise EngineError(
            "the graph has no MultiLevelRoIAlign node; it was not exported by 'maskrcnn-deploy export'"
        )
    for node in nodes:
        check_roi_align_node(node)
    keep = [f for f in out.functions if not (f.domain == ROI_ALIGN_DOMAIN and f.name == ROI_ALIGN_OP)]
    del out.functions[:]
    out.functions.extend(keep)
    return out
