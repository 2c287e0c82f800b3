"""Single-level RoIAlign of the plugin library (deploy_sdk.plugins.roi_align): its CPU implementation, and the CUDA
kernel too in the tests taking the ``device`` fixture, where there is a GPU.

References: torchvision.ops.roi_align (avg), the ONNX backend node tests, a naive max-mode loop written here, and
a hand-worked 3x3 example.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from compare import ONNX_NODE_TEST_MIN_ATOL, ROI_ALIGN_HAND_WORKED, assert_close
from repo_paths import REPO_ROOT

from deploy_sdk import DeploySdkError, plugins

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")


def _random_boxes(rng, n, height, width, scale):
    """Boxes in input pixels covering the awkward cases: ordinary, out of image, zero-size and inverted."""
    img_h, img_w = height / scale, width / scale
    x1 = rng.uniform(-0.2 * img_w, 1.1 * img_w, n)
    y1 = rng.uniform(-0.2 * img_h, 1.1 * img_h, n)
    boxes = np.stack([x1, y1, x1 + rng.uniform(0, 0.6 * img_w, n), y1 + rng.uniform(0, 0.6 * img_h, n)], 1)
    boxes[0] = [3.0, 4.0, 3.0, 4.0]  # zero size
    boxes[1] = [20.0, 25.0, 5.0, 8.0]  # inverted on both axes
    boxes[2] = [-50.0, -40.0, -20.0, -10.0]  # entirely outside (above-left)
    boxes[3] = [img_w + 10, img_h + 10, img_w + 40, img_h + 30]  # entirely outside (below-right)
    boxes[4] = [0.0, 0.0, img_w, img_h]  # the whole image
    return boxes.astype(np.float32)


def _torchvision(features, boxes, batch, output_size, scale, sampling_ratio, aligned):
    rois = np.concatenate([batch[:, None].astype(np.float32), boxes.astype(np.float32)], 1)
    out = torchvision.ops.roi_align(
        torch.from_numpy(features.astype(np.float32)),
        torch.from_numpy(rois),
        output_size,
        scale,
        sampling_ratio,
        aligned,
    )
    return out.numpy()


CASES = [
    # (N, C, H, W, output_size, spatial_scale)
    (1, 3, 10, 12, (7, 7), 1.0),
    (2, 5, 25, 38, (14, 14), 0.25),
    (3, 2, 17, 9, (5, 3), 0.125),
    (2, 4, 40, 31, (2, 9), 0.5),
]


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_avg_matches_torchvision(case, sampling_ratio, aligned, index_dtype, device):
    n, c, h, w, out_size, scale = case
    rng = np.random.default_rng(hash((case, sampling_ratio, aligned)) % 2**32)
    features = rng.standard_normal((n, c, h, w)).astype(np.float32)
    boxes = _random_boxes(rng, 40, h, w, scale)
    batch = rng.integers(0, n, boxes.shape[0]).astype(index_dtype)
    ours = device.get(
        plugins.roi_align(device.put(features), device.put(boxes), device.put(batch), out_size, scale,
                          sampling_ratio, aligned, "avg")
    )  # fmt: skip
    ref = _torchvision(features, boxes, batch, out_size, scale, sampling_ratio, aligned)
    assert ours.dtype == np.float32
    assert_close(ours, ref, "float32", what=f"roi_align on {device} aligned={aligned} sr={sampling_ratio}")


@pytest.mark.parametrize("aligned", [True, False])
def test_fp16_within_fp16_tolerance(aligned, device):
    rng = np.random.default_rng(7)
    features = rng.uniform(-2, 2, (2, 6, 24, 20)).astype(np.float16)
    boxes = _random_boxes(rng, 30, 24, 20, 0.5)
    batch = rng.integers(0, 2, 30).astype(np.int32)
    x, idx = device.put(features), device.put(batch)
    ours = device.get(plugins.roi_align(x, device.put(boxes), idx, 7, 0.5, 0, aligned))
    assert ours.dtype == np.float16
    # The reference sees the same fp16 values in fp32: only our output rounding (and fp32 math) may differ.
    ref = _torchvision(features, boxes, batch, (7, 7), 0.5, 0, aligned)
    assert_close(ours, ref, "float16", what=f"fp16 roi_align on {device}")
    # fp16 boxes are accepted too (coordinates are converted to fp32 inside).
    half_boxes = boxes.astype(np.float16)
    ours_hb = device.get(plugins.roi_align(x, device.put(half_boxes), idx, 7, 0.5, 0, aligned))
    ref_hb = _torchvision(features, half_boxes.astype(np.float32), batch, (7, 7), 0.5, 0, aligned)
    assert_close(ours_hb, ref_hb, "float16", what="fp16 roi_align with fp16 boxes")


def test_empty_roi_set():
    features = np.ones((2, 3, 8, 8), np.float32)
    out = plugins.roi_align(features, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), (7, 5))
    assert out.shape == (0, 3, 7, 5)


def test_threads_and_index_types_give_identical_results():
    rng = np.random.default_rng(3)
    features = rng.standard_normal((2, 8, 30, 30)).astype(np.float32)
    boxes = _random_boxes(rng, 64, 30, 30, 1.0)
    batch = rng.integers(0, 2, 64)
    one = plugins.roi_align(features, boxes, batch.astype(np.int64), 7, 1.0, 0, True, num_threads=1)
    many = plugins.roi_align(features, boxes, batch.astype(np.int32), 7, 1.0, 0, True, num_threads=3)
    np.testing.assert_array_equal(one, many)


def _naive_roi_align(features, boxes, batch, out_h, out_w, scale, sampling_ratio, aligned, mode):
    """Direct transcription of the op contract, one sample at a time (slow, obviously correct)."""
    import math

    n_rois = boxes.shape[0]
    c, h, w = features.shape[1:]
    out = np.zeros((n_rois, c, out_h, out_w), np.float64)
    offset = 0.5 if aligned else 0.0
    for r in range(n_rois):
        x1, y1, x2, y2 = (float(v) * scale - offset for v in boxes[r])
        rw, rh = x2 - x1, y2 - y1
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / out_h, rw / out_w
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(rh / out_h)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(rw / out_w)
        fmap = features[batch[r]].astype(np.float64)
        for ph in range(out_h):
            for pw in range(out_w):
                values = []
                for iy in range(max(gh, 0)):
                    y = y1 + ph * bh + (iy + 0.5) * bh / gh
                    for ix in range(max(gw, 0)):
                        x = x1 + pw * bw + (ix + 0.5) * bw / gw
                        if y < -1 or y > h or x < -1 or x > w:
                            values.append(np.zeros(c))
                            continue
                        yy, xx = min(max(y, 0.0), h - 1), min(max(x, 0.0), w - 1)
                        y0, x0 = int(yy), int(xx)
                        y1_, x1_ = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
                        ly, lx = yy - y0, xx - x0
                        values.append(
                            (1 - ly) * (1 - lx) * fmap[:, y0, x0] + (1 - ly) * lx * fmap[:, y0, x1_]
                            + ly * (1 - lx) * fmap[:, y1_, x0] + ly * lx * fmap[:, y1_, x1_]
                        )  # fmt: skip
                if values:
                    stacked = np.stack(values)
                    out[r, :, ph, pw] = stacked.max(0) if mode == "max" else stacked.mean(0)
    return out


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2, 3])
def test_max_mode_matches_naive_reference(sampling_ratio, aligned):
    rng = np.random.default_rng(11 + sampling_ratio)
    features = rng.standard_normal((2, 3, 12, 15)).astype(np.float32)
    boxes = _random_boxes(rng, 12, 12, 15, 0.5)
    batch = rng.integers(0, 2, 12)
    ours = plugins.roi_align(features, boxes, batch, (4, 3), 0.5, sampling_ratio, aligned, "max")
    ref = _naive_roi_align(features, boxes, batch, 4, 3, 0.5, sampling_ratio, aligned, "max")
    assert_close(ours, ref, "float32", what="max mode vs naive")
    # The same naive loop in avg mode agrees with torchvision, which validates the reference itself.
    ref_avg = _naive_roi_align(features, boxes, batch, 4, 3, 0.5, sampling_ratio, aligned, "avg")
    assert_close(_torchvision(features, boxes, batch, (4, 3), 0.5, sampling_ratio, aligned), ref_avg, "float32")


def test_max_mode_hand_worked_example():
    # A 4x4 map f(y, x) = 4y + x, the RoI (0,0)-(3,3), 3x3 output, sampling ratio 2, legacy coordinates: each bin is
    # 1x1 pixel and holds 4 samples at offsets 0.25 and 0.75. f is linear, so bilinear interpolation is exact and
    # the maximum of the 4 interpolated samples is f(ph + 0.75, pw + 0.75) = 4 * (ph + 0.75) + pw + 0.75.
    features = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    box = np.array([[0.0, 0.0, 3.0, 3.0]], np.float32)
    got = plugins.roi_align(features, box, np.zeros(1, np.int64), 3, 1.0, 2, False, "max")[0, 0]
    expected = np.array([[3.75, 4.75, 5.75], [7.75, 8.75, 9.75], [11.75, 12.75, 13.75]], np.float32)
    assert_close(got, expected, tol=ROI_ALIGN_HAND_WORKED, what="hand-worked max bin")
    # avg of the same 4 samples is the bin centre: f(ph + 0.5, pw + 0.5).
    got_avg = plugins.roi_align(features, box, np.zeros(1, np.int64), 3, 1.0, 2, False, "avg")[0, 0]
    assert_close(got_avg, expected - 1.25, tol=ROI_ALIGN_HAND_WORKED, what="hand-worked avg bin")


def test_max_mode_differs_from_onnx_runtime_roialign_max():
    # Documents why ONNX RoiAlign(mode="max") must never stand in for our op (onnxruntime issue 6146): it takes the
    # max of the weighted corner terms, not of the interpolated samples. Bin (0, 0) of the hand example: the
    # sample (0.75, 0.75) has corner terms 0*.0625, 1*.1875, 4*.1875, 5*.5625 -> max 2.8125, not 3.75.
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    node = helper.make_node(
        "RoiAlign", ["X", "rois", "idx"], ["Y"], mode="max", output_height=3, output_width=3, sampling_ratio=2,
        spatial_scale=1.0, coordinate_transformation_mode="output_half_pixel",
    )  # fmt: skip
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1, 4, 4]),
         helper.make_tensor_value_info("rois", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("idx", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 1, 3, 3])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    features = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    box = np.array([[0.0, 0.0, 3.0, 3.0]], np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ort_max = sess.run(None, {"X": features, "rois": box, "idx": np.zeros(1, np.int64)})[0][0, 0]
    ours = plugins.roi_align(features, box, np.zeros(1, np.int64), 3, 1.0, 2, False, "max")[0, 0]
    assert ort_max[0, 0] == pytest.approx(2.8125)
    assert ours[0, 0] == pytest.approx(3.75)


@functools.lru_cache(maxsize=1)
def _onnx_roialign_cases():
    try:
        from onnx.backend.test.case.node import collect_testcases
    except ImportError:  # pragma: no cover - older onnx
        collect_testcases = None
    if collect_testcases is not None:
        # Same generator load_model_tests(kind="node") uses, restricted to RoiAlign (the full set takes ~30 s).
        cases = collect_testcases("RoiAlign")
    else:  # pragma: no cover
        from onnx.backend.test.loader import load_model_tests

        cases = load_model_tests(kind="node")
    return {c.name: c for c in cases if c.name in ("test_roialign_aligned_false", "test_roialign_aligned_true")}


@pytest.mark.slow  # generating onnx's node test cases takes ~20 s of CPU, once per session
@pytest.mark.parametrize("name", ["test_roialign_aligned_false", "test_roialign_aligned_true"])
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_onnx_backend_node_tests(name):
    pytest.importorskip("onnx")
    cases = _onnx_roialign_cases()
    assert name in cases, f"onnx no longer generates {name}; found {sorted(cases)}"
    case = cases[name]
    node = case.model.graph.node[0]
    attrs = {a.name: a for a in node.attribute}
    transform = attrs["coordinate_transformation_mode"].s.decode() if "coordinate_transformation_mode" in attrs else ""
    transform = transform or "half_pixel"  # the opset-16 default
    mode = attrs["mode"].s.decode() if "mode" in attrs else "avg"
    (x, rois, idx), (expected,) = case.data_sets[0]
    ours = plugins.roi_align(
        x, rois, idx, (attrs["output_height"].i, attrs["output_width"].i), attrs["spatial_scale"].f,
        attrs["sampling_ratio"].i, transform == "half_pixel", mode,
    )  # fmt: skip
    assert_close(ours, expected, "float32", rtol=case.rtol, atol=max(case.atol, ONNX_NODE_TEST_MIN_ATOL), what=name)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mode="median"), "mode"),
        (dict(output_size=(0, 7)), "output_height and output_width must be positive"),
        (dict(sampling_ratio=-1), "sampling_ratio"),
        (dict(batch_indices=np.array([0, 5])), "batch_indices must lie in"),
        (dict(rois=np.zeros((2, 5), np.float32)), "rois must be"),
        (dict(features=np.zeros((1, 2, 8, 8), np.int32)), "features must be float32 or float16"),
        (dict(spatial_scale=0.0), "spatial scale"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    args = dict(
        features=np.zeros((1, 2, 8, 8), np.float32), rois=np.zeros((2, 4), np.float32),
        batch_indices=np.zeros(2, np.int64), output_size=7,
    )  # fmt: skip
    args.update(kwargs)
    with pytest.raises(DeploySdkError, match=message):
        plugins.roi_align(**args)


# ------------------------------------------------------------------ non-finite boxes, grid limits, argument checks

IMPLEMENTATIONS = ["fast", "kernel"]  # the CPU fast path, and poolOutputElement() (one CUDA thread's code) on CPU

#: Boxes with a NaN or infinite coordinate in every position, mixed among finite boxes.
NONFINITE_BOXES = [
    [np.nan, 2.0, 9.0, 9.0],  # a NaN x1
    [1.0, np.nan, 9.0, 9.0],
    [1.0, 2.0, np.nan, 9.0],  # legacy mode clamps the size with fmaxf, which would hide this NaN
    [1.0, 2.0, 9.0, np.nan],
    [-np.inf, 2.0, 9.0, 9.0],
    [1.0, 2.0, np.inf, 9.0],
    [np.inf, np.inf, np.inf, np.inf],
    [np.nan, np.nan, np.nan, np.nan],
    [-3e38, 0.0, 3e38, 5.0],  # finite coordinates whose width overflows fp32
]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_nonfinite_boxes_pool_to_zeros_in_the_library(implementation, aligned, mode):
    # check_finite=False hands the boxes to the C library as they are: the math header must make them zeros on its
    # own (the old code cast a NaN sample coordinate to a pixel index and crashed with SIGSEGV).
    rng = np.random.default_rng(31)
    features = rng.uniform(0.5, 1.5, (2, 3, 16, 16)).astype(np.float32)
    finite = _random_boxes(rng, 12, 16, 16, 1.0)
    bad = np.array(NONFINITE_BOXES, np.float32)
    boxes = np.concatenate([finite[:5], bad, finite[5:]])
    is_bad = np.zeros(len(boxes), bool)
    is_bad[5 : 5 + len(bad)] = True
    batch = rng.integers(0, 2, len(boxes))
    out = plugins.roi_align(
        features, boxes, batch, (7, 5), 1.0, 2, aligned, mode, implementation=implementation, check_finite=False
    )
    assert np.all(out[is_bad] == 0), "a box with a non-finite coordinate must pool to exactly 0"
    ref = _naive_roi_align(features, boxes[~is_bad], batch[~is_bad], 7, 5, 1.0, 2, aligned, mode)
    assert_close(out[~is_bad], ref, "float32", what="finite boxes next to non-finite ones")


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_nonfinite_fp16_boxes_and_adaptive_sampling_pool_to_zeros(implementation):
    features = np.ones((1, 2, 16, 16), np.float16)
    boxes = np.array([[np.nan, 2, 9, 9], [1, 2, np.inf, 9], [1, 2, 9, 9]], np.float16)
    out = plugins.roi_align(
        features, boxes, [0, 0, 0], 7, 1.0, 0, False, implementation=implementation, check_finite=False
    )
    assert np.all(out[:2] == 0)
    np.testing.assert_array_equal(out[2], np.ones((2, 7, 7), np.float16))  # a constant map pools to itself


def test_nonfinite_boxes_are_refused_by_default():
    features = np.zeros((1, 1, 16, 16), np.float32)
    with pytest.raises(DeploySdkError, match=r"rois has a non-finite coordinate.*box 1 .*check_finite=False"):
        plugins.roi_align(features, [[0, 0, 4, 4], [np.nan, 2, 9, 9]], [0, 0], 7, 1.0, 2, True)


def _constant_map_box():
    # A 1x1 map of 2.0 and the box (0,0)-(1,1), legacy coordinates: every sample lies in (0, 1), clamps onto the one
    # pixel with weight exactly 1, so every sample is exactly 2.0 and so is their average, for any sample count up
    # to 2^24 (sums of 2.0 stay exact in fp32 up to 2^25).
    return np.full((1, 1, 1, 1), 2.0, np.float32), np.array([[0.0, 0.0, 1.0, 1.0]], np.float32)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("ratio", [65536, plugins.MAX_SAMPLING_RATIO + 1, 2**32 + 2])
def test_sampling_ratio_above_the_limit_is_refused(implementation, ratio):
    # 65536^2 wrapped gridH * gridW to 0 in int32: SIGSEGV on the fast path, 0.0 instead of 2.0 on the kernel path.
    # 2^32 + 2 would silently become 2 through ctypes' int32 argument.
    features, box = _constant_map_box()
    limit = plugins.MAX_SAMPLING_RATIO
    with pytest.raises(DeploySdkError, match=f"sampling_ratio must be 0 \\(adaptive\\) to {limit}"):
        plugins.roi_align(features, box, [0], 1, 1.0, ratio, False, implementation=implementation)


@pytest.mark.parametrize("implementation", ["fast", "kernel"])
def test_sampling_ratio_above_the_limit_is_refused_by_the_c_abi(implementation):
    # The library checks on its own too (the TensorRT plugin shares this check): call the C entry directly, with the
    # MrdRoiAlignArgs struct filled by hand rather than by the Python entries (which refuse the value first).
    import ctypes

    features, box = _constant_map_box()
    out = np.full((1, 1, 1, 1), -1.0, np.float32)
    lib = plugins._library(cuda=False)
    index = np.zeros(1, np.int64)
    args = plugins.RoiAlignArgs()
    args.num_levels, args.heights[0], args.widths[0], args.spatial_scales[0] = 1, 1, 1, 1.0
    args.features[0] = features.ctypes.data
    args.batch, args.channels, args.rois, args.num_rois = 1, 1, box.ctypes.data, 1
    args.batch_indices, args.index_type = index.ctypes.data, 64
    args.out_h, args.out_w, args.sampling_ratio = 1, 1, 65536
    args.canonical_scale, args.canonical_level = 224.0, 4
    args.implementation = {"fast": 0, "kernel": 1}[implementation]  # MRD_IMPLEMENTATION_FAST / _KERNEL
    args.num_threads, args.out = 1, out.ctypes.data
    status = lib.mrd_roi_align_cpu(ctypes.byref(args))
    assert status == 100000  # MRD_STATUS_INVALID_ARGUMENT
    assert "sampling_ratio" in lib.mrd_last_error().decode()
    assert out[0, 0, 0, 0] == -1.0, "nothing may be written on refusal"


def test_c_abi_refuses_an_unknown_implementation_and_the_fast_path_on_cuda():
    import ctypes

    features, box = _constant_map_box()
    out = np.full((1, 1, 1, 1), -1.0, np.float32)
    lib = plugins._library(cuda=False)
    args = plugins._call_args(
        0, [features.ctypes.data], [(1, 1)], [1.0], 1, 1, box.ctypes.data, 0, None, 0, 1, 1, (1, 1), 0, False,
        "avg", (224.0, 4), out.ctypes.data, "fast",
    )  # fmt: skip
    assert lib.mrd_roi_align_cpu(ctypes.byref(args)) == 0 and out[0, 0, 0, 0] == 2.0  # the constant map's value
    out[...] = -1.0
    args.implementation = 2
    assert lib.mrd_roi_align_cpu(ctypes.byref(args)) == 100000
    assert "implementation must be 0 (fast CPU path) or 1" in lib.mrd_last_error().decode()
    args.implementation = 0
    assert lib.mrd_roi_align_cuda(ctypes.byref(args)) == 100000  # whether or not this build has CUDA
    assert "implementation must be MRD_IMPLEMENTATION_KERNEL" in lib.mrd_last_error().decode()
    assert lib.mrd_roi_align_cpu(None) == 100000 and "args is NULL" in lib.mrd_last_error().decode()
    assert out[0, 0, 0, 0] == -1.0, "nothing may be written on refusal"
    with pytest.raises(DeploySdkError, match="implementation must be 'fast' or 'kernel', got 'gpu'"):
        plugins.roi_align(features, box, [0], 1, implementation="gpu")


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_sampling_ratio_at_the_limit_averages_a_constant_map_exactly(implementation):
    features, box = _constant_map_box()
    ratio = plugins.MAX_SAMPLING_RATIO  # 2^20 samples in the one bin
    for mode in ("avg", "max"):
        out = plugins.roi_align(features, box, [0], 1, 1.0, ratio, False, mode, implementation=implementation)
        assert out[0, 0, 0, 0] == 2.0


def test_max_sampling_ratio_is_the_math_headers_limit():
    import re

    header = (REPO_ROOT / "plugins" / "roi_align" / "roiAlignMath.h").read_text()
    match = re.search(r"constexpr int32_t kMaxSamplingRatio = (\d+);", header)
    assert match, "kMaxSamplingRatio not found in roiAlignMath.h"
    assert int(match.group(1)) == plugins.MAX_SAMPLING_RATIO


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("aligned", [True, False])
def test_adaptive_grid_is_capped_at_the_limit(implementation, aligned):
    # Adaptive sampling asks for ceil(roi_size / out_size) samples per axis: 3000 across one 1-wide bin, 2e9 for the
    # second box (whose 2e9 x 2 grid the old code sized its tap buffers from), 2e30 for the third (a float beyond
    # int32: the old cast was undefined). The cap is MAX_SAMPLING_RATIO per axis; the naive reference applies the
    # same cap to the same formula.
    rng = np.random.default_rng(8)
    features = rng.standard_normal((1, 2, 9, 12)).astype(np.float32)
    boxes = np.array([[-1000.0, 2.0, 2000.0, 3.0], [-1e9, 1.0, 1e9, 3.0], [-1e30, -1e30, 1e30, 1e30]], np.float32)
    out = plugins.roi_align(features, boxes, [0, 0, 0], (1, 1), 1.0, 0, aligned, implementation=implementation)
    cap = plugins.MAX_SAMPLING_RATIO
    ref = _naive_roi_align_capped(features, boxes[:2], np.zeros(2, int), 1, 1, 1.0, aligned, cap)
    assert_close(out[:2], ref, "float32", what="adaptive grid capped at MAX_SAMPLING_RATIO")
    # 1024 x 1024 samples spread over 2e30 pixels: none lands within [-1, 9] x [-1, 12], so the bin is 0.
    assert np.all(out[2] == 0)
    # The uncapped grid (3000 samples) gives a different average: the cap is what the library applied.
    uncapped = _naive_roi_align(features, boxes[:1], np.zeros(1, int), 1, 1, 1.0, 0, aligned, "avg")
    assert np.abs(uncapped - ref[:1]).max() > 1e-4


def _naive_roi_align_capped(features, boxes, batch, out_h, out_w, scale, aligned, cap):
    """Adaptive avg RoIAlign with the per-axis grid capped at ``cap``, vectorised over the samples (float64)."""
    import math

    c, h, w = features.shape[1:]
    out = np.zeros((len(boxes), c, out_h, out_w))
    offset = 0.5 if aligned else 0.0
    for r, box in enumerate(boxes):
        x1, y1, x2, y2 = (float(v) * scale - offset for v in box)
        rw, rh = x2 - x1, y2 - y1
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        gh, gw = min(math.ceil(rh / out_h), cap), min(math.ceil(rw / out_w), cap)
        fmap = features[batch[r]].astype(np.float64)
        for ph in range(out_h):
            for pw in range(out_w):
                ys = y1 + ph * rh / out_h + (np.arange(gh) + 0.5) * (rh / out_h) / gh
                xs = x1 + pw * rw / out_w + (np.arange(gw) + 0.5) * (rw / out_w) / gw
                yy, xx = np.meshgrid(ys, xs, indexing="ij")
                inside = (yy >= -1) & (yy <= h) & (xx >= -1) & (xx <= w)
                yc, xc = np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)
                y0, x0 = np.floor(yc).astype(int), np.floor(xc).astype(int)
                y1_, x1_ = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
                ly, lx = yc - y0, xc - x0
                vals = (
                    (1 - ly) * (1 - lx) * fmap[:, y0, x0] + (1 - ly) * lx * fmap[:, y0, x1_]
                    + ly * (1 - lx) * fmap[:, y1_, x0] + ly * lx * fmap[:, y1_, x1_]
                )  # fmt: skip
                out[r, :, ph, pw] = np.where(inside, vals, 0.0).sum(axis=(1, 2)) / (gh * gw)
    return out


@pytest.mark.parametrize("mode", ["avg", "max"])
def test_large_sampling_grids_take_the_separable_path_with_the_same_results(mode):
    # 7x7 bins x 128x128 samples = 802816 samples per RoI: past the fast path's precomputed-tap budget (2^18), so it
    # pools from the axis taps directly. Checked against torchvision (avg) and the kernel's code path (bit for bit:
    # same weights, same order).
    rng = np.random.default_rng(12)
    features = rng.standard_normal((1, 5, 14, 13)).astype(np.float32)
    boxes = _random_boxes(rng, 6, 14, 13, 1.0)
    batch = np.zeros(6, np.int64)
    fast = plugins.roi_align(features, boxes, batch, 7, 1.0, 128, True, mode, num_threads=2)
    kernel = plugins.roi_align(features, boxes, batch, 7, 1.0, 128, True, mode, implementation="kernel")
    np.testing.assert_array_equal(fast, kernel)
    if mode == "avg":
        assert_close(fast, _torchvision(features, boxes, batch, (7, 7), 1.0, 128, True), "float32")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(output_size=(7, -1)), r"output_size must be a positive integer.*got \(7, -1\)"),
        (dict(output_size=(7,)), "output_size must be an int or"),
        (dict(output_size=7.5), "output_size must be"),
        (dict(output_size=(2**32 + 7, 1)), "output_size must be"),
        (dict(spatial_scale=float("nan")), "spatial_scale"),
        (dict(spatial_scale=float("inf")), "spatial_scale"),
        (dict(spatial_scale=-0.25), "spatial_scale"),
        (dict(spatial_scale=1e-50), "spatial_scale"),  # 0 in float32
        (dict(spatial_scale=1e39), "spatial_scale"),  # inf in float32
        (dict(sampling_ratio=-1), "sampling_ratio"),
        (dict(sampling_ratio=2.5), "sampling_ratio must be an integer"),
    ],
)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_bad_arguments_are_named(kwargs, message, implementation):
    args = dict(
        features=np.zeros((1, 2, 8, 8), np.float32), rois=np.zeros((2, 4), np.float32),
        batch_indices=np.zeros(2, np.int64), output_size=7, implementation=implementation,
    )  # fmt: skip
    args.update(kwargs)
    with pytest.raises(DeploySdkError, match=message):
        plugins.roi_align(**args)


def test_math_header_alone_is_safe_on_nonfinite_and_huge_geometry(tmp_path):
    """Compile a C++ check of roiAlignMath.h under AddressSanitizer and UndefinedBehaviorSanitizer (float-cast
    overflow included, which catches a NaN or out-of-range float cast to an int): every implementation inherits
    these guarantees from the header itself, whatever its callers check."""
    import os
    import shutil
    import subprocess

    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler on this machine")
    source = tmp_path / "math_check.cpp"
    source.write_text(_MATH_CHECK_SOURCE)
    include = REPO_ROOT / "plugins" / "roi_align"
    exe = tmp_path / "math_check"
    base = [cxx, "-std=c++17", "-O1", "-g", "-I", str(include), str(source), "-o", str(exe)]
    sanitizers = ["-fsanitize=address,undefined,float-cast-overflow", "-fno-sanitize-recover=all"]
    build = subprocess.run(base + sanitizers, capture_output=True, text=True)
    if build.returncode != 0:  # a toolchain without the sanitizer runtimes: the checks still run
        build = subprocess.run(base, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    # LeakSanitizer cannot run under ptrace (some CI sandboxes); leaks are not what this checks.
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")
    result = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0 and "ALL PASSED" in result.stdout, result.stdout + result.stderr


_MATH_CHECK_SOURCE = r"""
#include "roiAlignMath.h"

#include <cmath>
#include <cstdio>
#include <limits>
#include <vector>

using namespace mrd;

static int failures = 0;
#define CHECK(cond)                                                                                                \
    do                                                                                                             \
    {                                                                                                              \
        if (!(cond))                                                                                               \
        {                                                                                                          \
            std::printf("FAIL line %d: %s\n", __LINE__, #cond);                                                     \
            ++failures;                                                                                            \
        }                                                                                                          \
    } while (0)

int main()
{
    float const nan = std::numeric_limits<float>::quiet_NaN();
    float const inf = std::numeric_limits<float>::infinity();

    // Bilinear taps of a non-finite coordinate: outside (zero weights), indices inside the axis.
    for (float v : {nan, inf, -inf, -nan})
    {
        AxisTaps const t = axisTaps(v, 16);
        CHECK(t.wLow == 0.0f && t.wHigh == 0.0f);
        CHECK(t.low >= 0 && t.low < 16 && t.high >= 0 && t.high < 16);
    }

    // A non-finite box (any coordinate), or one whose size overflows fp32: empty geometry, finite fields.
    float const coords[4] = {1.0f, 2.0f, 9.0f, 9.0f};
    for (int k = 0; k < 4; ++k)
    {
        for (float bad : {nan, inf, -inf})
        {
            float c[4] = {coords[0], coords[1], coords[2], coords[3]};
            c[k] = bad;
            Box const box{c[0], c[1], c[2], c[3]};
            for (bool aligned : {false, true})
            {
                for (int32_t sr : {0, 2})
                {
                    RoiGeometry const g = roiGeometry(box, 1.0f, aligned, 7, 7, sr);
                    CHECK(samplesPerBin(g) == 0);
                    CHECK(std::isfinite(g.startX) && std::isfinite(g.startY));
                    CHECK(std::isfinite(g.binH) && std::isfinite(g.binW));
                }
            }
            CHECK(levelIndexOfBox(box, 224.0f, 4, 2, 4) == 0);
        }
    }
    CHECK(samplesPerBin(roiGeometry(Box{-3e38f, 0.0f, 3e38f, 5.0f}, 1.0f, false, 7, 7, 2)) == 0);
    CHECK(samplesPerBin(roiGeometry(Box{0.0f, 0.0f, 3e38f, 5.0f}, 4.0f, false, 7, 7, 2)) == 0); // inf once scaled

    // Grid sizes: the explicit ratio and the adaptive count are capped at kMaxSamplingRatio.
    RoiGeometry g = roiGeometry(Box{0.0f, 0.0f, 4.0f, 4.0f}, 1.0f, false, 1, 1, 65536);
    CHECK(g.gridH == kMaxSamplingRatio && g.gridW == kMaxSamplingRatio);
    g = roiGeometry(Box{-1e30f, 0.0f, 1e30f, 3.0f}, 1.0f, true, 1, 1, 0);
    CHECK(g.gridW == kMaxSamplingRatio && g.gridH == 3);
    g = roiGeometry(Box{0.0f, 0.0f, 3000.0f, 2.0f}, 1.0f, false, 1, 1, 0);
    CHECK(g.gridW == kMaxSamplingRatio && g.gridH == 2);
    g = roiGeometry(Box{0.0f, 0.0f, 700.0f, 14.0f}, 1.0f, false, 7, 7, 0);
    CHECK(g.gridW == 100 && g.gridH == 2); // below the cap: ceil(roi / out) as before

    // A bin whose geometry is not finite (built by hand, past roiGeometry): zero, no out-of-bounds read.
    std::vector<float> plane(16, 1.0f); // 4x4; ASan flags any read outside
    RoiGeometry const bad{nan, 0.0f, 1.0f, 1.0f, 2, 2};
    CHECK(poolBin(plane.data(), 4, 4, bad, 0, 0, PoolMode::kAvg) == 0.0f);
    RoiGeometry const bad2{0.0f, inf, 1.0f, nan, 2, 2};
    CHECK(poolBin(plane.data(), 4, 4, bad2, 1, 1, PoolMode::kMax) == 0.0f);

    // One CUDA thread's whole computation on a non-finite box, both levels of a two-level op: 0.
    std::vector<float> p2(2 * 8 * 8, 1.0f), p3(2 * 4 * 4, 1.0f); // [B=1, C=2, H, W]
    FeatureLevels<float> levels{};
    levels.data[0] = p2.data();
    levels.data[1] = p3.data();
    levels.height[0] = levels.width[0] = 8;
    levels.height[1] = levels.width[1] = 4;
    levels.scale[0] = 0.25f;
    levels.scale[1] = 0.125f;
    levels.numLevels = 2;
    levels.firstLevel = 2;
    float const rois[12] = {nan, 2.0f, 9.0f, 9.0f, 1.0f, 2.0f, inf, 9.0f, 4.0f, 4.0f, 20.0f, 20.0f};
    RoiSource const src{rois, false, nullptr, false, 3, 3};
    PoolParams const params{2, 1, 3, 3, 0, false, PoolMode::kAvg, 224.0f, 4};
    for (int64_t i = 0; i < 3 * 2 * 3 * 3; ++i)
    {
        float const v = poolOutputElement(levels, src, params, i);
        CHECK(i < 2 * 2 * 3 * 3 ? v == 0.0f : std::fabs(v - 1.0f) < 1e-6f);
    }

    std::printf(failures == 0 ? "ALL PASSED\n" : "%d FAILED\n", failures);
    return failures == 0 ? 0 : 1;
}
"""
