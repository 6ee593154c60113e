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
