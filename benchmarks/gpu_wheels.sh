#!/usr/bin/env bash
# Download, where pip reaches a package index, the wheels that benchmarks/gpu_check.sh
# installs on a GPU machine that reaches none: what graft_select and its tests import
# beyond a CUDA image's usual packages (torch, CuPy, NumPy, SciPy, scikit-learn,
# pytest and hypothesis are expected there). They go to .whl/ at the repository's
# root, which .gitignore lists; carry that folder (device tool: carry=[".whl"]) to
# the GPU machine with the checkout.
# Usage: bash benchmarks/gpu_wheels.sh [python version of the GPU machine, default 3.12]
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-3.12}
PY=${PYTHON:-python3}
mkdir -p .whl
# pure-Python wheels: one for every platform and Python 3
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$version" \
    --implementation cp --platform manylinux2014_x86_64 -d .whl \
    "array-api-compat>=1.9" "array-api-strict>=2.0"
ls -l .whl
