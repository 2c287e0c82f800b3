#!/usr/bin/env bash
# Everything a lent GPU machine is for, in one run (the device's time is short and every start costs minutes):
#   1. with TRAIN_MINUTES > 0, training of the shipped model on the GPU, continuing from models/shapes_r18 (in
#      the background; the shipped weights came from TRAIN_MINUTES=6.5 on 2026-11-30, see its MODEL_CARD.md);
#   2. meanwhile, every needs_cuda test (the plugin's CUDA kernels against the CPU implementation and
#      torchvision, CUDA pre-processing, CUDA mask pasting, the torch backend on CUDA, the CUDA clock);
#   3. after training, on a quiet GPU: the RoIAlign timing test and `maskrcnn-deploy bench` on CUDA for the
#      shipped model and a random-weight R50-FPN at 800x1216 (SDK torch backend vs torchvision eager).
# The results land in $OUT (at most 8 files: the device tool returns no more): train.log, training_log.json,
# the trained model.safetensors in <16 MB parts (join with `cat model.safetensors.part-* > model.safetensors`),
# checks.log (environment + tests), bench_shapes.json, bench_r50.json.
#
#   OUT=$OUT bash scripts/device_session.sh                        # on the GPU machine: checks only (~3 min)
#   OUT=$OUT TRAIN_MINUTES=6.5 bash scripts/device_session.sh      # with training (~9 min)
#   OUT=out/dry TRAIN_DEVICE=cpu TRAIN_MINUTES=0.3 BENCH_DEVICE=cpu bash scripts/device_session.sh   # dry run
#
# Runs from the repository root with the machine's own python3 (torch, torchvision, onnxruntime, safetensors,
# pytest); nothing is installed.
set -u
OUT=${OUT:?set OUT to the folder for the results}
PY=${PY:-python3}
TRAIN_DEVICE=${TRAIN_DEVICE:-cuda}
TRAIN_MINUTES=${TRAIN_MINUTES:-0}
TRAIN_ARGS=${TRAIN_ARGS:---batch-size 16 --lr 0.04 --warmup-iters 100 --workers 10 --threads 2 --sampling torchvision}
BENCH_DEVICE=${BENCH_DEVICE:-cuda}
BENCH_ITERS=${BENCH_ITERS:-20}
WORK=${WORK:-out/device_session}  # scratch, inside the repository's ignored out/
# The later stages are cut to end by DEADLINE_S seconds after the start (keep it under the device call's limit).
END=$(($(date +%s) + ${DEADLINE_S:-570}))
left() { local l=$((END - $(date +%s))); if [ "$l" -lt "$1" ]; then echo "$l"; else echo "$1"; fi; }
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$WORK"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/checks.log"; }

{
  echo "== environment"; date -u; nvidia-smi 2>&1 | head -15
  $PY -c "import sys, torch, torchvision, onnxruntime; print(sys.version.split()[0], 'torch', torch.__version__, \
'torchvision', torchvision.__version__, 'onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers(), \
'cuda', torch.cuda.is_available())"
  nvcc --version 2>&1 | tail -2; cmake --version 2>&1 | head -1
} >>"$OUT/checks.log" 2>&1

TRAIN_PID=
if [ "$TRAIN_MINUTES" != 0 ]; then
  log "training: $TRAIN_MINUTES min on $TRAIN_DEVICE ($TRAIN_ARGS)"
  # shellcheck disable=SC2086
  $PY models/train_shapes.py --out "$WORK/train" --init models/shapes_r18/model.safetensors \
    --device "$TRAIN_DEVICE" --minutes "$TRAIN_MINUTES" --precise-bn 50 --save-every 120 $TRAIN_ARGS \
    >"$OUT/train.log" 2>&1 &
  TRAIN_PID=$!
fi

log "needs_cuda tests (the RoIAlign timing test waits for a quiet GPU)"
$PY -m pytest -q -ra -p no:cacheprovider --continue-on-collection-errors -m needs_cuda -k "not timing" tests/test_plugin_cuda.py \
  tests/test_preprocessing_torch.py tests/test_mask_paste.py tests/test_backends.py tests/test_bench_harness.py \
  >>"$OUT/checks.log" 2>&1
log "needs_cuda tests: exit $?"

if [ -n "$TRAIN_PID" ]; then
  wait "$TRAIN_PID"
  log "training: exit $?"
fi
if [ -n "$TRAIN_PID" ] && [ -f "$WORK/train/model.safetensors" ]; then
  cp "$WORK/train/training_log.json" "$OUT/" 2>/dev/null
  split -b 15m -d "$WORK/train/model.safetensors" "$OUT/model.safetensors.part-"
  sha256sum "$WORK/train/model.safetensors" >>"$OUT/checks.log"
fi

log "RoIAlign timing on a quiet GPU"
timeout "$(left 120)" $PY -m pytest -q -s -p no:cacheprovider -m needs_cuda -k timing tests/test_plugin_cuda.py \
  >>"$OUT/checks.log" 2>&1
log "timing: exit $?"

log "bench: shipped model, SDK torch backend vs torch eager, $BENCH_DEVICE"
timeout "$(left 120)" $PY -m deploy_sdk.cli bench models/shapes_r18/model.safetensors --device "$BENCH_DEVICE" \
  --compare torch-eager --batch-sizes 1,8 --warmup 3 --iters "$BENCH_ITERS" --quiet \
  --json "$OUT/bench_shapes.json" >>"$OUT/checks.log" 2>&1
log "bench shapes: exit $?"

log "bench: random-weight R50-FPN 800x1216, $BENCH_DEVICE"
$PY -m deploy_sdk.benchmarks.random_torchvision_checkpoint -o "$WORK/r50_random.pth" >>"$OUT/checks.log" 2>&1 &&
  timeout "$(left 150)" $PY -m deploy_sdk.cli bench "$WORK/r50_random.pth" --device "$BENCH_DEVICE" --compare torch-eager \
    --image-size 800x1216 --batch-sizes 1,4 --warmup 3 --iters "$BENCH_ITERS" --quiet \
    --json "$OUT/bench_r50.json" >>"$OUT/checks.log" 2>&1
log "bench r50: exit $?"
ls -la "$OUT" >>"$OUT/checks.log"
