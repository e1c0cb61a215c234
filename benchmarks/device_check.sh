#!/usr/bin/env bash
# The accelerator check (benchmarks/device_check.py): on a GPU, the table
# in benchmarks/results/device-<name>.md; `--quick` is the CPU smoke run CI
# makes. Uses $PYTHON, else the project's .venv, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec "$PYTHON" benchmarks/device_check.py "$@"
