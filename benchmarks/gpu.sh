#!/usr/bin/env bash
# The GPU suite in one command, sized for a short lease on a GPU machine:
#
#     bash benchmarks/gpu.sh OUTDIR          # -> OUTDIR/{env.txt,check.txt,gpu_main.json,gpu_scaling.json}
#     PYTHONPATH=. python benchmarks/report.py --full OUTDIR/gpu_main.json
#
# 1. the machine and the versions (nvidia-smi, jax / torch / flax / keras, cuDNN, TF32 flags);
# 2. correctness there: benchmarks/gpu_check.py (jaxrnn's backends on the GPU against float64
#    on the CPU);
# 3. benchmarks/run.py on the GPU: matmul peak, the seed training step for the three cells,
#    the stacked bidirectional LSTM with lengths, inference (B 64 and 1), then the scaling
#    grid (T, H, B, LSTM / GRU at H 256). Workers are started in parallel (16 cores), timed
#    one at a time; short budgets (a GPU step is milliseconds; the machine is not shared).
#
# The run to keep goes to benchmarks/results/gpu-<kind>-<date>.json (gpu_main.json renamed).
# CHECK_CELLS: the cells gpu_check.py checks (default all). MAIN_ARGS / SCALING_ARGS: more
# run.py options for a phase (e.g. "--extra jaxrnn-pallas-reread,jaxrnn-pallas-hold2",
# "--cases B128,B512"). Keras may be missing from a GPU image: wheels carried in .whl (keras,
# namex, optree) are installed to /tmp/site when present. JAXRNN_NATIVE=0: the native
# kernels are CPU-only, so skipping their build changes nothing on the GPU. Each phase has a
# time limit, and run.py rewrites its JSON after every case, so a cut-off run keeps what it
# measured. PARALLEL_S (default 0: off): seconds for benchmarks/parallel.py, the linear cells'
# scan and then parallel.rnn against the sequential rnn at issue 36's sizes (-> OUTDIR/
# parallel_cells.json, parallel_rnn.json; rows written as they come).
set -u
OUTDIR=${1:-benchmarks/results/gpu}
mkdir -p "$OUTDIR"
PY=${PYTHON:-python3}
if [ -d .whl ] && ! $PY -c "import keras" 2>/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 JAXRNN_NATIVE=0 KERAS_BACKEND=jax
export XLA_PYTHON_CLIENT_PREALLOCATE=false

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv
    nproc
    $PY - <<'EOF'
import jax, torch, flax, optax
print("jax", jax.__version__, jax.devices(), "default matmul precision:", jax.config.jax_default_matmul_precision)
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(),
      "cudnn.allow_tf32", torch.backends.cudnn.allow_tf32, "matmul.allow_tf32", torch.backends.cuda.matmul.allow_tf32)
print("flax", flax.__version__, "optax", optax.__version__)
try:
    import keras; print("keras", keras.__version__, keras.backend.backend())
except Exception as e:
    print("keras unavailable:", e)
EOF
} 2>&1 | tee "$OUTDIR/env.txt"

# a phase whose limit is 0 is skipped (a lease split over two calls)
if [ "${CHECK_S:-90}" != 0 ]; then
    timeout "${CHECK_S:-90}" $PY benchmarks/gpu_check.py ${CHECK_CELLS:-} 2>&1 | tee "$OUTDIR/check.txt"
fi

RUN=(benchmarks/run.py --device "${DEVICE:-gpu}" --host-env default --reps 4 --budget 0.5 --warmup 2
     --settle 0.05 --round-warmup 0)
if [ "${MAIN_S:-190}" != 0 ]; then
    timeout "${MAIN_S:-190}" $PY "${RUN[@]}" --out "$OUTDIR/${MAIN_NAME:-gpu_main}.json" \
        --workload "${MAIN_WORKLOADS:-matmul,train,train-gated,stack,infer}" ${MAIN_ARGS:-}
fi
if [ "${SCALING_S:-150}" != 0 ]; then
    timeout "${SCALING_S:-150}" $PY "${RUN[@]}" --workload scaling --out "$OUTDIR/gpu_scaling.json" \
        ${SCALING_ARGS:-}
fi
if [ "${PARALLEL_S:-0}" != 0 ]; then
    timeout "$PARALLEL_S" bash -c "$PY benchmarks/parallel.py cells --T 512,4096,32768 --H 64 --B 16 \
        --reps 5 --out '$OUTDIR/parallel_cells.json' && $PY benchmarks/parallel.py rnn \
        --cells gru,simple --T 1000,10000,100000 --H 1,16,64 --B 16 --reps 3 --budget 5 \
        --max-seconds 20 --out '$OUTDIR/parallel_rnn.json'" 2>&1 | tee "$OUTDIR/parallel.txt"
fi
echo "gpu.sh done: $(date -u)"
