"""The online service under load, side by side with `Predictor` in process: throughput and latency percentiles.

    python -m deploy_sdk.benchmarks.serve_bench [--model MODEL] [--requests 32] [--concurrency 1,4,8] \\
        [--batch-wait-ms 2,20] [--max-batch-size 8] [--threads 2] [--out results.json]

MODEL is an ``.onnx`` file or a checkpoint (default: the shipped model, exported once into ``--cache``). The
images are ``--images`` synthetic ones of one size (``--size``), sent PNG-encoded: traffic of one image size, the
case dynamic batching is for (mixed sizes batch per canvas size, see ``deploy_sdk.serving.online``).

1. In process: ``Predictor(model, threads=T, mask_format="rle")`` on decoded images at batch sizes 1, 2, 4, 8:
   images/s over ``--requests`` images each; the best batch size is the reference.
2. The service: a local Ray cluster (127.0.0.1), one replica (``threads=T``), for each ``--batch-wait-ms`` a fresh
   deployment; for each concurrency C, C client threads (keep-alive HTTP connections) send ``--requests``
   requests in all, one image each, answers with COCO RLE masks (the same output as the in-process reference).
   Every answer is checked: HTTP 200 and as many detections as the in-process answer for that image, so a dropped
   or wrong request is counted, never hidden. Right after each row the same images run through ``Predictor`` in
   process at the best batch size: the row's ratio compares two runs seconds apart, so that load from other
   processes on a shared machine moves both alike.

The service's time includes what serving adds: PNG decoding, HTTP, the proxy, JSON encoding, waiting for a batch
to fill. Everything runs on this machine; on a 2-core machine the client, the proxy and the replica share the cores
the in-process run has to itself. Prints a Markdown table; ``--out`` writes every latency sample as JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import io
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

__all__ = ["main", "percentiles", "run_in_process", "run_load"]


def percentiles(samples_ms: Sequence[float]) -> Dict[str, float]:
    """p50/p90/p99 (numpy's linear interpolation) and the mean of ``samples_ms``."""
    a = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(a.mean())}


def _onnx_model(model: Path, cache: Path) -> Path:
    if model.suffix.lower() == ".onnx":
        return model
    from deploy_sdk.conversion.checkpoint import load_checkpoint
    from deploy_sdk.conversion.export import export_onnx

    digest = hashlib.sha256(model.read_bytes()).hexdigest()[:16]
    path = cache / f"{model.stem}-{digest}.onnx"
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        print(f"exporting {model} to {path} (once)", file=sys.stderr, flush=True)
        export_onnx(load_checkpoint(model), path, log=lambda *_: None)
    return path


def _images(count: int, size: int) -> List[np.ndarray]:
    from deploy_sdk.synthetic_shapes import generate_sample

    return [generate_sample(2027, i, min_size=size, max_size=size).image for i in range(count)]


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def run_in_process(
    model: Path, images: List[np.ndarray], requests: int, threads: int, batch_sizes: Sequence[int], quiet: bool = False
) -> Dict[int, Dict[str, float]]:
    """images/s of ``Predictor`` over ``requests`` images (cycling ``images``) at each batch size."""
    from deploy_sdk import Predictor

    out: Dict[int, Dict[str, float]] = {}
    stream = [images[i % len(images)] for i in range(requests)]
    for batch in batch_sizes:
        with Predictor(model, batch_size=batch, threads=threads, mask_format="rle") as predictor:
            predictor.predict(stream[:batch])  # warm-up: session, thread pools, first allocations
            latencies = []
            started = time.perf_counter()
            for s in range(0, len(stream), batch):
                t = time.perf_counter()
                predictor.predict(stream[s : s + batch])
                latencies.append((time.perf_counter() - t) * 1000.0)
            seconds = time.perf_counter() - started
        out[batch] = {"images_per_s": len(stream) / seconds, **percentiles(latencies)}
        if not quiet:
            print(
                f"  in process, batch {batch}: {out[batch]['images_per_s']:.2f} images/s", file=sys.stderr, flush=True
            )
    return out


def run_load(
    port: int, bodies: List[bytes], expected: List[int], requests: int, concurrency: int, timeout: float = 300.0
) -> Dict[str, Any]:
    """``requests`` POSTs spread over ``concurrency`` client threads, each with its own keep-alive connection."""
    next_index = [0]
    lock = threading.Lock()
    latencies: List[float] = []
    errors: List[str] = []  # one per failed request: no answer, not HTTP 200, or another answer than in process

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            while True:
                with lock:
                    k = next_index[0]
                    next_index[0] += 1
                if k >= requests:
                    return
                i = k % len(bodies)
                t = time.perf_counter()
                try:
                    conn.request("POST", "/predict", body=bodies[i], headers={"Content-Type": "image/png"})
                    response = conn.getresponse()
                    data = response.read()
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
                    with lock:
                        errors.append(f"request {k}: {type(exc).__name__}: {exc}")
                    continue
                elapsed = (time.perf_counter() - t) * 1000.0
                problem = None
                if response.status != 200:
                    problem = f"HTTP {response.status}: {data[:200]!r}"
                else:
                    n = json.loads(data)["results"][0]["num_detections"]
                    if n != expected[i]:
                        problem = f"{n} detections, {expected[i]} in process"
                with lock:
                    latencies.append(elapsed)
                    if problem:
                        errors.append(f"request {k}: {problem}")
        finally:
            conn.close()

    started = time.perf_counter()
    pool = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    seconds = time.perf_counter() - started
    ok = requests - len(errors)
    return {
        "images_per_s": ok / seconds,
        "requests": requests,
        "ok": ok,
        "errors": errors,
        "samples_ms": latencies,
        **(percentiles(latencies) if latencies else {}),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_service(
    model: Path,
    images: List[np.ndarray],
    expected: List[int],
    requests: int,
    concurrency: Sequence[int],
    waits: Sequence[float],
    max_batch: int,
    threads: int,
    cpus: int,
    paired_batch: int,
) -> List[Dict[str, Any]]:
    """One row per (batch wait, concurrency); after each, the same images through ``Predictor`` in process at
    ``paired_batch`` (``in_process_paired``), so each row's ratio compares two runs a few seconds apart."""
    import ray
    from ray import serve

    from deploy_sdk.serving import build_app

    bodies = [_png(im) for im in images]
    port = _free_port()
    rows = []
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for wait in waits:
            app = build_app(
                model,
                max_batch_size=max_batch,
                batch_wait_ms=wait,
                threads=threads,
                num_cpus=1,
                max_ongoing_requests=4 * max_batch,
            )
            serve.run(app, name="bench", route_prefix="/")
            warm = run_load(port, bodies, expected, min(len(bodies), 4), 1)  # first model call, connections
            if warm["errors"]:
                raise RuntimeError(f"the service does not answer correctly: {warm['errors'][:3]}")
            for c in concurrency:
                row = run_load(port, bodies, expected, requests, c)
                row.update(batch_wait_ms=wait, concurrency=c, max_batch_size=max_batch)
                paired = run_in_process(model, images, requests, threads, [paired_batch], quiet=True)
                row["in_process_paired"] = paired[paired_batch]
                rows.append(row)
                print(
                    f"  service, wait {wait:g} ms, concurrency {c}: {row['images_per_s']:.2f} images/s, "
                    f"p50 {row.get('p50_ms', float('nan')):.0f} ms, {len(row['errors'])} failed; in process at "
                    f"batch {paired_batch} right after: {paired[paired_batch]['images_per_s']:.2f} images/s",
                    file=sys.stderr,
                    flush=True,
                )
            serve.delete("bench")
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


def _int_list(text: str) -> List[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _float_list(text: str) -> List[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def format_table(in_process: Dict[int, Dict[str, float]], rows: List[Dict[str, Any]], requests: int) -> str:
    best_batch = max(in_process, key=lambda b: in_process[b]["images_per_s"])
    lines = [
        "| system | batch wait (ms) | concurrency / batch | images/s | in process right after (images/s) | "
        "ratio | p50 ms | p90 ms | p99 ms | failed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    best = in_process[best_batch]["images_per_s"]
    for b in sorted(in_process):
        r = in_process[b]
        lines.append(
            f"| Predictor in process | - | batch {b} | {r['images_per_s']:.2f} | - | "
            f"{r['images_per_s'] / best:.2f} | {r['p50_ms']:.0f} | {r['p90_ms']:.0f} | {r['p99_ms']:.0f} "
            "| - |"
        )
    for row in rows:
        paired = row["in_process_paired"]["images_per_s"]
        lines.append(
            f"| service | {row['batch_wait_ms']:g} | concurrency {row['concurrency']} | {row['images_per_s']:.2f} "
            f"| {paired:.2f} | {row['images_per_s'] / paired:.2f} | {row.get('p50_ms', float('nan')):.0f} | "
            f"{row.get('p90_ms', float('nan')):.0f} | {row.get('p99_ms', float('nan')):.0f} | "
            f"{row['requests'] - row['ok']} |"
        )
    lines.append("")
    lines.append(
        f"In process: the ratio is to the best batch size ({best_batch}). Service rows: the ratio is to "
        f"Predictor in process at batch {best_batch} run right after that row. Latencies: service per "
        f"request (one image), in process per batch. {requests} images per row."
    )
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", type=Path, default=None, help="an .onnx file or a checkpoint (default: the shipped model)"
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".cache" / "maskrcnn-deploy" / "serve_bench",
        help="where a checkpoint's export is kept",
    )
    parser.add_argument("--requests", type=int, default=32, help="requests (images) per measurement (default 32)")
    parser.add_argument("--concurrency", type=_int_list, default=[1, 4, 8], help="client concurrency levels")
    parser.add_argument("--batch-wait-ms", type=_float_list, default=[2.0, 20.0], help="service batch-wait settings")
    parser.add_argument("--max-batch-size", type=int, default=8, help="service max batch size (default 8)")
    parser.add_argument("--batch-sizes", type=_int_list, default=[1, 2, 4, 8], help="in-process batch sizes")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="intra-op threads, in process and in the replica (default: every core)",
    )
    parser.add_argument("--images", type=int, default=8, help="distinct images (default 8)")
    parser.add_argument("--size", type=int, default=384, help="image side in pixels (default 384)")
    parser.add_argument("--out", type=Path, default=None, help="write every sample as JSON here")
    args = parser.parse_args(argv)
    if (
        min(
            [args.requests, args.images, args.size, args.threads, args.max_batch_size]
            + args.concurrency
            + args.batch_sizes
        )
        < 1
    ):
        parser.error("counts, sizes and levels must be positive")

    from deploy_sdk import Predictor
    from deploy_sdk.benchmarks.machine import load_average, machine_info

    if args.model is None:
        from deploy_sdk.conversion.checkpoint import shipped_model_path

        args.model = shipped_model_path()
    model = _onnx_model(args.model, args.cache)
    images = _images(args.images, args.size)
    with Predictor(model, batch_size=1, threads=args.threads, mask_format="rle") as predictor:
        expected = [len(d) for d in predictor.predict(images)]
    load_start = load_average()
    print("in process:", file=sys.stderr, flush=True)
    before = run_in_process(model, images, args.requests, args.threads, args.batch_sizes)
    best_batch = max(before, key=lambda b: before[b]["images_per_s"])
    print(f"service (each row followed by Predictor in process at batch {best_batch}):", file=sys.stderr, flush=True)
    rows = run_service(
        model,
        images,
        expected,
        args.requests,
        args.concurrency,
        args.batch_wait_ms,
        args.max_batch_size,
        args.threads,
        cpus=os.cpu_count() or 1,
        paired_batch=best_batch,
    )
    table = format_table(before, rows, args.requests)
    print(table)
    if args.out is not None:
        from deploy_sdk.atomic_file import atomic_path

        document = {
            "machine": machine_info(args.threads),
            "load_average": [load_start, load_average()],
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "model": str(model),
            "in_process": before,
            "service": rows,
        }
        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps(document, indent=1))
    failed = sum(r["requests"] - r["ok"] for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
