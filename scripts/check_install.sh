#!/usr/bin/env bash
# The installed-wheel check (CI runs it after the tests and the demo): build the wheel, install
# it with its core dependencies alone into a fresh venv, remove pip from that venv, and run
# scripts/installed_check.py from a folder outside the repository on empty caches.
# Inputs (det1.npy, a TF-built checkpoint, a real photo) are prepared with the dev .venv first.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
./scripts/setup.sh
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dev=.venv/bin/python

echo "check_install: building the wheel" >&2
mkdir -p "$work/source" "$work/dist"
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$work/source"
$dev -m pip wheel --quiet --no-deps --no-build-isolation --disable-pip-version-check \
  -w "$work/dist" "$work/source" >/dev/null
wheel=$(ls "$work"/dist/facenet_convert-*.whl)

echo "check_install: preparing inputs with the dev environment" >&2
det_dir=$($dev -c 'from facenet_convert.third_party.wheels import FACENET, wheel_folder
print(wheel_folder(FACENET, "facenet/src/align", ("det1.npy",)))')
photo="$work/astronaut.png"
$dev -c 'import sys; from PIL import Image; from skimage import data
Image.fromarray(data.astronaut()).save(sys.argv[1])' "$photo"
checkpoint=$(TF_CPP_MIN_LOG_LEVEL=3 $dev -c 'import sys
from facenet_convert.third_party.facenet.testing.build import build_checkpoint
print(build_checkpoint(sys.argv[1], embedding_size=512).directory)' "$work/releases" 2>/dev/null | tail -1)

echo "check_install: fresh venv with the core install only" >&2
python3 -m venv "$work/venv"
pip=("$work/venv/bin/python" -m pip --disable-pip-version-check --quiet)
"${pip[@]}" install -c scripts/constraints.txt torch
"${pip[@]}" install -c scripts/constraints.txt "$wheel"
"${pip[@]}" uninstall -y pip

echo "check_install: running the checks outside the repository, caches empty" >&2
run="$work/run"
mkdir -p "$run"
cd "$run"
env -u PYTHONPATH FACENET_CONVERT_CACHE="$work/cache-fc" TORCH_HOME="$work/cache-torch" \
  XDG_CACHE_HOME="$work/cache-xdg" NUMBA_CACHE_DIR="$work/cache-numba" \
  FACENET_CONVERT_OFFLINE=1 \
  "$work/venv/bin/python" "$repo/scripts/installed_check.py" "$repo" "$det_dir" "$photo" \
  "$checkpoint"
