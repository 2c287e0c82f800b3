"""`Predictor` behind a real Triton Inference Server (NVIDIA's PyTriton: the tritonserver binary with its Python
backend), called over HTTP and gRPC with `tritonclient`: the answers equal `Predictor` called directly.

PyTriton 0.7.0 pins numpy<2, and this project's environment has numpy 2, so PyTriton cannot live in it. The test
runs in a separate interpreter named by ``MASKRCNN_DEPLOY_PYTRITON_PYTHON`` and skips without one:

    python3 -m venv ../pytriton-venv && ../pytriton-venv/bin/pip install nvidia-pytriton onnxruntime pillow
    MASKRCNN_DEPLOY_PYTRITON_PYTHON=../pytriton-venv/bin/python pytest tests/deploy_sdk/serving/test_serving_pytriton.py

The Python backend's stub links ``libpython3.X.so`` from the library path: the script puts the interpreter's own
``LIBDIR`` first, so that a system libpython of another patch release (Debian's 3.11.2 next to a 3.11.7 interpreter
fails in ``multiprocessing``) is not picked up.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess

import numpy as np
import pytest
from compare import ORT_OTHER_PROCESS_BOXES, ORT_OTHER_PROCESS_SCORES, assert_close
from fixtures_models import held_out_images
from repo_paths import REPO_ROOT

pytestmark = pytest.mark.slow

PYTHON = os.environ.get("MASKRCNN_DEPLOY_PYTRITON_PYTHON")

SCRIPT = r"""
import json, os, sys, sysconfig
os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(
    p for p in [sysconfig.get_config_var("LIBDIR"), os.environ.get("LD_LIBRARY_PATH")] if p)
import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig
from deploy_sdk import Predictor

model, images_file, ports_text, out = sys.argv[1:5]
http_port, grpc_port, metrics_port = (int(p) for p in ports_text.split(","))
images = [np.asarray(im, np.uint8) for im in np.load(images_file, allow_pickle=False).values()]
predictor = Predictor(model, batch_size=1, threads=1, mask_format="none")

@batch
def infer(image):
    dets = [predictor.predict(im) for im in image]
    k = max([len(d) for d in dets] + [1])
    boxes = np.zeros((len(dets), k, 4), np.float32)
    scores = np.zeros((len(dets), k), np.float32)
    labels = np.full((len(dets), k), -1, np.int32)
    for i, d in enumerate(dets):
        boxes[i, :len(d)], scores[i, :len(d)], labels[i, :len(d)] = d.boxes, d.scores, d.labels
    return {"boxes": boxes, "scores": scores, "labels": labels,
            "num_detections": np.asarray([[len(d)] for d in dets], np.int32)}

config = TritonConfig(http_address="127.0.0.1", http_port=http_port, grpc_address="127.0.0.1", grpc_port=grpc_port,
                      metrics_port=metrics_port)
results = {}
with Triton(config=config) as triton:
    triton.bind(model_name="maskrcnn", infer_func=infer,
                inputs=[Tensor(name="image", dtype=np.uint8, shape=(-1, -1, 3))],
                outputs=[Tensor(name="boxes", dtype=np.float32, shape=(-1, 4)),
                         Tensor(name="scores", dtype=np.float32, shape=(-1,)),
                         Tensor(name="labels", dtype=np.int32, shape=(-1,)),
                         Tensor(name="num_detections", dtype=np.int32, shape=(1,))],
                config=ModelConfig(max_batch_size=4))
    triton.run()
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    for protocol, module, url in (("http", httpclient, f"127.0.0.1:{http_port}"),
                                  ("grpc", grpcclient, f"127.0.0.1:{grpc_port}")):
        client = module.InferenceServerClient(url)
        answers = []
        for image in images:
            tensor = module.InferInput("image", [1, *image.shape], "UINT8")
            tensor.set_data_from_numpy(image[None])
            r = client.infer("maskrcnn", [tensor])
            n = int(r.as_numpy("num_detections")[0, 0])
            answers.append({"boxes": r.as_numpy("boxes")[0, :n].tolist(),
                            "scores": r.as_numpy("scores")[0, :n].tolist(),
                            "labels": r.as_numpy("labels")[0, :n].tolist()})
        results[protocol] = answers
with open(out, "w") as f:
    json.dump(results, f)
"""


def _free_ports(count: int):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.mark.skipif(
    not PYTHON,
    reason="PyTriton needs numpy<2, not this environment's numpy 2: set "
    "MASKRCNN_DEPLOY_PYTRITON_PYTHON to an interpreter that has nvidia-pytriton, "
    "onnxruntime and pillow (see the module docstring)",
)
def test_predictor_behind_real_triton_equals_predictor(shipped_onnx, tmp_path):
    from deploy_sdk import Predictor

    images = held_out_images(3)
    np.savez(tmp_path / "images.npz", *images)
    script = tmp_path / "pytriton_app.py"
    script.write_text(SCRIPT)
    out = tmp_path / "answers.json"
    repo = REPO_ROOT
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    run = subprocess.run(
        [
            PYTHON,
            str(script),
            str(shipped_onnx),
            str(tmp_path / "images.npz"),
            ",".join(map(str, _free_ports(3))),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 0 and out.is_file(), (run.stdout + run.stderr)[-4000:]
    answers = json.loads(out.read_text())
    with Predictor(shipped_onnx, batch_size=1, threads=1, mask_format="none") as predictor:
        expected = [predictor.predict(im) for im in images]
    assert sum(len(d) for d in expected) > 0
    for protocol in ("http", "grpc"):
        for got, ref in zip(answers[protocol], expected):
            boxes = np.asarray(got["boxes"], np.float32).reshape(-1, 4)
            assert_close(boxes, ref.boxes, tol=ORT_OTHER_PROCESS_BOXES, what="boxes")
            assert_close(np.asarray(got["scores"], np.float32), ref.scores, tol=ORT_OTHER_PROCESS_SCORES, what="scores")
            assert got["labels"] == ref.labels.tolist()
