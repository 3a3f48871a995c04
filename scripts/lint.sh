#!/usr/bin/env bash
# Run ruff with the settings kept in setup.cfg's [tool:ruff] section (ruff cannot read setup.cfg),
# then import-linter's layer contract (also in setup.cfg).
set -euo pipefail
cd "$(dirname "$0")/.."
args=()
while IFS= read -r line; do
  args+=(--config "$line")
done < <(.venv/bin/python - <<'PY'
import configparser
cfg = configparser.ConfigParser()
cfg.read("setup.cfg")
for key, value in cfg["tool:ruff"].items():
    print(f"{key} = {value}")
PY
)
.venv/bin/ruff check "${args[@]}" "$@" .
# Layer contracts (setup.cfg [importlinter]): an upward import or a new cycle fails CI.
if ! contracts=$(.venv/bin/lint-imports --no-cache setup.cfg 2>&1); then
  printf '%s\n' "$contracts" >&2
  exit 1
fi
printf '%s\n' "$contracts" | tail -n 1
