#!/usr/bin/env bash
# Rewrite the MTCNN weights shipped in the package (models/pretrained/) with `regenerate`
# from the pinned facenet wheel's det1/2/3.npy. Needed after any change that alters their
# bytes, a version bump included (outputs record the converter's version);
# tests/test_mtcnn_api.py fails until the shipped files equal what regenerate writes.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
empty=$(mktemp -d)
trap 'rm -rf "$empty"' EXIT
.venv/bin/facenet-convert regenerate "$empty" -o models/pretrained --format safetensors \
  --no-parity --force
