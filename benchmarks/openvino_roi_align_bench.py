"""OpenVINO: the MultiLevelRoIAlign function inlined as standard ops vs OpenVINO's native multi-level op.

OpenVINO has a multi-level RoIAlign of its own, ``ExperimentalDetectronROIFeatureExtractor`` (opset6; in ONNX
files the ``org.openvinotoolkit`` domain). This script runs both on the same inputs, in OpenVINO on the CPU at
fp32, alternating, with torchvision's ``MultiScaleRoIAlign`` (what the exported models reproduce) as the reference:

- ``inlined``: this SDK's ``MultiLevelRoIAlign`` node with its model-local function, made portable
  (``deploy_sdk.portable_graph.make_portable``): level per box, then per level NonZero/Gather, ``RoiAlign`` and
  ScatterND (what the ``openvino`` backend runs);
- ``native``: one ``ExperimentalDetectronROIFeatureExtractor`` node (``aligned=0``, ``pyramid_scales`` 4..32).

Workloads: the FPN maps of an 800x1216 image (P2 200x304 ... P5 25x38, 256 channels); box head 1000 RoIs -> 7x7,
mask head 100 RoIs -> 14x14; sampling ratio 2 (torchvision's Mask R-CNN). Boxes: log-uniform sides 16..640 px,
the last two of them zero-area (as padded detection slots are).

    .venv/bin/python -m deploy_sdk.benchmarks.openvino_roi_align_bench --threads 2 --repeats 15
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Dict, List

import numpy as np

IMAGE_HW = (800, 1216)
STRIDES = [4, 8, 16, 32]
WORKLOADS = {"box": (1000, 7), "mask": (100, 14)}


def make_inputs(num_rois: int, channels: int, seed: int = 0):
    """FPN maps [1, C, H/s, W/s] and boxes [R, 4] with random sizes, the last two of zero area."""
    rng = np.random.default_rng(seed)
    feats = [rng.standard_normal((1, channels, IMAGE_HW[0] // s, IMAGE_HW[1] // s)).astype(np.float32) for s in STRIDES]
    side = np.exp(rng.uniform(np.log(16), np.log(640), (num_rois, 2)))
    side[-2:] = 0.0
    x1 = rng.uniform(0, IMAGE_HW[1] - side[:, 0])
    y1 = rng.uniform(0, IMAGE_HW[0] - side[:, 1])
    boxes = np.stack([x1, y1, x1 + side[:, 0], y1 + side[:, 1]], 1).astype(np.float32)
    return feats, boxes


def _inlined_model(out: int, sampling_ratio: int):
    from onnx import TensorProto, helper

    from deploy_sdk.conversion.roi_align_function import (
        ROI_ALIGN_DOMAIN,
        ROI_ALIGN_OP,
        RoIAlignConfig,
        make_roi_align_function,
    )
    from deploy_sdk.portable_graph import make_portable

    cfg = RoIAlignConfig(out, out, sampling_ratio, tuple(1.0 / s for s in STRIDES), aligned=0)
    attrs = {k[:-2]: v for k, v in cfg.onnx_attributes().items()}
    feats = [f"p{i}" for i in range(len(STRIDES))]
    node = helper.make_node(ROI_ALIGN_OP, ["rois"] + feats, ["pooled"], domain=ROI_ALIGN_DOMAIN, **attrs)
    graph = helper.make_graph(
        [node],
        "pooler",
        [helper.make_tensor_value_info("rois", TensorProto.FLOAT, [1, None, 4])]
        + [helper.make_tensor_value_info(f, TensorProto.FLOAT, [1, None, None, None]) for f in feats],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, None)],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(ROI_ALIGN_DOMAIN, 1)]
    model = helper.make_model(graph, opset_imports=opsets, functions=[make_roi_align_function(len(STRIDES), 17, 0)])
    return make_portable(model)


def _native_model(out: int, sampling_ratio: int):
    from onnx import TensorProto, helper

    feats = [f"p{i}" for i in range(len(STRIDES))]
    node = helper.make_node(
        "ExperimentalDetectronROIFeatureExtractor",
        ["rois"] + feats,
        ["pooled", "rois_out"],
        domain="org.openvinotoolkit",
        output_size=out,
        sampling_ratio=sampling_ratio,
        pyramid_scales=STRIDES,
        aligned=0,
    )
    graph = helper.make_graph(
        [node],
        "native",
        [helper.make_tensor_value_info("rois", TensorProto.FLOAT, [None, 4])]
        + [helper.make_tensor_value_info(f, TensorProto.FLOAT, [1, None, None, None]) for f in feats],
        [
            helper.make_tensor_value_info("pooled", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("rois_out", TensorProto.FLOAT, None),
        ],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("org.openvinotoolkit", 1)]
    )


def run(threads: int, repeats: int, channels: int, sampling_ratio: int) -> List[Dict]:
    from collections import OrderedDict

    import openvino as ov
    import torch
    from torchvision.ops import MultiScaleRoIAlign

    torch.set_num_threads(threads)
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    rows = []
    for name, (num_rois, out) in WORKLOADS.items():
        feats, boxes = make_inputs(num_rois, channels)
        inlined = core.compile_model(
            core.read_model(_inlined_model(out, sampling_ratio).SerializeToString()), "CPU", config
        )
        native = core.compile_model(
            core.read_model(_native_model(out, sampling_ratio).SerializeToString()), "CPU", config
        )
        r_in, r_nat = inlined.create_infer_request(), native.create_infer_request()
        feed_in = {"rois": boxes[None], **{f"p{i}": f for i, f in enumerate(feats)}}
        feed_nat = {"rois": boxes, **{f"p{i}": f for i, f in enumerate(feats)}}
        names = [f"p{i}" for i in range(len(STRIDES))]
        pooler = MultiScaleRoIAlign(names, out, sampling_ratio)
        tv = pooler(
            OrderedDict((n, torch.from_numpy(f)) for n, f in zip(names, feats)), [torch.from_numpy(boxes)], [IMAGE_HW]
        ).numpy()
        times: Dict[str, List[float]] = {"inlined": [], "native": []}
        results = {}
        for i in range(repeats + 1):
            for label, req, feed in (("inlined", r_in, feed_in), ("native", r_nat, feed_nat))[:: 1 if i % 2 else -1]:
                t0 = time.perf_counter()
                req.infer(feed, share_inputs=True)
                dt = (time.perf_counter() - t0) * 1e3
                if i:
                    times[label].append(dt)
                results[label] = np.array(req.get_output_tensor(0).data).reshape(tv.shape)
        empty = np.zeros(len(boxes), bool)
        empty[-2:] = True
        row = {
            "workload": name,
            "rois": num_rois,
            "out": out,
            "inlined_ms": statistics.median(times["inlined"]),
            "native_ms": statistics.median(times["native"]),
            "inlined_vs_tv": float(np.abs(results["inlined"] - tv).max()),
            "native_vs_tv": float(np.abs(results["native"][~empty] - tv[~empty]).max()),
            "inlined_vs_tv_empty": float(np.abs(results["inlined"][empty] - tv[empty]).max()),
            "native_vs_tv_empty": float(np.abs(results["native"][empty] - tv[empty]).max()),
        }
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--sampling-ratio", type=int, default=2)
    args = parser.parse_args(argv)
    rows = run(args.threads, args.repeats, args.channels, args.sampling_ratio)
    print(
        "| workload | RoIs -> out | inlined ms | native ms | native / inlined | max abs diff vs torchvision, "
        "inlined / native | same, on the 2 zero-area boxes |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['workload']} | {r['rois']} -> {r['out']}x{r['out']} | {r['inlined_ms']:.1f} "
            f"| {r['native_ms']:.1f} "
            f"| {r['native_ms'] / r['inlined_ms']:.2f} | {r['inlined_vs_tv']:.1e} / {r['native_vs_tv']:.1e} | "
            f"{r['inlined_vs_tv_empty']:.1e} / {r['native_vs_tv_empty']:.1e} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
