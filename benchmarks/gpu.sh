#!/usr/bin/env bash
# The device check, one table in a few minutes on one GPU (benchmarks/gpu.py says what each row is).
#   bash benchmarks/gpu.sh            # from the repository root, with a Python that has torch and torchvision
# PYTHON picks the interpreter (default: .venv/bin/python if present, else python3); the package is
# imported from this checkout. The whole run is stopped after 8 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
"$PYTHON" -c "import torch; print('cuda' if torch.cuda.is_available() else 'no GPU: the rows below run on the CPU')"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout 480 "$PYTHON" benchmarks/gpu.py "$@"

# End to end through the command line on the GPU (the path a researcher takes): train the
# synthetic-quick preset with bf16 autocast, torch.compile and TensorBoard, then evaluate the
# checkpoint; then one epoch of the synthetic preset (2000 images of 128 x 64), timed.
if "$PYTHON" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  RUN=$(mktemp -d)
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  timeout 240 "$PYTHON" -m encnet train --preset synthetic-quick --device cuda --amp bf16 --compile \
    --tensorboard --no-progress --out "$RUN/quick"
  timeout 120 "$PYTHON" -m encnet evaluate "$RUN/quick/checkpoint.pt" --device cuda --no-progress
  start=$(date +%s%N)
  timeout 240 "$PYTHON" -m encnet train --preset synthetic --epochs 1 --device cuda --no-progress --out "$RUN/one"
  echo "synthetic preset, 1 epoch (train + validation) on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1): $(( ($(date +%s%N) - start) / 1000000 )) ms"
fi
