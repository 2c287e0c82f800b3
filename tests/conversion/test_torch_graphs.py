"""The torch backend's static-shape stages (deploy_sdk.conversion.torch_graphs): bucket selection, static-buffer
reuse, RoI-row padding, the LRU of captured graphs, reduced precision; on CPU with ``eager_capture`` standing in
for CUDA-graph capture (same buffers, same replay contract), and on CUDA (needs_cuda) with real CUDA graphs and
fp16/bf16, against the plain fp32 module."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from compare import BF16_OUTPUT, FP32_WHOLE_MODEL, assert_close
from tiny_maskrcnn import build_tiny_maskrcnn, random_canvas
from torch import nn

from deploy_sdk.conversion import torch_graphs
from deploy_sdk.conversion.deploy_module import DeploymentModule
from deploy_sdk.conversion.torch_graphs import ShapeBuckets, Stage, batch_bucket, eager_capture, row_bucket
from deploy_sdk.errors import DeploySdkError


def test_bucket_sizes_hand_worked():
    assert [row_bucket(n) for n in (0, 1, 8, 9, 100, 128, 129)] == [8, 8, 8, 16, 128, 128, 256]
    assert row_bucket(3, minimum=4) == 4
    sizes = (1, 2, 4, 8, 16)
    assert [batch_bucket(b, sizes) for b in (1, 2, 3, 5, 16, 17)] == [1, 2, 4, 8, 16, 17]
    with pytest.raises(ValueError):
        batch_bucket(0, sizes)


class _Counting(nn.Module):
    """A per-row function that counts its calls: row i of the output depends on row i of the input only."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(6, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return torch.relu(self.lin(x)) * 2.0


def test_same_bucket_reuses_one_capture_and_its_buffers():
    f = _Counting()
    cache = ShapeBuckets(f, eager_capture, pad_rows=True, max_entries=4)
    with torch.inference_mode():
        x7, x5, x9 = torch.randn(7, 6), torch.randn(5, 6), torch.randn(9, 6)
        y7 = cache(x7).clone()
        out5 = cache(x5)
        y5 = out5.clone()
        assert cache.captures == 1 and len(cache.entries) == 1  # 7 and 5 rows share the 8-row bucket
        out9 = cache(x9)
        assert cache.captures == 2 and out9.shape == (9, 3)  # 9 rows: a 16-row bucket
        # Results equal the function on the unpadded input (up to the GEMM's blocking on more rows): stale rows
        # from earlier calls never leak in.
        for got, x in ((y7, x7), (y5, x5), (out9, x9)):
            assert_close(got, f(x), what=f"{x.shape[0]} rows through the padded capture")
        # Replays write the same static buffers: the 8-row output of the next call lands where out5 lives.
        again = cache(x7)
        assert again.data_ptr() == out5.data_ptr() and torch.equal(out5, y7[:5])
        static_in = cache.entries[cache.key([x7])].inputs[0]
        assert static_in.shape == (8, 6) and torch.equal(static_in[:7], x7)


def test_exact_shapes_without_row_padding_and_lru_eviction():
    f = _Counting()
    cache = ShapeBuckets(f, eager_capture, pad_rows=False, max_entries=2)
    a, b, c = torch.randn(2, 6), torch.randn(3, 6), torch.randn(4, 6)
    with torch.inference_mode():
        for x in (a, b, a, c):  # a is used again before c arrives, so b is the least recently used
            assert torch.equal(cache(x), f(x))
        assert cache.captures == 3 and set(cache.entries) == {cache.key([a]), cache.key([c])}
        cache(b)  # evicted: captured again
        assert cache.captures == 4 and cache.key([a]) not in cache.entries
        # dtype is part of the signature
        cache(c.double().float())
        assert cache.captures == 4
    with pytest.raises(ValueError):
        ShapeBuckets(f, eager_capture, max_entries=0)


def test_stage_precision_and_list_inputs():
    head = nn.Conv2d(4, 2, 1)
    ref = copy.deepcopy(head)
    levels = [torch.randn(1, 4, 8, 8), torch.randn(1, 4, 4, 4)]

    class PerLevel(nn.Module):  # the RPN head's calling convention: a list in, lists out
        def __init__(self, conv):
            super().__init__()
            self.conv = conv

        def forward(self, xs):
            return [self.conv(x) for x in xs], [x.sum(1) for x in xs]

    stage = Stage(PerLevel(head), torch.bfloat16, fp32_outputs=True, graphs=lambda fn: ShapeBuckets(fn, eager_capture))
    with torch.inference_mode():
        logits, sums = stage(levels)
        assert stage.inner.conv.weight.dtype == torch.bfloat16
        assert all(t.dtype == torch.float32 for t in logits + sums)
        # Reference: the fp32 conv on bf16-rounded weights and inputs; bf16 compute differs by its output rounding.
        ref = ref.to(torch.bfloat16).float()
        for got, x in zip(logits, levels):
            expected = ref(x.to(torch.bfloat16).float())
            assert_close(got, expected, tol=BF16_OUTPUT, what="bf16 stage vs fp32 conv on rounded operands")
        low = Stage(nn.Identity(), torch.float16, fp32_outputs=False)(levels[0])
        assert low.dtype == torch.float16


def _tiny_module():
    return DeploymentModule(build_tiny_maskrcnn(seed=0)).eval()


def test_deployment_module_with_captured_stages_equals_the_plain_module():
    plain = _tiny_module()
    staged = torch_graphs.wrap_stages(_tiny_module(), torch.float32, eager_capture, max_graphs=4)
    with pytest.raises(ValueError, match="already wrapped"):
        torch_graphs.wrap_stages(staged, torch.float32)
    first, _, _ = random_canvas([(100, 128), (128, 90)], (128, 128), seed=1)
    second, _, _ = random_canvas([(64, 128), (128, 128)], (128, 128), seed=2)
    sizes1 = torch.tensor([[100, 128], [128, 90]])
    sizes2 = torch.tensor([[64, 128], [128, 128]])
    with torch.inference_mode():
        for images, sizes in ((first, sizes1), (second, sizes2), (first, sizes1)):
            a = plain(images, sizes)
            b = staged(images, sizes)
            assert torch.equal(a[0], b[0]) and int(a[0].sum()) > 0
            assert torch.equal(a[3], b[3])
            for x, y in zip(a[1:], b[1:]):
                assert_close(y, x, what="staged vs plain module")
    stages = {name: getattr(staged, name).buckets for name, _, _ in torch_graphs.STAGES}
    # Same (batch, canvas) three times: backbone and RPN head captured once; the heads once per RoI bucket.
    assert stages["backbone"].captures == 1 and stages["rpn_head"].captures == 1
    assert stages["box_head"].captures == 1
    assert 1 <= stages["mask_head"].captures <= 2  # the number of mask slots n may change bucket between images


def test_backend_refuses_bad_speed_options():
    from deploy_sdk.conversion.torch_backend import TorchBackend

    with pytest.raises(DeploySdkError, match="cuda_graphs=True needs device='cuda'"):
        TorchBackend("no-such-checkpoint.pth", device="cpu", cuda_graphs=True)
    with pytest.raises(DeploySdkError, match="precision must be one of fp32, fp16, bf16"):
        TorchBackend("no-such-checkpoint.pth", precision="int8")
    with pytest.raises(DeploySdkError, match="max_graphs"):
        TorchBackend("no-such-checkpoint.pth", max_graphs=0)


def test_backend_batch_buckets_on_cpu_with_the_capture_stand_in(shipped_loaded, capsys):
    # The backend's CUDA-graph path end to end on the CPU: batch 3 padded to the 4 bucket with blank images,
    # outputs sliced back, one capture per stage for two calls, same detections as the plain backend.
    from fixtures_models import held_out_images

    from deploy_sdk.conversion.torch_backend import TorchBackend

    plain = TorchBackend(shipped_loaded)
    graphed = TorchBackend(shipped_loaded, cuda_graphs=True, graph_batch_sizes=(1, 2, 4), graph_capture=eager_capture)
    assert "CUDA graphs" in graphed.describe()
    images = np.zeros((3, 3, 320, 320), np.float32)
    for i, im in enumerate(held_out_images(3)):
        h, w = min(im.shape[0], 320), min(im.shape[1], 320)
        images[i, :, :h, :w] = im[:h, :w].transpose(2, 0, 1)
    sizes = np.array([[320, 320]] * 3, np.int64)
    expected = plain.infer(images, sizes)
    for _ in range(2):
        got = graphed.infer(images, sizes)
        assert got["boxes"].shape[0] == 3 and np.array_equal(got["num_detections"], expected["num_detections"])
        assert int(expected["num_detections"].sum()) > 0
        np.testing.assert_array_equal(got["labels"], expected["labels"])
        assert_close(got["boxes"], expected["boxes"], tol=FP32_WHOLE_MODEL, what="graphed vs plain backend boxes")
        assert_close(got["masks"], expected["masks"], tol=FP32_WHOLE_MODEL, what="graphed vs plain backend masks")
    stages = graphed.graph_stages()
    assert set(stages) == {name for name, _, _ in torch_graphs.STAGES}
    assert stages["backbone"].captures == 1 and next(iter(stages["backbone"].entries))[0][0][0] == 4
    assert "capturing CUDA graphs for batch 4, canvas 320x320" in capsys.readouterr().err


def test_bench_system_names_map_to_backend_options():
    from deploy_sdk.benchmarks.commands.bench import _torch_backend_options, parse_compare

    assert _torch_backend_options("sdk-torch-fp16cg", "fp16cg") == {"precision": "fp16", "cuda_graphs": True}
    assert _torch_backend_options("sdk-torch-bf16", "bf16") == {"precision": "bf16", "cuda_graphs": False}
    assert [n for n, _ in parse_compare("torch-eager,sdk-torch-fp16,sdk-torch-fp16cg")] == [
        "torch-eager", "sdk-torch-fp16", "sdk-torch-fp16cg"]  # fmt: skip
    with pytest.raises(DeploySdkError, match="sdk-torch-fp16cg"):
        _torch_backend_options("sdk-torch-int8", "int8")


# ------------------------------------------------------------------------------------------------ CUDA


def _shipped_predictions(checkpoint, **options):
    from deploy_sdk import Predictor
    from deploy_sdk.synthetic_shapes import generate_sample

    images = [generate_sample(917_000, i).image for i in range(6)]
    predictor = Predictor(str(checkpoint), backend="torch", device="cuda", batch_size=3,
                          backend_options=options or None)  # fmt: skip
    return predictor.predict(images), predictor.predict(images)


def _agree(reference, candidate, **thresholds):
    from fixtures_models import parity_failures

    problems = parity_failures(reference, candidate, **thresholds)
    assert not problems, "\n".join(problems)


@pytest.mark.needs_cuda
def test_cuda_graphs_replay_equals_eager_fp32(shipped_model_file):
    eager, _ = _shipped_predictions(shipped_model_file)
    # batch 3 -> bucket 4 (one dummy image)
    captured, replayed = _shipped_predictions(shipped_model_file, cuda_graphs=True)
    _agree(eager, captured, box_iou=0.999, score_diff=1e-4, mask_iou=0.99)
    _agree(captured, replayed, box_iou=0.9999, score_diff=1e-6, mask_iou=0.999)  # replays of the same graphs


@pytest.mark.needs_cuda
@pytest.mark.parametrize("precision,max_ap_drop", [("fp16", 0.5), ("bf16", 1.5)])
def test_low_precision_ap_and_graphs(precision, max_ap_drop, tmp_path, shipped_model_file):
    # The accuracy target: box AP within 0.5 point of fp32 for fp16 on the shipped model (bf16, three
    # mantissa bits fewer, within 1.5; on the CPU bf16 moves single boxes by up to ~10% IoU, so per-detection
    # parity is not the criterion). Eager and graphed runs of the same precision agree detection by detection.
    from deploy_sdk import Predictor
    from deploy_sdk.evaluation import evaluate
    from deploy_sdk.synthetic_shapes import write_dataset

    write_dataset(tmp_path, 40, seed=917_000)
    ap = {}
    for name, options in (("fp32", None), (precision, {"precision": precision, "cuda_graphs": True})):
        predictor = Predictor(str(shipped_model_file), backend="torch", device="cuda", batch_size=4,
                              backend_options=options)  # fmt: skip
        ap[name] = evaluate(predictor, tmp_path / "images", tmp_path / "annotations.json", progress=False)
    drop = 100 * (ap["fp32"]["box_ap"] - ap[precision]["box_ap"])
    assert drop <= max_ap_drop, f"{precision} box AP {drop:.2f} points below fp32 ({ap})"
    low, _ = _shipped_predictions(shipped_model_file, precision=precision)
    low_graphs, _ = _shipped_predictions(shipped_model_file, precision=precision, cuda_graphs=True)
    _agree(low, low_graphs, box_iou=0.99, score_diff=5e-3, mask_iou=0.97)
