"""Graph passes on exported deployment graphs.

Which file is for which runtime: the exported graph (``maskrcnn-deploy export``) keeps one
``MultiLevelRoIAlign`` node per pooler with a model-local function; ONNX Runtime runs it as is, TensorRT gets it
through :func:`strip_roi_align_functions` (plugin), and the SDK's OpenVINO backend inlines it in memory. The
*portable* graph (:func:`make_portable_graph`: ``maskrcnn-deploy inline``, ``export --portable``) has the
functions written out as standard ops, for any other ONNX runtime (OpenVINO's own tools, ...); TensorRT cannot
build it with the plugin, so keep the exported file for engines.

:func:`strip_roi_align_functions` prepares a graph for TensorRT: TensorRT's ONNX parser expands a node's
model-local function when the model has one, and only otherwise looks the op up in the plugin registry. Removing
the `MultiLevelRoIAlign` function makes the parser create this project's plugin (creator name
``MultiLevelRoIAlign``, version "1") from the node's attributes, which are checked here against the contract so a
mismatch fails at export time rather than inside the TensorRT builder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Union

from deploy_sdk.conversion.roi_align_function import ROI_ALIGN_ATTRIBUTES, ROI_ALIGN_DOMAIN, ROI_ALIGN_OP
from deploy_sdk.errors import DeploySdkError, EngineError
from deploy_sdk.portable_graph import custom_domain_nodes, make_portable

__all__ = [
    "strip_roi_align_functions",
    "roi_align_nodes",
    "check_roi_align_node",
    "make_portable_graph",
    "check_portable_graph",
    "write_portable_graph",
]


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
            "the graph has no MultiLevelRoIAlign node; it was not exported by 'maskrcnn-deploy export', or it is "
            "a portable (inlined) graph: build engines from the exported file, not its portable form"
        )
    for node in nodes:
        check_roi_align_node(node)
    keep = [f for f in out.functions if not (f.domain == ROI_ALIGN_DOMAIN and f.name == ROI_ALIGN_OP)]
    del out.functions[:]
    out.functions.extend(keep)
    return out


def check_portable_graph(model) -> None:
    """Raise :class:`EngineError` unless ``model`` has standard-domain nodes only, no local functions, and passes
    ``onnx.checker`` (full check) and strict, type-checking shape inference."""
    import onnx

    leftover = custom_domain_nodes(model)
    if leftover or len(model.functions):
        raise EngineError(
            f"the graph is not portable: custom-domain nodes {leftover[:3]}, {len(model.functions)} local function(s)"
        )
    try:
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:  # onnx.checker.ValidationError, shape inference errors: one line for the CLI
        raise EngineError(f"the portable graph fails the ONNX checks: {str(exc).splitlines()[0]}") from exc


def make_portable_graph(model):
    """The portable form of ``model`` (every custom-domain node replaced by its function body; see
    :func:`deploy_sdk.portable_graph.make_portable`), checked with :func:`check_portable_graph`."""
    out = make_portable(model)
    check_portable_graph(out)
    return out


def write_portable_graph(source: Union[str, os.PathLike], output: Union[str, os.PathLike]) -> int:
    """Read the deployment graph ``source``, write its checked portable form to ``output`` (atomically, metadata
    unchanged); return the number of nodes that were expanded."""
    import onnx

    from deploy_sdk.atomic_file import atomic_path
    from deploy_sdk.conversion.graph_file import load_deployment_graph

    source, output = Path(source), Path(output)
    if output.exists() and source.exists() and os.path.samefile(source, output):
        raise DeploySdkError(f"-o/--output {output} is the input file; write the portable graph to another file")
    model, _ = load_deployment_graph(source, "maskrcnn-deploy inline")
    expanded = len(custom_domain_nodes(model))
    portable = make_portable_graph(model)
    with atomic_path(output) as tmp:
        onnx.save(portable, str(tmp))
    return expanded
