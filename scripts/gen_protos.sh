#!/usr/bin/env bash
# Regenerates the committed Python code for protos/ into nlpsuite/v1/ (tests/test_protos.py checks it is current).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-.}
python -m grpc_tools.protoc -I protos --python_out="$OUT" --pyi_out="$OUT" --grpc_python_out="$OUT" protos/nlpsuite/v1/*.proto
