#!/usr/bin/env python
"""CI parity report: build a small upstream-graph checkpoint, convert it, prove parity.

1. builds (or reuses, from the cache) a 128-d upstream facenet checkpoint with a few logits
   classes (no EMA or optimizer slots: converting those is proven in the tests), via
   ``facenet_convert.third_party.facenet.testing.build.build_checkpoint``;
2. converts it and the real MTCNN det1/2/3.npy of the pinned upstream wheel;
3. runs the parity check (with per-layer localisation) on each against the upstream TF graphs;
4. prints the markdown report (and appends it to ``$GITHUB_STEP_SUMMARY`` when set).

Exit status: 0 when every gate passes, 1 when one is exceeded, 2 when something cannot run.
Usage: ``.venv/bin/python scripts/parity_report.py [--markdown FILE] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facenet_convert.converter.core.errors import ConverterError

EMBEDDING_SIZE = 128
NUM_CLASSES = 10
BATCHES = 2
# Inputs per batch: enough for a steady noise ratio, few enough for CI. PNet gives 75x75 maps
# per input; RNet/ONet take 24x24 / 48x48 crops and give 2-10 values each (cheap, need more).
BATCH_SIZES = {"irv1": 8, "det1": 4, "det2": 16, "det3": 16}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", type=Path, default=None, help="also write the markdown here")
    parser.add_argument("--json", type=Path, default=None, help="write all reports as JSON here")
    parser.add_argument("--batches", type=int, default=BATCHES)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    from facenet_convert.converter.conversion import convert
    from facenet_convert.converter.parity import run_parity
    from facenet_convert.converter.parity_tf import quiet_tensorflow
    from facenet_convert.converter.report import append_step_summary, to_markdown, write_text
    from facenet_convert.third_party.facenet.testing.build import build_checkpoint
    from facenet_convert.third_party.wheels import FACENET, cache_dir, wheel_member

    quiet_tensorflow()
    started = time.perf_counter()
    built = build_checkpoint(cache_dir() / "parity-ci" / f"irv1-{EMBEDDING_SIZE}d",
                             name="20990101-000000", embedding_size=EMBEDDING_SIZE,
                             num_classes=NUM_CLASSES, ema=False, optimizer=None)
    build_s = time.perf_counter() - started
    reports = []
    with tempfile.TemporaryDirectory(prefix="parity-ci-") as tmp:
        jobs = [("irv1", "Inception-ResNet-V1 (upstream-built, 128-d)", built.directory)]
        for det in ("det1", "det2", "det3"):
            jobs.append((det, f"MTCNN {det}.npy",
                         wheel_member(FACENET, f"facenet/src/align/{det}.npy")))
        for key, title, source in jobs:
            output = Path(tmp) / f"{key}.pt"
            convert(source, output=output)
            report = run_parity(source, output, batches=args.batches,
                                batch_size=BATCH_SIZES[key], per_layer=True)
            reports.append((title, report))
    parts = [(f"## Parity report ({time.perf_counter() - started:.0f} s, checkpoint build "
             f"{build_s:.0f} s)"), ""]
    parts += [to_markdown(report, title=title) for title, report in reports]
    markdown = "\n".join(parts)
    print(markdown)
    append_step_summary(markdown)
    if args.markdown is not None:
        write_text(args.markdown, markdown)
    if args.json is not None:
        payload = {title: report.to_dict() for title, report in reports}
        write_text(args.json, json.dumps(payload, indent=2) + "\n")
    failed = [title for title, report in reports if not report.passed]
    if failed:
        print(f"parity FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"parity passed: {len(reports)} models", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        return run(args)
    except ConverterError as error:
        print(f"parity_report: error: {error}", file=sys.stderr)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
