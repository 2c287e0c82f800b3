"""The plugin library's MultiLevelRoIAlign vs torchvision's MultiScaleRoIAlign, side by side, on CPU or CUDA.

Workloads (the FPN maps of an 800x1216 image: P2 200x304, P3 100x152, P4 50x76, P5 25x38, 256 channels):
  box:  1000 RoIs -> 7x7    (Mask R-CNN box head)
  mask:  100 RoIs -> 14x14  (Mask R-CNN mask head)
Both systems get the same thread count (CPU) and run alternately in one process, so background load hits both
alike; the reported ratio is torchvision's median time over ours (> 1 = ours faster). On CUDA each call is timed
with CUDA events, in fp32 and fp16 (torchvision gets boxes of the features' dtype, as its roi_align wants; the
fp16 result is checked against torchvision in fp32 on the same feature values).

    .venv/bin/python -m deploy_sdk.benchmarks.roi_align_bench --threads 2 --repeats 15
    .venv/bin/python -m deploy_sdk.benchmarks.roi_align_bench --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import OrderedDict
from typing import List

import numpy as np

from deploy_sdk import plugins

IMAGE_HW = (800, 1216)
SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
WORKLOADS = {"box": (1000, 7), "mask": (100, 14)}


def make_inputs(num_rois: int, channels: int, seed: int = 0):
    """FPN maps [1, C, H/s, W/s] and proposals [1, R, 4] with log-uniform sizes 16..640 px (all levels in use)."""
    rng = np.random.default_rng(seed)
    feats = [
        rng.standard_normal((1, channels, int(IMAGE_HW[0] * s), int(IMAGE_HW[1] * s))).astype(np.float32)
        for s in SCALES
    ]
    side = np.exp(rng.uniform(np.log(16), np.log(640), (num_rois, 2)))
    x1 = rng.uniform(0, IMAGE_HW[1] - side[:, 0])
    y1 = rng.uniform(0, IMAGE_HW[0] - side[:, 1])
    boxes = np.stack([x1, y1, x1 + side[:, 0], y1 + side[:, 1]], 1).astype(np.float32)[None]
    return feats, boxes


def run(threads: int, repeats: int, channels: int, sampling_ratio: int) -> list:
    import torch
    from torchvision.ops import MultiScaleRoIAlign

    torch.set_num_threads(threads)
    rows = []
    for name, (num_rois, out) in WORKLOADS.items():
        feats, boxes = make_inputs(num_rois, channels)
        names = [f"p{i + 2}" for i in range(4)]
        pooler = MultiScaleRoIAlign(names, out, sampling_ratio)
        tv_feats = OrderedDict((n, torch.from_numpy(f)) for n, f in zip(names, feats))
        tv_boxes = [torch.from_numpy(boxes[0])]

        # Bound as defaults: each workload's closures keep its own inputs (the loop rebinds the names).
        def ours(feats=feats, boxes=boxes, out=out):
            return plugins.multilevel_roi_align(
                feats, boxes, out, SCALES, sampling_ratio, False, "avg", num_threads=threads
            )

        def theirs(pooler=pooler, tv_feats=tv_feats, tv_boxes=tv_boxes):
            with torch.inference_mode():
                return pooler(tv_feats, tv_boxes, [IMAGE_HW])

        # Same numbers first: a fast wrong answer is no result.
        diff = float(np.abs(ours()[0] - theirs().numpy()).max())
        t_ours: List[float] = []
        t_tv: List[float] = []
        for _ in range(repeats):
            for fn, acc in ((ours, t_ours), (theirs, t_tv)):
                t0 = time.perf_counter()
                fn()
                acc.append(time.perf_counter() - t0)
        m_ours, m_tv = statistics.median(t_ours), statistics.median(t_tv)
        rows.append(
            dict(workload=f"{name}: {num_rois} RoIs x {channels} ch x {out}x{out}", threads=threads,
                 ours_ms=1e3 * m_ours, torchvision_ms=1e3 * m_tv, ratio=m_tv / m_ours, max_abs_diff=diff)
        )  # fmt: skip
        print(
            f"{rows[-1]['workload']:<40} threads={threads}  ours {1e3 * m_ours:8.2f} ms  "
            f"torchvision {1e3 * m_tv:8.2f} ms  ratio {m_tv / m_ours:5.2f}x  max|diff| {diff:.2e}",
            flush=True,
        )
    return rows


def run_cuda(repeats: int, channels: int, sampling_ratio: int, dtype_name: str) -> list:
    import torch
    from torchvision.ops import MultiScaleRoIAlign

    dtype = {"float32": torch.float32, "float16": torch.float16}[dtype_name]
    rows = []
    for name, (num_rois, out) in WORKLOADS.items():
        feats_np, boxes_np = make_inputs(num_rois, channels)
        feats = [torch.from_numpy(f).cuda().to(dtype) for f in feats_np]
        boxes = torch.from_numpy(boxes_np).cuda()
        names = [f"p{i + 2}" for i in range(4)]
        pooler = MultiScaleRoIAlign(names, out, sampling_ratio)
        tv_feats = OrderedDict(zip(names, feats))
        tv_boxes = [boxes[0].to(dtype)]

        def ours(feats=feats, boxes=boxes, out=out):
            return plugins.multilevel_roi_align_cuda(feats, boxes, out, SCALES, sampling_ratio, False)

        def theirs(pooler=pooler, tv_feats=tv_feats, tv_boxes=tv_boxes):
            with torch.inference_mode():
                return pooler(tv_feats, tv_boxes, [IMAGE_HW])

        with torch.inference_mode():
            reference = pooler(
                OrderedDict((n, f.float()) for n, f in tv_feats.items()), [boxes[0]], [IMAGE_HW]
            )  # fp32 reference on the same (possibly fp16-rounded) feature values
        diff = float((ours()[0].float() - reference).abs().max())
        times: dict = {"ours": [], "tv": []}
        for _ in range(3):
            ours(), theirs()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(repeats):
            for key, fn in (("ours", ours), ("tv", theirs)):
                start.record()
                fn()
                end.record()
                end.synchronize()
                times[key].append(start.elapsed_time(end))
        m_ours, m_tv = statistics.median(times["ours"]), statistics.median(times["tv"])
        rows.append(
            dict(workload=f"{name}: {num_rois} RoIs x {channels} ch x {out}x{out} {dtype_name}", threads="cuda",
                 ours_ms=m_ours, torchvision_ms=m_tv, ratio=m_tv / m_ours, max_abs_diff=diff)
        )  # fmt: skip
        print(
            f"{rows[-1]['workload']:<48} cuda  ours {m_ours:8.3f} ms  torchvision {m_tv:8.3f} ms  "
            f"ratio {m_tv / m_ours:5.2f}x  max|diff| {diff:.2e}",
            flush=True,
        )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts to compare at")
    parser.add_argument("--repeats", type=int, default=15, help="alternating timed runs per system")
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--sampling-ratio", type=int, default=2, help="2 = torchvision Mask R-CNN")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--dtypes", nargs="+", choices=["float32", "float16"], default=["float32", "float16"], help="CUDA only"
    )
    args = parser.parse_args(argv)
    rows = []
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("roi_align_bench: --device cuda needs a CUDA GPU visible to torch; none is", file=sys.stderr)
            return 2
        plugins.library_path(cuda=True)  # found (or built) before timing
        for dtype in args.dtypes:
            rows += run_cuda(args.repeats, args.channels, args.sampling_ratio, dtype)
    else:
        plugins.library_path()  # found (or, from changed sources in a checkout, built) before timing
        for t in args.threads:
            rows += run(t, args.repeats, args.channels, args.sampling_ratio)
    print("\n| workload | threads | ours (ms) | torchvision (ms) | ratio tv/ours | max abs diff |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['workload']} | {r['threads']} | {r['ours_ms']:.2f} | {r['torchvision_ms']:.2f} | "
            f"{r['ratio']:.2f}x | {r['max_abs_diff']:.1e} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
