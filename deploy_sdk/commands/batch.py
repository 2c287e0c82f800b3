"""`maskrcnn-deploy batch MODEL INPUTS... --out DIR`: offline batch inference on Ray Data.

INPUTS are image files, folders, glob patterns (quote them) or manifest files (one path per line). Writes
``DIR/results.json`` (COCO results), ``DIR/images.json``, ``DIR/failures.json`` (images that could not be read,
with the reason) and, with ``--overlays``, ``DIR/overlays/``. Results are written in shards as blocks of
``--batch-size`` images finish, so a job that was killed resumes where it stopped when run again with the same
arguments: finished blocks are skipped and every image appears exactly once. See :mod:`deploy_sdk.serving.offline`.
Needs the ``serve`` extra (``pip install 'maskrcnn-deploy[serve]'``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deploy_sdk.commands.options import add_runtime_arguments, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="model: .onnx (onnxruntime or openvino), .engine (tensorrt)")
    parser.add_argument("inputs", nargs="+", help="image files, folders, glob patterns or manifest files")
    parser.add_argument("--out", type=Path, required=True, help="output folder (also the resume state)")
    parser.add_argument("--workers", type=positive_int, default=1, help="Predictor actors (default 1)")
    parser.add_argument(
        "--batch-size", type=positive_int, default=4, help="images per block: one model call and one shard (default 4)"
    )
    add_runtime_arguments(parser, per="worker")
    parser.add_argument("--num-cpus", type=float, default=1.0, help="Ray CPUs per worker (default 1)")
    parser.add_argument("--num-gpus", type=float, default=0.0, help="Ray GPUs per worker (default 0)")
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=None,
        help="drop detections below this score (default: the model's own threshold)",
    )
    parser.add_argument("--overlays", action="store_true", help="also write overlay PNGs to DIR/overlays/")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--address", default=None, help="Ray cluster to join (host:port or 'auto'); default: start a local one"
    )


def run(args: argparse.Namespace) -> int:
    from deploy_sdk.serving.offline import run_batch_job

    summary = run_batch_job(
        args.model,
        args.inputs,
        args.out,
        workers=args.workers,
        batch_size=args.batch_size,
        backend=args.backend,
        device=args.device,
        threads=args.threads,
        score_threshold=args.score_threshold,
        overlays=args.overlays,
        num_cpus_per_worker=args.num_cpus,
        num_gpus_per_worker=args.num_gpus,
        ray_address=args.address,
        progress=not args.no_progress,
    )
    done = summary.total_images - len(summary.failures)
    print(f"{summary.detections} detections in {done} images; wrote {args.out / 'results.json'}")
    if summary.processed_images:
        print(
            f"this run: {summary.processed_images} images in {summary.seconds:.1f} s "
            f"({summary.images_per_second:.2f} images/s)"
            + (f"; {summary.skipped_images} done by an earlier run" if summary.skipped_images else "")
        )
    if not summary.failures:
        return 0
    for failure in summary.failures:
        print(f"maskrcnn-deploy batch: failed: {failure['error']}", file=sys.stderr)
    print(
        f"maskrcnn-deploy batch: {len(summary.failures)} of {summary.total_images} images failed; listed in "
        f"{args.out / 'failures.json'}",
        file=sys.stderr,
    )
    return 1
