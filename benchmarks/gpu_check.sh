#!/usr/bin/env bash
# One GPU check that fits a 10-minute device call: environment, install, CUDA correctness of
# the fused kernels against the reference, then the roofline benchmark (--quick).
#
#   bash benchmarks/gpu_check.sh        # from the repository root (or anywhere: it cd's there)
#
# Environment (all optional):
#   OUT                  output folder (default benchmarks/results); everything printed is
#                        also written to $OUT/gpu_check.log
#   ADEX_WHEELS          folder of wheels for the offline machine (pint and its dependencies,
#                        optionally spikingjelly for the peer rows); default .whl (filled by
#                        benchmarks/fetch_wheels.sh, carried with the call), else shared/wheels
#   PYTHON               interpreter (default: python, else python3)
#   ADEX_TEST_TIMEOUT    seconds for the pytest run (default 100)
#   ADEX_CUDA_TIMEOUT    seconds for cuda_check.py (default 150)
#   ADEX_BENCH_BUDGET    roofline --budget-s (default 220)
#   ADEX_BENCH_TIMEOUT   hard limit for the roofline run in seconds (default 280)
#   ADEX_GIT_COMMIT      commit to record when the copy has no .git
#   ADEX_RECURRENT_TIMEOUT  seconds for benchmarks/recurrent_bench.py (adex.Recurrent fwd+bwd,
#                        T=500, batch 64, N=256, its fused-vs-loop check first); default 0:
#                        skipped (the defaults above fill a 10-minute call; set it, e.g. 240
#                        with ADEX_BENCH_TIMEOUT=60, to run it in the same call)
# Defaults sum to < 10 minutes: ~20 s setup + 100 s tests + 150 s cuda_check + 280 s roofline.
set -u -o pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
REPO="$PWD"
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!

PY="${PYTHON:-$(command -v python || command -v python3)}"
TEST_TIMEOUT="${ADEX_TEST_TIMEOUT:-100}"
CUDA_TIMEOUT="${ADEX_CUDA_TIMEOUT:-150}"
BENCH_BUDGET="${ADEX_BENCH_BUDGET:-220}"
BENCH_TIMEOUT="${ADEX_BENCH_TIMEOUT:-280}"
RECURRENT_TIMEOUT="${ADEX_RECURRENT_TIMEOUT:-0}"
WHEELS="${ADEX_WHEELS:-}"
if [ -z "$WHEELS" ] && [ -d .whl ]; then WHEELS=.whl; fi
if [ -z "$WHEELS" ] && [ -d shared/wheels ]; then WHEELS=shared/wheels; fi
START=$SECONDS
rc_tests=-1
rc_bench=-1

section() { echo; echo "=== $* (t=$((SECONDS - START)) s) ==="; }

wheel_install() {  # wheel_install: every wheel of $WHEELS into $SITE, on PYTHONPATH (offline)
    if [ -n "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        SITE="${TMPDIR:-/tmp}/adex_site"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" "$WHEELS"/*.whl && export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" \
            && echo "installed $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $SITE"
    else
        echo "no wheels folder (run benchmarks/fetch_wheels.sh and carry .whl, or set ADEX_WHEELS)"
        return 1
    fi
}

section "environment ($(date -u +%Y-%m-%dT%H:%M:%SZ), $REPO, OUT=$OUT)"
nvidia-smi -L || echo "nvidia-smi: not available"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>/dev/null
"$PY" - <<'EOF'
import sys
print("python", sys.version.split()[0], sys.executable)
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name())
import triton
print("triton", triton.__version__)
EOF
if [ -z "${ADEX_GIT_COMMIT:-}" ]; then
    ADEX_GIT_COMMIT="$(git rev-parse HEAD 2>/dev/null || echo 'unknown (no .git in this copy)')"
    export ADEX_GIT_COMMIT
fi
echo "commit: $ADEX_GIT_COMMIT"

section "wheels and pint"
if [ -n "$WHEELS" ]; then
    wheel_install || echo "WARNING: installing the wheels of $WHEELS failed"
fi
if "$PY" -c "import pint" 2>/dev/null; then
    "$PY" -c "import pint; print('pint', pint.__version__)"
else
    echo "WARNING: pint is missing (adex imports it): run benchmarks/fetch_wheels.sh and carry .whl"
fi
"$PY" -c "import spikingjelly; print('spikingjelly', spikingjelly.__version__)" 2>/dev/null \
    || echo "spikingjelly not importable: the roofline's peer rows will say n/a"

section "install adex"
if "$PY" -m pip install --no-deps --no-build-isolation -e . >"$OUT/pip_install.log" 2>&1; then
    echo "pip install --no-deps --no-build-isolation -e . : ok"
else
    tail -5 "$OUT/pip_install.log"
    # adex.kernels lives in kernels/ (a package-dir mapping), so PYTHONPATH alone cannot find
    # it: link adex/kernels -> ../kernels for this run (removed on exit) and use PYTHONPATH
    if [ ! -e adex/kernels ]; then
        ln -s ../kernels adex/kernels && trap 'rm -f "$REPO/adex/kernels"' EXIT
    fi
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
    echo "pip install failed: using PYTHONPATH=$REPO with the link adex/kernels -> ../kernels"
fi
"$PY" -c "import adex, adex.ops; import adex.kernels as k; print('adex', adex.__version__, 'from', adex.__file__, 'kernels from', k.__file__, 'HAS_TRITON', adex.HAS_TRITON)" \
    || echo "WARNING: adex does not import"

section "correctness: fused kernels vs reference on CUDA (timeout ${TEST_TIMEOUT} s)"
if ! "$PY" -c "import pytest" 2>/dev/null; then
    echo "pytest is missing; trying wheels"
    wheel_install || true
fi
if "$PY" -c "import pytest" 2>/dev/null; then
    IGNORE=()
    if ! "$PY" -c "import hypothesis" 2>/dev/null; then
        for f in $(grep -lE '^(import|from) hypothesis' tests/test_*.py 2>/dev/null); do
            IGNORE+=(--ignore "$f")
            echo "hypothesis missing: ignoring $f"
        done
    fi
    # the device-aware test files (they put tensors on CUDA when it is there); the other test
    # files target the CPU interpreter, and benchmarks/cuda_check.py covers the model family
    timeout --kill-after=10 "$TEST_TIMEOUT" "$PY" -m pytest -q tests/test_kernels.py \
        tests/test_ops_compile.py -x -p no:cacheprovider ${IGNORE[@]+"${IGNORE[@]}"}
    rc_tests=$?
    if [ "$rc_tests" = 124 ] || [ "$rc_tests" = 137 ]; then
        echo "TESTS TIMED OUT after ${TEST_TIMEOUT} s (results above are partial)"
    fi
else
    echo "SKIPPED: pytest not available"
fi

section "cuda_check: every model x reset x fp32/bf16 x learnable vs reference; memory options, GPU_STAGES"
timeout --kill-after=10 "$CUDA_TIMEOUT" "$PY" benchmarks/cuda_check.py --quick
rc_cuda=$?
echo "cuda_check exit code: $rc_cuda"

section "roofline --quick (budget ${BENCH_BUDGET} s, hard limit ${BENCH_TIMEOUT} s)"
timeout --kill-after=10 "$BENCH_TIMEOUT" "$PY" benchmarks/roofline.py --quick --out "$OUT" \
    --budget-s "$BENCH_BUDGET"
rc_bench=$?
if [ "$rc_bench" = 124 ] || [ "$rc_bench" = 137 ]; then
    echo "ROOFLINE TIMED OUT after ${BENCH_TIMEOUT} s: $OUT/roofline.json holds the rows written so far"
fi

rc_rec=0
if [ "$RECURRENT_TIMEOUT" -gt 0 ]; then
    section "recurrent_bench: adex.Recurrent fwd+bwd vs the step loop (timeout ${RECURRENT_TIMEOUT} s)"
    timeout --kill-after=10 "$RECURRENT_TIMEOUT" "$PY" benchmarks/recurrent_bench.py \
        --json "$OUT/recurrent_bench.json"
    rc_rec=$?
    echo "recurrent_bench exit code: $rc_rec"
fi

section "summary"
echo "tests rc=$rc_tests  roofline rc=$rc_bench  total $((SECONDS - START)) s"
ls -l "$OUT"
[ -f "$OUT/roofline.md" ] && cat "$OUT/roofline.md"

status=0
[ "$rc_tests" != 0 ] && status=1
[ "$rc_bench" != 0 ] && status=1
[ "$rc_cuda" != 0 ] && status=1
[ "$rc_rec" != 0 ] && status=1
exec >&- 2>&-
wait "$TEE_PID" 2>/dev/null
exit "$status"
