"""One real `maskrcnn-deploy convert` run on the shipped model, shared by the CLI tests of convert, inspect and
check --against (registered by tests/conftest.py: a test names ``shipped_conversion`` as a parameter).

It runs ``--to all``: the fp32, fp16 and INT8 graphs (calibrated on 3 synthetic images), and the engine where
TensorRT is installed (skipped with a note elsewhere); it checks each on 2 images and measures the AP on 2
annotated images: the whole pipeline at its smallest, about half a minute of CPU time without the engine. The
result is kept for the process, so the modules that use the fixture share one run.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Dict

import pytest
from fixtures_models import shipped_checkpoint

_RUNS: Dict[str, ConversionRun] = {}


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


@pytest.fixture(scope="session")
def shipped_conversion(tmp_path_factory) -> ConversionRun:
    if "run" in _RUNS:
        return _RUNS["run"]
    from deploy_sdk.cli import main
    from deploy_sdk.synthetic_shapes import write_dataset

    root = tmp_path_factory.mktemp("convert")
    write_dataset(root / "eval", num=2, seed=31, min_size=256, max_size=384)
    write_dataset(root / "calib", num=3, seed=32, min_size=256, max_size=384)
    checkpoint = shipped_checkpoint()
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
    _RUNS["run"] = ConversionRun(checkpoint, root / "out", root / "eval", rc, out.getvalue(), err.getvalue())
    return _RUNS["run"]
