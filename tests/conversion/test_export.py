"""Exported deployment graphs in ONNX Runtime against torchvision, always at a shape and batch other than traced."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from compare import FP32_WHOLE_MODEL, FP32_WHOLE_MODEL_OUTLIER, FP32_WHOLE_MODEL_SCORES, RPN_TOPK_TIE, assert_close
from tiny_maskrcnn import build_tiny_maskrcnn, match_rows, random_canvas, torchvision_pipeline

from deploy_sdk.cli import main
from deploy_sdk.conversion.checkpoint import load_torchvision_model
from deploy_sdk.conversion.export import export_onnx
from deploy_sdk.conversion.roi_align_function import ROI_ALIGN_DOMAIN, ROI_ALIGN_OP, RoIAlignConfig
from deploy_sdk.errors import DeploySdkError, UnsupportedModelError
from deploy_sdk.model_metadata import ModelMetadata

ort = pytest.importorskip("onnxruntime")


def _session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _run(session, images, image_sizes):
    names = [o.name for o in session.get_outputs()]
    values = session.run(None, {"images": images.numpy(), "image_sizes": image_sizes.numpy()})
    return dict(zip(names, values))


def _assert_rpn_and_pooling_match(out, ref, tol, min_fraction=1.0, outlier=None, tie_tol=None):
    """Proposals and pooled box features of the graph vs torchvision, rows paired as sets.

    ``min_fraction`` of the elements must be within ``tol`` and all within ``outlier`` (atol in units of the
    tensor's largest magnitude):
    through 50 random-weight ResNet layers, ONNX Runtime's and PyTorch's convolutions differ in the last float
    bits, and box decoding (exp of a delta times the anchor size) magnifies that on a rare RoI.

    ``tie_tol``: the post-NMS top-k cut is ill-conditioned where the objectness scores at the cut are (nearly)
    equal: the last float bit, which differs between CPU kernels (AVX2 vs AVX-512), decides which of two tied
    boxes is kept. With ``tie_tol``, a graph proposal may instead be one that torchvision ranks just past the
    cut, and a torchvision proposal may be missing, but only where torchvision's score is within ``tie_tol``
    of its score at the cut (at most ``_MAX_SWAPS_AT_CUT`` per image). Everything else is compared as above.
    """
    for b, expected in enumerate(ref["proposals"]):
        n = int(out["num_proposals"][b])
        assert n == len(expected), f"image {b}: {n} proposals, torchvision has {len(expected)}"
        expected = expected.numpy()
        actual = out["proposals"][b, :n]
        wanted_features = ref["box_features"][b].numpy()
        if tie_tol is None:
            perm = match_rows(actual, expected)
            actual, actual_features = actual[perm], out["box_features"][b, :n][perm]
        else:
            ranked_boxes, ranked_scores = (t.numpy() for t in ref["ranked_proposals"][b])
            np.testing.assert_array_equal(ranked_boxes[:n], expected)  # the same RPN, cut later
            scale = max(1.0, float(np.abs(expected).max()))
            partner = _match_to_candidates(actual, ranked_boxes)
            cut_score = float(ranked_scores[n - 1])
            beyond = np.flatnonzero(partner >= n)  # graph rows torchvision ranks past the cut
            missing = np.setdiff1d(np.arange(n), partner)  # torchvision rows the graph does not have
            assert len(beyond) == len(missing) <= _MAX_SWAPS_AT_CUT, (
                f"image {b}: {len(missing)} of torchvision's proposals are missing from the graph's"
            )
            for what, rows in (("kept by the graph", partner[beyond]), ("dropped by the graph", missing)):
                gaps = np.abs(ranked_scores[rows] - cut_score)
                assert (gaps <= tie_tol).all(), (
                    f"image {b}: proposals {what} but not by torchvision are not tied at the cut "
                    f"(objectness {ranked_scores[rows]} vs {cut_score} at the cut)"
                )
            assert_close(actual, ranked_boxes[partner], tol=outlier.scaled(scale), what=f"image {b} proposals")
            keep = partner < n  # pooled features are compared on the proposals both sides have
            actual, expected = actual[keep], expected[partner[keep]]
            actual_features, wanted_features = out["box_features"][b, :n][keep], wanted_features[partner[keep]]
        pairs = [
            (actual, expected, f"image {b} proposals"),
            (actual_features, wanted_features, f"image {b} pooled box features"),
        ]
        for actual, wanted, what in pairs:
            if min_fraction >= 1.0:
                assert_close(actual, wanted, tol=tol, what=what)
                continue
            # Random-weight R50 activations reach magnitudes in the hundreds, where 1e-4 absolute is below fp32
            # resolution of the accumulated sums: measure the error relative to the tensor's own scale.
            scale = max(1.0, float(np.abs(wanted).max()))
            within = np.abs(actual - wanted) <= tol.atol * scale + tol.rtol * np.abs(wanted)
            assert within.mean() >= min_fraction, (
                f"{what}: only {within.mean():.5f} within {tol.atol} x scale {scale:.3g}"
            )
            if "proposals" in what:
                assert_close(actual, wanted, tol=outlier.scaled(scale), what=what)
            else:
                # A proposal that moved by a fraction of a pixel (see above) pools visibly different features
                # where the random features are sharp; allow that on at most 0.2% of the RoIs, never more.
                rows_ok = within.reshape(len(within), -1).all(axis=1)
                assert rows_ok.mean() >= 0.998, f"{what}: {int((~rows_ok).sum())} of {len(rows_ok)} RoIs differ"


_MAX_SWAPS_AT_CUT = 8


def _match_to_candidates(actual: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """For each row of ``actual`` [n, 4], the index of its closest unused row of ``candidates`` [m >= n, 4]
    (greedy, closest pair first; as ``match_rows``, duplicated boxes may pair either way)."""
    dist = np.abs(actual[:, None, :].astype(np.float64) - candidates[None, :, :]).max(-1)
    partner = np.empty(len(actual), dtype=np.int64)
    used = np.zeros(len(candidates), dtype=bool)
    for i in np.argsort(dist.min(1), kind="stable"):
        j = int(np.argmin(np.where(used, np.inf, dist[i])))
        partner[i], used[j] = j, True
    return partner


# ------------------------------------------------------------------------------------------ tiny model, dynamic
@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    model = build_tiny_maskrcnn(seed=0)
    loaded = load_torchvision_model(model)
    path = tmp_path_factory.mktemp("export") / "tiny.onnx"
    metadata = export_onnx(loaded, path, debug=True, log=lambda line: None)  # traced at batch 2, 128x160
    return model, loaded, path, metadata


@pytest.mark.slow
def test_graph_passes_checker_and_carries_contract(tiny_export):
    _, loaded, path, metadata = tiny_export
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, strict_mode=True)
    assert [i.name for i in model.graph.input] == ["images", "image_sizes"]
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert [o.name for o in model.graph.output][:5] == ["num_detections", "boxes", "scores", "labels", "masks"]
    pools = [n for n in model.graph.node if n.op_type == ROI_ALIGN_OP and n.domain == ROI_ALIGN_DOMAIN]
    assert len(pools) == 3  # box head (twice: detections and the debug output) and mask head
    assert [(f.domain, f.name) for f in model.functions] == [(ROI_ALIGN_DOMAIN, ROI_ALIGN_OP)]
    assert sum(n.op_type == "NonMaxSuppression" for n in model.graph.node) == 2
    assert not any(n.op_type == "RoiAlign" for n in model.graph.node), "RoiAlign may only appear in the function"
    props = {p.key: p.value for p in model.metadata_props}
    expected = loaded.metadata(precision="fp32", detections_per_image=100)
    assert props == metadata.to_props() == expected.to_props()
    assert ModelMetadata.from_props(props).class_names == loaded.class_names


@pytest.mark.slow
def test_onnxruntime_matches_torchvision_at_another_batch_and_shape(tiny_export):
    model, _, path, _ = tiny_export
    sizes, canvas = [(100, 128), (128, 90), (64, 70)], (128, 128)  # traced: batch 2 at 128x160
    images, image_sizes, crops = random_canvas(sizes, canvas, seed=3)
    out = _run(_session(path), images, image_sizes)
    ref = torchvision_pipeline(model, crops, canvas)
    _assert_rpn_and_pooling_match(out, ref, FP32_WHOLE_MODEL)
    for b, det in enumerate(ref["detections"]):
        n = int(out["num_detections"][b])
        assert n == len(det["scores"]) > 0
        assert_close(out["boxes"][b, :n], det["boxes"], tol=FP32_WHOLE_MODEL, what="boxes")
        assert_close(out["scores"][b, :n], det["scores"], tol=FP32_WHOLE_MODEL_SCORES, what="scores")
        assert np.array_equal(out["labels"][b, :n], det["labels"].numpy())
        assert_close(out["masks"][b, :n], det["masks"][:, 0], tol=FP32_WHOLE_MODEL, what="masks")
        assert not out["boxes"][b, n:].any() and not out["masks"][b, n:].any()


@pytest.mark.slow
def test_onnxruntime_batch_one_large_canvas(tiny_export):
    model, _, path, _ = tiny_export
    images, image_sizes, crops = random_canvas([(192, 224)], (192, 224), seed=4)
    out = _run(_session(path), images, image_sizes)
    ref = torchvision_pipeline(model, crops, (192, 224))
    _assert_rpn_and_pooling_match(out, ref, FP32_WHOLE_MODEL)
    det = ref["detections"][0]
    n = int(out["num_detections"][0])
    assert n == len(det["scores"])
    assert_close(out["scores"][0, :n], det["scores"], tol=FP32_WHOLE_MODEL_SCORES, what="scores")


@pytest.mark.slow
def test_onnxruntime_mask_head_rows_gathered_over_the_batch(tmp_path):
    """The graph sends only valid detections through the mask head, gathered over the batch, and puts the masks
    back in their slots. A batch whose first image has no detection (its slot 0 still goes through, as the one row
    that keeps the mask head's batch non-empty) and images with different counts: torchvision's masks image by
    image. A model that detects nothing: all outputs zero, with the contract's shapes."""
    import copy

    from deploy_sdk.conversion.deploy_module import DeploymentModule

    model = build_tiny_maskrcnn(seed=0)
    canvas = (128, 128)
    images, image_sizes, crops = random_canvas([(100, 128), (128, 90), (64, 70)], canvas, seed=3)
    with torch.no_grad():
        top = DeploymentModule(model)(images, image_sizes)[2][:, 0]
    order = sorted(range(3), key=lambda b: float(top[b]))
    images, image_sizes, crops = images[order], image_sizes[order], [crops[b] for b in order]
    thresholded = copy.deepcopy(model)
    thresholded.roi_heads.score_thresh = float(top[order[0]])  # torchvision keeps scores above it
    export_onnx(load_torchvision_model(thresholded), tmp_path / "t.onnx", log=lambda line: None)
    out = _run(_session(tmp_path / "t.onnx"), images, image_sizes)
    counts = [int(c) for c in out["num_detections"]]
    assert counts[0] == 0 and min(counts[1:]) > 0 and len(set(counts)) == 3, counts
    assert not out["masks"][0].any()
    ref = torchvision_pipeline(thresholded, crops, canvas)
    for b, det in enumerate(ref["detections"]):
        n = counts[b]
        assert n == len(det["scores"])
        assert np.array_equal(out["labels"][b, :n], det["labels"].numpy())
        assert_close(out["masks"][b, :n], det["masks"][:, 0], tol=FP32_WHOLE_MODEL, what=f"image {b} masks")
        assert not out["masks"][b, n:].any()

    nothing = copy.deepcopy(model)
    nothing.roi_heads.score_thresh = 1.0
    export_onnx(load_torchvision_model(nothing), tmp_path / "n.onnx", log=lambda line: None)
    out = _run(_session(tmp_path / "n.onnx"), images, image_sizes)
    assert out["masks"].shape == (3, 100, 28, 28)
    for name in ("num_detections", "boxes", "scores", "labels", "masks"):
        assert not out[name].any(), name


# ------------------------------------------------------------------------------ CLI: fixed size, check, errors
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    # Sizes stored next to the weights, as training scripts do; the loader would default to 800/1333.
    torch.save({"model": build_tiny_maskrcnn(seed=0).state_dict(), "min_size": 128, "max_size": 160}, path)
    return path


@pytest.mark.slow
def test_cli_fixed_size_export_and_check(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "fixed.onnx"
    assert main(["export", str(tiny_checkpoint), "-o", str(out), "--height", "160", "--width", "160"]) == 0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    model = onnx.load(str(out))
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 160, 160]
    meta = ModelMetadata.from_props({p.key: p.value for p in model.metadata_props})
    assert (meta.fixed_height, meta.fixed_width) == (160, 160)
    # Random weights score every class about equally: check down to 0.05 so that detections are compared at all.
    rc = main(
        [
            "check",
            str(out),
            "--checkpoint",
            str(tiny_checkpoint),
            "--num-synthetic",
            "2",
            "--batch-size",
            "1",
            "--min-score",
            "0.05",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "2/2 images agree" in text


def test_cli_refuses_unsupported_architecture(tiny_checkpoint, tmp_path, capsys):
    rc = main(["export", str(tiny_checkpoint), "-o", str(tmp_path / "x.onnx"), "--arch", "vgg16_fpn"])
    err = capsys.readouterr().err
    assert rc == 1 and "supported" in err and "resnet50" in err
    assert not list(tmp_path.iterdir())


def test_cli_refuses_faster_rcnn(tmp_path, capsys):
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

    ckpt = tmp_path / "frcnn.pth"
    torch.save(fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=3).state_dict(), ckpt)
    rc = main(["export", str(ckpt), "-o", str(tmp_path / "x.onnx")])
    assert rc == 1 and "Mask R-CNN" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_bad_fixed_size_and_max_mode_are_refused(tmp_path):
    loaded = load_torchvision_model(build_tiny_maskrcnn(seed=0))
    with pytest.raises(DeploySdkError, match="multiples of 32"):
        export_onnx(loaded, tmp_path / "x.onnx", height=100, width=128, log=lambda line: None)
    with pytest.raises(DeploySdkError, match="both"):
        export_onnx(loaded, tmp_path / "x.onnx", height=128, log=lambda line: None)
    with pytest.raises(UnsupportedModelError, match="max"):
        RoIAlignConfig(7, 7, 2, (0.25, 0.125, 0.0625, 0.03125), mode="max")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------- torchvision R50 models, random weights
@pytest.mark.slow
@pytest.mark.parametrize("builder", ["maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"])
def test_resnet50_random_weights_two_resolutions(builder, tmp_path):
    import torchvision.models.detection as det

    torch.manual_seed(0)
    model = getattr(det, builder)(weights=None, weights_backbone=None, num_classes=91).eval()
    path = tmp_path / f"{builder}.onnx"
    export_onnx(load_torchvision_model(model), path, debug=True, trace_size=(224, 256), log=lambda line: None)
    onnx.checker.check_model(str(path), full_check=True)
    session = _session(path)
    for seed, canvas in enumerate([(256, 320), (320, 384)]):
        # Images fill the canvas: random weights give constant features in padding, whose equal scores make
        # the proposal set at the top-k cut arbitrary.
        images, image_sizes, crops = random_canvas([canvas, canvas], canvas, seed=10 + seed)
        out = _run(session, images, image_sizes)
        assert out["boxes"].shape == (2, 100, 4) and out["masks"].shape == (2, 100, 28, 28)
        ref = torchvision_pipeline(model, crops, canvas)
        _assert_rpn_and_pooling_match(
            out, ref, FP32_WHOLE_MODEL, min_fraction=0.999, outlier=FP32_WHOLE_MODEL_OUTLIER, tie_tol=RPN_TOPK_TIE
        )


# ------------------------------------------------------------------------------------------ the shipped model
@pytest.mark.slow
def test_shipped_model_parity_batches_and_mixed_sizes(shipped_loaded, tmp_path):
    from deploy_sdk.conversion.parity import ParityThresholds, compare_detections
    from deploy_sdk.conversion.reference import batch_reference_detections
    from deploy_sdk.predictor import Predictor
    from deploy_sdk.synthetic_shapes import HELD_OUT_SEED, generate_sample

    loaded = shipped_loaded
    path = tmp_path / "model.onnx"  # exported here, not the cached graph: this test is about the exporter
    export_onnx(loaded, path, log=lambda line: None)
    held_out = [generate_sample(HELD_OUT_SEED, i).image for i in range(4)]
    wide, tall = generate_sample(HELD_OUT_SEED, 4).image, generate_sample(HELD_OUT_SEED, 5).image
    mixed = [np.ascontiguousarray(wide[: wide.shape[0] // 2]), np.ascontiguousarray(tall[:, : tall.shape[1] // 3])]

    strict = ParityThresholds()
    # Beyond the required 0.3: everything the model outputs agrees too, so the test is not vacuous on a weak model.
    everything = ParityThresholds(min_score=0.05)
    checked = 0
    for images, batch in [(held_out, 4), (held_out[:2], 1), (mixed, 2)]:
        got = Predictor(str(path), backend="onnxruntime", batch_size=batch).predict(images)
        ref = []
        for start in range(0, len(images), batch):
            ref += batch_reference_detections(loaded, images[start : start + batch])
        for i, (g, r) in enumerate(zip(got, ref)):
            for t in (strict, everything):
                res = compare_detections(g, r, t)
                assert res.ok, f"batch {batch}, image {i}, min score {t.min_score}: {res.summary()}"
            checked += compare_detections(g, r, everything).num_reference
    assert checked > 0


def test_tie_aware_proposal_comparison_accepts_swaps_at_the_cut_only():
    """The comparison the R50 test relies on, on hand-made proposals: torchvision keeps rows 0-2 (scores 0.9,
    0.8, 0.5) and ranks row 3 (0.5, a tie) and row 4 (0.4) past the cut."""
    ranked_boxes = torch.tensor(
        [[0, 0, 10, 10], [5, 5, 20, 20], [30, 30, 40, 40], [50, 50, 60, 60], [70, 70, 80, 80]], dtype=torch.float32
    )
    ranked_scores = torch.tensor([0.9, 0.8, 0.5, 0.5 - 1e-6, 0.4])
    features = torch.arange(5, dtype=torch.float32).reshape(5, 1, 1, 1).repeat(1, 2, 7, 7)
    ref = {
        "proposals": [ranked_boxes[:3]],
        "box_features": [features[:3]],
        "ranked_proposals": [(ranked_boxes, ranked_scores)],
    }

    def graph(rows):
        return {
            "num_proposals": np.array([3]),
            "proposals": ranked_boxes[rows].numpy()[None],
            "box_features": features[rows].numpy()[None],
        }

    check = dict(tol=FP32_WHOLE_MODEL, min_fraction=0.999, outlier=FP32_WHOLE_MODEL_OUTLIER, tie_tol=RPN_TOPK_TIE)
    _assert_rpn_and_pooling_match(graph([1, 0, 2]), ref, **check)  # same set, other order
    _assert_rpn_and_pooling_match(graph([0, 1, 3]), ref, **check)  # the tied box kept instead: fine
    with pytest.raises(AssertionError, match="not tied at the cut"):
        _assert_rpn_and_pooling_match(graph([0, 1, 4]), ref, **check)  # a clearly lower-ranked box
    with pytest.raises(AssertionError, match="not tied at the cut"):
        _assert_rpn_and_pooling_match(graph([0, 2, 3]), ref, **check)  # drops a box far above the cut
    moved = graph([0, 1, 2])
    moved["proposals"][0, 2] += 3.0  # a box 3 px off is not a tie
    with pytest.raises(AssertionError):
        _assert_rpn_and_pooling_match(moved, ref, **check)
    for strict in (dict(check, tie_tol=None), dict(tol=FP32_WHOLE_MODEL)):  # without tie_tol: exact sets
        with pytest.raises(AssertionError):
            _assert_rpn_and_pooling_match(graph([0, 1, 3]), ref, **strict)
