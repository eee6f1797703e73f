#!/usr/bin/env bash
# The GPU checks in one run: correctness on CUDA (pytest -m gpu), speed, fidelity, memory and a
# profile of EP beside BP (VGG10 at 224x224), and real training (vgg5 on Fashion-MNIST), printed
# as one table; gpu_check.json goes to $OUT (or --out) when set.
#   bench/gpu_check.sh               # on the GPU machine, about 4-7 minutes on one H200
#   bench/gpu_check.sh --cpu-smoke   # tiny CPU dry run of the same code (CI runs it)
#   bench/gpu_check.sh --help
# Python: $PYTHON if set, else .venv/bin/python if present, else python3. Needs torch (>= 2.11)
# and nothing else: no network, no notebook tooling.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then
    py=$PYTHON
elif [[ -x .venv/bin/python ]]; then
    py=.venv/bin/python
else
    py=python3
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" bench/gpu_check.py "$@"
