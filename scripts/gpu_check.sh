#!/usr/bin/env bash
# GPU checks for a machine with an NVIDIA GPU (sized for an H100/H200 with CUDA 13, torch and CuPy;
# TensorRT and onnxruntime-gpu are used when present). Under 8 minutes there:
#   1. every GPU test (pytest -m gpu: the CuPy loop on the torch backend, ORT-CUDA and TensorRT
#      where installed, TensorRT-RTX plans where its GPU target exists); absent libraries skip
#      with their reason;
#   2. `gligen-rt bench --device cuda` at sd14, 512 px, 20 steps (reference and eager PyTorch, and
#      our tensorrt / ort-cuda backends where installed).
# Everything it measured goes into OUT (default gpu-results/<UTC time>): summary.txt, one log per
# step, pytest's junit XML, the benchmark's bench.jsonl / .md / .png, the GPU and library versions.
#
#   bash scripts/gpu_check.sh [OUT]
#   GPU_CHECK_DRY_RUN=1 bash scripts/gpu_check.sh OUT   # no GPU: checks the script, runs the GPU
#                                                       # tests (they skip), no benchmark
#
# Without network access the project is installed from this checkout (no dependencies fetched);
# wheels of anything else missing (e.g. ftfy, diffusers, clip-anytorch) can be put in ./wheels.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-results/$(date -u +%Y%m%dT%H%M%SZ)}
DRY=${GPU_CHECK_DRY_RUN:-0}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
STATUS=0

log() { echo "[gpu_check $(date -u +%H:%M:%S)] $*" | tee -a "$OUT/summary.txt"; }

# step NAME LIMIT_S COMMAND...: run with a time limit, log to OUT/NAME.log, record rc and seconds.
step() {
    local name=$1 limit=$2
    shift 2
    log "start $name (limit ${limit}s): $*"
    local start rc
    start=$(date +%s)
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    log "done  $name: rc=$rc in $(($(date +%s) - start)) s"
    tail -n 5 "$OUT/$name.log" | sed 's/^/    /' | tee -a "$OUT/summary.txt"
    [ "$rc" -eq 0 ] || STATUS=1
}

# -- environment ---------------------------------------------------------------------------------
{
    echo "git: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1 || echo "nvidia-smi: none"
    "$PY" - <<'EOF'
import importlib
for name in ("torch", "cupy", "onnxruntime", "tensorrt", "tensorrt_rtx", "onnx", "diffusers",
             "transformers", "tokenizers", "ftfy", "numpy"):
    try:
        m = importlib.import_module(name)
        print(f"{name}: {getattr(m, '__version__', '?')}")
    except Exception as e:  # report every library, present or not
        print(f"{name}: missing ({type(e).__name__})")
try:
    import onnxruntime
    print("onnxruntime providers:", onnxruntime.get_available_providers())
except Exception:
    pass
try:
    import cupy
    print("cupy devices:", cupy.cuda.runtime.getDeviceCount())
except Exception as e:
    print("cupy devices: none", type(e).__name__)
EOF
} >"$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt" | tee -a "$OUT/summary.txt"

# -- install this checkout (offline: no dependencies are fetched) -------------------------------
if ! "$PY" -c "import gligen_rt.runtime" 2>/dev/null; then
    if [ -d wheels ]; then
        step install-wheels 120 "$PY" -m pip install --no-index --find-links wheels --no-deps wheels/*.whl
    fi
    step install 120 "$PY" -m pip install --no-deps --no-build-isolation -e .
fi

# -- 1. every GPU test ----------------------------------------------------------------------------
# The tiny engine folders are exported once into one cache shared by the test files.
export GLIGEN_RT_TEST_CACHE=${GLIGEN_RT_TEST_CACHE:-$OUT/.engines}
# Only the files that hold GPU tests are collected (collecting the whole suite imports everything).
mapfile -t GPU_TEST_FILES < <(grep -l "mark.gpu" tests/test_*.py)
step gpu-tests 240 "$PY" -m pytest -q -ra -m gpu -p no:cacheprovider --junitxml="$OUT/gpu-tests.xml" \
    "${GPU_TEST_FILES[@]}"

# -- 2. the benchmark -----------------------------------------------------------------------------
BACKENDS=$("$PY" - <<'EOF'
import importlib.util
found = []
if importlib.util.find_spec("tensorrt") is not None:
    found.append("tensorrt")
try:
    import onnxruntime
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        found.append("ort-cuda")
except ImportError:
    pass
print(",".join(found) or "none")
EOF
)
log "our GPU backends here: $BACKENDS"
if [ "$DRY" = "1" ]; then
    log "dry run: benchmark left out (gligen-rt bench --model sd14 --size 512 --steps 20 --device cuda --backends $BACKENDS)"
else
    step bench 240 "$PY" -m gligen_rt.benchmarks.cli bench --model sd14 --size 512 --steps 20 --beta 0.3 \
        --repeats 3 --warmup 1 --device cuda --backends "$BACKENDS" --out-dir "$OUT/bench"
fi

rm -rf "$OUT/.engines"
log "status: $([ "$STATUS" -eq 0 ] && echo ok || echo FAILED) (results in $OUT)"
exit "$STATUS"
