#!/usr/bin/env bash
# Set up the environment plus the peer libraries the benchmarks compare against, then run one benchmark:
#   bash scripts/bench.sh quantizers [args...]     (benchmarks/quantizers.py)
# vector-quantize-pytorch is installed with --no-deps so it cannot replace the pinned CPU torch.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m pip install -q --no-deps vector-quantize-pytorch einx frozendict loguru torch-einops-utils
name=${1:-quantizers}
shift || true
python "benchmarks/${name}.py" "$@"
