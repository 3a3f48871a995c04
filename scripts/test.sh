#!/usr/bin/env bash
# Set up .venv if needed, lint, run the whole test suite (TF tests included) on every core,
# then the CI parity report (TF graph vs converted PyTorch model; fails above tolerance).
# Arguments go to pytest: ./scripts/test.sh -m 'not slow' skips the long stress cases.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/lint.sh
# Every core runs tests (pytest-xdist); a test file stays on one worker so that its module
# fixtures are built once, the longest files first (LONG_FILES in tests/conftest.py).
# TEST_WORKERS=0 runs in this process (e.g. for a debugger).
workers=${TEST_WORKERS:-auto}
if [ "$workers" = 0 ]; then
  .venv/bin/python -m pytest "$@"
else
  .venv/bin/python -m pytest -n "$workers" --dist loadfile --no-loadscope-reorder "$@"
fi
TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2} .venv/bin/python scripts/parity_report.py
