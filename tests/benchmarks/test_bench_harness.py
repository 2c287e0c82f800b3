"""Benchmark harness and report: statistics, clocks, alternation, JSON schema, table and plot."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from compare import FLOAT64_SAME_FORMULA
from repo_paths import REPO_ROOT

from deploy_sdk.benchmarks import harness, report, timing
from deploy_sdk.benchmarks.harness import CpuClock, LatencyStats, run_side_by_side


def test_stats_hand_worked_example():
    # 1..10 ms: linear-interpolated percentiles are 1 + q/100 * 9.
    s = LatencyStats.from_samples([float(v) for v in range(10, 0, -1)])
    assert s.count == 10
    assert s.p50_ms == pytest.approx(5.5)
    assert s.p90_ms == pytest.approx(9.1)
    assert s.p99_ms == pytest.approx(9.91)
    assert s.mean_ms == pytest.approx(5.5)
    assert s.std_ms == pytest.approx(np.sqrt(8.25))  # population variance of 1..10 is (10^2 - 1) / 12
    assert (s.min_ms, s.max_ms) == (1.0, 10.0)
    assert s.throughput_ips(4) == pytest.approx(4 * 1000 / 5.5)


def test_stats_against_numpy_percentiles():
    x = np.random.default_rng(3).lognormal(3.0, 0.5, size=257)
    s = LatencyStats.from_samples(x.tolist())
    for q, got in ((50, s.p50_ms), (90, s.p90_ms), (99, s.p99_ms)):
        assert got == FLOAT64_SAME_FORMULA.approx(float(np.percentile(x, q)))
    assert s.mean_ms == pytest.approx(float(x.mean()))
    assert s.std_ms == pytest.approx(float(x.std()))
    with pytest.raises(ValueError):
        LatencyStats.from_samples([])


def test_cpu_clock_laps_accumulate(monkeypatch):
    ticks = iter([0, 2_000_000, 5_000_000, 6_000_000, 10_000_000])  # ns
    monkeypatch.setattr(timing.time, "perf_counter_ns", lambda: next(ticks))
    clock = CpuClock()
    clock.start()
    clock.lap("preprocess")  # 2 ms
    clock.lap("inference")  # 3 ms
    clock.lap("inference")  # +1 ms
    clock.record("postprocess", 0.25)
    out = clock.stop()  # total 10 ms
    assert out == {"preprocess": 2.0, "inference": 4.0, "postprocess": 0.25, "total": 10.0}


class _FakeDet:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


class _FakeSystem:
    """Records which images it saw and in which global order it ran."""

    def __init__(self, name, log, dets_per_image=2):
        self.name = name
        self.device = "cpu"
        self.notes = f"fake {name}"
        self.log = log
        self.dets = dets_per_image

    def run(self, images, clock):
        self.log.append((self.name, tuple(int(im[0, 0, 0]) for im in images)))
        clock.lap("preprocess")
        clock.lap("inference")
        clock.lap("postprocess")
        return [_FakeDet(self.dets) for _ in images]


def test_side_by_side_alternates_on_the_same_images():
    images = [np.full((4, 6, 3), i, dtype=np.uint8) for i in range(5)]
    log = []
    systems = [_FakeSystem("a", log, 1), _FakeSystem("b", log, 2), _FakeSystem("c", log, 3)]
    results = run_side_by_side(systems, images, batch_sizes=[1, 2], warmup=1, iters=4, progress=False)
    assert [(r.system, r.batch_size) for r in results] == [("a", 1), ("b", 1), ("c", 1), ("a", 2), ("b", 2), ("c", 2)]
    # Batch size 1: one warm-up round (a, b, c), then 4 timed rounds with the start rotating a, b, c, a.
    timed = log[3:15]
    assert [n for n, _ in timed] == list("abcbcacababc")
    for round_ in range(4):
        seen = {imgs for _, imgs in timed[3 * round_ : 3 * round_ + 3]}
        assert len(seen) == 1, "every system of one round must get the same images"
    # Batch size 2 cycles through the pool: iteration i takes images 2i, 2i+1 (mod 5).
    assert log[15] == ("a", (0, 1))
    assert log[18][1] == (2, 3) and log[21][1] == (4, 0)
    for r in results:
        assert r.latency.count == 4 and len(r.samples_ms) == 4
        assert set(r.stages) == {"preprocess", "inference", "postprocess"}
        assert r.image_sizes == [[4, 6]]
        assert r.notes.startswith("fake")
    assert [r.detections_per_image for r in results[:3]] == [1.0, 2.0, 3.0]


def test_side_by_side_rejects_bad_settings():
    with pytest.raises(ValueError):
        run_side_by_side([], [np.zeros((2, 2, 3), np.uint8)], [1], 0, 1, progress=False)
    with pytest.raises(ValueError):
        run_side_by_side([_FakeSystem("a", [])], [np.zeros((2, 2, 3), np.uint8)], [1], 0, 0, progress=False)


def test_peak_rss_tracks_an_allocation():
    # In a fresh interpreter: in the test process, earlier tests' freed-but-resident memory and whatever the
    # kernel allows for resetting the peak make the numbers depend on test order.
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from deploy_sdk.benchmarks import harness\n"
        "before = harness.peak_rss_mb()\n"
        "block = np.ones(64 * 2**20, dtype=np.uint8)\n"
        "after = harness.peak_rss_mb()\n"
        "del block\n"
        "reset = harness.reset_peak_rss()\n"
        "print(before, after, reset, harness.peak_rss_mb())\n"
    )
    root = REPO_ROOT
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    before, after, reset, after_reset = out.stdout.split()
    before, after, after_reset = float(before), float(after), float(after_reset)
    assert before > 0
    assert after >= before + 50, (before, after)
    if reset == "True":
        assert after_reset < after


def test_machine_info_describes_the_machine():
    info = harness.machine_info(threads=2)
    assert info["cpu_model"]
    assert info["logical_cores"] >= 1 and info["usable_cores"] >= 1
    assert info["threads"] == 2
    assert info["versions"]["numpy"] == np.__version__
    assert "CPUExecutionProvider" in info["onnxruntime_providers"]
    json.dumps(info)  # must be JSON-serializable as is


def _result(system, batch, p50, samples):
    return {
        "system": system,
        "device": "cpu",
        "batch_size": batch,
        "p50_ms": p50,
        "p90_ms": p50 * 1.1,
        "p99_ms": p50 * 1.2,
        "mean_ms": float(np.mean(samples)),
        "std_ms": 1.0,
        "throughput_ips": 1000.0 * batch / float(np.mean(samples)),
        "samples_ms": samples,
        "stages": {"inference": {"p50_ms": p50 * 0.8, "mean_ms": p50 * 0.8, "std_ms": 0.1}},
        "peak_rss_mb": 500.0,
        "peak_gpu_mem_mb": None,
        "detections_per_image": 3.0,
    }


def test_comparisons_hand_worked():
    results = [
        _result("sdk-onnxruntime-fp32", 1, 100.0, [100.0, 90.0, 120.0]),
        _result("torch-eager", 1, 150.0, [160.0, 150.0, 120.0]),
        _result("torchvision-onnx", 1, 200.0, [200.0, 200.0, 200.0]),
    ]
    comps = report.comparisons(results)
    assert [(c["system"], c["baseline"]) for c in comps] == [
        ("sdk-onnxruntime-fp32", "torch-eager"),
        ("sdk-onnxruntime-fp32", "torchvision-onnx"),
    ]
    assert comps[0]["speedup_p50"] == pytest.approx(1.5)
    assert comps[0]["speedup_mean"] == pytest.approx((430 / 3) / (310 / 3))
    # per-iteration ratios 1.6, 1.666.., 1.0 -> median 1.6
    assert comps[0]["speedup_paired_median"] == pytest.approx(1.6)
    assert comps[1]["speedup_p50"] == pytest.approx(2.0)


def test_document_schema_json_and_table(tmp_path):
    results = [_result("sdk-onnxruntime-fp32", b, 10.0 * b, [10.0 * b] * 3) for b in (1, 4)]
    results += [_result("torch-eager", b, 15.0 * b, [15.0 * b] * 3) for b in (1, 4)]
    doc = report.build_document({"cpu_model": "x"}, results, settings={"iters": 3}, command=["bench", "m.onnx"])
    path = tmp_path / "out" / "bench.json"
    report.write_json(path, doc)
    back = json.loads(path.read_text())
    assert back["schema"] == report.SCHEMA
    assert back["machine"] == {"cpu_model": "x"}
    for r in back["results"]:
        for key in ("system", "batch_size", "p50_ms", "p90_ms", "p99_ms", "throughput_ips", "stages"):
            assert key in r
    assert {c["batch_size"] for c in back["comparisons"]} == {1, 4}
    assert not list(path.parent.glob("*.partial"))
    table = report.format_table(results, back["comparisons"])
    assert "| sdk-onnxruntime-fp32 | cpu | 4 | 40.0 |" in table
    assert "1.50×" in table
    with pytest.raises(ValueError, match="lacks"):
        report.build_document({}, [{"system": "x"}])


def test_plot_is_a_png(tmp_path):
    results = [
        _result(s, b, t * b, [t * b] * 2)
        for s, t in (("sdk-onnxruntime-fp32", 10.0), ("torch-eager", 14.0))
        for b in (1, 2, 4)
    ]
    path = tmp_path / "plot.png"
    report.write_plot(path, results, title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5000


@pytest.mark.needs_cuda
def test_cuda_clock_charges_async_work_to_its_stage():
    torch = pytest.importorskip("torch")
    a = torch.randn(2048, 2048, device="cuda")
    torch.cuda.synchronize()
    clock = harness.CudaClock("cuda")
    clock.start()
    b = a.clone()
    clock.lap("preprocess")
    for _ in range(20):  # launched asynchronously: a host clock would see almost none of this
        b = b @ a
        b = b / b.norm()
    clock.lap("inference")
    clock.record("postprocess", 1.5)
    out = clock.stop()
    # Independent reference: the same work timed with a host clock around a full synchronization.
    torch.cuda.synchronize()
    cpu = CpuClock()
    cpu.start()
    for _ in range(20):
        b = b @ a
        b = b / b.norm()
    torch.cuda.synchronize()
    cpu.lap("inference")
    ref = cpu.stop()["inference"]
    assert out["postprocess"] == 1.5
    assert out["inference"] > out["preprocess"]
    assert 0.5 * ref < out["inference"] < 2.0 * ref + 1.0
    assert out["total"] >= out["preprocess"] + out["inference"] - 1e-3


def test_interrupted_run_keeps_the_finished_batch_sizes():
    class Interrupting(_FakeSystem):
        def run(self, images, clock):
            if len(images) == 2:
                raise KeyboardInterrupt
            return super().run(images, clock)

    images = [np.zeros((4, 4, 3), np.uint8)] * 2
    kept = []
    with pytest.raises(KeyboardInterrupt):
        run_side_by_side(
            [_FakeSystem("a", []), Interrupting("b", [])],
            images,
            [1, 2],
            warmup=0,
            iters=2,
            progress=False,
            results=kept,
        )
    assert [(r.system, r.batch_size) for r in kept] == [("a", 1), ("b", 1)]


def test_memory_is_measured_per_system():
    """Two systems in one process: one keeps 48 MiB after its first run and allocates 96 MiB more during each
    run, the other allocates nothing. Each gets its own figure, not the process's (in a fresh interpreter, for
    the reason above)."""
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from deploy_sdk.benchmarks.harness import run_side_by_side, reset_peak_rss\n"
        "class S:\n"
        "    device = 'cpu'; notes = ''\n"
        "    def __init__(self, name, big): self.name, self.big, self.kept, self.load_rss_mb = name, big, None, 0.0\n"
        "    def run(self, images, clock):\n"
        "        if self.big:\n"
        "            if self.kept is None: self.kept = np.ones(48 * 2**20, np.uint8)\n"
        "            block = np.ones(96 * 2**20, np.uint8); del block\n"
        "        clock.lap('inference')\n"
        "        return [[] for _ in images]\n"
        "r = run_side_by_side([S('big', True), S('small', False)], [np.zeros((4, 4, 3), np.uint8)], [1], 1, 3,\n"
        "                     progress=False)\n"
        "print(reset_peak_rss(), *[f'{x.run_peak_mb} {x.memory_mb}' for x in r])\n"
    )
    root = REPO_ROOT
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    reset, big_peak, big_mem, small_peak, small_mem = out.stdout.split()
    if reset != "True":  # no clear_refs: the per-run rise cannot be measured, and is reported as unknown
        assert big_peak == small_peak == big_mem == small_mem == "None"
        return
    big_peak, big_mem, small_peak, small_mem = (float(v) for v in (big_peak, big_mem, small_peak, small_mem))
    assert 90 <= big_peak <= 120, big_peak
    assert 48 + 90 <= big_mem <= 48 + 130, big_mem
    assert small_peak < 20 and small_mem < 20, (small_peak, small_mem)


def test_noise_warnings_hand_worked():
    rows = [
        {"system": "a", "batch_size": 1, "mean_ms": 10.0, "std_ms": 3.0},  # 30%: noisy
        {"system": "b", "batch_size": 1, "mean_ms": 10.0, "std_ms": 2.0},  # 20%: at the limit, not over
        {"system": "a", "batch_size": 4, "mean_ms": 40.0, "std_ms": 1.0},
    ]
    lines = report.noise_warnings(rows, iters=30)
    assert len(lines) == 1
    assert lines[0].startswith("a at batch 1: the latency varies by 30%") and "--iters 60" in lines[0]
    assert report.noise_warnings(rows, iters=5, limit=0.01)[2].endswith("quieter machine")
    assert "--iters 20" in report.noise_warnings(rows, iters=5)[0]  # at least 20


def test_machine_info_names_the_vector_extensions_and_the_caps(monkeypatch):
    from deploy_sdk.benchmarks.machine import ISA_FLAGS

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    info = harness.machine_info(threads=2)
    assert info["isa_limits"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    # Against the kernel's own flag list, read here independently.
    if not os.path.exists("/proc/cpuinfo"):
        pytest.skip("no /proc/cpuinfo on this OS to compare the flags with")
    with open("/proc/cpuinfo") as f:
        flags = set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
    assert info["cpu_isa"] == [flag for flag in ISA_FLAGS if flag in flags]
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert harness.machine_info()["isa_limits"] == {}
