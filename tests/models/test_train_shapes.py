"""models/train_shapes.py: the parts that decide what the shipped model is trained on."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from compare import PIXELS_ROUND_TRIP, assert_close
from repo_paths import REPO_ROOT

torch = pytest.importorskip("torch")

ROOT = REPO_ROOT


@pytest.fixture(scope="module")
def train_shapes():
    spec = importlib.util.spec_from_file_location("train_shapes", ROOT / "models" / "train_shapes.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_shapes"] = module  # the worker processes find its functions by module name
    spec.loader.exec_module(module)
    yield module
    del sys.modules["train_shapes"]


def test_worker_processes_give_the_same_stream(train_shapes):
    """Images generated ahead in worker processes arrive in index order: the batches, and the next unused index
    that a continued run (--init) starts from, are those of inline generation."""
    from deploy_sdk.synthetic_shapes import generate_sample

    inline = train_shapes.SampleStream(seed=3, index=10)
    pooled = train_shapes.SampleStream(seed=3, index=10, workers=2, lookahead=5)
    try:
        for batch_size in (3, 4):
            a_images, a_targets = inline.next_batch(batch_size)
            b_images, b_targets = pooled.next_batch(batch_size)
            assert len(a_images) == len(b_images) == batch_size
            for x, y in zip(a_images, b_images):
                assert torch.equal(x, y)
            for x, y in zip(a_targets, b_targets):
                assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
            assert inline.index == pooled.index
    finally:
        pooled.close()
    # Independent of both: the first image of the stream, generated directly and converted by hand.
    first = next(s for s in (generate_sample(3, i, **train_shapes.IMAGE_SIZES) for i in range(10, 20)) if len(s.labels))
    again = train_shapes.SampleStream(seed=3, index=10).next_batch(1)[0][0]
    assert_close(again.permute(1, 2, 0).numpy() * 255.0, first.image, tol=PIXELS_ROUND_TRIP, what="first image")
