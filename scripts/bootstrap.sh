#!/usr/bin/env bash
# Idempotent setup: a .venv in the repo with torch (CPU wheel pinned first), the package and dev tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  # An unpinned torch pulls a multi-GB CUDA build; 2.13.0 is the CPU wheel these machines carry.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
fi
stamp=.venv/.meaning-transform-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$0" -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev,sweep,slurm,tensorboard,mlflow]"
  touch "$stamp"
fi
