#!/usr/bin/env python
"""CI parity report: every source format and every registered architecture, gated in float64.

1. for every embedding architecture of the registry with an upstream ``--model_def``, builds
   (or reuses, from the cache) a 128-d upstream-graph checkpoint with a few logits classes and
   its frozen ``.pb`` (no EMA or optimizer slots: converting those is proven in the tests), via
   ``facenet_convert.third_party.facenet.testing.build.build_checkpoint``;
2. writes keras-facenet ``.h5`` files (full model, weights only) with tf-keras;
3. converts each source: the checkpoint with its ``.meta``, the same checkpoint without it
   (upstream graph rebuilt), the frozen ``.pb``, the ``.h5`` files, and the real MTCNN
   det1/2/3.npy of the pinned upstream wheel;
4. runs the parity check on each (per layer on the meta graphs and MTCNN nets): the verdict is
   float64 (max |TF64 - PT64| / scale <= 1e-10), the float32 figures are reported beside it;
5. prints the markdown report (and appends it to ``$GITHUB_STEP_SUMMARY`` when set).

TensorFlow's C++ log lines stay off the terminal unless ``--verbose``.
Exit status: 0 when every gate passes, 1 when one is exceeded, 2 when something cannot run.
Usage: ``.venv/bin/python scripts/parity_report.py [--markdown FILE] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from facenet_convert.converter.core.errors import ConverterError

EMBEDDING_SIZE = 128
NUM_CLASSES = 10
BATCHES = 1
# Inputs per batch, all of them also in float64. PNet gives 75x75 maps per input; RNet / ONet
# take 24x24 / 48x48 crops and give 2-10 values each (cheap).
BATCH_SIZE = 4
MTCNN_BATCH_SIZES = {"det1": 2, "det2": 16, "det3": 16}


@dataclass(frozen=True)
class Job:
    title: str
    source: Path
    batch_size: int = BATCH_SIZE
    per_layer: bool = False


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", type=Path, default=None, help="also write the markdown here")
    parser.add_argument("--json", type=Path, default=None, help="write all reports as JSON here")
    parser.add_argument("--batches", type=int, default=BATCHES)
    parser.add_argument("--verbose", action="store_true", help="let TensorFlow's logs through")
    return parser.parse_args(argv)


def _jobs(tmp: Path) -> list[Job]:
    """One job per source form and architecture (checkpoints built or reused from the cache)."""
    from facenet_convert.converter.registry import architectures
    from facenet_convert.third_party.facenet.keras_facenet import BUILDERS
    from facenet_convert.third_party.facenet.testing.build import build_checkpoint
    from facenet_convert.third_party.facenet.testing.keras import write_keras_h5
    from facenet_convert.third_party.wheels import FACENET, cache_dir, wheel_member

    jobs = []
    for record in architectures("embedding"):
        if record.upstream_model_def is None:
            continue
        built = build_checkpoint(
            cache_dir() / "parity-ci" / f"{record.upstream_model_def}-{EMBEDDING_SIZE}d",
            name="20990101-000000", embedding_size=EMBEDDING_SIZE, num_classes=NUM_CLASSES,
            ema=False, optimizer=None, freeze=True, model_def=record.upstream_model_def)
        bare = tmp / f"{record.name}-no-meta"
        bare.mkdir()
        for path in (built.index_file, built.data_file):
            shutil.copy(path, bare / path.name)
        name = f"{record.name} (upstream-built, {EMBEDDING_SIZE}-d)"
        jobs += [Job(f"{name}: checkpoint with .meta", built.directory, per_layer=True),
                 Job(f"{name}: checkpoint without .meta (graph rebuilt)", bare),
                 Job(f"{name}: frozen .pb", built.frozen_pb or built.directory)]
        for scheme in record.schemes:
            if scheme.table.name in BUILDERS:
                for weights_only, what in ((False, "full model"), (True, "weights only")):
                    h5 = write_keras_h5(tmp / f"{scheme.table.name}-{what[:4]}.h5",
                                        embedding_size=EMBEDDING_SIZE, scheme=scheme.table.name,
                                        weights_only=weights_only)
                    jobs.append(Job(f"{record.name}: Keras .h5 ({scheme.table.name}, {what})",
                                    h5))
    for det, size in MTCNN_BATCH_SIZES.items():
        jobs.append(Job(f"MTCNN {det}.npy", wheel_member(FACENET, f"facenet/src/align/{det}.npy"),
                        batch_size=size, per_layer=True))
    return jobs


def run(args: argparse.Namespace) -> int:
    from facenet_convert.converter.parity_tf import quiet_tensorflow

    quiet_tensorflow(args.verbose)
    from facenet_convert.converter.conversion import convert
    from facenet_convert.converter.parity import run_parity
    from facenet_convert.converter.report import append_step_summary, to_markdown, write_text

    started = time.perf_counter()
    reports = []
    with tempfile.TemporaryDirectory(prefix="parity-ci-") as tmp:
        jobs = _jobs(Path(tmp))
        build_s = time.perf_counter() - started
        for index, job in enumerate(jobs):
            output = Path(tmp) / f"job{index}.pt"
            convert(job.source, output=output)
            size = job.batch_size
            report = run_parity(job.source, output, batches=args.batches, batch_size=size,
                                float64_inputs=args.batches * size, per_layer=job.per_layer,
                                verbose=args.verbose)
            print(f"{'pass' if report.passed else 'FAIL'}: {job.title} "
                  f"({report.seconds:.0f} s)", file=sys.stderr)
            reports.append((job.title, report))
    parts = [(f"## Parity report: float64 verdict ({time.perf_counter() - started:.0f} s, "
              f"builds {build_s:.0f} s)"), ""]
    parts += [("| source | model | float64 max abs / scale (worst output) | float32 noise "
               "ratio | result |"), "|---|---|---:|---:|---|"]
    for title, report in reports:
        worst = max(report.outputs, key=lambda fig: fig.rel_max_abs64)
        parts.append(f"| {title} | {report.model} | {worst.rel_max_abs64:.2e} | "
                     f"{worst.noise_ratio:.3g} | {'pass' if report.passed else '**FAIL**'} |")
    parts.append("")
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
    print(f"parity passed: {len(reports)} sources, float64 verdict", file=sys.stderr)
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
