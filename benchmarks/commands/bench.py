"""`maskrcnn-deploy bench`: latency percentiles, throughput against batch size, per-stage times, baselines.

Every system runs in this one process on the same synthetic images, alternating iteration by iteration (see
``deploy_sdk.benchmarks.harness.run_side_by_side``), so the ratios hold on a noisy, shared machine.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np

from deploy_sdk.commands.options import TRUST_CHECKPOINT_HELP, Terminated, positive_int, sigterm_unwinds
from deploy_sdk.errors import CheckpointError, DeploySdkError, EngineError
from deploy_sdk.predictor import CHECKPOINT_SUFFIXES as _CHECKPOINT_SUFFIXES

if TYPE_CHECKING:
    from deploy_sdk.benchmarks.side_by_side import BenchSystem
    from deploy_sdk.conversion.checkpoints.loaded_model import LoadedModel

__all__ = ["add_arguments", "run", "BASELINES"]

BASELINES = {
    "torch-eager": "the torchvision model with the same weights (needs --checkpoint)",
    "torchvision-onnx[=FILE]": "torchvision's own ONNX export of the same model in ONNX Runtime, one image per "
    "call (needs --checkpoint); =FILE keeps the export there and reuses it next time",
    "torchvision-onnx-openvino[=FILE]": "the same torchvision export compiled by OpenVINO (fp32), one image per "
    "call (needs --checkpoint and the openvino extra)",
    "sdk-BACKEND[-PRECISION]=FILE": "this SDK's Predictor on another model file, e.g. "
    "sdk-onnxruntime-int8=model.int8.onnx, sdk-openvino-int8=model.int8.onnx",
    "sdk-onnxruntime-int8 / sdk-onnxruntime-fp16": "MODEL's sibling file MODEL.int8.onnx / MODEL.fp16.onnx",
    "sdk-openvino-fp32": "MODEL itself (an .onnx) on the SDK's openvino backend (needs the openvino extra)",
    "sdk-openvino-int8 / sdk-openvino-fp16": "MODEL.int8.onnx / MODEL.fp16.onnx on the openvino backend",
    "sdk-openvino-bf16[=FILE]": "MODEL (or FILE, an fp32 graph) on the openvino backend computing in bf16 "
    "(inference_precision='bf16'; CPUs with AVX512_BF16 or AMX)",
    "sdk-openvino-PRECISIONtp[=FILE]": "the same with OpenVINO's throughput hint: a batch split over its streams "
    "(e.g. sdk-openvino-fp32tp, sdk-openvino-int8tp)",
    "sdk-openvino-PRECISIONst[=FILE]": "the same with a model compiled per input shape (static_shapes=4; "
    "e.g. sdk-openvino-fp32st, sdk-openvino-int8tpst)",
    "sdk-torch[-PRECISION[cg]]": "this SDK's torch backend on --checkpoint; PRECISION fp32/fp16/bf16, 'cg' = CUDA "
    "graphs (e.g. sdk-torch-fp16cg; --device cuda)",
}
_ALIASES = {
    "torch": "torch-eager",
    "eager": "torch-eager",
    "torchvision": "torchvision-onnx",
    "tv-onnx": "torchvision-onnx",
    "tv-openvino": "torchvision-onnx-openvino",
    "int8": "sdk-onnxruntime-int8",
    "fp16": "sdk-onnxruntime-fp16",
    "openvino": "sdk-openvino-fp32",
    "openvino-int8": "sdk-openvino-int8",
}
# Baselines that run torchvision's model (from --checkpoint) rather than a model file of this SDK.
_TORCHVISION_SYSTEMS = ("torch-eager", "torchvision-onnx", "torchvision-onnx-openvino")
# Backends that run an .onnx file, so that sdk-BACKEND-PRECISION can name MODEL or its sibling files.
_ONNX_BACKENDS = ("onnxruntime", "openvino")
# Input shapes that get a static OpenVINO model in the "st" systems: a bench run has one canvas, and its batch sizes
# (and their throughput-hint slices) are a few shapes.
STATIC_SHAPES = 4
# Ceilings on the synthetic image pool, which is held in memory as uint8 RGB: a side of at most 8192 pixels
# (an 8192x8192 image is 200 MB; a detector resizes far below that anyway) and 4 GiB for the whole pool.
MAX_IMAGE_SIDE = 8192
MAX_POOL_BYTES = 4 * 2**30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "--compare systems:\n" + "\n".join(f"  {k:<44} {v}" for k, v in BASELINES.items())
    parser.add_argument(
        "model",
        help="the model to benchmark: an exported .onnx, a TensorRT engine, or a checkpoint "
        "(then the SDK's torch backend)",
    )
    parser.add_argument(
        "--checkpoint",
        help="weights for the PyTorch-based baselines (default: MODEL when it is a "
        "checkpoint); a torchvision or detectron2 checkpoint: torch-eager is "
        "then that framework's own model",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="the detectron2 config.yaml of --checkpoint (read as data by the SDK's loader, by "
        "detectron2 itself for torch-eager; default: the model zoo's R50-FPN 3x)",
    )
    parser.add_argument(
        "--backend", default="auto", help="Predictor backend: auto, onnxruntime, openvino, tensorrt, torch"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (gpu or gpu:N: an Intel GPU, openvino)")
    parser.add_argument("--batch-sizes", default="1", help="comma-separated batch sizes (default: 1)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations per system and batch size")
    parser.add_argument(
        "--iters",
        type=int,
        default=10,
        help="timed iterations per system and batch size (default 10); a system whose latency "
        "varies by more than 20%% (std / mean) is warned about with a suggested --iters. The "
        "table's 'own MB' is each system's own memory (resident memory it added when built "
        "and warmed up, plus its peak rise during one iteration), 'peak RSS MB' the "
        "process's",
    )
    parser.add_argument(
        "--image-size",
        help=f"HxW of the benchmark images, sides 16..{MAX_IMAGE_SIDE} (default: the model's native "
        "size, min_size x max_size, so that the resize is the identity)",
    )
    parser.add_argument(
        "--num-images",
        type=int,
        default=8,
        help="size of the pool of synthetic images (default 8; "
        f"the pool may take at most {MAX_POOL_BYTES // 2**30} GiB)",
    )
    parser.add_argument("--seed", type=int, default=2024, help="seed of the synthetic images")
    parser.add_argument("--compare", default="", help="comma-separated systems to run side by side (see below)")
    parser.add_argument("--threads", type=positive_int, help="CPU threads for every system (default: the usable cores)")
    parser.add_argument("--json", help="write the results as JSON to this file")
    parser.add_argument("--plot", help="write a PNG plot (.png) of latency and throughput against batch size")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help=TRUST_CHECKPOINT_HELP + " (applies to --checkpoint, which the PyTorch baselines load)",
    )


# ------------------------------------------------------------------------------------------------- parsing


def parse_batch_sizes(text: str) -> List[int]:
    try:
        sizes = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        sizes = []
    if not sizes or any(b < 1 for b in sizes):
        raise DeploySdkError(
            f"--batch-sizes {text!r} is not a comma-separated list of positive integers, e.g. --batch-sizes 1,2,4"
        )
    return list(dict.fromkeys(sizes))


def parse_image_size(text: str) -> Tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text or "")
    if not m or not all(16 <= int(side) <= MAX_IMAGE_SIDE for side in m.groups()):
        raise DeploySdkError(
            f"--image-size {text!r} is not HEIGHTxWIDTH with both sides in 16..{MAX_IMAGE_SIDE}, "
            "e.g. --image-size 800x1216"
        )
    return int(m.group(1)), int(m.group(2))


def check_pool_size(num_images: int, size: Tuple[int, int]) -> None:
    """Refuse an image pool larger than :data:`MAX_POOL_BYTES` before generating it (it would be OOM-killed)."""
    nbytes = num_images * size[0] * size[1] * 3
    if nbytes > MAX_POOL_BYTES:
        raise DeploySdkError(
            f"--num-images {num_images} images of {size[0]}x{size[1]} would take "
            f"{nbytes / 2**30:.1f} GiB; the pool may take at most {MAX_POOL_BYTES // 2**30} GiB: "
            "use fewer or smaller images"
        )


def parse_compare(text: str) -> List[Tuple[str, Optional[str]]]:
    """``"torch,sdk-onnxruntime-int8=m.int8.onnx"`` → ``[("torch-eager", None), ("sdk-onnxruntime-int8", "m...")]``."""
    out: List[Tuple[str, Optional[str]]] = []
    for item in (t.strip() for t in (text or "").split(",")):
        if not item:
            continue
        name, _, path = item.partition("=")
        name = _ALIASES.get(name.strip(), name.strip())
        if name not in _TORCHVISION_SYSTEMS and not re.fullmatch(r"sdk-[a-z]+(-[a-z0-9]+)?", name):
            known = ", ".join(list(_TORCHVISION_SYSTEMS) + ["sdk-BACKEND[-PRECISION][=FILE]"] + list(_ALIASES))
            raise DeploySdkError(f"--compare: unknown system {name!r}; known: {known}")
        if path and name == "torch-eager":
            raise DeploySdkError(f"--compare: {name} takes its weights from --checkpoint, not from '={path}'")
        if name in [n for n, _ in out]:
            raise DeploySdkError(f"--compare: {name} is listed twice")
        out.append((name, path.strip() or None))
    return out


def _is_checkpoint(path: str) -> bool:
    return Path(path).suffix.lower() in _CHECKPOINT_SUFFIXES


def _check_file(path: str, what: str) -> None:
    p = Path(path)
    if not p.exists():
        err = CheckpointError if _is_checkpoint(path) else EngineError
        raise err(f"{what} not found: {path}")
    if not p.is_file():
        raise EngineError(f"{what} is not a file: {path}")


# ------------------------------------------------------------------------------------------------- images


def bench_images(num: int, size: Tuple[int, int], seed: int) -> List[np.ndarray]:
    """``num`` synthetic HxWx3 uint8 RGB images of exactly ``size`` = (H, W), deterministic for ``seed``."""
    from PIL import Image

    from deploy_sdk.synthetic_shapes import generate_sample

    h, w = size
    out = []
    for i in range(num):
        # Generate near the target size (the generator's cost grows with area) and resize the rest of the way.
        img = generate_sample(seed, i, min_size=min(h, w, 512), max_size=min(max(h, w), 512)).image
        if img.shape[:2] != (h, w):
            # Image.BILINEAR: the Resampling enum needs Pillow 9.1 (the package supports 9.0) and Pillow's type hints
            # do not declare the module-level names it sets from that enum.
            img = np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))  # type: ignore[attr-defined]
        out.append(np.ascontiguousarray(img))
    return out


# ------------------------------------------------------------------------------------------------- systems


def _set_torch_threads(threads: int) -> None:
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def resolve_compare(args, compare) -> Tuple[List[Tuple[str, Optional[str]]], Optional[str]]:
    """Check every --compare system's files before anything slow is loaded.

    Returns ``(systems, checkpoint)``: each system with the model file it runs (``None`` for the baselines, which
    run ``checkpoint``).
    """
    checkpoint = args.checkpoint or (args.model if _is_checkpoint(args.model) else None)
    if checkpoint is not None:
        _check_file(checkpoint, "checkpoint")
    resolved: List[Tuple[str, Optional[str]]] = []
    for name, path in compare:
        if name in _TORCHVISION_SYSTEMS:
            if checkpoint is None:
                raise DeploySdkError(
                    f"--compare {name} needs the PyTorch weights: pass --checkpoint CKPT (the "
                    "checkpoint MODEL was exported from)"
                )
        elif path is None:
            backend, _, precision = name[len("sdk-") :].partition("-")
            if backend == "openvino":
                precision = _openvino_variant(name, precision)[0]
            if backend == "torch":
                if checkpoint is None:
                    raise DeploySdkError("--compare sdk-torch needs the PyTorch weights: pass --checkpoint CKPT")
                path = checkpoint
            elif backend in _ONNX_BACKENDS and precision in ("int8", "fp16") and args.model.endswith(".onnx"):
                path = args.model[: -len(".onnx")] + f".{precision}.onnx"
            elif backend in _ONNX_BACKENDS and precision == "fp32" and args.model.endswith(".onnx"):
                path = args.model
            elif backend == "openvino" and precision == "bf16" and args.model.endswith(".onnx"):
                path = args.model  # the fp32 graph, computed in bf16 by OpenVINO
            else:
                raise DeploySdkError(f"--compare {name} needs a model file: write {name}=FILE")
        if path is not None and name not in ("torchvision-onnx", "torchvision-onnx-openvino"):
            _check_file(path, f"model file for --compare {name}")
        resolved.append((name, path))
    return resolved, checkpoint


def _openvino_variant(name: str, precision: str) -> Tuple[str, Optional[dict]]:
    """sdk-openvino-PRECISION with suffixes "tp" for the throughput hint and "st" for static shapes
    (sdk-openvino-fp32tp, sdk-openvino-fp32st, sdk-openvino-int8tpst): the graph's precision and the openvino
    backend's options (None: the defaults)."""
    options: Dict[str, Any] = {}
    base = precision
    while base[-2:] in ("tp", "st"):
        suffix, base = base[-2:], base[:-2]
        if suffix == "tp":
            options["performance_hint"] = "throughput"
        else:
            options["static_shapes"] = STATIC_SHAPES
    if base not in ("", "fp32", "fp16", "int8", "bf16"):
        raise DeploySdkError(
            f"--compare {name}: the openvino backend takes sdk-openvino-fp32/-fp16/-int8/-bf16, with 'tp' appended "
            "for OpenVINO's throughput hint and/or 'st' for static shapes (e.g. sdk-openvino-fp32tp, "
            "sdk-openvino-fp32st)"
        )
    if base == "bf16":
        options["inference_precision"] = "bf16"
    return base, options or None


def _torch_backend_options(name: str, precision: str) -> dict:
    """sdk-torch-fp16 / -bf16 / -fp32, with a "cg" suffix for CUDA graphs (sdk-torch-fp16cg): the torch
    backend's precision= and cuda_graphs= (deploy_sdk.conversion.torch_backend)."""
    graphs = precision.endswith("cg")
    dtype = precision[:-2] if graphs else precision
    if dtype not in ("fp32", "fp16", "bf16"):
        raise DeploySdkError(
            f"--compare {name}: the torch backend takes sdk-torch-fp32/-fp16/-bf16, with 'cg' "
            "appended for CUDA graphs (e.g. sdk-torch-fp16cg)"
        )
    return {"precision": dtype, "cuda_graphs": graphs}


def _baseline_weights(name: str, loaded: Optional[LoadedModel], checkpoint: Optional[str]) -> Tuple[LoadedModel, str]:
    """The checkpoint a torchvision-based baseline runs (resolve_compare has asked for it already)."""
    if loaded is None or checkpoint is None:
        raise DeploySdkError(f"--compare {name} needs the PyTorch weights: pass --checkpoint CKPT")
    return loaded, checkpoint


def _build_systems(
    args, compare, checkpoint: Optional[str], threads: int, workdir: Path, max_batch: int
) -> List[BenchSystem]:
    from deploy_sdk.benchmarks.memory import current_rss_mb
    from deploy_sdk.benchmarks.sdk_system import PredictorSystem

    def grown(mark: Optional[float]) -> Optional[float]:
        now = current_rss_mb()
        return None if mark is None or now is None else max(0.0, now - mark)

    mark = current_rss_mb()
    main_backend = args.backend
    if main_backend == "auto" and _is_checkpoint(args.model):
        main_backend = "torch"
    print(f"loading {args.model} ...", file=sys.stderr)
    main = PredictorSystem(args.model, backend=main_backend, device=args.device, batch_size=max_batch, threads=threads)
    main.load_rss_mb = grown(mark)  # memory per system: see deploy_sdk.benchmarks.memory
    systems: List[BenchSystem] = [main]
    checkpoint_mb: Optional[float] = None

    loaded: Optional[LoadedModel] = None
    if any(name in _TORCHVISION_SYSTEMS for name, _ in compare):
        from deploy_sdk.conversion.checkpoint import load_checkpoint

        if checkpoint is None:
            raise DeploySdkError("the torchvision baselines need the PyTorch weights: pass --checkpoint CKPT")
        print(f"loading checkpoint {checkpoint} ...", file=sys.stderr)
        mark = current_rss_mb()
        loaded = load_checkpoint(checkpoint, trust_checkpoint=args.trust_checkpoint, config=args.config)
        checkpoint_mb = grown(mark)  # torch and the weights: charged to the first torchvision-based system
        sdk_sha = getattr(main.metadata, "checkpoint_sha256", "") if main.metadata is not None else ""
        if sdk_sha and loaded.sha256 and sdk_sha != loaded.sha256:
            print(
                f"warning: {args.model} was exported from a checkpoint with sha256 {sdk_sha[:12]}…, but "
                f"--checkpoint {checkpoint} has {loaded.sha256[:12]}…; the baselines may run other weights",
                file=sys.stderr,
            )

    for name, path in compare:
        mark = current_rss_mb()
        framework = loaded.semantics.source if loaded is not None else "torchvision"
        if name in _TORCHVISION_SYSTEMS and framework != "torchvision":
            if name != "torch-eager":
                raise DeploySdkError(
                    f"{name} is torchvision's own export of a torchvision model; {checkpoint} is a "
                    f"{framework} checkpoint: compare it with torch-eager ({framework}'s "
                    "own model) instead"
                )
            from deploy_sdk.benchmarks.framework_baselines import framework_eager_system

            weights, checkpoint_path = _baseline_weights(name, loaded, checkpoint)
            print(f"torch-eager: {framework}'s own model", file=sys.stderr)
            systems.append(
                framework_eager_system(
                    weights, Path(checkpoint_path), Path(args.config) if args.config else None, args.device
                )
            )
        elif name == "torch-eager":
            from deploy_sdk.benchmarks.baselines import TorchEagerSystem

            weights, _ = _baseline_weights(name, loaded, checkpoint)
            systems.append(TorchEagerSystem(weights.model, weights.class_names, device=args.device))
        elif name in ("torchvision-onnx", "torchvision-onnx-openvino"):
            from deploy_sdk.benchmarks.baselines import (
                TorchvisionOnnxSystem,
                TorchvisionOpenVinoSystem,
                export_torchvision_onnx,
            )

            weights, _ = _baseline_weights(name, loaded, checkpoint)
            # Both systems run the same export: a FILE given to either serves both.
            given = path or dict(compare).get("torchvision-onnx") or dict(compare).get("torchvision-onnx-openvino")
            onnx_path = Path(given) if given else workdir / "torchvision_export.onnx"
            if onnx_path.is_file():
                print(f"reusing torchvision's export {onnx_path}", file=sys.stderr)
            else:
                print(
                    f"exporting the torchvision model with torch.onnx.export (torchvision's own path), traced at "
                    f"{args._image_size[0]}x{args._image_size[1]} ...",
                    file=sys.stderr,
                )
                export_torchvision_onnx(weights.model, onnx_path, sample_hw=args._image_size)
            cls = TorchvisionOnnxSystem if name == "torchvision-onnx" else TorchvisionOpenVinoSystem
            systems.append(cls(onnx_path, weights.class_names, threads=threads, device=args.device))
        else:
            backend, _, precision = name[len("sdk-") :].partition("-")
            options = _openvino_variant(name, precision)[1] if backend == "openvino" else None
            if backend == "torch" and precision:
                options = _torch_backend_options(name, precision)
            systems.append(
                PredictorSystem(
                    path,
                    backend=backend,
                    device=args.device,
                    batch_size=max_batch,
                    threads=threads,
                    name=name,
                    backend_options=options,
                )
            )
        load_mb = grown(mark)
        if name in _TORCHVISION_SYSTEMS and checkpoint_mb is not None and load_mb is not None:
            load_mb, checkpoint_mb = load_mb + checkpoint_mb, None
        systems[-1].load_rss_mb = load_mb
    names = [s.name for s in systems]
    if len(set(names)) != len(names):
        raise DeploySdkError(f"two systems have the same name: {names}; remove the duplicate from --compare")
    return systems


# ------------------------------------------------------------------------------------------------- command


def run(args: argparse.Namespace) -> int:
    from deploy_sdk.benchmarks.harness import load_average, machine_info, run_side_by_side
    from deploy_sdk.benchmarks.report import build_document, format_table, write_json, write_plot

    batch_sizes = parse_batch_sizes(args.batch_sizes)
    compare = parse_compare(args.compare)
    args._image_size = parse_image_size(args.image_size) if args.image_size else None
    if args.iters < 1 or args.warmup < 0 or args.num_images < 1:
        raise DeploySdkError(
            f"--iters must be >= 1, --warmup >= 0 and --num-images >= 1 (got {args.iters}, "
            f"{args.warmup}, {args.num_images})"
        )
    if args._image_size is not None:
        check_pool_size(args.num_images, args._image_size)
    # The outputs are written after a run that may take an hour: refuse a path that cannot be written now.
    from deploy_sdk.atomic_file import check_output_file

    if args.json:
        check_output_file(args.json, what="--json")
    if args.plot:
        check_output_file(args.plot, suffixes=(".png",), what="--plot")
    _check_file(args.model, "model file")
    compare, checkpoint = resolve_compare(args, compare)
    if args.device.startswith("cuda"):
        from deploy_sdk.errors import require

        torch = require("torch", "convert", "benchmarking on a CUDA device")
        if not torch.cuda.is_available():
            raise DeploySdkError(f"--device {args.device}: no CUDA device is visible on this machine; use --device cpu")
    if args.plot:
        from deploy_sdk.errors import require

        require("matplotlib", "bench", "the benchmark plot (--plot)")  # fail before the long run, not after
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count() or 1
    threads = args.threads or usable
    if threads < 1:
        raise DeploySdkError(f"--threads must be >= 1, got {threads}")

    with sigterm_unwinds(), tempfile.TemporaryDirectory(prefix="maskrcnn-bench-") as workdir:
        # torch's thread count is global: set it before any torch module runs, and again after imports.
        if "torch" in sys.modules or any(n in _TORCHVISION_SYSTEMS for n, _ in compare):
            import torch

            torch.set_num_threads(threads)
        if args._image_size is None:
            # The torchvision export traces at the benchmark size, so the size must be known before building.
            args._image_size = _probe_native_size(args, checkpoint)
            check_pool_size(args.num_images, args._image_size)
        systems = _build_systems(args, compare, checkpoint, threads, Path(workdir), max(batch_sizes))
        _set_torch_threads(threads)
        size = args._image_size
        print(f"generating {args.num_images} synthetic images of {size[0]}x{size[1]} ...", file=sys.stderr)
        images = bench_images(args.num_images, size, args.seed)
        machine = machine_info(threads)
        print(
            f"timing {', '.join(s.name for s in systems)} side by side: batch sizes {batch_sizes}, "
            f"{args.warmup} warm-up + {args.iters} timed iterations each",
            file=sys.stderr,
        )
        results: list = []
        try:
            run_side_by_side(
                systems, images, batch_sizes, args.warmup, args.iters, progress=not args.quiet, results=results
            )
            interrupted = False
        except KeyboardInterrupt as exc:
            if not results:
                raise
            # Keep what is finished: on a slow machine the small batch sizes may take most of an hour.
            interrupted = True
            interrupt_code = 143 if isinstance(exc, Terminated) else 130
            done = sorted({r.batch_size for r in results})
            print(f"\ninterrupted: reporting the finished batch sizes {done} only", file=sys.stderr)
        # With the load at the start, this says how busy the machine was while the numbers were taken.
        machine["load_average_end"] = load_average()

    rows = [r.to_json() for r in results]
    settings: Dict[str, object] = {
        "model": args.model,
        "checkpoint": args.checkpoint,
        "backend": args.backend,
        "device": args.device,
        "batch_sizes": batch_sizes,
        "warmup": args.warmup,
        "iters": args.iters,
        "image_size": list(size),
        "num_images": args.num_images,
        "seed": args.seed,
        "threads": threads,
        "compare": [n if p is None else f"{n}={p}" for n, p in compare],
        "interrupted": interrupted,
    }
    doc = build_document(machine, rows, settings=settings, command=_command_line(args, batch_sizes, size))
    print()
    # The vector extensions, and any cap put on them for this run (e.g. ONEDNN_MAX_CPU_ISA=AVX2).
    isa = ", ".join(machine.get("cpu_isa") or [])
    limits = " ".join(f"{k}={v}" for k, v in (machine.get("isa_limits") or {}).items())
    isa = "; ".join(part for part in (isa, f"capped: {limits}" if limits else "") if part)
    print(
        f"{machine['cpu_model']}{f' ({isa})' if isa else ''}, {threads} threads, images {size[0]}x{size[1]}; "
        "times in ms per batch"
    )
    print(format_table(rows, doc["comparisons"]))
    from deploy_sdk.benchmarks.report import noise_warnings

    for line in noise_warnings(rows, iters=args.iters):
        print(f"warning: {line}", file=sys.stderr)
    if args.json:
        write_json(args.json, doc)
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        write_plot(args.plot, rows, title=f"{Path(args.model).name}, {size[0]}x{size[1]}, {machine['cpu_model']}")
        print(f"wrote {args.plot}", file=sys.stderr)
    return interrupt_code if interrupted else 0


def _probe_native_size(args, checkpoint: Optional[str]) -> Tuple[int, int]:
    """The model's min_size x max_size, read without building the systems twice."""
    if args.model.endswith(".onnx"):
        try:
            import onnxruntime as ort

            from deploy_sdk.model_metadata import ModelMetadata

            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            sess = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
            meta = ModelMetadata.from_props(sess.get_modelmeta().custom_metadata_map, source=args.model)
            return int(meta.min_size), int(meta.max_size)
        except Exception as exc:
            raise DeploySdkError(
                f"cannot read the native image size from {args.model} ({exc}); pass --image-size HxW"
            ) from exc
    if checkpoint:
        from deploy_sdk.conversion.checkpoint import load_checkpoint

        s = load_checkpoint(checkpoint, trust_checkpoint=args.trust_checkpoint).settings
        return int(s.min_size), int(s.max_size)
    raise DeploySdkError("cannot tell the model's native image size; pass --image-size HxW")


def _command_line(args, batch_sizes, size) -> List[str]:
    """The command that reproduces this run (defaults spelled out), for the JSON record."""
    cmd = [
        "maskrcnn-deploy",
        "bench",
        args.model,
        "--backend",
        args.backend,
        "--device",
        args.device,
        "--batch-sizes",
        ",".join(map(str, batch_sizes)),
        "--warmup",
        str(args.warmup),
        "--iters",
        str(args.iters),
        "--image-size",
        f"{size[0]}x{size[1]}",
        "--num-images",
        str(args.num_images),
        "--seed",
        str(args.seed),
    ]
    if args.checkpoint:
        cmd += ["--checkpoint", args.checkpoint]
    if args.compare:
        cmd += ["--compare", args.compare]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    return cmd
