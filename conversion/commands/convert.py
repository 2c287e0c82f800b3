"""`maskrcnn-deploy convert CKPT --to ...`: the whole pipeline in one command, with a summary table.

The steps are those of the single commands, run in order on one loaded checkpoint:

1. ``export``: the fp32 deployment graph ``NAME.onnx`` (always: every other file is made from it);
2. ``check``: that graph against torchvision's model from the checkpoint, at detection level (the strict
   thresholds of ``maskrcnn-deploy check``; a failure makes the exit code 1, the pipeline still finishes);
3. ``fp16`` -> ``NAME.fp16.onnx`` and/or ``quantize`` -> ``NAME.int8.onnx`` (``--calib DIR``), each compared
   with the fp32 graph (reported, not gated: a reduced precision differs by design; AP is its measure);
4. ``build`` -> ``NAME.engine`` from the graph ``--engine-from`` names, where TensorRT and a GPU are present
   (``--to all`` skips it, with a note, where they are not; ``--to engine`` requires them), compared with that
   graph as ``polygraphy run --trt --onnxrt`` would;
5. with ``--annotations FILE --images DIR``: COCO box and mask AP of the checkpoint and of every file made.

Everything that can be refused cheaply (targets, options, paths, TensorRT for ``--to engine``, the calibration
folder) is refused before the checkpoint is loaded. Like ``yolo export`` and mmdeploy's ``tools/deploy.py``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from deploy_sdk.commands.options import positive_int
from deploy_sdk.conversion.checkpoint_options import add_checkpoint_arguments
from deploy_sdk.conversion.commands.export import require_convert_extra
from deploy_sdk.conversion.export_options import DEFAULT_OPSET, check_export_options
from deploy_sdk.errors import DeploySdkError
from deploy_sdk.synthetic_shapes import held_out_images

__all__ = ["add_arguments", "run", "TARGETS", "parse_targets", "Step", "format_summary"]

TARGETS = ("onnx", "fp16", "int8", "engine")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    require_convert_extra("maskrcnn-deploy convert")
    parser.add_argument("checkpoint", help="checkpoint file (.pth, .pt or .safetensors)")
    parser.add_argument(
        "--to",
        action="append",
        default=None,
        metavar="TARGET",
        help="what to make: onnx, fp16, int8, engine or all (onnx, fp16, int8 when --calib is given, and the engine "
        "where TensorRT is installed); repeat or separate with commas (default: onnx). The fp32 NAME.onnx is "
        "always written: the other files are made from it",
    )
    parser.add_argument(
        "-o", "--output-dir", type=Path, default=None, help="folder for the files (default: the checkpoint's folder)"
    )
    parser.add_argument(
        "--name",
        default=None,
        help="file name stem: NAME.onnx, NAME.fp16.onnx, NAME.int8.onnx, "
        "NAME.engine (default: the checkpoint's name without its suffix)",
    )

    data = parser.add_argument_group("checking and evaluation")
    data.add_argument(
        "--images",
        type=Path,
        default=None,
        help="folder of images: the parity checks run on the first --check-images of them, and with "
        "--annotations the AP is measured on the images it lists (default: held-out synthetic images)",
    )
    data.add_argument(
        "--annotations",
        type=Path,
        default=None,
        help="COCO annotation file of the --images: adds box and mask AP of every file to the table",
    )
    data.add_argument(
        "--check-images", type=positive_int, default=10, help="images each parity check runs on (default 10)"
    )
    data.add_argument(
        "--max-eval-images", type=positive_int, default=None, help="measure the AP on the first N annotated images only"
    )
    data.add_argument("--no-check", action="store_true", help="skip the parity checks")

    export = parser.add_argument_group("export (as maskrcnn-deploy export)")
    export.add_argument("--height", type=int, default=None, help="fixed input height (multiple of 32)")
    export.add_argument("--width", type=int, default=None, help="fixed input width (multiple of 32)")
    export.add_argument("--max-detections", type=int, default=100, help="K, detections per image (default 100)")
    export.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    export.add_argument(
        "--input-dtype",
        choices=["float32", "uint8"],
        default="float32",
        help="type of the graph's 'images' input (default float32; see export --help)",
    )

    quant = parser.add_argument_group("INT8 (as maskrcnn-deploy quantize)")
    quant.add_argument(
        "--calib",
        type=Path,
        default=None,
        help="folder of calibration images for int8 (not the images you evaluate on)",
    )
    quant.add_argument("--num-calib", type=positive_int, default=100, help="calibration images to use (default 100)")
    quant.add_argument(
        "--calib-method",
        choices=["minmax", "percentile", "entropy"],
        default="minmax",
        help="activation range calibration (default minmax)",
    )
    quant.add_argument(
        "--int8-target",
        choices=["tensorrt", "cpu"],
        default="tensorrt",
        help="tensorrt: symmetric int8, also runs on ONNX Runtime (default); cpu: uint8 activations, "
        "fastest on ONNX Runtime CPU, not buildable by TensorRT",
    )

    engine = parser.add_argument_group("TensorRT engine (as maskrcnn-deploy build; needs TensorRT and a GPU)")
    engine.add_argument(
        "--engine-from",
        choices=["fp32", "fp16", "int8"],
        default="fp32",
        help="the graph the engine is built from, i.e. its precision (default fp32; fp16 or int8 make that graph too)",
    )
    engine.add_argument("--max-batch", type=positive_int, default=1, help="largest batch of the engine (default 1)")
    engine.add_argument(
        "--max-shape",
        default=None,
        metavar="HxW",
        help="largest padded canvas of the engine (default: the model's max size)",
    )
    engine.add_argument("--workspace", type=float, default=None, metavar="GB", help="workspace limit in GiB")
    add_checkpoint_arguments(parser)


def parse_targets(values: Optional[Sequence[str]], calib_given: bool) -> Tuple[List[str], bool]:
    """(targets in pipeline order, engine optional): ``--to`` values, repeated and/or comma separated.

    ``all`` is onnx, fp16, int8 when a calibration folder is given, and the engine where TensorRT is installed
    (optional: skipped with a note otherwise). A named ``engine`` is required.
    """
    wanted: set = set()
    engine_optional = False
    for value in values or ["onnx"]:
        for item in (v.strip().lower() for v in value.split(",")):
            if not item:
                continue
            if item == "all":
                wanted.update(("onnx", "fp16") + (("int8",) if calib_given else ()))
                if "engine" not in wanted:
                    engine_optional = True
                wanted.add("engine")
            elif item in TARGETS:
                if item == "engine":
                    engine_optional = False
                wanted.add(item)
            else:
                raise DeploySdkError(f"--to {item!r} is not one of {', '.join(TARGETS)}, all")
    wanted.add("onnx")
    return [t for t in TARGETS if t in wanted], engine_optional


@dataclass
class Step:
    """One file of the pipeline and what was measured on it: a row of the summary table."""

    what: str  # "checkpoint", "onnx", "fp16", "int8", "engine"
    path: Optional[Path]
    precision: str
    seconds: float = 0.0
    parity: Optional[str] = None  # "ok: ..." / "FAIL: ..." / "not checked"
    parity_ok: Optional[bool] = None
    against: Optional[str] = None
    box_ap: Optional[float] = None
    mask_ap: Optional[float] = None
    note: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)


def run(args: argparse.Namespace) -> int:
    from deploy_sdk.atomic_file import check_output_dir, check_output_file

    # ---- everything cheap first: a typo fails in a second, not after the export
    targets, engine_optional = parse_targets(args.to, args.calib is not None)
    if "int8" in targets or (args.engine_from == "int8" and "engine" in targets):
        if args.calib is None:
            what = "--to int8" if "int8" in targets else "--engine-from int8"
            raise DeploySdkError(
                f"{what} needs calibration images: add --calib DIR (a folder of images like those "
                "the model will see, not the evaluation images)"
            )
        if not args.calib.is_dir():
            raise DeploySdkError(f"--calib {args.calib} is not a folder of images")
    check_export_options(height=args.height, width=args.width, max_detections=args.max_detections, opset=args.opset)
    if args.annotations is not None:
        if args.images is None:
            raise DeploySdkError("--annotations needs --images DIR, the folder of the images it lists")
        if not args.annotations.is_file():
            raise DeploySdkError(f"annotation file not found: {args.annotations}")
    if args.images is not None and not args.images.is_dir():
        raise DeploySdkError(f"--images {args.images} is not a folder")
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise DeploySdkError(f"checkpoint not found: {checkpoint}")
    if args.max_shape is not None:
        from deploy_sdk.conversion.tensorrt_build import parse_hw

        parse_hw(args.max_shape)

    build_engine_now = "engine" in targets
    engine_skipped: Optional[str] = None
    if build_engine_now:
        if args.engine_from == "int8" and args.int8_target != "tensorrt":
            raise DeploySdkError("--engine-from int8 needs --int8-target tensorrt (TensorRT rejects the cpu graph)")
        from deploy_sdk.backends.tensorrt import import_tensorrt

        try:
            import_tensorrt("maskrcnn-deploy convert --to engine")
        except DeploySdkError:
            if not engine_optional:
                raise
            build_engine_now = False
            engine_skipped = "skipped: TensorRT is not installed (it needs an NVIDIA GPU; see maskrcnn-deploy build)"
        if build_engine_now and args.engine_from in ("fp16", "int8") and args.engine_from not in targets:
            targets = [t for t in TARGETS if t in set(targets) | {args.engine_from}]

    out_dir = args.output_dir if args.output_dir is not None else checkpoint.parent
    name = args.name or checkpoint.stem or "model"
    check_output_dir(out_dir, what="-o/--output-dir")
    paths = {
        "onnx": out_dir / f"{name}.onnx",
        "fp16": out_dir / f"{name}.fp16.onnx",
        "int8": out_dir / f"{name}.int8.onnx",
        "engine": out_dir / f"{name}.engine",
    }
    for target in targets:
        if target == "engine" and not build_engine_now:
            continue
        check_output_file(paths[target], what=f"the {target} file")
        if paths[target].resolve() == checkpoint.resolve():
            raise DeploySdkError(f"{paths[target]} is the checkpoint itself; choose another --name or -o folder")

    log = _logger()
    check_images, check_names = _check_images(args) if not args.no_check else ([], [])

    # ---- the slow part
    from deploy_sdk.conversion.checkpoint_options import load_checkpoint_from_args
    from deploy_sdk.conversion.checkpoints.class_names import describe_class_names
    from deploy_sdk.conversion.export import export_onnx

    log(f"[1/{_count_stages(targets, build_engine_now, args)}] loading {checkpoint} ...")
    t0 = time.perf_counter()
    loaded = load_checkpoint_from_args(checkpoint, args)
    log(f"  {loaded.arch}, {loaded.num_classes} classes (incl. background), source {loaded.semantics.source}")
    log(f"  {describe_class_names(loaded.class_names)}")
    ckpt_step = Step("checkpoint", checkpoint, "fp32 (PyTorch)", seconds=time.perf_counter() - t0)
    steps: List[Step] = [ckpt_step]
    stage = _Stages(_count_stages(targets, build_engine_now, args), log)

    stage.next(f"export -> {paths['onnx']}")
    t0 = time.perf_counter()
    export_onnx(
        loaded,
        paths["onnx"],
        height=args.height,
        width=args.width,
        max_detections=args.max_detections,
        opset=args.opset,
        input_dtype=args.input_dtype,
        log=lambda line: log("  " + line),
    )
    onnx_step = Step("onnx", paths["onnx"], "fp32", seconds=time.perf_counter() - t0)
    steps.append(onnx_step)
    if not args.no_check:
        stage.next(f"check {paths['onnx'].name} against the checkpoint (PyTorch) on {len(check_images)} image(s)")
        _parity(onnx_step, paths["onnx"], check_images, check_names, log, loaded=loaded, checkpoint=checkpoint)

    if "fp16" in targets:
        from deploy_sdk.conversion.fp16 import convert_file_to_fp16

        stage.next(f"fp16 -> {paths['fp16']}")
        t0 = time.perf_counter()
        report = convert_file_to_fp16(paths["onnx"], paths["fp16"])
        step = Step("fp16", paths["fp16"], "fp16", seconds=time.perf_counter() - t0)
        log(f"  {len(report.fp16_nodes)} nodes fp16, {report.fp16_initializers} weights stored as fp16")
        steps.append(step)
        if not args.no_check:
            _parity(step, paths["fp16"], check_images, check_names, log, against=paths["onnx"], gate=False)

    if "int8" in targets:
        import sys

        from deploy_sdk.conversion.quantize import quantize_int8

        stage.next(f"int8 -> {paths['int8']} (calibrating on {args.calib})")
        t0 = time.perf_counter()
        qreport = quantize_int8(
            paths["onnx"],
            paths["int8"],
            args.calib,
            num_images=args.num_calib,
            method=args.calib_method,
            target=args.int8_target,
            stream=sys.stderr,
        )
        step = Step("int8", paths["int8"], f"int8 ({args.int8_target})", seconds=time.perf_counter() - t0)
        log(
            f"  {len(qreport.quantized_nodes)} layers INT8, calibrated on {qreport.num_calibration_images} images "
            f"({qreport.method})"
        )
        steps.append(step)
        if not args.no_check:
            _parity(step, paths["int8"], check_images, check_names, log, against=paths["onnx"], gate=False)

    if "engine" in targets:
        if not build_engine_now:
            steps.append(Step("engine", None, "-", note=engine_skipped))
        else:
            steps.append(_build(args, paths, stage, check_images, check_names, log))

    if args.annotations is not None:
        stage.next(f"COCO AP on {args.annotations}")
        for step in steps:
            if step.path is not None:
                _measure_ap(step, args, loaded, log)

    print(format_summary(steps), flush=True)
    failed = [s for s in steps if s.parity_ok is False]
    if failed:
        print(
            f"parity FAILED for {', '.join(s.path.name for s in failed if s.path)}: see the lines above "
            "(the worst detection is named); the files were written",
            flush=True,
        )
        return 1
    return 0


# ------------------------------------------------------------------------------------------------- stages


class _Stages:
    def __init__(self, total: int, log: Callable[[str], None]):
        self.total, self.done, self.log = total, 1, log  # stage 1 (loading) is logged before this exists

    def next(self, text: str) -> None:
        self.done += 1
        self.log(f"[{self.done}/{self.total}] {text}")


def _count_stages(targets: Sequence[str], build_engine_now: bool, args) -> int:
    n = 2  # load, export
    check = not args.no_check
    n += check
    for t in ("fp16", "int8"):
        n += t in targets
    n += "engine" in targets and build_engine_now
    n += args.annotations is not None
    return n


def _logger() -> Callable[[str], None]:
    def log(line: str) -> None:
        print(line, flush=True)

    return log


def _check_images(args) -> Tuple[list, List[str]]:
    """The images the parity checks run on: the first --check-images of --images, else held-out synthetic ones."""
    from deploy_sdk.preprocessing import load_image

    n = args.check_images
    if args.images is not None:
        files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not files:
            raise DeploySdkError(f"--images {args.images} holds no images ({', '.join(_IMAGE_SUFFIXES)})")
        files = files[:n]
        return [load_image(str(p), what=str(p)) for p in files], [p.name for p in files]
    return held_out_images(n)


def _parity(
    step: Step,
    path: Path,
    images,
    names,
    log,
    *,
    against: Optional[Path] = None,
    loaded=None,
    checkpoint: Optional[Path] = None,
    gate: bool = True,
    device: str = "cpu",
) -> None:
    """Compare ``path`` with the checkpoint (``loaded``) or with the graph ``against``; record it in ``step``."""
    from deploy_sdk.conversion.detection_sources import compare_sources, open_source
    from deploy_sdk.conversion.parity import ParityThresholds

    if not images:
        return
    reference_path = against if against is not None else checkpoint
    assert reference_path is not None, "compare with a graph (against=) or the checkpoint (checkpoint=)"
    candidate = open_source(path, batch_size=1, device=device)
    try:
        reference = open_source(reference_path, batch_size=1, loaded_model=loaded)
        try:
            if against is not None:
                log(f"  comparing {candidate.label} with {reference.label} on {len(images)} image(s)")
            # Per-image lines for the gated checks (a failure names its worst detection); a reduced precision is
            # summarized in one line, its per-image differences are expected.
            comparison = compare_sources(
                candidate,
                reference,
                images,
                names,
                ParityThresholds(),
                1,
                log=(lambda line: log("  " + line)) if gate else None,
            )
        finally:
            reference.close()
    finally:
        candidate.close()
    results = comparison.results
    matched = sum(r.num_matched for r in results)
    total = sum(r.num_reference for r in results)
    worst = (
        f"{matched}/{total} matched, box IoU >= {min(r.worst_box_iou for r in results):.3f}, "
        f"|dscore| <= {max(r.worst_score_diff for r in results):.3f}, "
        f"mask IoU >= {min(r.worst_mask_iou for r in results):.3f}"
    )
    step.against = "checkpoint" if against is None else against.name
    if gate:
        step.parity_ok = comparison.ok
        step.parity = ("ok" if comparison.ok else "FAIL") + ": " + worst
    else:
        # A reduced precision is expected to move scores and boxes a little: reported, measured by its AP.
        step.parity = worst
    log(f"  {step.parity} (vs {step.against})")


def _build(args, paths, stage: _Stages, images, names, log) -> Step:
    import sys

    from deploy_sdk.conversion.tensorrt_build import BuildOptions, ProfileSpec, build_engine, parse_hw

    source = {"fp32": paths["onnx"], "fp16": paths["fp16"], "int8": paths["int8"]}[args.engine_from]
    stage.next(f"build {paths['engine']} from {source.name} (TensorRT)")
    t0 = time.perf_counter()
    spec = ProfileSpec(
        min_batch=1,
        opt_batch=1,
        max_batch=args.max_batch,
        max_shape=parse_hw(args.max_shape) if args.max_shape else None,
    )
    header = build_engine(
        source, paths["engine"], BuildOptions(profile=spec, workspace_gb=args.workspace), out=sys.stdout
    )
    step = Step(
        "engine",
        paths["engine"],
        header.metadata.precision,
        seconds=time.perf_counter() - t0,
        note=f"TensorRT {header.tensorrt_version}, {header.gpu.name}",
    )
    if not args.no_check:
        # The engine against the graph it was built from: the same file through another runtime.
        _parity(step, paths["engine"], images, names, log, against=source, gate=True, device="cuda")
    return step


def _measure_ap(step: Step, args, loaded, log) -> None:
    from deploy_sdk.evaluation import evaluate

    assert step.path is not None

    if step.what == "checkpoint":
        from deploy_sdk.conversion.reference import checkpoint_predictor

        predictor: Any = checkpoint_predictor(loaded)
    else:
        from deploy_sdk.predictor import Predictor

        backend = "tensorrt" if step.what == "engine" else "onnxruntime"
        predictor = Predictor(str(step.path), backend=backend, device="cuda" if step.what == "engine" else "cpu")
    try:
        metrics = evaluate(
            predictor, args.images, args.annotations, batch_size=1, max_images=args.max_eval_images, progress=True
        )
    finally:
        close = getattr(predictor, "close", None)
        if close is not None:
            close()
    step.box_ap, step.mask_ap = float(metrics["box_ap"]), float(metrics["mask_ap"])
    log(f"  {step.path.name}: box AP {step.box_ap:.3f}, mask AP {step.mask_ap:.3f} ({metrics['num_images']} images)")


# ------------------------------------------------------------------------------------------------ summary


def format_summary(steps: Sequence[Step]) -> str:
    """The table: one row per file (the checkpoint first), its size, precision, parity and AP."""
    with_ap = any(s.box_ap is not None for s in steps)
    header = ["file", "precision", "size", "time", "parity (worst over the images)", "vs"]
    if with_ap:
        header += ["box AP", "mask AP"]
    rows = []
    for s in steps:
        if s.path is None:
            row = [s.what, s.precision, "-", "-", s.note or "-", "-"]
        else:
            size = s.path.stat().st_size / 2**20 if s.path.exists() else 0.0
            parity = (
                s.parity if s.parity is not None else ("(the reference)" if s.what == "checkpoint" else "not checked")
            )
            row = [str(s.path), s.precision, f"{size:.1f} MiB", f"{s.seconds:.1f} s", parity, s.against or "-"]
        if with_ap:
            row += ["-" if s.box_ap is None else f"{s.box_ap:.3f}", "-" if s.mask_ap is None else f"{s.mask_ap:.3f}"]
        rows.append(row)
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    out = ["", "summary:", line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    notes = [f"{s.what}: {s.note}" for s in steps if s.note and s.path is not None]
    out += notes
    return "\n".join(out)
