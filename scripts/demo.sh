#!/usr/bin/env bash
# The main job: set up, then build the default models (sentiment, intent, embedder) from the shipped
# example data into ./models. Pass --data-dir DIR to train on the public data sets instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
nlpsuite build-defaults --repository models "$@"
echo
echo "Models are in ./models. Score one with, e.g.:"
echo "  .venv/bin/nlpsuite evaluate --model models/sentiment --data \$(python -c 'import nlpsuite.examples as e, os; print(os.path.dirname(e.__file__))')/sentiment.csv"
