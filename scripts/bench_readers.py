#!/usr/bin/env python
"""Read every tensor of a release-sized checkpoint: our TFCheckpointReader vs TensorFlow.

Each run is a fresh subprocess, so imports and peak RSS (the child's ru_maxrss) belong to one
approach; runs alternate between approaches after one unmeasured warm-up each (page cache
warm for both). Prints a side-by-side table of medians and writes JSON.

    .venv/bin/python scripts/bench_readers.py --checkpoint PREFIX_OR_DIR
    .venv/bin/python scripts/bench_readers.py --build /tmp/release   # upstream graph, ~460 MB
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from facenet_convert.converter.core.machine import describe_machine

ROOT = Path(__file__).resolve().parent.parent
APPROACHES = ("ours", "tensorflow")


def _child(approach: str, prefix: str, names_file: str) -> None:
    """Runs in a fresh interpreter: import, open, read all names, keep the arrays alive."""
    start = time.perf_counter()
    names = json.loads(Path(names_file).read_text())
    if approach == "ours":
        from facenet_convert.converter.sources.tf_bundle import TFCheckpointReader

        imported = time.perf_counter()
        reader = TFCheckpointReader(prefix)
        arrays = [array for _, array in reader.read_many(names)]
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tensorflow as tf

        imported = time.perf_counter()
        reader = tf.train.load_checkpoint(prefix)
        arrays = [reader.get_tensor(name) for name in names]
    done = time.perf_counter()
    nbytes = sum(getattr(a, "nbytes", 0) for a in arrays)
    print(json.dumps({"import_s": imported - start, "read_s": done - imported,
                      "in_process_s": done - start, "tensors": len(arrays), "bytes": nbytes,
                      "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _run(approach: str, prefix: str, names_file: str) -> dict[str, float]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", approach, prefix, names_file],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{approach} child failed ({proc.returncode}): {err.decode()[-2000:]}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def _resolve(args: argparse.Namespace) -> Path:
    if args.checkpoint:
        from facenet_convert.converter.sources.tf_bundle import resolve_prefix

        return resolve_prefix(args.checkpoint)[0]
    from facenet_convert.third_party.facenet.testing.build import build_checkpoint

    built = build_checkpoint(args.build, embedding_size=512, num_classes=8631, ema=True,
                             optimizer="ADAM")
    return Path(built.prefix)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        _child(*sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="checkpoint prefix, .index or folder")
    source.add_argument("--build", help="folder for third_party.facenet.testing.build's "
                        "release-sized "
                        "checkpoint (512-d, 8631 classes, EMA, ADAM); reused when present")
    parser.add_argument("--runs", type=int, default=5, help="measured runs per approach")
    parser.add_argument("--json", default=str(ROOT / "bench-out" / "bench_readers.json"),
                        help="where to write results (default: bench-out/, git-ignored)")
    args = parser.parse_args()
    prefix = _resolve(args)
    from facenet_convert.converter.sources.tf_bundle import TFCheckpointReader

    with TFCheckpointReader(prefix) as reader:
        names = list(reader.tensors())
        files = reader.files()
    size_mb = sum(f.stat().st_size for f in files) / 2**20
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(names, fh)
        names_file = fh.name
    try:
        runs: dict[str, list[dict[str, float]]] = {a: [] for a in APPROACHES}
        for approach in APPROACHES:
            _run(approach, str(prefix), names_file)  # warm-up: page cache, .pyc files
        for _ in range(args.runs):
            for approach in APPROACHES:
                runs[approach].append(_run(approach, str(prefix), names_file))
    finally:
        os.unlink(names_file)
    metrics = ("wall_s", "import_s", "read_s", "maxrss_mb")
    medians = {a: {m: statistics.median(r[m] for r in runs[a]) for m in metrics}
               for a in APPROACHES}
    ratios = {m: medians["tensorflow"][m] / medians["ours"][m] for m in metrics}
    print(f"checkpoint {prefix}: {len(names)} tensors, {size_mb:.0f} MB on disk, "
          f"median of {args.runs} fresh-process runs")
    print(f"{'':12s}{'wall s':>10s}{'import s':>10s}{'read s':>10s}{'peak RSS MB':>13s}")
    for approach in APPROACHES:
        m = medians[approach]
        print(f"{approach:12s}{m['wall_s']:10.3f}{m['import_s']:10.3f}{m['read_s']:10.3f}"
              f"{m['maxrss_mb']:13.0f}")
    print(f"{'tf / ours':12s}{ratios['wall_s']:9.2f}x{ratios['import_s']:9.2f}x"
          f"{ratios['read_s']:9.2f}x{ratios['maxrss_mb']:12.2f}x")
    result = {"checkpoint": str(prefix), "tensors": len(names), "size_mb": size_mb,
              "runs": args.runs, "machine": describe_machine(), "medians": medians,
              "tf_over_ours": ratios, "all_runs": runs}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
