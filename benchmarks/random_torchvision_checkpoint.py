"""Write a torchvision Mask R-CNN with random weights as a state-dict checkpoint, for speed benchmarks.

    python -m deploy_sdk.benchmarks.random_torchvision_checkpoint -o out/r50_random.pth \
        [--arch maskrcnn_resnet50_fpn|maskrcnn_resnet50_fpn_v2] [--num-classes 91] [--seed 0]

Random weights are enough to measure speed (the FLOPs do not depend on the values), but the detections are
meaningless: benchmarks that use such a model run it at its default thresholds and say so.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from deploy_sdk.atomic_file import atomic_path
from deploy_sdk.errors import require

__all__ = ["write_random_checkpoint"]

ARCHS = ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2")


def write_random_checkpoint(
    path: str, arch: str = "maskrcnn_resnet50_fpn", num_classes: int = 91, seed: int = 0
) -> None:
    """Build ``torchvision.models.detection.<arch>`` (no pretrained weights) seeded with ``seed`` and save its
    state dict to ``path`` atomically."""
    torch = require("torch", "convert", "writing a random-weight checkpoint")
    detection = require("torchvision.models.detection", "convert", "writing a random-weight checkpoint")
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {ARCHS}")
    torch.manual_seed(seed)
    model = getattr(detection, arch)(weights=None, weights_backbone=None, num_classes=num_classes)
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", required=True, help="checkpoint file to write (.pth)")
    parser.add_argument("--arch", default=ARCHS[0], choices=ARCHS)
    parser.add_argument("--num-classes", type=int, default=91, help="including the background (COCO: 91)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_random_checkpoint(args.output, args.arch, args.num_classes, args.seed)
    print(f"wrote {args.output} ({args.arch}, {args.num_classes} classes, random weights, seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
