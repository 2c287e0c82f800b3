"""Where the time of one OpenVINO inference goes: compile times, dynamic vs static wall time, per-node profile.

What the ``openvino`` backend compiles (its own helpers: the ``.onnx`` made portable in memory, its compile properties
with the latency hint, f32 unless asked otherwise, the threads), compiled twice: with the graph's dynamic input shapes
and, as ``static_shapes`` does, for exactly the batch's shape. Both run the same batch of synthetic images (the
``bench`` images, pre-processed like ``Predictor``) alternately; OpenVINO's per-node counters (``PERF_COUNT``) of the
static model are then summed per (node type, kernel) and per node over the timed runs. The groups tell what a
faster graph could still win: ``oneDNN`` (convolutions, fully connected, transposed convolutions: the same library
torch computes them with), ``RoIAlign``, and everything else.

    .venv/bin/python -m deploy_sdk.benchmarks.openvino_profile model.onnx --batch-size 1 --threads 2

Figures from it are in ``benchmarks/RESULTS.md``. The node times are OpenVINO's own counters; their sum can differ
from the wall time (nodes overlap, and the counters leave out what happens between nodes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from typing import Any, Dict, Iterable, List, Sequence, Tuple

# Node types computed by oneDNN primitives in OpenVINO's CPU plugin: the work torch eager runs with the same library.
ONEDNN_TYPES = ("Convolution", "FullyConnected", "ConvolutionBackpropData", "MatMul", "GroupConvolution")
ROI_ALIGN_TYPES = ("ROIAlign", "ROIAlignRotated", "ExperimentalDetectronROIFeatureExtractor")


def group_of(node_type: str) -> str:
    """The group a node type's time is reported under: "oneDNN", "RoIAlign" or "other"."""
    if node_type in ONEDNN_TYPES:
        return "oneDNN"
    if node_type in ROI_ALIGN_TYPES:
        return "RoIAlign"
    return "other"


def summarize(runs: Sequence[Iterable[Tuple[str, str, str, float]]]) -> Dict[str, Any]:
    """Mean time per run (ms) of each (node type, kernel), each node and each group, from per-run records
    ``(node name, node type, kernel, ms)``. Nodes that did not execute (0 ms, e.g. constants) are left out."""
    if not runs:
        raise ValueError("no profiled runs to summarize")
    by_type: Dict[Tuple[str, str], float] = defaultdict(float)
    by_node: Dict[Tuple[str, str, str], float] = defaultdict(float)
    for records in runs:
        for name, node_type, kernel, ms in records:
            if ms <= 0:
                continue
            by_type[(node_type, kernel)] += ms / len(runs)
            by_node[(name, node_type, kernel)] += ms / len(runs)
    groups: Dict[str, float] = {"oneDNN": 0.0, "RoIAlign": 0.0, "other": 0.0}
    for (node_type, _), ms in by_type.items():
        groups[group_of(node_type)] += ms
    return {
        "total_ms": sum(by_type.values()),
        "groups": groups,
        "by_type": sorted(([t, k, ms] for (t, k), ms in by_type.items()), key=lambda row: -row[2]),
        "by_node": sorted(([n, t, k, ms] for (n, t, k), ms in by_node.items()), key=lambda row: -row[3]),
    }


def _records(request: Any) -> List[Tuple[str, str, str, float]]:
    return [(p.node_name, p.node_type, p.exec_type, p.real_time.total_seconds() * 1e3) for p in request.profiling_info]


def profile(
    model_path: str,
    batch_size: int = 1,
    image_size: Tuple[int, int] = (384, 512),
    threads: int = 2,
    iters: int = 10,
    warmup: int = 2,
    precision: str = "f32",
    seed: int = 2024,
) -> Dict[str, Any]:
    """Compile ``model_path`` dynamic and static for one batch, time both alternately, profile the static one."""
    import openvino as ov

    from deploy_sdk.backends.openvino import (
        INPUT_DTYPES,
        compile_config,
        fixed_canvas,
        read_portable_model,
        with_static_inputs,
    )
    from deploy_sdk.benchmarks.commands.bench import bench_images
    from deploy_sdk.preprocessing import model_layout, prepare_batch

    core = ov.Core()
    model, meta = read_portable_model(core, model_path)
    in_type = next(p for p in model.inputs if p.get_any_name() == "images").get_element_type().get_type_name()
    layout, resize = model_layout(meta, fixed_canvas(model, meta), INPUT_DTYPES[in_type])
    batch = prepare_batch(bench_images(batch_size, image_size, seed), resize=resize, **layout)
    feed = {"images": batch.images, "image_sizes": batch.image_sizes}
    config = dict(compile_config("latency", precision, threads, "CPU"), PERF_COUNT=True)
    compiled: Dict[str, Any] = {}
    compile_s: Dict[str, float] = {}
    for kind in ("dynamic", "static"):
        m = model if kind == "dynamic" else with_static_inputs(ov, model, batch.images.shape, batch.image_sizes.shape)
        t0 = time.perf_counter()
        compiled[kind] = core.compile_model(m, "CPU", config)
        compile_s[kind] = time.perf_counter() - t0
    requests = {kind: c.create_infer_request() for kind, c in compiled.items()}
    walls: Dict[str, List[float]] = {kind: [] for kind in compiled}
    runs: List[List[Tuple[str, str, str, float]]] = []
    for i in range(warmup + iters):
        for kind in ("dynamic", "static")[:: 1 if i % 2 else -1]:
            t0 = time.perf_counter()
            requests[kind].infer(feed)
            ms = (time.perf_counter() - t0) * 1e3
            if i >= warmup:
                walls[kind].append(ms)
                if kind == "static":
                    runs.append(_records(requests[kind]))
    result = summarize(runs)
    result.update(
        model=model_path,
        input_shape=list(batch.images.shape),
        threads=threads,
        precision=precision,
        iters=iters,
        compile_s=compile_s,
        wall_ms={kind: statistics.median(v) for kind, v in walls.items()},
    )
    return result


def print_report(result: Dict[str, Any], top: int = 15, out: Any = None) -> None:
    out = out or sys.stdout
    wall, comp = result["wall_ms"], result["compile_s"]
    print(
        f"{result['model']}: input {result['input_shape']}, {result['precision']}, {result['threads']} threads, "
        f"{result['iters']} timed runs each",
        file=out,
    )
    print(f"compile: dynamic {comp['dynamic']:.2f} s, static {comp['static']:.2f} s", file=out)
    print(
        f"wall p50: dynamic {wall['dynamic']:.1f} ms, static {wall['static']:.1f} ms "
        f"(static {wall['dynamic'] / wall['static']:.2f}x faster)",
        file=out,
    )
    total = result["total_ms"]
    print(f"static model, per-node counters: {total:.1f} ms in all", file=out)
    for name, ms in result["groups"].items():
        print(f"  {name:9s} {ms:7.1f} ms  {100 * ms / total:5.1f}%", file=out)
    print("| node type | kernel | ms |", file=out)
    print("|---|---|---|", file=out)
    for node_type, kernel, ms in result["by_type"][:top]:
        print(f"| {node_type} | {kernel} | {ms:.2f} |", file=out)
    print("| node | type | ms |", file=out)
    print("|---|---|---|", file=out)
    for name, node_type, _, ms in result["by_node"][:top]:
        print(f"| {name} | {node_type} | {ms:.2f} |", file=out)


def main(argv=None) -> int:
    from deploy_sdk.benchmarks.commands.bench import parse_image_size

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="an exported .onnx (fp32, fp16 or INT8)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--image-size", default="384x512", help="HxW of the synthetic images (default 384x512)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10, help="timed runs of each compiled model (default 10)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--precision", default="f32", choices=("f32", "bf16"), help="INFERENCE_PRECISION_HINT")
    parser.add_argument("--top", type=int, default=15, help="rows of each table (default 15)")
    parser.add_argument("--json", help="also write the whole result here")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.iters < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("--batch-size, --iters and --threads must be positive, --warmup not negative")
    result = profile(
        args.model,
        args.batch_size,
        parse_image_size(args.image_size),
        args.threads,
        args.iters,
        args.warmup,
        args.precision,
    )
    print_report(result, args.top)
    if args.json:
        from deploy_sdk.atomic_file import atomic_path

        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
