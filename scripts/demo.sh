#!/usr/bin/env bash
# Quick start: set up .venv, then run the main job on an embedded default:
#  1. convert the real MTCNN weights det1/2/3.npy of the pinned upstream facenet package,
#  2. build (once, cached) a FaceNet checkpoint with davidsandberg's own TF graph code,
#     inspect it and convert it,
#  3. prove both conversions with the parity check against the upstream TF graphs.
# Outputs go to ./demo-out (or $1). Safe to rerun. TensorFlow's own log lines (C++ start-up
# notices, warnings) stay off the terminal unless the first argument is --verbose.
set -euo pipefail
cd "$(dirname "$0")/.."
verbose=()
if [[ "${1:-}" == "--verbose" ]]; then
  verbose=(--verbose)
  shift
fi
./scripts/setup.sh
out=${1:-demo-out}
mkdir -p "$out"
py=.venv/bin/python
fc=.venv/bin/facenet-convert
if [[ ${#verbose[@]} -eq 0 ]]; then
  export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}
fi
step() { printf '\n\033[1m$ %s\033[0m\n' "$*" >&2; "$@"; }

# det1/2/3.npy of the pinned facenet wheel (fetched once, sha256-checked, all three extracted)
det_dir=$($py -c 'from facenet_convert.third_party.wheels import FACENET, wheel_folder
print(wheel_folder(FACENET, "facenet/src/align", ("det1.npy", "det2.npy", "det3.npy")))')
for pair in det1:pnet det2:rnet det3:onet; do
  step "$fc" convert "$det_dir/${pair%%:*}.npy" -o "$out/${pair##*:}.pt" --force
done

cache=$($py -c 'from facenet_convert.third_party.wheels import cache_dir; print(cache_dir())')
release="$cache/demo/20990101-000000"
echo "building (or reusing) an upstream-graph checkpoint in $release ..." >&2
# TF prints start-up lines whatever TF_CPP_MIN_LOG_LEVEL says: keep them in a log, shown on error
build_log="$out/build.log"
if ! $py -m facenet_convert.third_party.facenet.testing.build "$release" --embedding-size 512 \
    --num-classes 16 --optimizer ADAM --centers >/dev/null 2>"$build_log"; then
  cat "$build_log" >&2
  exit 1
fi
if [[ ${#verbose[@]} -gt 0 ]]; then cat "$build_log" >&2; fi
step "$fc" inspect "$release" | head -12
step "$fc" convert "$release" -o "$out/20990101-000000.pt" --split --force \
  --report "$out/20990101-000000.report.json"

step "$fc" parity "$release" "$out/20990101-000000.pt" --batches 2 --batch-size 8 \
  --markdown "$out/parity.md" ${verbose[@]+"${verbose[@]}"}
for pair in det1:pnet det2:rnet det3:onet; do
  step "$fc" parity "$det_dir/${pair%%:*}.npy" "$out/${pair##*:}.pt" --batches 2 \
    --batch-size 8 ${verbose[@]+"${verbose[@]}"}
done
echo >&2
echo "demo done: converted weights, report and parity table are in $out/" >&2
