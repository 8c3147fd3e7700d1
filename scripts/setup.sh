#!/usr/bin/env bash
# Creates .venv and installs nlpsuite with the model pipeline and test tools. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# The CPU build of torch; a bare `torch` would pull a multi-GB CUDA build. Serving never imports it.
python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
python -m pip install -q -c constraints.txt -e '.[train,dev]'
