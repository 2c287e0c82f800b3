"""`maskrcnn-deploy inspect FILE`: what a model file is and holds, for .onnx graphs, engines and checkpoints.

- ``.onnx`` (fp32, fp16, INT8 Q/DQ, portable): the SDK metadata (classes, pre-processing, thresholds, source
  checkpoint), inputs and outputs with their shapes, precision and weights by type, opsets, an ops summary, the
  custom-domain (plugin) nodes and whether a local function lets ONNX Runtime run them. Read by
  :mod:`deploy_sdk.onnx_summary`, without the ``onnx`` package.
- engines (``maskrcnn-deploy build``): the header only, without TensorRT or a GPU: the TensorRT version and GPU
  it was built with, its optimization profile, metadata and precision.
- checkpoints: opened the way the runtime opens one, through the ``torch`` backend (needs the ``convert``
  extra): architecture, classes, pre-processing, parameters, and the graph an export would have.

The first two work on the runtime-only install. Like Polygraphy's ``inspect model``, the output is text for
people; ``--json`` prints the same facts as one JSON object for scripts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List

from deploy_sdk.commands.options import add_trust_checkpoint_argument
from deploy_sdk.errors import DeploySdkError, EngineError

__all__ = ["add_arguments", "run", "inspect_file", "format_report"]

# ONNX domains of standard operators; nodes in any other domain need a plugin or a function to run.
_STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")
_INPUT_ORDER = {"images": 0, "image_sizes": 1}  # the graph contract's inputs, in order
# The graph contract's outputs, in order, with the shape each has in terms of the metadata (B: batch).
_OUTPUT_SHAPES = (
    ("num_detections", "int32", ("B",)),
    ("boxes", "float32", ("B", "K", 4)),
    ("scores", "float32", ("B", "K")),
    ("labels", "int32", ("B", "K")),
    ("masks", "float32", ("B", "K", "M", "M")),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="a .onnx graph, an engine (maskrcnn-deploy build) or a checkpoint")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--all-ops", action="store_true", help="list every op type (default: the 12 most common)")
    add_trust_checkpoint_argument(parser)


def run(args: argparse.Namespace) -> int:
    report = inspect_file(args.file, trust_checkpoint=args.trust_checkpoint)
    print(json.dumps(report, indent=2) if args.json else format_report(report, all_ops=args.all_ops))
    return 0


def inspect_file(path: Path, trust_checkpoint: bool = False) -> Dict[str, Any]:
    """The facts about ``path`` as a JSON-serializable dict; ``kind`` is "onnx", "engine" or "checkpoint"."""
    from deploy_sdk.model_kind import CHECKPOINT, ENGINE, model_kind

    path = Path(path)
    if not path.exists():
        raise DeploySdkError(f"file not found: {path}")
    if not path.is_file():
        raise DeploySdkError(f"{path} is not a file")
    kind = model_kind(path)
    report: Dict[str, Any] = {"file": str(path), "kind": kind, "size_bytes": path.stat().st_size}
    if kind == ENGINE:
        report.update(_inspect_engine(path))
    elif kind == CHECKPOINT:
        report.update(_inspect_checkpoint(path, trust_checkpoint))
    else:
        report.update(_inspect_onnx(path))
    return report


# ---------------------------------------------------------------------------------------------------- ONNX


def _inspect_onnx(path: Path) -> Dict[str, Any]:
    from deploy_sdk.model_metadata import ModelMetadata
    from deploy_sdk.onnx_summary import read_onnx_summary

    s = read_onnx_summary(path)
    out: Dict[str, Any] = {
        "format": f"ONNX, IR version {s.ir_version}",
        "producer": s.producer,
        "opsets": {(d or "ai.onnx"): v for d, v in sorted(s.opsets.items())},
        "inputs": [{"name": t.name, "dtype": t.dtype, "shape": t.shape} for t in s.inputs],
        "outputs": [{"name": t.name, "dtype": t.dtype, "shape": t.shape} for t in s.outputs],
        "num_nodes": s.num_nodes,
        "ops": {
            (f"{d}.{op}" if d not in _STANDARD_DOMAINS[:2] else op): n
            for (d, op), n in sorted(s.ops.items(), key=lambda kv: (-kv[1], kv[0]))
        },
        "weights": {dtype: {"tensors": n, "bytes": b} for dtype, (n, b) in sorted(s.weights.items())},
    }
    functions = {(d, name): nodes for d, name, nodes in s.functions}
    out["plugin_nodes"] = [
        {
            "op": op,
            "domain": d,
            "count": n,
            "local_function": (d, op) in functions,
            "function_nodes": functions.get((d, op)),
        }
        for (d, op), n in sorted(s.ops.items())
        if d not in _STANDARD_DOMAINS
    ]
    q = s.ops.get(("", "QuantizeLinear"), 0)
    dq = s.ops.get(("", "DequantizeLinear"), 0)
    out["quantization"] = {"QuantizeLinear": q, "DequantizeLinear": dq}
    try:
        meta = ModelMetadata.from_props(s.metadata_props, source=str(path))
    except EngineError as exc:
        out["metadata"] = None
        out["metadata_problem"] = str(exc)
        out["precision"] = _precision_from_weights(s.weights, q)
    else:
        out["metadata"] = _metadata_dict(meta)
        out["precision"] = meta.precision
    return out


def _precision_from_weights(weights: Dict[str, Any], quantize_nodes: int) -> str:
    if quantize_nodes:
        return "int8 (Q/DQ)"
    if weights:
        return max(weights, key=lambda k: weights[k][1])  # the type holding most weight bytes
    return "unknown"


# --------------------------------------------------------------------------------------------------- engine


def _inspect_engine(path: Path) -> Dict[str, Any]:
    from deploy_sdk.engine_file import read_engine_header
    from deploy_sdk.plugins import MULTILEVEL_OP, PLUGIN_VERSION

    header = read_engine_header(path)
    meta = header.metadata
    inputs = [
        {
            "name": name,
            "dtype": "int64" if name == "image_sizes" else "float32",
            "shape": _range_shape(ranges),
            "profile": ranges,
        }
        for name, ranges in sorted(header.profile.items(), key=lambda kv: _INPUT_ORDER.get(kv[0], len(_INPUT_ORDER)))
    ]
    return {
        "format": "maskrcnn-deploy engine (TensorRT plan with a JSON header)",
        "tensorrt_version": header.tensorrt_version,
        "gpu": header.gpu.name,
        "compute_capability": header.gpu.compute_capability,
        "built_utc": header.created_utc,
        "built_by_sdk": header.sdk_version,
        "plan_bytes": header.engine_size,
        "plan_sha256": header.engine_sha256,
        "inputs": inputs,
        "outputs": _contract_outputs(meta),
        "plugin_nodes": [
            {
                "op": MULTILEVEL_OP,
                "version": PLUGIN_VERSION,
                "library": "the SDK's RoIAlign plugin, loaded by the tensorrt backend before the plan",
            }
        ],
        "metadata": _metadata_dict(meta),
        "precision": meta.precision,
    }


def _range_shape(ranges: Dict[str, List[int]]) -> List[Any]:
    """[B, 3, H, W] from a profile's min/opt/max: a dimension that varies shows as "min..max"."""
    lo, hi = ranges.get("min", []), ranges.get("max", [])
    return [a if a == b else f"{a}..{b}" for a, b in zip(lo, hi)]


# ----------------------------------------------------------------------------------------------- checkpoint


def _inspect_checkpoint(path: Path, trust_checkpoint: bool) -> Dict[str, Any]:
    # A checkpoint is reached the way the runtime reaches one: the torch backend (the convert extra), found by
    # name in the backend registry; it names the pip extra when torch is missing.
    from deploy_sdk.backends import backend_class

    backend = backend_class("torch")(path, trust_checkpoint=trust_checkpoint)
    try:
        meta = backend.metadata
        module = backend.module  # type: ignore[attr-defined]  # the torch backend's DeploymentModule
        params = list(module.parameters()) + list(module.buffers())
        by_dtype: Dict[str, List[int]] = {}
        for p in params:
            entry = by_dtype.setdefault(str(p.dtype).replace("torch.", ""), [0, 0])
            entry[0] += int(p.numel())
            entry[1] += int(p.numel() * p.element_size())
        with open(path, "rb") as f:
            head = f.read(9)
        form = (
            "safetensors"
            if len(head) == 9 and head[8:9] == b"{"
            else "PyTorch zip (torch.save)"
            if head[:4] == b"PK\x03\x04"
            else "PyTorch legacy pickle"
        )
        return {
            "format": form,
            "parameters": {k: {"values": v[0], "bytes": v[1]} for k, v in sorted(by_dtype.items())},
            "inputs": [
                {"name": "images", "dtype": "float32", "shape": ["B", 3, "H", "W"]},
                {"name": "image_sizes", "dtype": "int64", "shape": ["B", 2]},
            ],
            "outputs": _contract_outputs(meta),
            "plugin_nodes": [],
            "metadata": _metadata_dict(meta),
            "precision": meta.precision,
            "note": "inputs and outputs: those of the graph 'maskrcnn-deploy export' makes from this checkpoint",
        }
    finally:
        backend.close()


# ------------------------------------------------------------------------------------------------- shared


def _contract_outputs(meta) -> List[Dict[str, Any]]:
    k, m = int(meta.detections_per_image), int(meta.mask_size)
    sizes = {"K": k, "M": m, "B": "B"}
    return [
        {"name": name, "dtype": dtype, "shape": [sizes.get(d, d) if isinstance(d, str) else d for d in shape]}
        for name, dtype, shape in _OUTPUT_SHAPES
    ]


def _metadata_dict(meta) -> Dict[str, Any]:
    return {
        "arch": meta.arch,
        "num_classes": len(meta.class_names),
        "class_names": list(meta.class_names),
        "min_size": meta.min_size,
        "max_size": meta.max_size,
        "size_divisible": meta.size_divisible,
        "fixed_size": [meta.fixed_height, meta.fixed_width] if meta.fixed_height else None,
        "image_mean": list(meta.image_mean),
        "image_std": list(meta.image_std),
        "score_threshold": meta.score_threshold,
        "nms_threshold": meta.nms_threshold,
        "detections_per_image": meta.detections_per_image,
        "mask_size": meta.mask_size,
        "checkpoint_sha256": meta.checkpoint_sha256,
        "sdk_version": meta.sdk_version,
    }


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _shape(shape: List[Any]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def format_report(r: Dict[str, Any], all_ops: bool = False) -> str:
    """The report of :func:`inspect_file` as text for people."""
    kinds = {"onnx": "ONNX graph", "engine": "TensorRT engine", "checkpoint": "checkpoint"}
    lines = [f"{r['file']}: {kinds.get(r['kind'], r['kind'])}, {_mib(r['size_bytes'])} ({r.get('format', '')})"]
    if r["kind"] == "onnx":
        opsets = ", ".join(f"{d} {v}" for d, v in r["opsets"].items())
        lines.append(f"producer: {r['producer'] or 'unknown'}; opsets: {opsets}")
    if r["kind"] == "engine":
        lines.append(
            f"built with TensorRT {r['tensorrt_version']} on {r['gpu']} (compute capability "
            f"{r['compute_capability']}), {r['built_utc'] or 'time unknown'}, maskrcnn-deploy "
            f"{r['built_by_sdk']}; runs only with that TensorRT version on that GPU type"
        )
    meta = r.get("metadata")
    lines.append(f"precision: {r.get('precision', 'unknown')}")
    if meta:
        names = meta["class_names"]
        shown = ", ".join(names[:12]) + (f", ... ({len(names) - 12} more)" if len(names) > 12 else "")
        lines.append(f"model: {meta['arch']}, {meta['num_classes']} classes incl. background: {shown}")
        canvas = (
            f"fixed {meta['fixed_size'][0]}x{meta['fixed_size'][1]}"
            if meta["fixed_size"]
            else f"any multiple of {meta['size_divisible']}"
        )
        lines.append(
            f"pre-processing: resize to min {meta['min_size']} / max {meta['max_size']} px, canvas "
            f"{canvas}, mean {meta['image_mean']}, std {meta['image_std']} (inside the graph)"
        )
        lines.append(
            f"detections: K = {meta['detections_per_image']} per image, score >= {meta['score_threshold']}, "
            f"NMS IoU {meta['nms_threshold']}, masks {meta['mask_size']}x{meta['mask_size']}"
        )
        if meta["checkpoint_sha256"]:
            lines.append(
                f"source checkpoint sha256: {meta['checkpoint_sha256']}; maskrcnn-deploy {meta['sdk_version']}"
            )
    elif r["kind"] == "onnx":
        lines.append(f"metadata: none from maskrcnn-deploy ({r.get('metadata_problem', '')})")
    lines.append("inputs:")
    lines += [f"  {t['name']:<15} {t['dtype']:<8} {_shape(t['shape'])}" for t in r["inputs"]]
    lines.append("outputs:")
    lines += [f"  {t['name']:<15} {t['dtype']:<8} {_shape(t['shape'])}" for t in r["outputs"]]
    if r.get("note"):
        lines.append(f"  ({r['note']})")
    if r["kind"] == "onnx":
        weights = ", ".join(f"{d} {w['tensors']} tensors {_mib(w['bytes'])}" for d, w in r["weights"].items())
        lines.append(f"weights: {weights or 'none'}")
        ops = list(r["ops"].items())
        shown_ops = ops if all_ops else ops[:12]
        rest = "" if len(shown_ops) == len(ops) else f", ... {len(ops) - len(shown_ops)} more types (--all-ops)"
        lines.append(
            f"ops: {r['num_nodes']} nodes, {len(ops)} types: " + ", ".join(f"{op} {n}" for op, n in shown_ops) + rest
        )
        q = r["quantization"]
        if q["QuantizeLinear"] or q["DequantizeLinear"]:
            lines.append(
                f"quantization: {q['QuantizeLinear']} QuantizeLinear, {q['DequantizeLinear']} "
                "DequantizeLinear (explicit INT8 Q/DQ)"
            )
    if r["kind"] == "checkpoint":
        params = ", ".join(f"{d} {p['values']:,} values {_mib(p['bytes'])}" for d, p in r["parameters"].items())
        lines.append(f"weights: {params} (the checkpoint's parameters and buffers, and the graph's mean/std)")
    plugins = r.get("plugin_nodes") or []
    if r["kind"] == "onnx":
        if not plugins:
            lines.append(
                "plugin nodes: none (standard ONNX operators only: any ONNX runtime; not for TensorRT "
                "builds, which need the custom RoIAlign node)"
            )
        for p in plugins:
            how = (
                f"a local function of {p['function_nodes']} standard nodes runs it on ONNX Runtime; TensorRT "
                "uses the RoIAlign plugin instead"
                if p["local_function"]
                else "no local function: needs a runtime with this op registered"
            )
            lines.append(f"plugin nodes: {p['count']} x {p['domain']}.{p['op']} ({how})")
    elif r["kind"] == "engine":
        for p in plugins:
            lines.append(f"plugin: {p['op']} version {p['version']} ({p['library']})")
    return "\n".join(lines)
