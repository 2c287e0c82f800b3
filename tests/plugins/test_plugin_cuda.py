"""The plugin library's CUDA kernel (through its C ABI, on torch CUDA tensors) against its CPU implementation, fp32
and fp16, and on non-finite boxes and the sampling limit. Skips without a GPU. The comparisons with torchvision run
on both devices in test_plugin_roi_align.py and test_plugin_multilevel.py (``device`` fixture); the timing against
torchvision is a benchmark: ``python -m deploy_sdk.benchmarks.roi_align_bench --device cuda``.
"""

from __future__ import annotations

import numpy as np
import pytest
from compare import assert_close

from deploy_sdk import DeploySdkError, plugins

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.needs_cuda

SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
IMAGE_HW = (800, 1216)


def _inputs(num_rois, channels, batch=1, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = [
        torch.randn(batch, channels, int(IMAGE_HW[0] * s), int(IMAGE_HW[1] * s), generator=g).to(dtype) for s in SCALES
    ]
    side = torch.exp(torch.empty(batch, num_rois, 2).uniform_(np.log(8), np.log(700), generator=g))
    x1 = torch.rand(batch, num_rois, generator=g) * (IMAGE_HW[1] - 50) - 20
    y1 = torch.rand(batch, num_rois, generator=g) * (IMAGE_HW[0] - 50) - 20
    boxes = torch.stack([x1, y1, x1 + side[..., 0], y1 + side[..., 1]], -1).float()
    boxes[:, 0] = torch.tensor([30.0, 40.0, 10.0, 20.0])  # inverted
    boxes[:, 1] = torch.tensor([5.0, 5.0, 5.0, 5.0])  # zero size
    return feats, boxes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_multilevel_cuda_matches_cpu_implementation(dtype, aligned, mode):
    feats, boxes = _inputs(300, 16, batch=2, dtype=dtype)
    cpu = plugins.multilevel_roi_align([f.numpy() for f in feats], boxes.numpy(), 7, SCALES, 0, aligned, mode)
    gpu = plugins.multilevel_roi_align_cuda([f.cuda() for f in feats], boxes.cuda(), 7, SCALES, 0, aligned, mode)
    torch.cuda.synchronize()
    kind = "float32" if dtype == torch.float32 else "float16"
    # Same header, same fp32 math; only FMA contraction on the GPU may move the last bits.
    assert_close(gpu, torch.from_numpy(cpu.astype(np.float32)), kind, what=f"cuda vs cpu {kind} {mode}")


def test_cuda_kernel_pools_nonfinite_boxes_to_zeros():
    # The CUDA entries do not scan the boxes (that would synchronize): the kernel itself, through the math header,
    # must turn a NaN/inf box into zeros and leave its neighbours as the CPU computes them.
    feats, boxes = _inputs(40, 8, batch=2)
    bad = torch.tensor([[float("nan"), 20.0, 90.0, 90.0], [10.0, 20.0, float("inf"), 90.0],
                        [float("-inf")] * 4, [-3e38, 0.0, 3e38, 50.0]])  # fmt: skip
    boxes[:, 5:9] = bad
    for aligned in (False, True):
        gpu = plugins.multilevel_roi_align_cuda([f.cuda() for f in feats], boxes.cuda(), 7, SCALES, 0, aligned)
        single = plugins.roi_align_cuda(feats[0].cuda(), boxes[0].cuda(), torch.zeros(40, dtype=torch.int32).cuda(),
                                        7, SCALES[0], 2, aligned)  # fmt: skip
        torch.cuda.synchronize()
        assert torch.all(gpu[:, 5:9] == 0) and torch.all(single[5:9] == 0)
        cpu = plugins.multilevel_roi_align([f.numpy() for f in feats], boxes.numpy(), 7, SCALES, 0, aligned,
                                           check_finite=False)  # fmt: skip
        assert_close(gpu, torch.from_numpy(cpu), "float32", what="cuda vs cpu next to non-finite boxes")


def test_cuda_sampling_ratio_limit():
    x = torch.full((1, 1, 1, 1), 2.0, device="cuda")
    box = torch.tensor([[0.0, 0.0, 1.0, 1.0]], device="cuda")
    idx = torch.zeros(1, dtype=torch.int64, device="cuda")
    out = plugins.roi_align_cuda(x, box, idx, 1, 1.0, plugins.MAX_SAMPLING_RATIO, False)
    torch.cuda.synchronize()
    assert out.item() == 2.0  # 2^20 samples of exactly 2.0 (see test_plugin_roi_align)
    with pytest.raises(DeploySdkError, match="sampling_ratio"):
        plugins.roi_align_cuda(x, box, idx, 1, 1.0, 65536, False)
