"""`maskrcnn-deploy serve MODEL`: the online service (Ray Serve) on HTTP: ``POST /predict``, ``GET /healthz``,
``GET /metadata``; see :mod:`deploy_sdk.serving.online` for the endpoints and :mod:`deploy_sdk.serving.codec` for
the request and response formats.

Starts a local Ray instance (or joins ``--address``), deploys the application and serves until SIGTERM or Ctrl-C.
Stopping is graceful: the application is deleted first, so its replicas finish the requests they hold (up to
``--graceful-timeout`` seconds) while the HTTP proxy delivers their answers; then a local Ray instance is shut down
(a joined cluster keeps running, with its other applications).
Needs the ``serve`` extra (``pip install 'maskrcnn-deploy[serve]'``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from deploy_sdk.commands.options import add_runtime_arguments, positive_int, sigterm_unwinds


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0.0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _bounds(text: str):
    lo, sep, hi = text.partition(":")
    try:
        bounds = (int(lo), int(hi))
    except ValueError:
        bounds = None
    if not sep or bounds is None or not 0 <= bounds[0] <= bounds[1] or bounds[1] < 1:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX replicas with 0 <= MIN <= MAX, MAX >= 1, got {text!r}")
    return bounds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="model: .onnx (onnxruntime or openvino), .engine (tensorrt)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)"
    )
    parser.add_argument("--port", type=positive_int, default=8000, help="HTTP port (default 8000)")
    parser.add_argument("--route-prefix", default="/", help="URL prefix of the endpoints (default /)")
    parser.add_argument(
        "--app-name",
        default="maskrcnn",
        help="Ray Serve application name (default maskrcnn); one name per model on a shared cluster",
    )
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument("--replicas", type=positive_int, default=1, help="replicas of the model (default 1)")
    scale.add_argument(
        "--autoscale",
        type=_bounds,
        default=None,
        metavar="MIN:MAX",
        help="autoscale between MIN and MAX replicas on the number of ongoing requests",
    )
    parser.add_argument(
        "--max-batch-size",
        type=positive_int,
        default=8,
        help="most images in one model call, gathered across concurrent requests (default 8)",
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=_non_negative_float,
        default=10.0,
        help="longest wait for a batch to fill (default 10 ms)",
    )
    add_runtime_arguments(parser, per="replica")
    parser.add_argument("--num-cpus", type=_non_negative_float, default=1.0, help="Ray CPUs per replica (default 1)")
    parser.add_argument(
        "--num-gpus",
        type=_non_negative_float,
        default=0.0,
        help="Ray GPUs per replica, for the GPU backends (default 0)",
    )
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=None,
        help="drop detections below this score (default: the model's own threshold)",
    )
    parser.add_argument(
        "--max-body-mb",
        type=_non_negative_float,
        default=32.0,
        help="largest request body accepted, in MiB (default 32); larger ones get HTTP 413",
    )
    parser.add_argument(
        "--max-images", type=positive_int, default=16, help="most images in one multipart request (default 16)"
    )
    parser.add_argument(
        "--graceful-timeout",
        type=_non_negative_float,
        default=20.0,
        help="seconds a stopping replica may spend finishing its requests (default 20)",
    )
    parser.add_argument(
        "--address", default=None, help="Ray cluster to join (host:port or 'auto'); default: start a local one"
    )


def run(args: argparse.Namespace) -> int:
    from deploy_sdk.errors import DeploySdkError, require
    from deploy_sdk.serving.codec import RequestLimits
    from deploy_sdk.serving.online import build_app

    body = int(args.max_body_mb * 1024 * 1024)
    if body < 1:
        raise DeploySdkError(f"--max-body-mb {args.max_body_mb} is too small")
    ray = require("ray", "serve", "maskrcnn-deploy serve")
    serve = require("ray.serve", "serve", "maskrcnn-deploy serve")
    app = build_app(
        args.model,
        backend=args.backend,
        device=args.device,
        threads=args.threads,
        score_threshold=args.score_threshold,
        max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
        replicas=args.replicas,
        autoscaling=args.autoscale,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        limits=RequestLimits(max_body_bytes=body, max_images=args.max_images),
        graceful_shutdown_timeout_s=args.graceful_timeout,
    )
    started_here = args.address is None and not ray.is_initialized()
    # ray.init installs its own SIGTERM handler (sys.exit): ours goes in after it, so SIGTERM unwinds like Ctrl-C.
    ray.init(address=args.address, include_dashboard=False)
    try:
        with sigterm_unwinds():
            try:
                serve.start(http_options={"host": args.host, "port": args.port})
                try:
                    serve.run(app, name=args.app_name, route_prefix=args.route_prefix, blocking=False)
                except Exception as exc:
                    reason = _replica_error(serve, args.app_name) or _last_line(exc)
                    raise DeploySdkError(f"the application did not start: {reason}") from exc
                prefix = "/" + args.route_prefix.strip("/")
                base = f"http://{args.host}:{args.port}{'' if prefix == '/' else prefix}"
                print(
                    f"serving {args.model} at {base}/predict (also {base}/healthz, {base}/metadata); "
                    "SIGTERM or Ctrl-C stops",
                    file=sys.stderr,
                    flush=True,
                )
                while True:
                    time.sleep(1.0)
            except KeyboardInterrupt:
                print("stopping: replicas finish the requests they hold", file=sys.stderr, flush=True)
            finally:
                # Deleting the application first drains its replicas (each finishes the requests it holds, up to
                # --graceful-timeout) while the HTTP proxy stays up to deliver those answers; shutting Serve down
                # at once would drop the proxy and the connections of in-flight requests with it.
                try:
                    serve.delete(args.app_name, _blocking=True)
                except Exception as exc:
                    print(f"maskrcnn-deploy serve: deleting the application failed: {exc}", file=sys.stderr)
    finally:
        if started_here:  # a cluster joined with --address keeps its Serve instance and other applications
            serve.shutdown()
            ray.shutdown()
    print("stopped", file=sys.stderr, flush=True)
    return 0


def _last_line(exc: BaseException) -> str:
    """The last non-empty line of an exception's message: for a replica that failed to start, the error the
    replica raised (Ray's message is the whole remote traceback)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:400]


def _replica_error(serve, app_name: str) -> str:
    """The error a replica raised while starting, from Serve's status of the application (its deployments'
    messages hold the replica's traceback); empty when there is none to find."""
    import re

    try:
        app = serve.status().applications.get(app_name)
        texts = [str(d.message or "") for d in app.deployments.values()] + [str(app.message or "")] if app else []
    except Exception:
        return ""
    pattern = re.compile(r"^\s*(?:[\w.]+\.)?(\w+(?:Error|Exception)): (\S.*)$")
    for text in texts:
        for line in reversed(text.splitlines()):
            match = pattern.match(line)
            if match and match.group(1) not in ("RuntimeError", "RayTaskError"):
                return f"{match.group(1)}: {match.group(2)}"[:400]
    return ""
