#!/usr/bin/env bash
# Everything a lent GPU machine is for, in one run of under 8 minutes (the device's time is short and every start
# costs minutes):
#   1. every needs_cuda test (the plugin's CUDA kernels and its torch custom ops against the CPU implementation and
#      torchvision, fp16 kernels included; CUDA pre-processing and mask pasting; the torch backend on CUDA: fp16 /
#      bf16 and CUDA graphs against fp32; the CUDA clock);
#   2. the fp16 kernel checks once more on their own, so that their result stands out in checks.log, and the
#      RoIAlign CUDA kernel timed against torchvision's MultiScaleRoIAlign (benchmarks/roi_align_bench.py);
#   3-4. `maskrcnn-deploy bench --device cuda` for a random-weight R50-FPN at 800x1216 and the shipped model,
#      batch 1, 4, 16: torchvision eager fp32 (torch-eager), the SDK torch backend fp32 (the main system), fp16
#      (sdk-torch-fp16) and fp16 + CUDA graphs (sdk-torch-fp16cg);
#   5. box/mask AP of the shipped model on held-out synthetic images: SDK torch backend fp32 vs fp16 + CUDA graphs;
#   5. optionally (TRAIN_MINUTES > 0, makes the run longer) training of the shipped model, in the background.
# Results in $OUT, at most 8 files (the device tool returns no more): checks.log (environment, tests, progress),
# ap_fp16.json, bench_shapes.json, bench_r50.json, summary.md (the figures for benchmarks/RESULTS.md), and with
# training train.log, training_log.json, model.safetensors parts (<16 MB each; `cat` them back together).
#
#   OUT=$OUT bash scripts/device_session.sh                       # on the GPU machine (~6 min)
#   OUT=dry_out BENCH_DEVICE=cpu QUICK=1 bash scripts/device_session.sh
#                                                                 # CPU dry run: GPU tests skip, tiny bench
# Without CUDA (or with BENCH_DEVICE=cpu) the GPU-only parts say so in checks.log and are skipped or run on the CPU
# in their smallest form (QUICK=1: batch 1, one iteration, 2 AP images), so the script is tested end to end
# anywhere. Runs from the repository root with $PY (default python3) having torch, torchvision, onnxruntime,
# pycocotools, pytest; nothing is installed. The exit status is non-zero when any step failed.
set -u
OUT=${OUT:?set OUT to the folder for the results}
PY=${PY:-python3}
QUICK=${QUICK:-0}
TRAIN_DEVICE=${TRAIN_DEVICE:-cuda}
TRAIN_MINUTES=${TRAIN_MINUTES:-0}
TRAIN_ARGS=${TRAIN_ARGS:---batch-size 16 --lr 0.04 --warmup-iters 100 --workers 10 --threads 2 --sampling torchvision}
BENCH_DEVICE=${BENCH_DEVICE:-cuda}
if [ "$QUICK" = 1 ]; then
  BENCH_ITERS=${BENCH_ITERS:-1}; BENCH_WARMUP=${BENCH_WARMUP:-0}; BATCHES=${BATCHES:-1}; AP_IMAGES=${AP_IMAGES:-2}
  R50_SIZE=${R50_SIZE:-320x480}
else
  BENCH_ITERS=${BENCH_ITERS:-10}; BENCH_WARMUP=${BENCH_WARMUP:-3}; BATCHES=${BATCHES:-1,4,16}
  AP_IMAGES=${AP_IMAGES:-200}; R50_SIZE=${R50_SIZE:-800x1216}
fi
WORK=${WORK:-out/device_session}  # scratch, inside the repository's ignored out/
# Every step after the tests is cut to end by DEADLINE_S seconds after the start (keep it under 8 minutes).
START=$(date +%s)
END=$((START + ${DEADLINE_S:-450}))
left() { local l=$((END - $(date +%s))); if [ "$l" -lt "$1" ]; then echo "$l"; else echo "$1"; fi; }
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$WORK"
FAILED=""
log() { echo "[$(date +%T) +$(($(date +%s) - START))s] $*" | tee -a "$OUT/checks.log"; }
step() {  # step NAME SECONDS CMD...: run with a time limit, log the exit status, remember failures
  local name=$1 budget
  budget=$(left "$2"); shift 2
  if [ "$budget" -lt 10 ]; then log "$name: SKIPPED (out of time)"; FAILED="$FAILED $name"; return; fi
  timeout "$budget" "$@" >>"$OUT/checks.log" 2>&1
  local rc=$?
  log "$name: exit $rc$([ $rc = 124 ] && echo ' (timed out)')"
  [ $rc = 0 ] || FAILED="$FAILED $name"
}

{
  echo "== environment"; date -u; nvidia-smi 2>&1 | head -15
  $PY -c "import sys, torch, torchvision, onnxruntime; print(sys.version.split()[0], 'torch', torch.__version__, \
'torchvision', torchvision.__version__, 'onnxruntime', onnxruntime.__version__, 'cuda', torch.cuda.is_available(), \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
  $PY -c "from deploy_sdk import plugins; print('plugin CUDA kernels:', plugins.has_cuda_kernels())"
  nvcc --version 2>&1 | tail -2; lscpu 2>/dev/null | grep -m1 'Model name'
} >>"$OUT/checks.log" 2>&1
HAS_CUDA=$($PY -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
if [ "$HAS_CUDA" != 1 ]; then
  log "NO CUDA GPU visible to torch: needs_cuda tests will skip (each with its reason); no GPU figures are produced"
  [ "$BENCH_DEVICE" = cuda ] && { log "bench and AP steps fall back to --device cpu"; BENCH_DEVICE=cpu; }
fi
# The systems compared. CUDA graphs exist on CUDA only, and fp16 convolutions on a CPU are slow: the CPU dry run
# compares bf16 eager instead.
if [ "$BENCH_DEVICE" = cuda ]; then
  GRAPHS=fp16cg; COMPARE="torch-eager,sdk-torch-fp16,sdk-torch-fp16cg"
else
  GRAPHS=bf16; COMPARE="torch-eager,sdk-torch-bf16"
fi

TRAIN_PID=
if [ "$TRAIN_MINUTES" != 0 ]; then
  log "training: $TRAIN_MINUTES min on $TRAIN_DEVICE ($TRAIN_ARGS)"
  # shellcheck disable=SC2086
  $PY models/train_shapes.py --out "$WORK/train" --init models/shapes_r18/model.safetensors \
    --device "$TRAIN_DEVICE" --minutes "$TRAIN_MINUTES" --precise-bn 50 --save-every 120 $TRAIN_ARGS \
    >"$OUT/train.log" 2>&1 &
  TRAIN_PID=$!
fi

log "1. needs_cuda tests (-rA: one line per test; skips give their reason)"
step needs_cuda_tests 180 $PY -m pytest -q -rA -p no:cacheprovider -m needs_cuda \
  tests/plugins/test_plugin_cuda.py tests/plugins/test_plugin_roi_align.py tests/plugins/test_plugin_multilevel.py tests/conversion/test_torch_ops.py \
  tests/conversion/test_torch_graphs.py tests/deploy_sdk/test_preprocessing_torch.py tests/deploy_sdk/test_mask_paste.py tests/deploy_sdk/backends/test_backends.py tests/benchmarks/test_bench_harness.py

log "2. fp16 kernel checks (plugin CUDA kernel and torch op in fp16 vs fp32 / torchvision)"
step fp16_kernels 40 $PY -m pytest -q -rA -p no:cacheprovider -m needs_cuda \
  -k "fp16 or dtype1 or low_precision" tests/plugins/test_plugin_cuda.py tests/plugins/test_plugin_roi_align.py \
  tests/plugins/test_plugin_multilevel.py tests/conversion/test_torch_ops.py
# (dtype1 is torch.float16 in test_plugin_cuda's [float32, float16] parametrization; the fp16 tests of the single-
# and multi-level files run on the cuda device parameter; plus the torch op's low-precision checks)

if [ "$HAS_CUDA" = 1 ]; then
  log "2b. the RoIAlign CUDA kernel vs torchvision's MultiScaleRoIAlign, CUDA events, fp32 and fp16"
  step roi_align_cuda 40 $PY -m deploy_sdk.benchmarks.roi_align_bench --device cuda --repeats 20
fi

if [ -n "$TRAIN_PID" ]; then
  wait "$TRAIN_PID"; log "training: exit $?"
  if [ -f "$WORK/train/model.safetensors" ]; then
    cp "$WORK/train/training_log.json" "$OUT/" 2>/dev/null
    split -b 15m -d "$WORK/train/model.safetensors" "$OUT/model.safetensors.part-"
    sha256sum "$WORK/train/model.safetensors" >>"$OUT/checks.log"
  fi
fi

log "3. bench: random-weight R50-FPN $R50_SIZE, batch $BATCHES, $BENCH_DEVICE"
[ -f "$WORK/r50_random.pth" ] || $PY -m deploy_sdk.benchmarks.random_torchvision_checkpoint -o "$WORK/r50_random.pth" \
  >>"$OUT/checks.log" 2>&1
step bench_r50 150 $PY -m deploy_sdk.cli bench "$WORK/r50_random.pth" --device "$BENCH_DEVICE" --compare "$COMPARE" \
  --image-size "$R50_SIZE" --batch-sizes "$BATCHES" --warmup "$BENCH_WARMUP" --iters "$BENCH_ITERS" --quiet \
  --num-images 16 --json "$OUT/bench_r50.json"


log "4. bench: shipped model, batch $BATCHES, $BENCH_DEVICE: sdk-torch (fp32) vs $COMPARE"
step bench_shapes 60 $PY -m deploy_sdk.cli bench models/shapes_r18/model.safetensors --device "$BENCH_DEVICE" \
  --compare "$COMPARE" --batch-sizes "$BATCHES" --warmup "$BENCH_WARMUP" --iters "$BENCH_ITERS" --quiet \
  --json "$OUT/bench_shapes.json"

log "5. AP of the shipped model, SDK torch backend fp32 vs $GRAPHS, $AP_IMAGES held-out images, $BENCH_DEVICE"
step ap_fp16 60 $PY - "$WORK/ap_data" "$AP_IMAGES" "$BENCH_DEVICE" "$GRAPHS" "$OUT/ap_fp16.json" <<'EOF'
import json, sys, time
from pathlib import Path
from deploy_sdk import Predictor
from deploy_sdk.evaluation import evaluate
from deploy_sdk.synthetic_shapes import write_dataset

data, num, device, variant, out = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
if not (data / "annotations.json").is_file() or len(list((data / "images").glob("*.png"))) != num:
    write_dataset(data, num, seed=917_000)  # the held-out seed of the tests (training used small seeds)
options = {"fp32": {}, variant: {"precision": variant[:4], "cuda_graphs": variant.endswith("cg")}}
results = {}
for name, opts in options.items():
    p = Predictor("models/shapes_r18/model.safetensors", backend="torch", device=device, batch_size=4,
                  backend_options=opts or None)
    t = time.perf_counter()
    results[name] = evaluate(p, data / "images", data / "annotations.json", batch_size=4, progress=False)
    print(name, {k: results[name][k] for k in ("box_ap", "mask_ap", "images_per_second")},
          f"{time.perf_counter() - t:.1f} s", flush=True)
delta = {k: round(100 * (results[variant][k] - results["fp32"][k]), 2) for k in ("box_ap", "mask_ap")}
doc = {"device": device, "images": num, "results": results, "delta_points_vs_fp32": delta,
       "goal": "fp16 box AP within 0.5 point of fp32"}
Path(out).write_text(json.dumps(doc, indent=2) + "\n")
print("AP delta (points) vs fp32:", delta)
EOF

log "6. summary.md (figures for benchmarks/RESULTS.md)"
$PY - "$OUT" "$BENCH_DEVICE" "$GRAPHS" >"$OUT/summary.md" 2>>"$OUT/checks.log" <<'EOF'
import json, sys
from pathlib import Path
out, device, graphs = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
print(f"# device session: SDK torch backend vs torchvision eager ({device})\n")
for name, title in (("bench_shapes.json", "shipped model (shapes_r18)"), ("bench_r50.json", "R50-FPN, random weights")):
    path = out / name
    if not path.is_file():
        print(f"## {title}\n\n(no results: see checks.log)\n")
        continue
    doc = json.loads(path.read_text())
    rows = doc["results"]
    m = doc["machine"]
    print(f"## {title}\n\nmachine: {m.get('cpu_model', '?')}, GPUs {m.get('gpus') or 'none'}, torch "
          f"{m.get('versions', {}).get('torch')}, load average {m.get('load_average')}\n")
    print("| system | batch | p50 ms | p90 ms | images/s |\n|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["batch_size"], r["system"])):
        print(f"| {r['system']} | {r['batch_size']} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['throughput_ips']:.1f} |")
    by = {(r["system"], r["batch_size"]): r for r in rows}
    batches = sorted({r["batch_size"] for r in rows})
    sdk = sorted({r["system"] for r in rows if r["system"].startswith("sdk-torch")})
    for b in batches:
        base = by.get(("torch-eager", b))
        if not base:
            continue
        best = max((by[(s, b)] for s in sdk if (s, b) in by), key=lambda r: r["throughput_ips"], default=None)
        if best:
            print(f"\nbatch {b}: fastest SDK torch path {best['system']} = "
                  f"{best['throughput_ips'] / base['throughput_ips']:.2f}x torchvision eager fp32 throughput, "
                  f"p50 {best['p50_ms']:.1f} ms")
    print()
ap = out / "ap_fp16.json"
if ap.is_file():
    doc = json.loads(ap.read_text())
    print(f"## accuracy ({doc['images']} held-out images, {doc['device']})\n")
    for k, v in doc["results"].items():
        print(f"- {k}: box AP {100 * v['box_ap']:.2f}, mask AP {100 * v['mask_ap']:.2f}")
    print(f"- {graphs} - fp32 (points): {doc['delta_points_vs_fp32']}")
EOF
log "summary: exit $?"
ls -la "$OUT" >>"$OUT/checks.log"
log "done in $(($(date +%s) - START)) s; failed steps:${FAILED:- none}"
[ -z "$FAILED" ]
