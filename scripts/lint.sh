#!/usr/bin/env bash
# Run ruff with the settings kept in setup.cfg's [tool:ruff] section (ruff cannot read setup.cfg).
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
exec .venv/bin/ruff check "${args[@]}" "$@" .
