"""Benchmark reports: a readable table, the JSON document, side-by-side ratios, and a PNG plot.

JSON document (``SCHEMA`` = ``"maskrcnn-deploy-bench/1"``)::

    {"schema": ..., "command": [...], "settings": {...},
     "machine": {"cpu_model", "logical_cores", "physical_cores", "usable_cores", "threads", "memory_gb", "os",
                 "gpus": [...], "versions": {...}, "load_average", ...},
     "results": [{"system": "sdk-onnxruntime-fp32", "device": "cpu", "batch_size": 1, "iterations", "warmup",
                  "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "throughput_ips",
                  "stages": {"preprocess": {"p50_ms", "mean_ms", "std_ms"}, "inference": ..., "postprocess": ...},
                  "rsd", "peak_rss_mb", "memory_mb", "run_peak_mb", "peak_gpu_mem_mb", "detections_per_image",
                  "image_sizes", "samples_ms", "notes"}],
     "comparisons": [{"system", "baseline", "batch_size", "speedup_p50", "speedup_mean", "speedup_paired_median"}]}

Latencies are per batch in milliseconds; throughput is images per second. A speedup above 1 means ``system``
is faster than ``baseline``. ``rsd`` is the relative standard deviation of the batch latency (std / mean); above
:data:`NOISY_RSD` the command warns (:func:`noise_warnings`). ``peak_rss_mb`` is the whole process's peak while
the system ran (every system lives in the process); ``memory_mb`` is the system's own: the resident memory it
added when built and warmed up, plus ``run_peak_mb``, the highest rise above the resident set during one of its
timed iterations (:mod:`deploy_sdk.benchmarks.memory`; None where the OS cannot measure it). The full schema is
in docs/json_schemas.md and docs/schemas/bench.schema.json.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from deploy_sdk.atomic_file import atomic_path
from deploy_sdk.errors import require

__all__ = [
    "SCHEMA",
    "REQUIRED_RESULT_KEYS",
    "NOISY_RSD",
    "comparisons",
    "format_table",
    "build_document",
    "write_json",
    "write_plot",
    "noise_warnings",
]

# Relative standard deviation of the batch latency above which a system's figures are called noisy.
NOISY_RSD = 0.20

SCHEMA = "maskrcnn-deploy-bench/1"
REQUIRED_RESULT_KEYS = ("system", "batch_size", "p50_ms", "p90_ms", "p99_ms", "throughput_ips", "stages")


def comparisons(results: Sequence[Mapping[str, Any]], prefix: str = "sdk-") -> List[Dict[str, Any]]:
    """Speedups of every system whose name starts with ``prefix`` over every other system, per batch size.

    ``speedup_paired_median`` is the median over iterations of baseline/system latency of the same iteration
    (the same images, run back to back): on a noisy machine it is the most stable of the three.
    If no system has the prefix, the first system is compared with the rest.
    """
    names = list(dict.fromkeys(r["system"] for r in results))
    subjects = [n for n in names if n.startswith(prefix)] or names[:1]
    rows = []
    for batch in dict.fromkeys(r["batch_size"] for r in results):
        at = {r["system"]: r for r in results if r["batch_size"] == batch}
        for s in subjects:
            for b in names:
                if b in subjects or s not in at or b not in at:
                    continue
                sys_r, base_r = at[s], at[b]
                paired = None
                xs, ys = sys_r.get("samples_ms") or [], base_r.get("samples_ms") or []
                if xs and len(xs) == len(ys):
                    paired = float(np.median(np.asarray(ys) / np.asarray(xs)))
                rows.append(
                    {
                        "system": s,
                        "baseline": b,
                        "batch_size": batch,
                        "speedup_p50": base_r["p50_ms"] / sys_r["p50_ms"],
                        "speedup_mean": base_r["mean_ms"] / sys_r["mean_ms"],
                        "speedup_paired_median": paired,
                    }
                )
    return rows


def _fmt(x: Optional[float], digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def format_table(results: Sequence[Mapping[str, Any]], comps: Optional[Sequence[Mapping[str, Any]]] = None) -> str:
    """Markdown table of the results (times in ms per batch), followed by the speedup rows if given."""
    stage_names = list(dict.fromkeys(s for r in results for s in r.get("stages", {})))
    head = ["system", "device", "batch", "p50 ms", "p90 ms", "p99 ms", "mean ± std ms", "img/s"]
    head += [f"{s} p50" for s in stage_names] + ["own MB", "peak RSS MB", "dets/img"]
    if any(r.get("peak_gpu_mem_mb") is not None for r in results):
        head.append("GPU MB")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in results:
        row = [
            r["system"],
            r.get("device", "cpu"),
            str(r["batch_size"]),
            _fmt(r["p50_ms"]),
            _fmt(r["p90_ms"]),
            _fmt(r["p99_ms"]),
            f"{_fmt(r.get('mean_ms'))} ± {_fmt(r.get('std_ms'))}",
            _fmt(r["throughput_ips"], 2),
        ]
        row += [_fmt(r["stages"].get(s, {}).get("p50_ms")) for s in stage_names]
        row += [_fmt(r.get("memory_mb"), 0), _fmt(r.get("peak_rss_mb"), 0), _fmt(r.get("detections_per_image"), 1)]
        if "GPU MB" in head:
            row.append(_fmt(r.get("peak_gpu_mem_mb"), 0))
        lines.append("| " + " | ".join(row) + " |")
    if comps:
        lines += [
            "",
            "| system | vs baseline | batch | speedup (p50) | speedup (mean) | speedup (paired median) |",
            "|---|---|---|---|---|---|",
        ]
        for c in comps:
            lines.append(
                f"| {c['system']} | {c['baseline']} | {c['batch_size']} | {c['speedup_p50']:.2f}× | "
                f"{c['speedup_mean']:.2f}× | "
                f"{'-' if c['speedup_paired_median'] is None else format(c['speedup_paired_median'], '.2f') + '×'} |"
            )
    return "\n".join(lines)


def noise_warnings(results: Sequence[Mapping[str, Any]], iters: int, limit: float = NOISY_RSD) -> List[str]:
    """One line per system and batch size whose latency varies by more than ``limit`` (std / mean), suggesting
    more iterations; empty when every figure is steady."""
    lines = []
    for r in results:
        mean, std = r.get("mean_ms"), r.get("std_ms")
        if not mean or std is None:
            continue
        rsd = float(std) / float(mean)
        if rsd > limit:
            lines.append(
                f"{r['system']} at batch {r['batch_size']}: the latency varies by {rsd:.0%} (std / mean, over "
                f"{limit:.0%}): the machine is busy or the runs differ; the percentiles are less certain. Run more "
                f"iterations (--iters {max(2 * int(iters), 20)}) or on a quieter machine"
            )
    return lines


def build_document(
    machine: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    settings: Optional[Mapping[str, Any]] = None,
    command: Optional[Sequence[str]] = None,
) -> Dict[str, Any]:
    """The JSON document described in the module docstring."""
    for r in results:
        missing = [k for k in REQUIRED_RESULT_KEYS if k not in r]
        if missing:
            raise ValueError(f"result for {r.get('system')!r} lacks {missing}")
    return {
        "schema": SCHEMA,
        "command": list(command or []),
        "settings": dict(settings or {}),
        "machine": dict(machine),
        "results": [dict(r) for r in results],
        "comparisons": comparisons(results),
    }


def write_json(path: os.PathLike, document: Mapping[str, Any]) -> None:
    """Write the document atomically (no partial file on failure)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(document, indent=2) + "\n")


def write_plot(path: os.PathLike, results: Sequence[Mapping[str, Any]], title: str = "") -> None:
    """PNG: p50 batch latency (bars to p90) and throughput against batch size, one line per system."""
    require("matplotlib", "bench", "the benchmark plot (--plot)")
    import matplotlib

    matplotlib.use("Agg")  # no display needed; must precede pyplot's import
    import matplotlib.pyplot as plt

    systems: Dict[str, List[Mapping[str, Any]]] = {}
    for r in results:
        label = r["system"] if r.get("device", "cpu") == "cpu" else f"{r['system']} ({r['device']})"
        systems.setdefault(label, []).append(r)
    fig, (ax_lat, ax_thr) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, rows in systems.items():
        rows = sorted(rows, key=lambda r: r["batch_size"])
        bs = [r["batch_size"] for r in rows]
        p50 = np.array([r["p50_ms"] for r in rows])
        p90 = np.array([r["p90_ms"] for r in rows])
        ax_lat.errorbar(bs, p50, yerr=[np.zeros_like(p50), p90 - p50], marker="o", capsize=3, label=label)
        ax_thr.plot(bs, [r["throughput_ips"] for r in rows], marker="o", label=label)
    all_bs = sorted({r["batch_size"] for r in results})
    for ax, ylabel in ((ax_lat, "latency per batch, ms (p50, bar to p90)"), (ax_thr, "throughput, images/s")):
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        if len(all_bs) > 1 and all_bs[0] > 0:
            ax.set_xscale("log", base=2)
        ax.set_xticks(all_bs, [str(b) for b in all_bs])
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    ax_thr.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)
