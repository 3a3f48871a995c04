#!/usr/bin/env bash
# Run ruff (settings in pyproject.toml: ruff cannot read setup.cfg), then import-linter's layer
# contract (setup.cfg [importlinter]).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check "$@" .
# Layer contracts (setup.cfg [importlinter]): an upward import or a new cycle fails CI.
if ! contracts=$(.venv/bin/lint-imports --no-cache setup.cfg 2>&1); then
  printf '%s\n' "$contracts" >&2
  exit 1
fi
printf '%s\n' "$contracts" | tail -n 1
