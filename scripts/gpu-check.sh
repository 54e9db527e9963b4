#!/usr/bin/env bash
# The GPU checks in one call, for a machine with CUDA and no Ray (the device tool's machine):
# the `gpu`-marked tests, in-process (`--workers 0`). Usage: scripts/gpu-check.sh [WHEEL_DIR]
# WHEEL_DIR holds wheels of what that machine lacks (tokenizers, onnx, sacrebleu, pytest, ...);
# they are installed into a private folder first on PYTHONPATH, never over its torch or numpy.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ -n "${1:-}" ]; then
  deps=$(mktemp -d)
  "$PYTHON" -m pip install --quiet --no-index --no-deps --target "$deps" "$1"/*.whl
  export PYTHONPATH="$deps${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
"$PYTHON" -m pytest -m gpu tests/trainer/test_gpu.py -q -p no:cacheprovider -o addopts="-ra --import-mode=importlib" "${@:2}"
