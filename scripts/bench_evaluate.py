#!/usr/bin/env python
"""LFW-protocol evaluation time given the embeddings: ours vs upstream's, same 6000 pairs.

Seeded LFW-sized data (6000 pairs, 512-d float64 rows, LFW's order of same/different sets) go
through ``facenet_convert.converter.evaluation.evaluate`` and through upstream ``lfw.evaluate``
(``facenet.calculate_roc`` + ``calculate_val``, compiled from the pinned facenet 1.0.5 wheel,
with scikit-learn's KFold and scipy <= 1.8's slinear interpolation, which today's scipy refuses
on repeated FARs; see tests/test_evaluate.py). Prints the best of ``--repeat`` runs of each and
whether the figures are identical. Needs the test extra (scikit-learn, scipy).

    .venv/bin/python scripts/bench_evaluate.py [--pairs 6000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=6000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import numpy as np
    from sklearn.model_selection import KFold

    from facenet_convert.converter.evaluation import evaluate
    from facenet_convert.third_party.facenet.testing.upstream_code import (
        OldScipyInterpolate,
        lfw_evaluation,
        lfw_like,
    )

    emb, issame = lfw_like(seed=0, pairs=args.pairs, dim=512)
    up = lfw_evaluation(OldScipyInterpolate, KFold)

    def best(run: object) -> tuple[float, object]:
        times, result = [], None
        for _ in range(args.repeat):
            start = time.perf_counter()
            result = run()  # type: ignore[operator]
            times.append(time.perf_counter() - start)
        return min(times), result

    ours_s, ours = best(lambda: evaluate(emb, issame))
    theirs_s, theirs = best(lambda: up.evaluate(emb, issame))
    tpr, fpr, acc, val, val_std, far = theirs  # type: ignore[misc]
    same = (np.array_equal(ours.roc.tpr, tpr) and np.array_equal(ours.roc.fpr, fpr)
            and np.array_equal(ours.roc.accuracy, acc)
            and (ours.val.val, ours.val.val_std, ours.val.far) == (val, val_std, far))
    print(f"{args.pairs} pairs, 512-d, 10 folds; best of {args.repeat}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"  ours      {ours_s * 1000:8.1f} ms  (evaluate: ROC, VAL, AUC, EER, calibration)")
    print(f"  upstream  {theirs_s * 1000:8.1f} ms  (lfw.evaluate: ROC, VAL)")
    print(f"  speed-up  {theirs_s / ours_s:8.1f} x; figures identical: {same}")


if __name__ == "__main__":
    main()
