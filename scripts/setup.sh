#!/usr/bin/env bash
# Create .venv (if missing) and install tokenkit with everything its tests, demo and benchmarks use.
# torch is pinned by constraints.txt so no dependency can pull a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -c constraints.txt -e ".[audio,eval,plots,test]"
