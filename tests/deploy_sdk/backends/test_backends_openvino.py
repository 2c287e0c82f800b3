"""The openvino backend: the exported file inlined in memory and compiled by OpenVINO, against ONNX Runtime.

Fast tests use the toy deployment graph (hand-worked outputs) with its box node wrapped in a model-local function
of the custom domain, as the exported graphs carry theirs; the slow ones use the shipped model: parity with the
onnxruntime backend at batch 1 and 4 on mixed sizes (the export criteria of ``conversion/parity.py``), and the fp16
and INT8 graphs. Threads, the performance hint and the request pool are checked on the compiled model's
properties and on the backend's own counters, never by timing.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from compare import FP32_PASSTHROUGH, TOY_BOX_SCALING, assert_close
from toy_deployment_graph import TOY_BOX_FRACTIONS, TOY_LABELS, TOY_SCORES, toy_masks, write_toy_graph

from deploy_sdk import Predictor
from deploy_sdk.errors import DeploySdkError, MissingDependencyError

REASON = "the openvino backend needs the 'openvino' package (pip install 'maskrcnn-deploy[openvino]')"


def _openvino():
    return pytest.importorskip("openvino", reason=REASON)


def _with_function(src: Path, dst: Path) -> Path:
    """The toy graph with its ``boxes = whwh1 * frac`` node replaced by a custom-domain node whose model-local
    function computes the same Mul: what an exported graph's RoIAlign node looks like to a runtime."""
    import onnx
    from onnx import helper

    model = onnx.load(str(src))
    index = next(i for i, n in enumerate(model.graph.node) if n.output[0] == "boxes")
    old = model.graph.node[index]
    custom = helper.make_node("ToyBoxes", list(old.input), ["boxes"], name="toy_boxes", domain="maskrcnn_deploy")
    model.graph.node.remove(old)
    model.graph.node.insert(index, custom)
    body = [helper.make_node("Mul", ["a", "b"], ["y"])]
    model.functions.append(
        helper.make_function("maskrcnn_deploy", "ToyBoxes", ["a", "b"], ["y"], body, [helper.make_opsetid("", 18)])
    )
    model.opset_import.append(helper.make_opsetid("maskrcnn_deploy", 1))
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(dst))
    return dst


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    pytest.importorskip("onnx", reason=REASON)
    tmp = tmp_path_factory.mktemp("ov_toy")
    return _with_function(write_toy_graph(tmp / "plain.onnx"), tmp / "toy.onnx")


def _toy_batch(sizes):
    h = max(s[0] for s in sizes)
    w = max(s[1] for s in sizes)
    images = np.zeros((len(sizes), 3, h, w), np.float32)
    for i, (hh, ww) in enumerate(sizes):
        images[i, :, :hh, :ww] = 1.0 + i
    return images, np.array(sizes, np.int64)


def _split_in_two(backend) -> None:
    """Split batches over two requests even where OpenVINO made a single stream (fewer cores), with the in-flight
    depth the backend would have chosen for two, so the splitting is tested on any machine."""
    backend._split_ways = 2
    backend.async_depth = max(1, backend._pool_size // 2)


# ------------------------------------------------------------------------------------------------ toy graph
def test_missing_openvino_names_the_extra(monkeypatch, tmp_path):
    model = write_toy_graph(tmp_path / "toy.onnx")
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(MissingDependencyError, match=r"openvino backend.*maskrcnn-deploy\[openvino\]"):
        Predictor(model, backend="openvino")


def test_toy_graph_with_a_local_function_matches_hand_values_and_onnxruntime(toy):
    _openvino()
    from deploy_sdk.backends.onnxruntime import OnnxRuntimeBackend
    from deploy_sdk.backends.openvino import OpenVinoBackend

    images, sizes = _toy_batch([(64, 96), (96, 64), (32, 128)])
    images[2] = 0.0  # an all-black image detects nothing
    with OpenVinoBackend(toy) as ov_backend:
        got = ov_backend.infer(images, sizes)
        assert ov_backend.metadata.class_names == ["__background__", "circle", "square", "star"]
    want = OnnxRuntimeBackend(toy).infer(images, sizes)  # ONNX Runtime expands the function itself
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        assert got[name].dtype == want[name].dtype
    # Hand-worked: box k is TOY_BOX_FRACTIONS[k] * (w, h, w, h) of the valid region.
    for i, (h, w) in enumerate(sizes):
        np.testing.assert_allclose(got["boxes"][i], TOY_BOX_FRACTIONS * np.array([w, h, w, h], np.float32))
    np.testing.assert_array_equal(got["num_detections"], [2, 2, 0])
    np.testing.assert_array_equal(got["scores"][0], TOY_SCORES)
    np.testing.assert_array_equal(got["labels"][1], TOY_LABELS)
    assert_close(got["masks"][0], toy_masks(), tol=FP32_PASSTHROUGH, what="toy masks")


def test_threads_are_honoured(toy):
    _openvino()
    from deploy_sdk.backends.openvino import OpenVinoBackend

    for threads in (1, 2):
        with OpenVinoBackend(toy, threads=threads) as backend:
            assert int(backend.property("INFERENCE_NUM_THREADS")) == threads
    with pytest.raises(DeploySdkError, match="threads must be a positive integer"):
        OpenVinoBackend(toy, threads=-1)
    # Through the Predictor's own threads argument.
    predictor = Predictor(toy, backend="openvino", threads=1)
    assert int(predictor.backend.property("INFERENCE_NUM_THREADS")) == 1


def test_performance_hint_and_precision_are_selectable(toy):
    _openvino()
    from deploy_sdk.backends.openvino import OpenVinoBackend

    assert OpenVinoBackend(toy, stable_topk=True).stable_topk == 0  # the toy graph has no TopK
    with OpenVinoBackend(toy, threads=2) as latency:
        assert latency.stable_topk == 0
        assert str(latency.property("PERFORMANCE_HINT")) == "LATENCY"
        assert int(latency.property("NUM_STREAMS")) == 1
        assert latency.async_depth == max(2, int(latency.property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        # fp32 graph: computed in fp32 unless asked otherwise (OpenVINO's CPU default can be bf16).
        assert (
            "f32" in str(latency.property("INFERENCE_PRECISION_HINT")).lower()
            or "float32" in str(latency.property("INFERENCE_PRECISION_HINT")).lower()
        )
    predictor = Predictor(
        toy, backend="openvino", threads=2, backend_options={"performance_hint": "throughput", "num_requests": 3}
    )
    backend = predictor.backend
    assert str(backend.property("PERFORMANCE_HINT")) == "THROUGHPUT"
    streams = int(backend.property("NUM_STREAMS"))
    # a batch may take one request per stream, so fewer batches fit in flight
    assert backend.async_depth == max(1, 3 // streams) and "throughput" in repr(predictor)
    with pytest.raises(DeploySdkError, match="performance_hint must be one of latency, throughput"):
        OpenVinoBackend(toy, performance_hint="fast")
    with pytest.raises(DeploySdkError, match="inference_precision"):
        OpenVinoBackend(toy, inference_precision="int4")
    # f16 compute on the CPU is refused before compile_model, which never returned for it on an AVX512-FP16 Xeon
    with pytest.raises(DeploySdkError, match="f16.*refused.*bf16"):
        OpenVinoBackend(toy, inference_precision="f16")
    with pytest.raises(DeploySdkError, match="backend_options.*does not take"):
        Predictor(toy, backend="onnxruntime", backend_options={"performance_hint": "latency"})


def test_devices(toy):
    ov = _openvino()
    from deploy_sdk.backends.openvino import OpenVinoBackend, openvino_device

    assert openvino_device("cpu") == "CPU" and openvino_device("GPU") == "GPU"
    assert openvino_device("gpu:1") == "GPU.1" and openvino_device("gpu.0") == "GPU.0"
    with pytest.raises(DeploySdkError, match="tensorrt or onnxruntime"):
        OpenVinoBackend(toy, device="cuda")
    with pytest.raises(DeploySdkError, match="'cpu', 'gpu' or 'gpu:N'"):
        OpenVinoBackend(toy, device="npu7")
    if not any(d.startswith("GPU") for d in ov.Core().available_devices):
        with pytest.raises(DeploySdkError, match="OpenVINO sees no GPU device"):
            OpenVinoBackend(toy, device="gpu")


def test_predict_iter_keeps_requests_in_flight_and_results_in_order(toy):
    """Two requests in the pool: predict_iter submits batch i+1 before it collects batch i, so both of the pool's
    requests are out at once (the backend counts requests taken from the pool and not yet given back: an exact
    count, independent of how fast either finishes), and the results still come out in input order."""
    _openvino()
    from deploy_sdk.backends.openvino import OpenVinoBackend

    backend = OpenVinoBackend(toy, num_requests=2, threads=1)
    predictor = Predictor(backend, batch_size=1, mask_format="none")
    sizes = [(64 + 8 * i, 128 - 8 * i) for i in range(7)]
    images = [np.full((h, w, 3), 200, np.uint8) for h, w in sizes]
    handed_out = []  # requests out of the pool whenever a new batch is submitted
    original = backend._start

    def spy(*args):
        handed_out.append(backend._running)
        return original(*args)

    backend._start = spy
    results = list(predictor.predict_iter(images))
    assert [r.image_size for r in results] == sizes
    for r, (h, w) in zip(results, sizes):
        assert_close(r.boxes[0], [0.25 * w, 0.5 * h, 0.75 * w, h], tol=TOY_BOX_SCALING, what="box")
    assert backend.requests_started == 7
    assert backend.peak_in_flight == 2
    assert handed_out[0] == 0 and max(handed_out) == 1  # each later batch went in while the one before was out
    assert backend._running == 0  # every request went back to the pool
    # Stopping early gives the running requests back too.
    it = predictor.predict_iter(images)
    next(it)
    it.close()
    assert backend._running == 0
    predictor.close()
    with pytest.raises(DeploySdkError, match="closed"):
        predictor.predict(images[0])


def test_throughput_hint_splits_a_batch_over_the_streams(toy):
    """With the throughput hint a batch runs as one slice per stream on as many requests; the joined outputs are
    the hand-worked ones of the whole batch, every request goes back to the pool, and predict_iter with batches in
    flight (each holding several requests) neither waits on itself nor reorders results."""
    _openvino()
    from deploy_sdk.backends.openvino import OpenVinoBackend

    with OpenVinoBackend(toy, threads=2, performance_hint="throughput") as backend:
        assert backend._split_ways == int(backend.property("NUM_STREAMS"))
        _split_in_two(backend)
        sizes = [(40, 60), (64, 48), (32, 96)]
        images, image_sizes = _toy_batch(sizes)
        before = backend.requests_started
        out = backend.infer(images, image_sizes)
        assert backend.requests_started - before == 2 and backend._running == 0
        assert out["boxes"].shape == (3, 3, 4) and out["masks"].shape[:2] == (3, 3)
        for i, (h, w) in enumerate(sizes):
            expected = np.array(TOY_BOX_FRACTIONS, np.float32) * np.array([w, h, w, h], np.float32)
            assert_close(out["boxes"][i], expected, tol=TOY_BOX_SCALING, what=f"image {i} boxes")
            assert_close(out["masks"][i], toy_masks(), tol=FP32_PASSTHROUGH, what=f"image {i} masks")
        np.testing.assert_array_equal(out["labels"], np.tile(TOY_LABELS, (3, 1)))
        # predict_iter keeps async_depth batches in flight; each may hold 2 of the pool's requests
        predictor = Predictor(backend, batch_size=2, mask_format="none")
        many = [(64 + 8 * i, 128 - 8 * i) for i in range(7)]
        results = list(predictor.predict_iter([np.full((h, w, 3), 200, np.uint8) for h, w in many]))
        assert [r.image_size for r in results] == many and backend._running == 0


def test_static_shapes_compile_the_first_shapes_and_run_the_rest_dynamic(toy):
    """static_shapes=2: the first two input shapes get a model compiled for exactly that shape, a third runs on the
    dynamic model; every batch gives the hand-worked outputs and the dynamic backend's, and every ticket and
    request goes back to the pool."""
    _openvino()
    from deploy_sdk.backends.openvino import OpenVinoBackend

    batches = [[(64, 96)], [(32, 64)], [(64, 96)], [(40, 64), (64, 48)], [(96, 32)]]
    with OpenVinoBackend(toy, threads=1) as dynamic, OpenVinoBackend(toy, threads=1, static_shapes=2) as backend:
        for sizes in batches:
            images, image_sizes = _toy_batch(sizes)
            got, want = backend.infer(images, image_sizes), dynamic.infer(images, image_sizes)
            for name in want:
                np.testing.assert_array_equal(got[name], want[name], err_msg=f"{sizes} {name}")
            for i, (h, w) in enumerate(sizes):
                expected = np.array(TOY_BOX_FRACTIONS, np.float32) * np.array([w, h, w, h], np.float32)
                assert_close(got["boxes"][i], expected, tol=TOY_BOX_SCALING, what=f"{sizes} image {i} boxes")
        assert backend.static_shapes_compiled == [(1, 3, 64, 96), (1, 3, 32, 64)]
        assert len(backend._static) == 2 and "static shapes 2/2" in backend.describe()
        # the static models ran their batches: requests were made from them, and all are back
        assert [len(backend._static[k].made) for k in backend._static] == [1, 1]
        assert backend._running == 0 and backend._idle.qsize() == backend._pool_size
        # each static model's inputs really are that shape (OpenVINO refuses another)
        compiled = backend._static[((1, 3, 64, 96), (1, 2))].compiled
        assert [str(p.get_partial_shape()) for p in compiled.inputs] == ["[1,3,64,96]", "[1,2]"]
    for bad in (-1, True, 1.5):
        with pytest.raises(DeploySdkError, match="static_shapes must be a non-negative integer"):
            OpenVinoBackend(toy, static_shapes=bad)


def test_static_shapes_with_the_batch_split_over_streams(toy):
    """A batch of 3 split in two slices (2 + 1 images): each slice's shape gets its static model, and the joined
    outputs are the hand-worked ones."""
    _openvino()
    from deploy_sdk.backends.openvino import OpenVinoBackend

    with OpenVinoBackend(toy, threads=2, performance_hint="throughput", static_shapes=4) as backend:
        _split_in_two(backend)
        sizes = [(40, 60), (64, 48), (32, 96)]
        for _ in range(2):  # the second time reuses both static models
            out = backend.infer(*_toy_batch(sizes))
            for i, (h, w) in enumerate(sizes):
                expected = np.array(TOY_BOX_FRACTIONS, np.float32) * np.array([w, h, w, h], np.float32)
                assert_close(out["boxes"][i], expected, tol=TOY_BOX_SCALING, what=f"image {i} boxes")
        assert sorted(backend.static_shapes_compiled) == [(1, 3, 64, 96), (2, 3, 64, 96)]
        assert backend._running == 0 and backend._idle.qsize() == backend._pool_size


def test_split_batches_are_joined_with_zero_mask_slots():
    """The graph pools masks for as many slots as the batch's most detections, so slices of one batch can have
    mask outputs of different lengths: joined, the shorter ones get zero masks (hand-made arrays)."""
    pytest.importorskip("openvino", reason=REASON)
    from deploy_sdk.backends.openvino import _join_batches

    a = {"num_detections": np.array([2], np.int32), "masks": np.ones((1, 2, 2, 2), np.float32)}
    b = {"num_detections": np.array([3, 1], np.int32), "masks": np.full((2, 3, 2, 2), 0.5, np.float32)}
    joined = _join_batches([a, b])
    np.testing.assert_array_equal(joined["num_detections"], [2, 3, 1])
    assert joined["masks"].shape == (3, 3, 2, 2)
    np.testing.assert_array_equal(joined["masks"][0, :2], 1.0)
    np.testing.assert_array_equal(joined["masks"][0, 2], 0.0)
    np.testing.assert_array_equal(joined["masks"][1:], 0.5)


def test_concurrent_infer_calls_from_threads(toy):
    _openvino()
    from deploy_sdk.backends.openvino import OpenVinoBackend

    backend = OpenVinoBackend(toy, num_requests=2, threads=1)
    assert backend.thread_safe
    errors, results = [], {}

    def work(k):
        try:
            for j in range(5):
                images, sizes = _toy_batch([(64 + 32 * k, 96)])
                out = backend.infer(images, sizes)
                results[(k, j)] = out["boxes"][0, 0].copy()
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for (k, _), box in results.items():
        np.testing.assert_allclose(box, [24.0, 0.5 * (64 + 32 * k), 72.0, 64 + 32 * k])
    assert backend.peak_in_flight <= 2 and backend._running == 0


def test_bad_batches_are_refused_before_openvino(toy):
    _openvino()
    from deploy_sdk.backends.openvino import OpenVinoBackend

    backend = OpenVinoBackend(toy)
    images, sizes = _toy_batch([(64, 96)])
    with pytest.raises(DeploySdkError, match="image_sizes"):
        backend.submit(images, sizes.astype(np.int32))
    with pytest.raises(DeploySdkError, match="multiple of 32"):
        backend.infer(np.zeros((1, 3, 50, 64), np.float32), np.array([[50, 64]]))
    assert backend._running == 0 and backend.requests_started == 0


def test_topk_ties_are_broken_by_index_as_onnx_says():
    """ONNX TopK: among equal values the lower index comes first. OpenVINO's reader leaves TopK unstable; the
    backend's pass (``stable_topk=True``) makes it stable, so the same elements survive the cut as in ONNX
    Runtime."""
    ov = _openvino()
    pytest.importorskip("onnx", reason=REASON)
    from onnx import TensorProto, helper, numpy_helper

    from deploy_sdk.backends.openvino import _onnx_topk_ties

    graph = helper.make_graph(
        [helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None])],
        [
            helper.make_tensor_value_info("v", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("i", TensorProto.INT64, None),
        ],
        [numpy_helper.from_array(np.array([6], np.int64), "k")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.tile(np.array([1.0, 3.0, 2.0, 3.0], np.float32), 500)[None]  # 500 tied 3s, 500 tied 2s
    core = ov.Core()
    ov_model = core.read_model(model.SerializeToString())
    assert _onnx_topk_ties(ov_model) == 1 and _onnx_topk_ties(ov_model) == 0
    request = core.compile_model(ov_model, "CPU").create_infer_request()
    request.infer({"x": x})
    # Hand-worked: the six largest are 3s, and the lowest indices holding a 3 are 1, 3, 5, 7, 9, 11.
    np.testing.assert_array_equal(request.get_tensor("i").data.ravel(), [1, 3, 5, 7, 9, 11])
    import onnxruntime as ort

    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[
        1
    ]
    np.testing.assert_array_equal(request.get_tensor("i").data, expected)


def test_eval_command_takes_the_backend(toy, tmp_path, capsys):
    """`maskrcnn-deploy eval MODEL --backend openvino` gives the metrics ONNX Runtime gives on the same file."""
    _openvino()
    import json

    from deploy_sdk.cli import main
    from deploy_sdk.synthetic_shapes import write_dataset

    write_dataset(tmp_path / "ds", num=3, seed=5, min_size=64, max_size=96)
    metrics = {}
    for backend in ("onnxruntime", "openvino"):
        out = tmp_path / f"{backend}.json"
        assert (
            main(
                [
                    "eval",
                    str(toy),
                    "--backend",
                    backend,
                    "--images",
                    str(tmp_path / "ds" / "images"),
                    "--annotations",
                    str(tmp_path / "ds" / "annotations.json"),
                    "--json",
                    str(out),
                    "--quiet",
                    "--threads",
                    "1",
                ]
            )
            == 0
        )
        metrics[backend] = json.loads(out.read_text())
    capsys.readouterr()
    keys = [k for k in metrics["onnxruntime"] if k.startswith(("box_", "mask_")) or k == "num_detections"]
    assert keys and all(metrics["openvino"][k] == metrics["onnxruntime"][k] for k in keys)
    # A checkpoint is evaluated by the PyTorch reference: --backend is refused in one line, before loading it.
    ckpt = tmp_path / "model.pth"
    ckpt.write_bytes(b"not read")
    assert (
        main(
            [
                "eval",
                str(ckpt),
                "--backend",
                "openvino",
                "--images",
                str(tmp_path / "ds" / "images"),
                "--annotations",
                str(tmp_path / "ds" / "annotations.json"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--backend openvino runs an exported model" in err[0]


# ------------------------------------------------------------------------------------------------ shipped model
@pytest.fixture(scope="module")
def mixed_images():
    from fixtures_models import held_out_images

    images = held_out_images(7)
    assert len({im.shape for im in images}) == 7
    return images


@pytest.mark.slow
@pytest.mark.parametrize(
    "batch_size, hint, static", [(1, "latency", 0), (4, "latency", 0), (4, "throughput", 0), (1, "latency", 8)]
)
def test_shipped_model_matches_onnxruntime(batch_size, hint, static, mixed_images):
    """Same graph, two runtimes, the same batches (a batch shares one padded canvas): held to the export criteria.
    With the throughput hint each batch runs split over the streams (forced to two) and joined; with static shapes
    each canvas of the 7 images runs on a model compiled for it."""
    _openvino()
    from fixtures_models import parity_failures, shipped_onnx_path

    path = shipped_onnx_path()
    reference = Predictor(path, backend="onnxruntime", batch_size=batch_size, threads=2).predict(mixed_images)
    options = {"performance_hint": hint, "static_shapes": static}
    predictor = Predictor(path, backend="openvino", batch_size=batch_size, threads=2, backend_options=options)
    if hint == "throughput":
        _split_in_two(predictor.backend)
    results = predictor.predict(mixed_images)
    assert sum(len(d) for d in reference) > 20, "the comparison would be vacuous"
    problems = parity_failures(reference, results)
    assert not problems, "\n".join(problems)
    # predict_iter (requests in flight) gives the same detections as predict.
    streamed = list(predictor.predict_iter(mixed_images))
    assert not parity_failures(results, streamed, score_diff=1e-5, box_iou=0.9999, mask_iou=0.999)
    if batch_size == 1:
        assert predictor.backend.peak_in_flight == 2
    compiled = predictor.backend.static_shapes_compiled
    if static:  # one per canvas (7 image sizes round up to fewer canvases), each compiled once
        assert 2 <= len(compiled) <= 7 and len(set(compiled)) == len(compiled)
        assert all(shape[:2] == (1, 3) and shape[2] % 32 == 0 == shape[3] % 32 for shape in compiled)
    else:
        assert compiled == []


@pytest.fixture(scope="module")
def precision_graphs(tmp_path_factory):
    """fp16 and INT8 (both quantization targets) graphs of the shipped model; INT8 calibrated on 4 synthetic
    images of another seed than the test images."""
    pytest.importorskip("onnx", reason=REASON)
    from fixtures_models import shipped_onnx_path

    from deploy_sdk.conversion.fp16 import convert_file_to_fp16
    from deploy_sdk.conversion.quantize import quantize_int8
    from deploy_sdk.synthetic_shapes import write_dataset

    tmp = tmp_path_factory.mktemp("ov_precision")
    src = shipped_onnx_path()
    write_dataset(tmp / "calib", num=4, seed=7, min_size=384, max_size=512)
    graphs = {"fp32": src}
    convert_file_to_fp16(src, tmp / "model.fp16.onnx")
    graphs["fp16"] = tmp / "model.fp16.onnx"
    for target in ("tensorrt", "cpu"):
        out = tmp / f"model.int8.{target}.onnx"
        quantize_int8(src, out, tmp / "calib" / "images", num_images=4, progress=False, target=target)
        graphs[f"int8-{target}"] = out
    return graphs


@pytest.mark.slow
def test_fp16_graph_runs_and_matches_onnxruntime(precision_graphs, mixed_images):
    """The fp16 graph on OpenVINO's CPU (fp16 weights, f32 compute, also on CPUs with FP16 capability) against ONNX
    Runtime's run of the same file, by the export criteria."""
    _openvino()
    from fixtures_models import parity_failures

    path = precision_graphs["fp16"]
    images = mixed_images[:4]
    reference = Predictor(path, backend="onnxruntime", batch_size=4, threads=2).predict(images)
    predictor = Predictor(path, backend="openvino", batch_size=4, threads=2)
    assert predictor.metadata.precision == "fp16" and predictor.backend.inference_precision == "f32"
    results = predictor.predict(images)
    assert sum(len(d) for d in results) > 10
    problems = parity_failures(reference, results)
    assert not problems, "\n".join(problems)


def _found(reference, candidate, min_score=0.7, iou=0.5):
    """Fraction of the reference's detections scoring >= min_score that the candidate also has (same label,
    box IoU >= iou)."""
    from deploy_sdk.conversion.parity import box_iou

    wanted = found = 0
    for ref, cand in zip(reference, candidate):
        for k in np.flatnonzero(ref.scores >= min_score):
            wanted += 1
            same = cand.labels == ref.labels[k]
            found += bool(same.any() and box_iou(ref.boxes[k : k + 1], cand.boxes[same]).max() >= iou)
    return found / max(wanted, 1), wanted


@pytest.mark.slow
@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
def test_int8_graphs_run_as_int8_and_find_the_fp32_objects(target, precision_graphs, mixed_images):
    """Both INT8 graphs (``quantize --target tensorrt`` and ``--target cpu``) load and run, and OpenVINO executes
    their Q/DQ pairs as integer kernels: in the compiled model, the quantized convolutions and fully connected
    layers run in u8/i8. INT8 results differ from fp32 and, in the last digits, between any two INT8
    implementations (ONNX Runtime with and without its fused kernels disagree as much), so the check on the
    output is object-level: the confident fp32 detections are found again. Accuracy is measured as AP
    (``benchmarks/RESULTS.md``)."""
    _openvino()
    path = precision_graphs[f"int8-{target}"]
    predictor = Predictor(path, backend="openvino", batch_size=4, threads=2)
    assert predictor.metadata.precision == "int8"
    runtime = predictor.backend.compiled.get_runtime_model()
    kinds = {}
    for op in runtime.get_ordered_ops():
        info = op.get_rt_info()
        layer, precision = info["layerType"].astype(str), info["runtimePrecision"].astype(str)
        kinds.setdefault(layer, []).append(precision)
    convs = kinds.get("Convolution", [])
    # The graph keeps some convolutions float on purpose (quantize.FLOAT_SCOPES: the RPN's objectness and box
    # deltas, two per pyramid level): every convolution whose input comes through a DequantizeLinear must run
    # in u8/i8, and only the float ones may stay f32.
    import onnx

    graph = onnx.load(str(path)).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    onnx_convs = [n for n in graph.node if n.op_type == "Conv"]
    quantized = sum(n.input[0] in dequantized for n in onnx_convs)
    integer = sum(p in ("u8", "i8") for p in convs)
    assert quantized >= 30 and len(convs) == len(onnx_convs), (quantized, len(convs), len(onnx_convs))
    assert integer == quantized, f"{integer} of {quantized} quantized convolutions run as INT8: {convs}"
    assert kinds.get("FullyConnected") and all(p in ("u8", "i8") for p in kinds["FullyConnected"])
    images = mixed_images[:4]
    fp32 = Predictor(precision_graphs["fp32"], backend="onnxruntime", batch_size=4, threads=2).predict(images)
    results = predictor.predict(images)
    recall, wanted = _found(fp32, results)
    assert wanted >= 10 and recall >= 0.9, (recall, wanted)
