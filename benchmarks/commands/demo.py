"""`maskrcnn-deploy demo`: the shipped model end to end.

1. generate a few held-out synthetic images of different sizes (seed 2026, never used in training);
2. export the shipped checkpoint to one ONNX graph (reused when neither the checkpoint nor the exporter changed);
3. run it with ``Predictor`` on ONNX Runtime, batched; write overlay PNGs and a COCO-results JSON;
4. compare every image with the PyTorch reference (the unmodified torchvision model, run on the same batches)
   by the export criteria;
5. print a short benchmark table: this SDK's ONNX Runtime path against PyTorch eager, side by side, and the SDK on
   OpenVINO (the fastest CPU path) where the ``openvino`` extra is installed.

Needs the ``convert`` extra (torch) for steps 2, 4 and 5. Part of the benchmarks layer: it uses the conversion
(export, the PyTorch reference) and ends with `maskrcnn-deploy bench`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List

from deploy_sdk.atomic_file import atomic_path
from deploy_sdk.commands.options import add_trust_checkpoint_argument
from deploy_sdk.errors import DeploySdkError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default: demo_out)")
    parser.add_argument("--num-images", type=int, default=6, help="generated images to run on (default: 6)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per inference call (default: 4)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="checkpoint (default: the shipped model)")
    add_trust_checkpoint_argument(parser)
    parser.add_argument("--draw-min-score", type=float, default=0.3, help="overlays show detections >= this (0.3)")
    parser.add_argument("--bench-iters", type=int, default=5, help="timed iterations per system; 0 skips the table")


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from deploy_sdk import Predictor
    from deploy_sdk.conversion.checkpoint import load_checkpoint, shipped_model_path
    from deploy_sdk.conversion.export import export_onnx
    from deploy_sdk.conversion.parity import compare_detections, summarize
    from deploy_sdk.conversion.reference import batch_reference_detections
    from deploy_sdk.synthetic_shapes import HELD_OUT_SEED, generate_sample

    if args.num_images < 1:
        raise DeploySdkError(f"--num-images must be at least 1, got {args.num_images}")
    out: Path = args.out
    ckpt = args.checkpoint or shipped_model_path()
    print(f"[1/5] loading {ckpt}")
    loaded = load_checkpoint(ckpt, trust_checkpoint=args.trust_checkpoint)
    print(f"      {loaded.arch}, {loaded.num_classes - 1} classes: {', '.join(loaded.class_names[1:])}")

    inputs = out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(args.num_images):
        image = generate_sample(HELD_OUT_SEED, i).image
        images.append(image)
        with atomic_path(inputs / f"image_{i:02d}.png") as tmp:
            Image.fromarray(image).save(tmp, format="PNG")
    sizes = ", ".join(f"{im.shape[1]}x{im.shape[0]}" for im in images)
    print(f"[2/5] {len(images)} held-out images (seed {HELD_OUT_SEED}) in {inputs}: {sizes}")

    onnx_path = out / "model.onnx"
    key = export_key(loaded.sha256)
    if _export_is_current(onnx_path, key):
        print(f"[3/5] {onnx_path} is up to date with the checkpoint and the exporter; reusing it")
    else:
        print(f"[3/5] exporting to {onnx_path}")
        export_onnx(loaded, onnx_path, log=lambda m: print("      " + m))
        with atomic_path(_key_path(onnx_path)) as tmp:
            Path(tmp).write_text(key + "\n")

    predictor = Predictor(onnx_path, backend="onnxruntime", batch_size=args.batch_size)
    t0 = time.perf_counter()
    detections = predictor.predict(images)
    elapsed = time.perf_counter() - t0
    overlays = out / "overlays"
    overlays.mkdir(exist_ok=True)
    coco = []
    for i, (image, det) in enumerate(zip(images, detections)):
        with atomic_path(overlays / f"image_{i:02d}.png") as tmp:
            Image.fromarray(det.draw(image, min_score=args.draw_min_score)).save(tmp, format="PNG")
        coco.extend(det.to_coco(image_id=i))
    with atomic_path(out / "detections.json") as tmp:
        tmp.write_text(json.dumps(coco))
    print(
        f"[4/5] ONNX Runtime (CPU), batch {predictor.batch_size}: {len(images)} images in {elapsed:.2f} s; "
        f"overlays in {overlays}, COCO results in {out / 'detections.json'}"
    )
    # torchvision pads a batch to its largest image, which changes features near image borders; the fair
    # reference for a batched run is torchvision on the same batches.
    reference = []
    for start in range(0, len(images), predictor.batch_size):
        reference += batch_reference_detections(loaded, images[start : start + predictor.batch_size])
    parity = [compare_detections(d, r) for d, r in zip(detections, reference)]
    for i, (det, p) in enumerate(zip(detections, parity)):
        names = ", ".join(f"{n} {s:.2f}" for n, s in zip(det.names, det.scores) if s >= 0.5) or "nothing >= 0.5"
        print(f"      image {i}: {len(det)} detections ({names}); vs PyTorch: {p.summary()}")
    print(f"      agreement with the PyTorch reference: {summarize(parity)}")

    if args.bench_iters > 0:
        systems = bench_systems()
        on_ov = " and OpenVINO" if "sdk-openvino-fp32" in systems else ""
        print(f"[5/5] benchmark: this SDK (ONNX Runtime{on_ov}) vs PyTorch eager, same images, alternating")
        code = _run_bench(
            [
                str(onnx_path),
                "--checkpoint",
                str(ckpt),
                "--compare",
                systems,
                "--batch-sizes",
                "1,4",
                "--warmup",
                "1",
                "--iters",
                str(args.bench_iters),
                "--json",
                str(out / "bench.json"),
            ]
            + (["--trust-checkpoint"] if args.trust_checkpoint else [])
        )
        if code:
            return code
    failed = sum(not p.ok for p in parity)
    return 1 if failed else 0


def bench_systems() -> str:
    """``--compare`` of the demo's table: PyTorch eager, and this SDK on OpenVINO as well where the ``openvino``
    extra (openvino and onnx) is installed, since that is the fastest CPU path a user of this SDK gets."""
    import importlib.util

    systems = ["torch"]
    if all(importlib.util.find_spec(name) is not None for name in ("openvino", "onnx")):
        systems.insert(0, "sdk-openvino-fp32")
    return ",".join(systems)


def _run_bench(argv: List[str]) -> int:
    """`maskrcnn-deploy bench ARGV...`, run in this process through the bench command module (same layer; the CLI
    entry point is the layer above). A bench error is reported as `maskrcnn-deploy bench` would report it, one
    line on stderr, and gives exit code 1, so the demo's summary above stays the last thing before it."""
    from deploy_sdk.benchmarks.commands import bench

    parser = argparse.ArgumentParser(prog="maskrcnn-deploy bench")
    bench.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return int(bench.run(args) or 0)
    except DeploySdkError as exc:
        print(f"maskrcnn-deploy bench: error: {exc}", file=sys.stderr)
        return 1


def export_key(checkpoint_sha256: str) -> str:
    """What a reusable export must have been made from: the checkpoint (its sha256) and the exporter, as a sha256
    of the SDK version and the source of ``conversion`` and the metadata writer. A change to either re-exports."""
    import hashlib

    from deploy_sdk import conversion, model_metadata
    from deploy_sdk.version import __version__

    h = hashlib.sha256(__version__.encode())
    root = Path(conversion.__file__).parent
    for path in sorted(root.rglob("*.py")) + [Path(model_metadata.__file__)]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return f"checkpoint {checkpoint_sha256} exporter {h.hexdigest()}"


def _key_path(onnx_path: Path) -> Path:
    return onnx_path.with_name(onnx_path.name + ".key")


def _export_is_current(path: Path, key: str) -> bool:
    """True when ``path`` exists and its key file (written after a successful export) holds ``key``."""
    if not path.is_file() or key.startswith("checkpoint  "):  # no checkpoint hash: never reuse
        return False
    try:
        return _key_path(path).read_text().strip() == key
    except OSError:
        return False
