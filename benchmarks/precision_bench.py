"""fp32 vs INT8 (and fp16) deployment graphs on ONNX Runtime CPU: accuracy and batch-1 latency, side by side.

    python -m deploy_sdk.benchmarks.precision_bench --fp32 model.onnx --int8 model.int8.onnx [--fp16 model.fp16.onnx] \
        --eval DIR [--num-eval 200] [--latency-images 20] [--threads 2] [--out results.json]

``DIR`` is a COCO-format synthetic set (``maskrcnn-deploy data --out DIR --num 200 --seed 2026``): its images
must not be the calibration images. Accuracy is COCO box and mask AP through the full SDK pipeline
(``deploy_sdk.Predictor`` + ``deploy_sdk.evaluation``). Latency is the graph alone (``InferenceSession.run`` on
the same preprocessed batch-1 input), the precisions interleaved image by image so that load from other
processes on a shared machine hits all of them alike; the speed-up is the ratio of medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from deploy_sdk.atomic_file import atomic_path

__all__ = ["measure_latency", "measure_accuracy", "main"]


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure_latency(models: Dict[str, Path], eval_dir: Path, num_images: int, threads: int) -> Dict[str, Dict]:
    """Batch-1 latency (ms) of each model's graph on the first ``num_images`` images, interleaved per image."""
    from deploy_sdk.model_metadata import ModelMetadata
    from deploy_sdk.preprocessing import load_image, prepare_batch

    sessions = {name: _session(path, threads) for name, path in models.items()}
    first = next(iter(sessions.values()))
    md = ModelMetadata.from_props(first.get_modelmeta().custom_metadata_map)
    images = sorted((eval_dir / "images").iterdir())[:num_images]
    times: Dict[str, List[float]] = {name: [] for name in models}
    names = list(models)
    for index, path in enumerate(images):
        batch = prepare_batch([load_image(str(path))], md.min_size, md.max_size, md.size_divisible)
        feeds = {"images": batch.images, "image_sizes": batch.image_sizes}
        if index == 0:  # warm-up: first runs allocate and pick kernels
            for session in sessions.values():
                session.run(None, feeds)
        order = names[index % len(names) :] + names[: index % len(names)]  # rotate who goes first
        for name in order:
            start = time.perf_counter()
            sessions[name].run(None, feeds)
            times[name].append((time.perf_counter() - start) * 1000.0)
        print(
            f"latency {index + 1}/{len(images)}: " + ", ".join(f"{n} {times[n][-1]:.0f} ms" for n in names),
            file=sys.stderr,
            flush=True,
        )
    return {
        name: {
            "median_ms": statistics.median(values),
            "mean_ms": statistics.fmean(values),
            "p90_ms": float(np.percentile(values, 90)),
            "runs": len(values),
        }
        for name, values in times.items()
    }


def measure_accuracy(
    models: Dict[str, Path],
    eval_dir: Path,
    num_images: Dict[str, int],
    threads: int,
    on_checkpoint: Optional[Callable[[Dict[str, Dict]], None]] = None,
    checkpoint_every: int = 20,
) -> Dict[str, Dict]:
    """COCO AP (fractions 0–1) of each model through the SDK's Predictor on the onnxruntime CPU backend.

    The models take turns image by image (so all see the same machine load), and every ``checkpoint_every``
    images the AP of the images done so far is computed and handed to ``on_checkpoint``: a run cut short still
    leaves a paired comparison on a common prefix of the set. ``num_images[name]`` caps each model's images.
    """
    import contextlib
    import io

    from pycocotools.coco import COCO

    from deploy_sdk.evaluation import coco_metrics, detections_to_coco
    from deploy_sdk.predictor import Predictor
    from deploy_sdk.preprocessing import load_image

    data = json.loads((eval_dir / "annotations.json").read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = data
        coco_gt.createIndex()
    entries = sorted(data["images"], key=lambda e: e["id"])[: max(num_images.values())]
    predictors = {
        name: Predictor(str(path), backend="onnxruntime", batch_size=1, threads=threads)
        for name, path in models.items()
    }
    found: Dict[str, List] = {name: [] for name in models}
    done: Dict[str, List[int]] = {name: [] for name in models}
    seconds: Dict[str, float] = {name: 0.0 for name in models}
    results: Dict[str, Dict] = {}

    def summarize() -> Dict[str, Dict]:
        for name in models:
            if done[name]:
                metrics = coco_metrics(coco_gt, found[name], done[name])
                metrics.update(num_images=len(done[name]), seconds=round(seconds[name], 1))
                results[name] = metrics
        return results

    for index, entry in enumerate(entries):
        image = load_image(eval_dir / "images" / entry["file_name"])
        for name, predictor in predictors.items():
            if index >= num_images[name]:
                continue
            start = time.perf_counter()
            det = predictor.predict([image])[0]
            seconds[name] += time.perf_counter() - start
            found[name].extend(detections_to_coco(det, entry["id"]))
            done[name].append(entry["id"])
        print(f"accuracy {index + 1}/{len(entries)}", file=sys.stderr, flush=True)
        if on_checkpoint is not None and (index + 1) % checkpoint_every == 0:
            on_checkpoint(summarize())
    for predictor in predictors.values():
        predictor.close()
    return summarize()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fp32", type=Path, required=True)
    parser.add_argument("--int8", type=Path, required=True)
    parser.add_argument("--fp16", type=Path, default=None)
    parser.add_argument("--eval", type=Path, required=True, help="COCO-format set: DIR/images, DIR/annotations.json")
    parser.add_argument("--num-eval", type=int, default=200)
    parser.add_argument("--num-eval-fp16", type=int, default=None, help="fp16 accuracy images (default --num-eval)")
    parser.add_argument("--latency-images", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument(
        "--fp32-accuracy-from", type=Path, default=None, help="reuse the fp32 accuracy of an earlier --out JSON"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    models = {"fp32": args.fp32, "int8": args.int8}
    if args.fp16 is not None:
        models["fp16"] = args.fp16
    results: Dict[str, Any] = {"threads": args.threads, "models": {k: str(v) for k, v in models.items()}}
    latency = measure_latency(models, args.eval, args.latency_images, args.threads)
    results["latency_batch1"] = latency
    results["int8_speedup_vs_fp32"] = latency["fp32"]["median_ms"] / latency["int8"]["median_ms"]
    if "fp16" in latency:
        results["fp16_speedup_vs_fp32"] = latency["fp32"]["median_ms"] / latency["fp16"]["median_ms"]
    _save(args.out, results)
    if not args.skip_accuracy:
        reused = {}
        if args.fp32_accuracy_from is not None:
            reused["fp32"] = json.loads(args.fp32_accuracy_from.read_text())["accuracy"]["fp32"]
        counts = {
            name: (args.num_eval_fp16 if name == "fp16" and args.num_eval_fp16 else args.num_eval)
            for name in models
            if name not in reused
        }

        def checkpoint(partial: Dict[str, Dict]) -> None:
            results["accuracy"] = {**reused, **partial}
            _save(args.out, results)  # partial results survive an interrupted run

        checkpoint(measure_accuracy({n: models[n] for n in counts}, args.eval, counts, args.threads, checkpoint))

    print(f"\nONNX Runtime CPU, {args.threads} threads, batch 1")
    print(f"{'graph':<6} {'median ms':>10} {'p90 ms':>8} {'box AP':>8} {'mask AP':>8} {'images':>7}")
    for name in models:
        lat = latency[name]
        acc = results.get("accuracy", {}).get(name, {})
        box = f"{100 * acc['box_ap']:.2f}" if acc else "-"
        mask = f"{100 * acc['mask_ap']:.2f}" if acc else "-"
        print(
            f"{name:<6} {lat['median_ms']:>10.0f} {lat['p90_ms']:>8.0f} {box:>8} {mask:>8} "
            f"{acc.get('num_images', '-'):>7}"
        )
    print(f"INT8 speed-up over fp32 (ratio of medians): {results['int8_speedup_vs_fp32']:.2f}x")
    if "accuracy" in results:
        acc = results["accuracy"]
        for name in [n for n in models if n != "fp32"]:
            if acc[name].get("num_images") != acc["fp32"].get("num_images"):
                # AP over different image sets is not a difference of precision: say so instead of subtracting.
                print(
                    f"{name} - fp32: not compared ({acc[name].get('num_images')} vs {acc['fp32'].get('num_images')} "
                    "images; evaluate both on the same images)"
                )
                continue
            print(
                f"{name} - fp32: box AP {100 * (acc[name]['box_ap'] - acc['fp32']['box_ap']):+.2f} points, "
                f"mask AP {100 * (acc[name]['mask_ap'] - acc['fp32']['mask_ap']):+.2f} points"
            )
    _save(args.out, results)
    return 0


def _save(path: Optional[Path], results: Dict) -> None:
    if path is not None:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(results, indent=2, sort_keys=True))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
