"""The online service on a local Ray cluster (loopback only): answers equal `Predictor` called directly, for single,
concurrent and multi-image requests; bad requests get a 4xx with a one-line reason and leave the replica serving;
a replica killed mid-load gives 5xx (never another request's answer) and is replaced; `maskrcnn-deploy serve`
stops gracefully on SIGTERM, finishing the request it holds."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest
from fixtures_models import held_out_images, parity_failures

pytest.importorskip("ray.serve", reason="the serve extra (ray[serve]) is not installed")

from deploy_sdk import Detections, Predictor
from deploy_sdk.detections import decode_rle

pytestmark = pytest.mark.slow

APP = "maskrcnn"
MAX_BODY = 1_000_000
MAX_PIXELS = 3_000_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _post(url: str, body: bytes, content_type: str, timeout: float = 120.0) -> Tuple[int, Dict[str, Any]]:
    headers = {"Content-Type": content_type} if content_type else {}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text)
        except ValueError:
            return exc.code, {"error": text.decode("utf-8", "replace")}


def _get(url: str, timeout: float = 30.0) -> Tuple[int, Dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _as_detections(result: Dict[str, Any], class_names: List[str]) -> Detections:
    """A response entry back as Detections (masks decoded from the RLE), for the parity comparison."""
    h, w = result["image_size"]
    dets = result["detections"]
    masks = np.stack([decode_rle(d["mask"]) for d in dets]) if dets else np.zeros((0, h, w), bool)
    return Detections(
        boxes=np.asarray([d["box"] for d in dets], np.float32).reshape(-1, 4),
        scores=np.asarray([d["score"] for d in dets], np.float32),
        labels=np.asarray([d["label"] for d in dets], np.int64),
        masks=masks,
        class_names=class_names,
        image_size=(h, w),
    )


@pytest.fixture(scope="module")
def images() -> List[np.ndarray]:
    return held_out_images(6)


@pytest.fixture(scope="module")
def reference(shipped_onnx, images):
    """Predictor called directly, one image at a time, with the replica's settings: the expected answers."""
    with Predictor(shipped_onnx, batch_size=1, threads=1, mask_format="rle") as predictor:
        return [predictor.predict(im) for im in images]


@pytest.fixture(scope="module")
def service(shipped_onnx):
    import ray
    from ray import serve

    from deploy_sdk.serving import build_app
    from deploy_sdk.serving.codec import RequestLimits

    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = build_app(
            shipped_onnx,
            max_batch_size=4,
            batch_wait_ms=50,
            threads=1,
            num_cpus=1,
            limits=RequestLimits(max_body_bytes=MAX_BODY, max_images=4, max_pixels=MAX_PIXELS),
            graceful_shutdown_timeout_s=30,
        )
        serve.run(app, name=APP, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def _check_exact(result: Dict[str, Any], expected: Detections) -> None:
    assert result["image_size"] == list(expected.image_size)
    assert result["num_detections"] == len(expected) == len(result["detections"])
    boxes = np.asarray([d["box"] for d in result["detections"]], np.float32).reshape(-1, 4)
    np.testing.assert_array_equal(boxes, expected.boxes)
    np.testing.assert_array_equal(np.asarray([d["score"] for d in result["detections"]], np.float32), expected.scores)
    assert [d["label"] for d in result["detections"]] == expected.labels.tolist()
    assert [d["class_name"] for d in result["detections"]] == expected.names
    assert [d["mask"] for d in result["detections"]] == expected.rles


def test_single_request_equals_predictor(service, images, reference):
    status, body = _post(f"{service}/predict", _png(images[0]), "image/png")
    assert status == 200, body
    assert len(body["results"]) == 1
    assert len(reference[0]) > 0, "the reference found nothing: the comparison would be vacuous"
    _check_exact(body["results"][0], reference[0])

    # mask_format=box: the same masks, as box-cropped RLE with an offset; none: no masks at all.
    status, boxed = _post(f"{service}/predict?mask_format=box", _png(images[0]), "image/png")
    assert status == 200, boxed
    h, w = reference[0].image_size
    for det, full in zip(boxed["results"][0]["detections"], reference[0].full_masks()):
        x, y = det["mask"]["offset"]
        crop = decode_rle({"size": det["mask"]["size"], "counts": det["mask"]["counts"]})
        pasted = np.zeros((h, w), bool)
        pasted[y : y + crop.shape[0], x : x + crop.shape[1]] = crop
        np.testing.assert_array_equal(pasted, full)
    status, bare = _post(f"{service}/predict?mask_format=none", _png(images[0]), "image/png")
    assert status == 200 and all("mask" not in d for d in bare["results"][0]["detections"])
    assert [d["box"] for d in bare["results"][0]["detections"]] == [d["box"] for d in body["results"][0]["detections"]]


def test_concurrent_requests_each_get_their_own_answer(service, images, reference):
    # 12 requests over 6 images at once (three of them share a canvas size): the replica batches them, up to 4 per
    # model call, one call per canvas size, and every answer must be exactly its own image's Predictor answer.
    order = [i % len(images) for i in range(12)]
    _, before = _get(f"{service}/healthz")
    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(lambda i: _post(f"{service}/predict", _png(images[i]), "image/png"), order))
    assert [status for status, _ in answers] == [200] * len(order), [a for a in answers if a[0] != 200][:1]
    for i, (_, body) in zip(order, answers):
        _check_exact(body["results"][0], reference[i])
    # The answers above came through batches: fewer model calls than images, some call with several images.
    _, after = _get(f"{service}/healthz")
    assert after["replica"] == before["replica"]
    assert after["images"] - before["images"] == len(order)
    assert after["model_calls"] - before["model_calls"] < len(order) and after["largest_batch"] > 1, after


def test_multipart_request_answers_each_image_in_order(service, images, reference):
    from urllib3 import encode_multipart_formdata

    fields = [(f"file{i}", (f"img{i}.png", _png(images[i]), "image/png")) for i in (3, 1, 2)]
    body, content_type = encode_multipart_formdata(fields)
    status, answer = _post(f"{service}/predict", body, content_type)
    assert status == 200, answer
    assert [r["name"] for r in answer["results"]] == ["img3.png", "img1.png", "img2.png"]
    names = reference[0].class_names
    problems = parity_failures([reference[i] for i in (3, 1, 2)], [_as_detections(r, names) for r in answer["results"]])
    assert not problems, "\n".join(problems)


def test_healthz_and_metadata(service, shipped_onnx):
    from deploy_sdk.version import __version__

    status, health = _get(f"{service}/healthz")
    assert status == 200 and health["status"] == "ok" and health["replica"]
    status, meta = _get(f"{service}/metadata")
    assert status == 200
    with Predictor(shipped_onnx) as predictor:
        assert meta["classes"] == predictor.metadata.class_names
        assert meta["precision"] == predictor.metadata.precision
    assert meta["sdk_version"] == __version__ and meta["max_batch_size"] == 4
    assert meta["model"] == os.path.basename(str(shipped_onnx))


def test_bad_requests_get_4xx_with_one_line_reason_and_the_replica_keeps_serving(service, images, reference):
    from urllib3 import encode_multipart_formdata

    _, before = _get(f"{service}/healthz")
    png = _png(images[0])
    big = np.zeros((2000, 1600, 3), np.uint8)  # 3.2 MP > MAX_PIXELS, a few kB as PNG
    strip = np.zeros((1, 600, 3), np.uint8)  # 600:1, more than this model's max_size:1 (512:1)
    too_many, too_many_type = encode_multipart_formdata([(f"f{i}", (f"{i}.png", png, "image/png")) for i in range(5)])
    cases = [
        ("not an image", "/predict", b"hello, world", "image/png", 400, "not an image"),
        ("truncated PNG", "/predict", png[: len(png) // 2], "image/png", 400, "image"),
        ("empty body", "/predict", b"", "image/png", 400, "empty"),
        ("wrong content type", "/predict", png, "text/plain", 415, "text/plain"),
        ("no content type", "/predict", png, "", 415, "Content-Type"),
        ("body too large", "/predict", b"\0" * (MAX_BODY + 1), "image/png", 413, "bytes"),
        ("too many pixels", "/predict", _png(big), "image/png", 413, "pixels"),
        ("too many images", "/predict", too_many, too_many_type, 413, "more than 4 images"),
        ("aspect ratio", "/predict", _png(strip), "image/png", 400, "aspect ratio"),
        ("multipart without boundary", "/predict", png, "multipart/form-data", 400, "boundary"),
        ("unknown mask format", "/predict?mask_format=polygon", png, "image/png", 400, "mask_format"),
        ("unknown endpoint", "/nothing", png, "image/png", 404, "/predict"),
    ]
    for what, path, body, content_type, code, word in cases:
        status, answer = _post(f"{service}{path}", body, content_type)
        assert status == code, f"{what}: HTTP {status} {answer}"
        reason = answer.get("error", "")
        assert reason and "\n" not in reason and word in reason, f"{what}: {reason!r}"
    status, answer = _get(f"{service}/predict")
    assert status == 405 and "POST" in answer["error"]
    # Same replica (not restarted), still answering correctly.
    _, after = _get(f"{service}/healthz")
    assert after["replica"] == before["replica"]
    status, body = _post(f"{service}/predict", png, "image/png")
    assert status == 200
    _check_exact(body["results"][0], reference[0])


def _replica_actor():
    import ray

    names = [
        a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(f"SERVE_REPLICA::{APP}#")
    ]
    assert len(names) == 1, names
    return ray.get_actor(names[0]["name"], namespace=names[0]["namespace"])


def test_replica_killed_mid_load_gives_5xx_never_a_wrong_answer_and_recovers(service, images, reference):
    import ray

    _, before = _get(f"{service}/healthz")
    order = [i % len(images) for i in range(16)]
    pool = ThreadPoolExecutor(max_workers=16)
    futures = []
    for i in order:
        futures.append(pool.submit(_post, f"{service}/predict", _png(images[i]), "image/png", 120.0))
        time.sleep(0.05)
        if len(futures) == 6:
            in_flight = sum(not f.done() for f in futures)
            ray.kill(_replica_actor(), no_restart=True)  # Serve's controller replaces it
    answers = [f.result() for f in futures]
    pool.shutdown()
    assert in_flight > 0, "no request was in flight at the kill: the test would prove nothing"
    names = reference[0].class_names
    ok = [(i, body) for i, (status, body) in zip(order, answers) if status == 200]
    failed = [(status, body) for status, body in answers if status != 200]
    assert all(status >= 500 for status, _ in failed), failed  # a server failure, never a 4xx
    problems = parity_failures([reference[i] for i, _ in ok], [_as_detections(b["results"][0], names) for _, b in ok])
    assert not problems, "a request got a wrong answer after the kill:\n" + "\n".join(problems)
    # The service recovers: a new replica answers, correctly.
    deadline = time.monotonic() + 90
    while True:
        try:
            status, health = _get(f"{service}/healthz", timeout=10)
        except OSError:
            status, health = 0, {}
        if status == 200 and health.get("replica") != before["replica"]:
            break
        assert time.monotonic() < deadline, f"no new replica within 90 s: {status} {health}"
        time.sleep(0.5)
    status, body = _post(f"{service}/predict", _png(images[0]), "image/png")
    assert status == 200
    _check_exact(body["results"][0], reference[0])


def test_serve_command_stops_gracefully_on_sigterm(service, shipped_onnx, images, reference):
    """`maskrcnn-deploy serve` joined to the test cluster (a second Ray instance would not fit in the test's time),
    as a second application under /cmd on the same proxy. SIGTERM while a request is in flight: that request is
    answered in full and correctly, the command exits 0, and the fixture's application is untouched."""
    import ray
    from urllib3 import encode_multipart_formdata

    port = int(service.rsplit(":", 1)[1])
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable,
        "-c",
        "from deploy_sdk.cli import main; raise SystemExit(main())",
        "serve",
        str(shipped_onnx),
        "--address",
        ray.get_runtime_context().gcs_address,
        "--port",
        str(port),
        "--app-name",
        "cmd",
        "--route-prefix",
        "/cmd",
        "--max-batch-size",
        "1",
        "--batch-wait-ms",
        "0",
        "--threads",
        "1",
        "--num-cpus",
        "0",
        "--graceful-timeout",
        "60",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    # 8 images run one by one (max batch 1, one thread): seconds of work, still in flight at the SIGTERM.
    order = [5, 4, 3, 2, 1, 0, 5, 4]
    body, content_type = encode_multipart_formdata(
        [(f"f{k}", (f"{k}.png", _png(images[i]), "image/png")) for k, i in enumerate(order)]
    )
    try:
        lines = []
        deadline = time.monotonic() + 120
        while True:  # wait for "serving ..."
            line = proc.stdout.readline()
            lines.append(line)
            if "serving" in line:
                break
            assert line and time.monotonic() < deadline, "".join(lines[-20:])
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(_post, f"{service}/cmd/predict", body, content_type, 120.0)
            time.sleep(1.0)  # inside the replica by now
            assert not pending.done(), f"the request finished before SIGTERM: {pending.result()}"
            proc.send_signal(signal.SIGTERM)
            status, answer = pending.result()
        out, _ = proc.communicate(timeout=120)
        lines.append(out)
        assert proc.returncode == 0, "".join(lines[-30:])
        assert "stopping" in out and "stopped" in out, out
        assert status == 200, answer
        assert len(answer["results"]) == len(order)
        for i, result in zip(order, answer["results"]):
            _check_exact(result, reference[i])
        # The command's application is gone, the fixture's one still answers.
        assert _post(f"{service}/cmd/predict", _png(images[0]), "image/png")[0] == 404
        status, answer = _post(f"{service}/predict", _png(images[0]), "image/png")
        assert status == 200
        _check_exact(answer["results"][0], reference[0])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_command_with_a_broken_model_fails_in_one_line(service, tmp_path):
    """A model file the replicas cannot open: the command stops with one line naming the replica's error (not
    only Ray's remote traceback), exit code 1, and the fixture's application keeps serving."""
    import ray

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not an ONNX graph")
    port = int(service.rsplit(":", 1)[1])
    cmd = [
        sys.executable,
        "-c",
        "from deploy_sdk.cli import main; raise SystemExit(main())",
        "serve",
        str(broken),
        "--address",
        ray.get_runtime_context().gcs_address,
        "--port",
        str(port),
        "--app-name",
        "broken",
        "--route-prefix",
        "/broken",
        "--num-cpus",
        "0",
        "--threads",
        "1",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert run.returncode == 1, run.stdout + run.stderr
    # Ray's own log lines come first; the command's last word is one line naming the replica's error.
    last = [line for line in run.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("maskrcnn-deploy serve: error: the application did not start:"), run.stderr[-3000:]
    assert "broken.onnx" in last, last
    status, _ = _get(f"{service}/healthz")
    assert status == 200
