#!/usr/bin/env bash
# Main job: set up the environment, then load the shipped pivq-fashion tokenizer, tokenize and reconstruct the
# sample images in examples/images/, make interpolation samples, write out/demo.png and print the metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python examples/demo.py "$@"
