#!/usr/bin/env bash
# The README's first command: set up .venv, then `nlpsuite demo`: build the default models missing from
# ./models (from the shipped example data), start the local broker, every service and the news monitor,
# replay the example news until the planted surge raises its alert, call each service with example inputs,
# print the results and stop everything. Extra arguments go to `nlpsuite demo` (e.g. --keep-running).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec nlpsuite demo --repository models "$@"
