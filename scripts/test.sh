#!/usr/bin/env bash
# Set up .venv if needed, lint, run the whole test suite (TF tests included), then the CI
# parity report (TF graph vs converted PyTorch model; fails above tolerance).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/lint.sh
.venv/bin/python -m pytest "$@"
TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2} .venv/bin/python scripts/parity_report.py
