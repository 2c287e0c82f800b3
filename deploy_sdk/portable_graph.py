"""The portable form of a deployment graph: standard ONNX operators only.

An exported graph pools RoIs with one ``maskrcnn_deploy::MultiLevelRoIAlign`` node per pooler, and each such
node carries a model-local ONNX function made of standard operators (``docs/architecture.md``, "The deployment
graph contract"). ONNX Runtime expands that function itself; TensorRT's builder removes it and uses the plugin.
Other runtimes (OpenVINO 2026.4 among them) do not expand model-local functions and refuse the custom node.
:func:`make_portable` writes every call to a local function out as the function's body, so the graph uses the
standard ``ai.onnx`` domain only and any ONNX runtime reads it; the outputs are the ones ONNX Runtime computes
from the original file, which expands the same body.

This module is part of the runtime layer (the ``openvino`` backend inlines in memory, so users keep one file) and
imports ``onnx`` lazily: ``import deploy_sdk`` needs no ``onnx``. The file-level pass with its checks is
:func:`deploy_sdk.conversion.graph_passes.make_portable_graph` (``maskrcnn-deploy inline``, ``export --portable``).
"""

from __future__ import annotations

from typing import Any, List, Tuple

from deploy_sdk.errors import EngineError

__all__ = ["STANDARD_DOMAINS", "custom_domain_nodes", "make_portable", "is_portable"]

#: Operator domains every ONNX runtime implements (the default domain and its two spellings).
STANDARD_DOMAINS = frozenset({"", "ai.onnx"})


def custom_domain_nodes(model: Any) -> List[Tuple[str, str, str]]:
    """``(node name, domain, op_type)`` of every main-graph node outside :data:`STANDARD_DOMAINS`, in graph order.

    Subgraphs (``If``/``Loop`` bodies) are searched too: a runtime has to run those as well.
    """
    found: List[Tuple[str, str, str]] = []

    def walk(graph) -> None:
        for node in graph.node:
            if node.domain not in STANDARD_DOMAINS:
                found.append((node.name, node.domain, node.op_type))
            for attr in node.attribute:
                if attr.HasField("g"):
                    walk(attr.g)
                for sub in attr.graphs:
                    walk(sub)

    walk(model.graph)
    return found


def is_portable(model: Any) -> bool:
    """True when ``model`` uses standard ONNX operators only and carries no local functions."""
    return not custom_domain_nodes(model) and not len(model.functions)


def make_portable(model: Any) -> Any:
    """A copy of ``model`` (an ``onnx.ModelProto``) with every call to a model-local function replaced by the
    function's body, the functions and the opset imports nothing uses any more removed.

    Everything else is kept as it is: inputs, outputs, initializers, ``metadata_props``, producer, IR version and
    the default-domain opset. Function bodies written for another ONNX opset than the graph's are converted by
    ONNX's version converter. Raises :class:`EngineError` naming the node when a custom-domain node has no
    function to expand (a graph for one runtime only, which no other runtime can read).
    """
    from deploy_sdk.errors import require

    inliner = require("onnx.inliner", "openvino", "making a portable (inlined) ONNX graph")

    main_opset = {o.domain: o.version for o in model.opset_import}.get("", None)
    mixed = main_opset is not None and any(
        o.domain in STANDARD_DOMAINS and o.version != main_opset for f in model.functions for o in f.opset_import
    )
    try:
        if mixed:
            # The version converter needs the types at each call: infer them first, keep the original value_info.
            shape_inference = require("onnx.shape_inference", "openvino", "making a portable ONNX graph")
            out = inliner.inline_local_functions(shape_inference.infer_shapes(model), convert_version=True)
            del out.graph.value_info[:]
            out.graph.value_info.extend(model.graph.value_info)
        else:
            out = inliner.inline_local_functions(model)
    except Exception as exc:  # onnx raises its C++ errors as plain exceptions
        raise EngineError(f"cannot inline the graph's local functions: {str(exc).splitlines()[0]}") from exc
    leftover = custom_domain_nodes(out)
    if leftover:
        name, domain, op = leftover[0]
        raise EngineError(
            f"node {name!r} ({domain}::{op}) has no ONNX function body, so the graph cannot be made portable; "
            f"{len(leftover)} such node(s) in all. Re-export the model with 'maskrcnn-deploy export'."
        )
    used = {""} | _domains_used(out.graph)
    keep = [o for o in out.opset_import if o.domain in used or o.domain in STANDARD_DOMAINS]
    del out.opset_import[:]
    out.opset_import.extend(keep)
    del out.functions[:]
    # The inliner builds a new ModelProto: carry over everything outside the graph, unchanged.
    del out.metadata_props[:]
    out.metadata_props.extend(model.metadata_props)
    for scalar in ("producer_name", "producer_version", "domain", "model_version", "doc_string", "ir_version"):
        setattr(out, scalar, getattr(model, scalar))
    return out


def _domains_used(graph) -> set:
    used = set()
    for node in graph.node:
        used.add(node.domain)
        for attr in node.attribute:
            if attr.HasField("g"):
                used |= _domains_used(attr.g)
            for sub in attr.graphs:
                used |= _domains_used(sub)
    return used
