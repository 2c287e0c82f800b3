"""One real `maskrcnn-deploy convert` run on the shipped model, shared by the CLI tests of convert, inspect and
check --against through the session fixture ``shipped_conversion`` of tests/conftest.py.

It runs ``--to all``: the fp32, fp16 and INT8 graphs (calibrated on 3 synthetic images), and the engine where
TensorRT is installed (skipped with a note elsewhere); it checks each on 2 images and measures the AP on 2
annotated images: the whole pipeline at its smallest, about half a minute of CPU time without the engine.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ConversionRun:
    checkpoint: Path
    out: Path  # the folder the files are in
    data: Path  # synthetic data set: images/ and annotations.json
    rc: int
    stdout: str
    stderr: str

    @property
    def has_tensorrt(self) -> bool:
        import importlib.util

        return importlib.util.find_spec("tensorrt") is not None

    def file(self, suffix: str) -> Path:
        return self.out / f"model{suffix}"


def run_shipped_conversion(checkpoint: Path, root: Path) -> ConversionRun:
    """``convert CHECKPOINT --to all`` into ``root``/out, with its data sets written under ``root``."""
    from deploy_sdk.cli import main
    from deploy_sdk.synthetic_shapes import write_dataset

    write_dataset(root / "eval", num=2, seed=31, min_size=256, max_size=384)
    write_dataset(root / "calib", num=3, seed=32, min_size=256, max_size=384)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(
            [
                "convert",
                str(checkpoint),
                "--to",
                "all",
                "-o",
                str(root / "out"),
                "--name",
                "model",
                "--calib",
                str(root / "calib" / "images"),
                "--num-calib",
                "3",
                "--images",
                str(root / "eval" / "images"),
                "--annotations",
                str(root / "eval" / "annotations.json"),
                "--check-images",
                "2",
            ]
        )
    return ConversionRun(checkpoint, root / "out", root / "eval", rc, out.getvalue(), err.getvalue())
