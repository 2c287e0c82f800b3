"""Single-level RoIAlign of the plugin library's CPU implementation (deploy_sdk.plugins.roi_align).

References: torchvision.ops.roi_align (avg), the ONNX backend node tests, a naive max-mode loop written here, and
a hand-worked 3x3 example.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from compare import assert_close
from deploy_sdk import DeploySdkError
from deploy_sdk import plugins

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
        torch.from_numpy(features.astype(np.float32)), torch.from_numpy(rois), output_size, scale, sampling_ratio,
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
def test_avg_matches_torchvision(case, sampling_ratio, aligned):
    n, c, h, w, out_size, scale = case
    rng = np.random.default_rng(hash((case, sampling_ratio, aligned)) % 2**32)
    features = rng.standard_normal((n, c, h, w)).astype(np.float32)
    boxes = _random_boxes(rng, 40, h, w, scale)
    batch = rng.integers(0, n, boxes.shape[0])
    ours = plugins.roi_align(features, boxes, batch, out_size, scale, sampling_ratio, aligned, "avg")
    ref = _torchvision(features, boxes, batch, out_size, scale, sampling_ratio, aligned)
    assert ours.dtype == np.float32
    assert_close(ours, ref, "float32", what=f"roi_align aligned={aligned} sr={sampling_ratio}")


@pytest.mark.parametrize("aligned", [True, False])
def test_fp16_within_fp16_tolerance(aligned):
    rng = np.random.default_rng(7)
    features = rng.uniform(-2, 2, (2, 6, 24, 20)).astype(np.float16)
    boxes = _random_boxes(rng, 30, 24, 20, 0.5)
    batch = rng.integers(0, 2, 30).astype(np.int32)
    ours = plugins.roi_align(features, boxes, batch, 7, 0.5, 0, aligned)
    assert ours.dtype == np.float16
    # The reference sees the same fp16 values in fp32: only our output rounding (and fp32 math) may differ.
    ref = _torchvision(features, boxes, batch, (7, 7), 0.5, 0, aligned)
    assert_close(ours, ref, "float16", what="fp16 roi_align")
    # fp16 boxes are accepted too (coordinates are converted to fp32 inside).
    half_boxes = boxes.astype(np.float16)
    ours_hb = plugins.roi_align(features, half_boxes, batch, 7, 0.5, 0, aligned)
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
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    # avg of the same 4 samples is the bin centre: f(ph + 0.5, pw + 0.5).
    got_avg = plugins.roi_align(features, box, np.zeros(1, np.int64), 3, 1.0, 2, False, "avg")[0, 0]
    np.testing.assert_allclose(got_avg, expected - 1.25, rtol=0, atol=1e-6)


def test_max_mode_differs_from_onnx_runtime_roialign_max():
    # Documents why ONNX RoiAlign(mode="max") must never stand in for our op (onnxruntime issue 6146): it takes the
    # max of the weighted corner terms, not of the interpolated samples. Bin (0, 0) of the hand example: the
    # sample (0.75, 0.75) has corner terms 0*.0625, 1*.1875, 4*.1875, 5*.5625 -> max 2.8125, not 3.75.
    onnx = pytest.importorskip("onnx")
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
    assert_close(ours, expected, "float32", rtol=case.rtol, atol=max(case.atol, 1e-5), what=name)


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
