#!/usr/bin/env bash
# All benchmarks in one run (not tests): convert vs TF1 session vs floor, our reader vs
# tf.train.load_checkpoint, embedding throughput of every inference path (TF graph, eager,
# torch for inference, ONNX Runtime, our default, our bf16) vs the matmul peak. Builds (once,
# cached) a release-sized upstream checkpoint. Writes bench-out/*.json and BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
out=${BENCH_OUT:-bench-out}
runs=${BENCH_RUNS:-5}
mkdir -p "$out"
py=.venv/bin/python
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
release=$($py -c 'from facenet_convert.third_party.wheels import cache_dir; print(cache_dir() / "bench" / "release-512-8631")')
$py scripts/bench_convert.py --runs "$runs" --checkpoint-dir "$release" \
  --json "$out/convert.json" --markdown "$out/convert.md"
$py scripts/bench_readers.py --runs "$runs" --checkpoint "$release" --json "$out/readers.json"
$py scripts/bench_embed.py --json "$out/embed.json"
$py scripts/bench_detect.py --runs "$runs" --json "$out/detect.json"
$py scripts/bench_scale.py --json "$out/scale.json"
$py scripts/bench_summary.py "$out"
