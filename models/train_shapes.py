"""Train the shipped model: a small ResNet-18-FPN Mask R-CNN on the synthetic shapes, from scratch.

    python models/train_shapes.py --out models/shapes_r18 --minutes 90                  # CPU
    python models/train_shapes.py --out run --device cuda --batch-size 16 --workers 10  # GPU

The model is a plain torchvision ``MaskRCNN`` (FPN backbone, default anchors and RoI poolers) with narrower
FPN and heads. It trains with ``BatchNorm2d`` (no pretrained weights can be downloaded here) and is saved with
the batch-norm statistics in the same keys that torchvision's ``FrozenBatchNorm2d`` reads, so the default
builders load it unchanged.

The schedule is fixed in wall-clock time rather than iterations (warm-up, then cosine decay over
``--minutes``), so that a run on a shared 2-core machine ends when planned. Training images are generated on
the fly from ``--seed`` (default 1); evaluation sets must use another seed. ``--workers`` generates them in
worker processes (needed to keep a GPU busy); the stream of images is the same with or without workers.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploy_sdk.conversion.architectures import ArchConfig, build_resnet_fpn_maskrcnn  # noqa: E402
from deploy_sdk.synthetic_shapes import SHAPE_CLASSES, generate_sample  # noqa: E402

CONFIG = ArchConfig(
    arch="resnet18_fpn",
    num_classes=len(SHAPE_CLASSES) + 1,
    fpn_channels=128,
    box_head_dim=512,
    mask_head_dims=(128, 128, 128, 128),
    mask_predictor_dim=128,
    min_size=384,
    max_size=512,
)
# Training-only sampling settings (not part of the architecture; inference keeps torchvision's defaults):
# fewer proposals and RoIs per image make a CPU iteration several times cheaper.
TRAIN_KWARGS = dict(
    rpn_pre_nms_top_n_train=1000,
    rpn_post_nms_top_n_train=500,
    box_batch_size_per_image=128,
)
IMAGE_SIZES = dict(min_size=256, max_size=512)


def to_target(sample) -> dict:
    return {
        "boxes": torch.from_numpy(sample.boxes),
        "labels": torch.from_numpy(sample.labels),
        "masks": torch.from_numpy(sample.masks.astype(np.uint8)),
    }


def _sample(seed: int, index: int):
    return generate_sample(seed, index, **IMAGE_SIZES)


class SampleStream:
    """The synthetic training stream ``seed`` from image ``index`` on, skipping images without objects.

    With ``workers`` > 0 the images are generated ahead in a process pool (a bounded look-ahead, in index
    order), so the batches are the same as without workers. ``index`` is always the next unused image.
    """

    def __init__(self, seed: int, index: int, workers: int = 0, lookahead: int = 64):
        self.seed, self.index = seed, index
        self._pool = multiprocessing.get_context("fork").Pool(workers) if workers > 0 else None
        self._pending: collections.deque = collections.deque()
        self._next_submit = index
        self._lookahead = lookahead

    def _next_sample(self):
        if self._pool is None:
            sample = _sample(self.seed, self.index)
        else:
            while len(self._pending) < self._lookahead:
                self._pending.append(self._pool.apply_async(_sample, (self.seed, self._next_submit)))
                self._next_submit += 1
            sample = self._pending.popleft().get()
        self.index += 1
        return sample

    def next_batch(self, batch_size: int, device: torch.device | str = "cpu") -> tuple[list, list]:
        """``batch_size`` training images (0-1 float CHW) and targets, on ``device``."""
        images, targets = [], []
        while len(images) < batch_size:
            s = self._next_sample()
            if len(s.labels) == 0:
                continue
            image = torch.from_numpy(s.image).to(device).permute(2, 0, 1).float() / 255.0
            images.append(image)
            targets.append({k: v.to(device) for k, v in to_target(s).items()})
        return images, targets

    def close(self) -> None:
        """Stop the workers after the look-ahead is drained. ``Pool.terminate()`` with results still in flight can
        hang for good: a worker blocked writing a large result that nothing reads any more holds the result queue's
        lock that terminate() needs (seen in the test suite)."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.close()
            for pending in self._pending:
                pending.wait()
            self._pending.clear()
            pool.join()


def lr_at(progress: float, it: int, base: float, warmup_iters: int) -> float:
    warm = min(1.0, (it + 1) / warmup_iters)
    return base * (0.001 + 0.999 * warm) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def save(model: nn.Module, out_dir: Path, meta: dict) -> None:
    from safetensors.torch import save_file

    state = {
        k: v.detach().cpu().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous()
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "model.safetensors.partial"
    save_file(state, str(tmp), metadata={k: json.dumps(v) for k, v in meta.items()})
    tmp.replace(out_dir / "model.safetensors")


def load_init(model: nn.Module, path: Path) -> tuple[int, int, float]:
    """Load weights saved by :func:`save` into the training model; return (iterations, images seen, minutes)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    result = model.load_state_dict(state, strict=False)
    # save() drops num_batches_tracked (FrozenBatchNorm2d has no such buffer); nothing else may be missing.
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise SystemExit(
            f"{path}: does not match the training model; missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    return int(meta.get("iterations", 0)), int(meta.get("images_seen", 0)), float(meta.get("minutes", 0.0))


@torch.no_grad()
def recalibrate_batch_norm(
    model: nn.Module, stream: SampleStream, batches: int, batch_size: int, device: torch.device | str = "cpu"
) -> None:
    """Re-estimate every batch-norm layer's statistics as a plain average over ``batches`` training batches.

    During training the running statistics are an exponential average over batches taken while the weights
    were still moving (at a high learning rate), so they lag the final weights; the frozen model then
    normalizes with statistics that do not match its own activations. Averaging fresh statistics with the
    final weights removes that mismatch. Only the backbone has batch norm, so only it runs. The images come
    from ``stream``, after those used for training.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    for b in range(batches):
        images, _ = stream.next_batch(batch_size, device)
        image_list, _ = model.transform(images)
        model.backbone(image_list.tensors)
        if b % 10 == 0:
            print(f"batch-norm recalibration: batch {b + 1}/{batches}", flush=True)
    for m, momentum in zip(bns, saved):
        m.momentum = momentum
    model.eval()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "models" / "shapes_r18")
    p.add_argument("--minutes", type=float, default=90.0)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--warmup-iters", type=int, default=300)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--workers", type=int, default=0, help="processes generating training images (default 0: inline)")
    p.add_argument(
        "--sampling",
        choices=["light", "torchvision"],
        default="light",
        help="training-time proposal and RoI sampling: 'light' (1000/500 proposals, 128 RoIs per image; several "
        "times cheaper on a CPU) or torchvision's defaults (2000/2000, 512); inference settings are not affected",
    )
    p.add_argument("--save-every", type=float, default=600.0, help="seconds between intermediate saves")
    p.add_argument("--max-iters", type=int, default=0, help="stop after this many iterations (0: time only)")
    p.add_argument(
        "--init",
        type=Path,
        default=None,
        help="continue from these weights (a model.safetensors written by this script); the new schedule starts "
        "again with warm-up, and the iteration and image counts carry on from the file's metadata",
    )
    p.add_argument(
        "--precise-bn",
        type=int,
        default=50,
        metavar="BATCHES",
        help="after training, re-estimate the batch-norm statistics over this many batches (0: keep the "
        "running averages; default 50). With --minutes 0 and --init, only this step runs.",
    )
    args = p.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {args.device}: torch sees no CUDA GPU; use --device cpu")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = build_resnet_fpn_maskrcnn(
        CONFIG, norm_layer=nn.BatchNorm2d, **(TRAIN_KWARGS if args.sampling == "light" else {})
    )
    start_iter, image_index, previous_minutes = 0, 0, 0.0
    if args.init is not None:
        start_iter, image_index, previous_minutes = load_init(model, args.init)
        print(f"continuing from {args.init}: {start_iter} iterations, {image_index} images so far", flush=True)
    # The workers are forked before CUDA is initialized in this process.
    stream = SampleStream(args.seed, image_index, workers=args.workers)
    model.to(device)
    model.train()
    params = [q for q in model.parameters() if q.requires_grad]
    decay = [q for q in params if q.ndim > 1]
    no_decay = [q for q in params if q.ndim <= 1]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        momentum=0.9,
    )
    budget = args.minutes * 60.0
    t0 = time.monotonic()
    last_save = t0
    it = 0
    log = []
    smoothed = None
    meta = {
        "arch": CONFIG.arch,
        "num_classes": CONFIG.num_classes,
        "class_names": ["__background__", *SHAPE_CLASSES],
        "min_size": CONFIG.min_size,
        "max_size": CONFIG.max_size,
        "fpn_channels": CONFIG.fpn_channels,
        "box_head_dim": CONFIG.box_head_dim,
        "mask_head_dims": list(CONFIG.mask_head_dims),
        "train_seed": args.seed,
        "train_image_sizes": [IMAGE_SIZES["min_size"], IMAGE_SIZES["max_size"]],
    }

    def totals(elapsed_s: float) -> dict:
        return {
            "iterations": start_iter + it,
            "images_seen": stream.index,
            "minutes": round(previous_minutes + elapsed_s / 60, 1),
        }

    while True:
        elapsed = time.monotonic() - t0
        progress = elapsed / budget if budget > 0 else 1.0
        if progress >= 1.0 or (args.max_iters and it >= args.max_iters):
            break
        lr = lr_at(progress, it, args.lr, args.warmup_iters)
        for g in opt.param_groups:
            g["lr"] = lr
        images, targets = stream.next_batch(args.batch_size, device)
        losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            print(f"iter {it}: non-finite loss { ({k: float(v) for k, v in losses.items()}) }; skipping", flush=True)
            opt.zero_grad(set_to_none=True)
            it += 1
            continue
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        lv = float(loss.detach())
        smoothed = lv if smoothed is None else 0.95 * smoothed + 0.05 * lv
        if it % 20 == 0:
            parts = " ".join(f"{k.replace('loss_', '')}={float(v.detach()):.3f}" for k, v in losses.items())
            print(
                f"iter {start_iter + it:6d}  {elapsed / 60:6.1f} min  lr {lr:.4f}  loss {lv:.3f} (avg "
                f"{smoothed:.3f})  {parts}",
                flush=True,
            )
            log.append({"iter": start_iter + it, "minutes": elapsed / 60, "lr": lr, "loss": lv, "avg": smoothed})
        it += 1
        if time.monotonic() - last_save > args.save_every:
            model.eval()
            save(model, args.out, {**meta, **totals(time.monotonic() - t0)})
            model.train()
            last_save = time.monotonic()
    model.eval()
    elapsed = time.monotonic() - t0
    if args.precise_bn > 0:
        recalibrate_batch_norm(model, stream, args.precise_bn, args.batch_size, device)
    stream.close()
    final_meta = {**meta, **totals(elapsed), "precise_bn_batches": args.precise_bn}
    save(model, args.out, final_meta)
    runs = []
    if args.init is not None and (args.init.parent / "training_log.json").is_file():
        previous = json.loads((args.init.parent / "training_log.json").read_text())
        runs = previous.get("runs", [{"meta": previous.get("meta"), "log": previous.get("log", [])}])
    runs.append(
        {
            "meta": {
                **final_meta,
                "init": str(args.init) if args.init else None,
                "lr": args.lr,
                "batch_size": args.batch_size,
                "device": str(device),
                "sampling": args.sampling,
                "command": " ".join(sys.argv),
            },
            "log": log,
        }
    )
    (args.out / "training_log.json").write_text(json.dumps({"meta": final_meta, "runs": runs}, indent=1))
    print(f"done: {it} iterations, {stream.index} images, {elapsed / 60:.1f} min -> {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
