#!/usr/bin/env python
"""Parity speed: today's float64 verdict against the float32 check it replaced, side by side.

On one 512-d upstream-built checkpoint at the default size (5 batches of 8 = 40 inputs):

* **float64 parity** (``run_parity`` as shipped): TF32 + PT32 on 40 inputs, TF64 + PT64 on the
  first 8, plus the graph rewrite;
* **float32 parity** (what the check did before): TF32 + PT32 + PT64 on all 40 inputs (its
  noise ratio needed our float64 run on every input), timed from the same pieces.

Prints both times and their ratio (the target: float64 parity within 2x). Usage:
``.venv/bin/python scripts/bench_parity.py [--repeats N]``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

BATCHES, BATCH_SIZE = 5, 8


def _old_float32_check(source: Path, weights: Path) -> float:
    """TF32 + PT32 + PT64 on every input: the pieces of the former float32 check."""
    import numpy as np
    import torch

    from facenet_convert.converter.parity import build_torch_model, random_batches
    from facenet_convert.converter.parity_tf import open_reference, resolve_tf_source
    from facenet_convert.models.weights import load_weights_file

    started = time.perf_counter()
    net = build_torch_model("inception_resnet_v1", load_weights_file(weights), weights)
    net64 = copy.deepcopy(net).double()
    src = resolve_tf_source(source)
    with open_reference(src, model="inception_resnet_v1") as reference, \
            reference.open(["embeddings:0"], float64=False) as graph:
        for batch in random_batches((160, 160), batches=BATCHES, batch_size=BATCH_SIZE, seed=0):
            graph.run(np.ascontiguousarray(batch.transpose(0, 2, 3, 1)), ["embeddings:0"])
            x = torch.from_numpy(batch)
            with torch.no_grad():
                net(x)
                net64(x.double())
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)

    from facenet_convert.converter.parity_tf import quiet_tensorflow

    quiet_tensorflow()
    from facenet_convert.converter.conversion import convert
    from facenet_convert.converter.parity import run_parity
    from facenet_convert.third_party.facenet.testing.build import build_checkpoint
    from facenet_convert.third_party.wheels import cache_dir

    built = build_checkpoint(cache_dir() / "bench" / "parity-512d", embedding_size=512,
                             num_classes=None, ema=False, optimizer=None)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "irv1.pt"
        convert(built.directory, output=weights)
        _old_float32_check(built.directory, weights)  # warm-up: imports, caches
        for _ in range(args.repeats):
            old = _old_float32_check(built.directory, weights)
            started = time.perf_counter()
            report = run_parity(built.directory, weights, batches=BATCHES,
                                batch_size=BATCH_SIZE)
            new = time.perf_counter() - started
            print(f"float32 check (TF32+PT32+PT64 x40): {old:6.1f} s | float64 parity "
                  f"(x40 float32, x{report.inputs['float64_count']} float64): {new:6.1f} s | "
                  f"ratio {new / old:.2f} | verdict {'PASS' if report.passed else 'FAIL'} "
                  f"({report.outputs[0].rel_max_abs64:.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
