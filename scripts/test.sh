#!/usr/bin/env bash
# Set up .venv if needed, lint, then run the whole test suite (TF tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/lint.sh
.venv/bin/python -m pytest "$@"
