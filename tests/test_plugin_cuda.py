"""The plugin library's CUDA kernel (through its C ABI, on torch CUDA tensors): against the CPU implementation and
torchvision's CUDA roi_align, fp32 and fp16, plus timing against torchvision's MultiScaleRoIAlign with CUDA events.

Skips without a GPU. On a GPU machine, run with timings printed:
    .venv/bin/python -m pytest tests/test_plugin_cuda.py -q -s
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
from compare import assert_close

from deploy_sdk import DeploySdkError, plugins

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_single_level_cuda_matches_torchvision_cuda(dtype, aligned, sampling_ratio, index_dtype):
    feats, boxes = _inputs(200, 8, batch=2, dtype=dtype)
    x = feats[1].cuda()
    rois = boxes.reshape(-1, 4).cuda()
    idx = torch.arange(2).repeat_interleave(boxes.shape[1]).cuda()
    ours = plugins.roi_align_cuda(x, rois, idx.to(index_dtype), (7, 7), 1 / 8, sampling_ratio, aligned)
    ref = torchvision.ops.roi_align(
        x.float(), torch.cat([idx[:, None].float(), rois], 1), (7, 7), 1 / 8, sampling_ratio, aligned
    )
    torch.cuda.synchronize()
    kind = "float32" if dtype == torch.float32 else "float16"
    assert ours.dtype == dtype
    assert_close(ours, ref, kind, what=f"roi_align_cuda {kind}")


def _time_cuda(fn, repeats=20):
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


@pytest.mark.slow
@pytest.mark.parametrize("num_rois, out", [(1000, 7), (100, 14)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_timing_against_multiscale_roi_align(num_rois, out, dtype, capsys):
    feats, boxes = _inputs(num_rois, 256, dtype=dtype)
    feats = [f.cuda() for f in feats]
    boxes = boxes.cuda()
    names = [f"p{i}" for i in range(4)]
    pooler = torchvision.ops.MultiScaleRoIAlign(names, out, 2)
    tv_feats = OrderedDict(zip(names, feats))

    def ours():
        return plugins.multilevel_roi_align_cuda(feats, boxes, out, SCALES, 2, False)

    # torchvision's roi_align wants boxes of the features' dtype (fp16 boxes round coordinates past 1024 px to
    # whole pixels), so the fp16 workload is checked against torchvision in fp32 on the same feature values and
    # timed with fp16 boxes.
    tv_boxes = [boxes[0].to(dtype)]

    def theirs():
        with torch.inference_mode():
            return pooler(tv_feats, tv_boxes, [IMAGE_HW])

    kind = "float32" if dtype == torch.float32 else "float16"
    with torch.inference_mode():
        reference = pooler(OrderedDict((n, f.float()) for n, f in tv_feats.items()), [boxes[0]], [IMAGE_HW])
    assert_close(ours()[0].float(), reference, kind, what="timed workload")
    t_ours, t_tv = _time_cuda(ours), _time_cuda(theirs)
    # Bytes that must move at least: the output plus, per bin sample, 4 taps (an upper bound on useful reads is
    # hard; report the output write + one read of every gathered tap as the traffic figure).
    elem = 2 if dtype == torch.float16 else 4
    out_bytes = num_rois * 256 * out * out * elem
    tap_bytes = num_rois * 256 * out * out * 4 * 4 * elem  # sampling 2x2 = 4 samples, 4 taps each
    props = torch.cuda.get_device_properties(0)
    peak = getattr(props, "memory_bandwidth", None)
    bw = (out_bytes + tap_bytes) / (t_ours * 1e-3) / 1e9
    with capsys.disabled():
        print(
            f"\n[cuda] {num_rois} RoIs x 256 x {out}x{out} {kind}: ours {t_ours:.3f} ms, torchvision "
            f"{t_tv:.3f} ms, ratio {t_tv / t_ours:.2f}x, effective {bw:.0f} GB/s"
            + (f" ({100 * bw / (peak / 1e9):.0f}% of peak)" if peak else "")
        )


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
