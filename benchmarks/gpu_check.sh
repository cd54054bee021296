#!/usr/bin/env bash
# GPU checks of issue 9, in under 5 minutes on one CUDA GPU:
#   1. installs CUDA torch and cupy-cuda12x with pip when they are missing;
#   2. runs the CuPy and CUDA tests of the backend matrix (pytest -k);
#   3. runs benchmarks/gpu_check.py: observe() under set_sync_debug_mode("error"),
#      a 1,000,000 x 512 refit (goal <= 0.5 s), GraftSelector.fit on CuPy and torch
#      CUDA arrays, results on the device.
# Usage: bash benchmarks/gpu_check.sh [gpu_check.py arguments, e.g. --json out.json]
# Exit status: 0 all passed, 1 a check failed, 77 no CUDA device (nothing ran).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "== installing CUDA torch"
    "$PY" -m pip install --quiet torch --index-url https://download.pytorch.org/whl/cu124 \
        || echo "pip could not install CUDA torch (offline?); using what is installed"
fi
if ! "$PY" -c "import cupy" 2>/dev/null; then
    echo "== installing cupy-cuda12x"
    "$PY" -m pip install --quiet cupy-cuda12x \
        || echo "pip could not install cupy-cuda12x (offline?); the CuPy checks will skip"
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available())" || true

status=0
echo "== CuPy and CUDA tests of the backend matrix"
timeout 150 "$PY" -m pytest -q -p no:cacheprovider -k "cuda or cupy" \
    tests/test_backend.py tests/test_linalg.py tests/test_gram.py tests/test_gradients.py \
    tests/test_selector.py
rc=$?
# 5: every test was deselected or skipped (no device); anything else but 0 is a failure
if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then status=1; fi

echo "== timings and device checks"
timeout 150 "$PY" benchmarks/gpu_check.py "$@"
rc=$?
if [ "$rc" -eq 77 ] && [ "$status" -eq 0 ]; then exit 77; fi
if [ "$rc" -ne 0 ]; then status=1; fi
exit "$status"
