#!/usr/bin/env bash
# The GPU check of issue 29 (docs/gpu.md): tools/gpu_check.sh OUT_DIR [--dry-run] [--only STEP...]
# Runs tools/gpu_check.py with the project's venv (PYTHON=... to use another interpreter).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
exec "$PYTHON" tools/gpu_check.py "$@"
