#!/usr/bin/env bash
# Create .venv and install the project with every extra; a no-op when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.facenet-convert-installed
want=$(cat setup.cfg pyproject.toml scripts/constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing into .venv (first run takes a few minutes)" >&2
  pip=(.venv/bin/python -m pip --disable-pip-version-check)
  "${pip[@]}" install --quiet --upgrade pip
  "${pip[@]}" install --quiet -c scripts/constraints.txt torch
  "${pip[@]}" install --quiet -c scripts/constraints.txt -e ".[dev]"
  # Keras 2 (tf-keras) only to write real Keras 2 .h5 files in tests; it asks for the full
  # `tensorflow` package, which tensorflow-cpu already provides, hence --no-deps.
  "${pip[@]}" install --quiet --no-deps -c scripts/constraints.txt tf-keras
  echo "$want" > "$stamp"
fi
