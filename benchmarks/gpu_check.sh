#!/usr/bin/env bash
# GPU checks of issue 9, in under 5 minutes on one CUDA GPU:
#   1. makes what graft_select and its tests import available: wheels carried in
#      .whl/ (made by benchmarks/gpu_wheels.sh, for a machine that reaches no package
#      index), else pip; CUDA torch and CuPy only when missing (a CPU build of torch
#      is replaced by a CUDA one);
#   2. runs the CuPy and CUDA tests of the backend, kernels, gradients, selector,
#      sampler and dask blocks (pytest -k "cuda or cupy or OnDevice" over
#      GPU_TEST_FILES below);
#   3. runs benchmarks/gpu_check.py: observe() under set_sync_debug_mode("error"),
#      a 1,000,000 x 512 refit (goal <= 0.5 s), GraftSelector.fit on CuPy and torch
#      CUDA arrays, results on the device.
# Usage: bash benchmarks/gpu_check.sh [gpu_check.py arguments, e.g. --json out.json]
# Environment: PYTHON (default python3); GPU_CHECK_NO_INSTALL=1 installs nothing.
# Exit status: 0 all passed, 1 a check failed, 77 no CUDA device (nothing ran).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
GPU_TEST_FILES="tests/test_backend.py tests/test_linalg.py tests/test_gram.py
tests/test_gradients.py tests/test_selector.py tests/test_sampler.py tests/test_dask.py"
site=${TMPDIR:-/tmp}/graft-select-gpu-site

install() {  # pip install "$@", unless installs are off; never fatal
    if [ "${GPU_CHECK_NO_INSTALL:-0}" = 1 ]; then
        echo "GPU_CHECK_NO_INSTALL=1: not installing $*"
        return 1
    fi
    "$PY" -m pip install --quiet "$@" || { echo "pip could not install $* (offline?)"; return 1; }
}

if [ "${GPU_CHECK_NO_INSTALL:-0}" != 1 ] && ls .whl/*.whl >/dev/null 2>&1; then
    echo "== installing the carried wheels (.whl/) into $site"
    "$PY" -m pip install --quiet --no-index --no-deps --no-compile --upgrade \
        --target "$site" .whl/*.whl || echo "the carried wheels did not install"
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c "import array_api_compat" 2>/dev/null; then
    echo "== installing array-api-compat (graft_select needs it)"
    install "array-api-compat>=1.9"
fi
cuda=$("$PY" -c "import torch; print(torch.version.cuda or '')" 2>/dev/null)
if [ -z "$cuda" ]; then
    echo "== installing CUDA torch (none, or a CPU build, is installed)"
    install --force-reinstall torch --index-url https://download.pytorch.org/whl/cu126
    cuda=$("$PY" -c "import torch; print(torch.version.cuda or '')" 2>/dev/null)
fi
if ! "$PY" -c "import cupy" 2>/dev/null; then
    major=${cuda%%.*}
    echo "== installing cupy-cuda${major:-12}x"
    install "cupy-cuda${major:-12}x" || echo "the CuPy checks will skip"
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available())" || true

status=0
echo "== CuPy and CUDA tests"
# shellcheck disable=SC2086  # the file list is split on purpose
timeout 200 "$PY" -m pytest -q -p no:cacheprovider -k "cuda or cupy or OnDevice" \
    $GPU_TEST_FILES
rc=$?
# 5: every test was deselected (none collected); anything else but 0 is a failure
if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then status=1; fi

echo "== timings and device checks"
timeout 150 "$PY" benchmarks/gpu_check.py "$@"
rc=$?
if [ "$rc" -eq 77 ] && [ "$status" -eq 0 ]; then exit 77; fi
if [ "$rc" -ne 0 ]; then status=1; fi
exit "$status"
