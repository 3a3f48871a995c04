"""Upstream's LFW metrics, exactly: ROC, VAL@FAR, AUC, EER, k-fold, calibration.

The numbers are those of davidsandberg's facenet (pinned 1.0.5): ``lfw.evaluate`` runs
``facenet.calculate_roc`` (thresholds ``arange(0, 4, 0.01)``) and ``facenet.calculate_val``
(thresholds ``arange(0, 4, 0.001)``) over a contiguous 10-fold split (scikit-learn's
``KFold(n_splits, shuffle=False)``), distance metric 0 = *squared* euclidean, 1 = angular
(``arccos(cosine similarity) / pi``); ``subtract_mean`` subtracts the training folds' mean
embedding; ``validate_on_lfw.py --use_flipped_images`` concatenates each image's embedding with
its mirror image's. Here the threshold sweeps are vectorized (a sort and a binary search per fold
instead of 400 + 4000 passes over the pairs) with the same comparisons and the same float64
divisions, so every figure equals upstream's to the last digit (``tests/test_evaluate.py``).

The one place where upstream cannot be followed as it is: ``calculate_val`` finds the threshold
for the target FAR with ``scipy.interpolate.interp1d(far_train, thresholds, kind='slinear')``.
The training FARs repeat (every threshold below the smallest different-pair distance gives FAR
0), and scipy >= 1.9 refuses repeated x ("Expect x to not have duplicates"), so upstream's
``validate_on_lfw.py`` fails on modern scipy. We compute what scipy <= 1.8 returned, which is
what upstream's published figures were computed with: a degree-1 B-spline with knots
``[x0, x0, x1, ..., xn, xn]`` and coefficients ``thresholds``, evaluated by de Boor's recursion
(:func:`slinear_at`). Where FARs do not repeat, modern scipy accepts them and agrees with us to
the last digit; where they do, we give the old result instead of raising.

AUC is ``sklearn.metrics.auc(fpr, tpr)`` (the trapezoid rule); EER is the root of
``1 - x - interp(fpr, tpr)(x)``, which upstream finds with ``brentq`` to 2e-12 and we solve
exactly on the piecewise-linear curve. No scikit-learn or scipy is needed at run time.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facenet_convert.converter.core.errors import ConverterError, EvaluationError

ROC_STEP = 0.01          # lfw.evaluate: thresholds for calculate_roc
VAL_STEP = 0.001         # lfw.evaluate: thresholds for calculate_val
DEFAULT_FAR = 1e-3       # lfw.evaluate's far_target
METRICS = {"euclidean": 0, "cosine": 1}


def roc_thresholds() -> np.ndarray:
    return np.arange(0, 4, ROC_STEP)


def val_thresholds() -> np.ndarray:
    return np.arange(0, 4, VAL_STEP)


def distance(embeddings1: np.ndarray, embeddings2: np.ndarray, metric: int = 0) -> np.ndarray:
    """Upstream ``facenet.distance``: squared euclidean (0) or arccos(similarity) / pi (1)."""
    if metric == 0:
        diff = np.subtract(embeddings1, embeddings2)
        return np.sum(np.square(diff), 1)
    if metric == 1:
        dot = np.sum(np.multiply(embeddings1, embeddings2), axis=1)
        norm = np.linalg.norm(embeddings1, axis=1) * np.linalg.norm(embeddings2, axis=1)
        return np.arccos(dot / norm) / math.pi
    raise EvaluationError(f"unknown distance metric {metric}; expected 0 (euclidean) or "
                          "1 (cosine)")


def kfold(n_samples: int, n_splits: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``sklearn.model_selection.KFold(n_splits, shuffle=False).split``: contiguous test folds,
    the first ``n_samples % n_splits`` of them one longer."""
    if n_splits < 2:
        raise EvaluationError(f"--folds must be at least 2, found {n_splits}")
    if n_splits > n_samples:
        raise EvaluationError(f"--folds {n_splits} is more than the {n_samples} pairs; "
                              "use fewer folds")
    sizes = np.full(n_splits, n_samples // n_splits, dtype=int)
    sizes[:n_samples % n_splits] += 1
    indices = np.arange(n_samples)
    splits = []
    start = 0
    for size in sizes:
        test = np.zeros(n_samples, dtype=bool)
        test[start:start + size] = True
        splits.append((indices[~test], indices[test]))
        start += size
    return splits


@dataclass
class Counts:
    """Confusion counts of ``dist < threshold`` for many thresholds at once."""

    tp: np.ndarray
    fp: np.ndarray
    n_same: int
    n_diff: int

    @property
    def tpr(self) -> np.ndarray:
        return _ratio(self.tp, self.tp + (self.n_same - self.tp))

    @property
    def fpr(self) -> np.ndarray:
        return _ratio(self.fp, self.fp + (self.n_diff - self.fp))

    @property
    def accuracy(self) -> np.ndarray:
        tn = self.n_diff - self.fp
        return (self.tp + tn) / float(self.n_same + self.n_diff)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``0 if den == 0 else float(num) / float(den)`` elementwise (calculate_accuracy)."""
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def sweep(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray) -> Counts:
    """``np.less(dist, t)`` counted per threshold: a sort and a binary search.

    Upstream compares the distances with each float64 threshold, which promotes them to
    float64; so do we, then ``searchsorted(side='left')`` counts the values below each
    threshold exactly (NaN sorts last and counts as never below, as ``np.less`` says).
    """
    dist64 = np.asarray(dist, dtype=np.float64)
    same = np.sort(dist64[issame])
    diff = np.sort(dist64[~issame])
    return Counts(tp=np.searchsorted(same, thresholds, side="left"),
                  fp=np.searchsorted(diff, thresholds, side="left"),
                  n_same=int(same.size), n_diff=int(diff.size))


def slinear_at(x: np.ndarray, y: np.ndarray, x0: float) -> float:
    """``interp1d(x, y, kind='slinear')(x0)`` as scipy <= 1.8 computed it, repeats allowed.

    That is ``make_interp_spline(x, y, k=1)``: a B-spline of degree 1 on the knots
    ``r_[x[0], x, x[-1]]`` with coefficients ``y`` (x stably sorted first), evaluated at the
    last knot interval ``t[l] <= x0 < t[l+1]`` (the last one at the right end) by de Boor's
    recursion, whose zero-length interval gives 0 as scipy's does. Without repeats this is
    exactly what modern scipy's interp1d returns.
    """
    order = np.argsort(x, kind="mergesort")
    xs = np.asarray(x, dtype=np.float64)[order]
    ys = np.asarray(y, dtype=np.float64)[order]
    if not xs[0] <= x0 <= xs[-1]:
        raise EvaluationError(f"FAR {x0:g} is outside the training FARs "
                              f"[{xs[0]:g}, {xs[-1]:g}]")
    knots = np.r_[xs[0], xs, xs[-1]]
    n = xs.size
    ell = min(int(np.searchsorted(knots, x0, side="right")), n) - 1
    xa, xb = float(knots[ell]), float(knots[ell + 1])
    if xb == xa:
        return 0.0
    w = 1.0 / (xb - xa)
    h0 = 0.0 + w * (xb - x0)
    h1 = w * (x0 - xa)
    return 0.0 + float(ys[ell - 1]) * h0 + float(ys[ell]) * h1


def val_far(dist: np.ndarray, issame: np.ndarray, threshold: float, where: str
            ) -> tuple[float, float]:
    """Upstream ``calculate_val_far``; a side without pairs is an error (upstream divides by 0)."""
    counts = sweep(dist, issame, np.asarray([threshold], dtype=np.float64))
    if counts.n_same == 0 or counts.n_diff == 0:
        kind = "same" if counts.n_same == 0 else "different"
        raise EvaluationError(f"{where} has no {kind}-person pairs, so VAL/FAR are undefined "
                              "(upstream divides by zero); use fewer --folds or interleave "
                              "same and different pairs in the pairs file as LFW does")
    return (float(counts.tp[0]) / float(counts.n_same),
            float(counts.fp[0]) / float(counts.n_diff))


def _fold_distances(embeddings1: np.ndarray, embeddings2: np.ndarray, train: np.ndarray,
                    metric: int, subtract_mean: bool, cached: np.ndarray | None) -> np.ndarray:
    if not subtract_mean:
        # upstream computes distance(e1 - 0.0, e2 - 0.0) every fold: x - 0.0 == x bit for bit
        return cached if cached is not None else distance(embeddings1, embeddings2, metric)
    mean = np.mean(np.concatenate([embeddings1[train], embeddings2[train]]), axis=0)
    return distance(embeddings1 - mean, embeddings2 - mean, metric)


@dataclass
class Roc:
    """``calculate_roc``'s results and the per-fold thresholds it chose."""

    thresholds: np.ndarray
    tpr: np.ndarray
    fpr: np.ndarray
    accuracy: np.ndarray
    best_thresholds: np.ndarray


def calculate_roc(thresholds: np.ndarray, embeddings1: np.ndarray, embeddings2: np.ndarray,
                  actual_issame: np.ndarray, nrof_folds: int = 10, distance_metric: int = 0,
                  subtract_mean: bool = False) -> Roc:
    """Upstream ``facenet.calculate_roc`` (tpr, fpr: fold means; accuracy per fold)."""
    issame = np.asarray(actual_issame, dtype=bool)
    _check_pairs(embeddings1, embeddings2, issame)
    nrof_pairs = min(len(issame), embeddings1.shape[0])
    folds = kfold(nrof_pairs, nrof_folds)
    tprs = np.zeros((nrof_folds, len(thresholds)))
    fprs = np.zeros((nrof_folds, len(thresholds)))
    accuracy = np.zeros(nrof_folds)
    best = np.zeros(nrof_folds)
    cached = None
    for fold, (train, test) in enumerate(folds):
        dist = _fold_distances(embeddings1, embeddings2, train, distance_metric, subtract_mean,
                               cached)
        cached = None if subtract_mean else dist
        best_index = int(np.argmax(sweep(dist[train], issame[train], thresholds).accuracy))
        on_test = sweep(dist[test], issame[test], thresholds)
        tprs[fold], fprs[fold] = on_test.tpr, on_test.fpr
        accuracy[fold] = on_test.accuracy[best_index]
        best[fold] = thresholds[best_index]
    return Roc(thresholds, np.mean(tprs, 0), np.mean(fprs, 0), accuracy, best)


@dataclass
class Val:
    """``calculate_val``'s results and the per-fold thresholds at the target FAR."""

    val: float
    val_std: float
    far: float
    far_target: float
    thresholds: np.ndarray


def far_threshold(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray,
                  far_target: float) -> float:
    """The threshold ``calculate_val`` takes for ``far_target`` on these pairs (0.0 when even
    the largest threshold stays below the target, as upstream)."""
    counts = sweep(dist, issame, thresholds)
    if counts.n_diff == 0:
        raise EvaluationError("no different-person pairs: FAR is undefined (upstream divides "
                              "by zero); use fewer --folds or add different pairs")
    far_train = counts.fp / float(counts.n_diff)
    if np.max(far_train) >= far_target:
        return slinear_at(far_train, thresholds, far_target)
    return 0.0


def calculate_val(thresholds: np.ndarray, embeddings1: np.ndarray, embeddings2: np.ndarray,
                  actual_issame: np.ndarray, far_target: float, nrof_folds: int = 10,
                  distance_metric: int = 0, subtract_mean: bool = False) -> Val:
    """Upstream ``facenet.calculate_val`` (the slinear rule: see the module docstring)."""
    issame = np.asarray(actual_issame, dtype=bool)
    _check_pairs(embeddings1, embeddings2, issame)
    nrof_pairs = min(len(issame), embeddings1.shape[0])
    val = np.zeros(nrof_folds)
    far = np.zeros(nrof_folds)
    chosen = np.zeros(nrof_folds)
    cached = None
    for fold, (train, test) in enumerate(kfold(nrof_pairs, nrof_folds)):
        dist = _fold_distances(embeddings1, embeddings2, train, distance_metric, subtract_mean,
                               cached)
        cached = None if subtract_mean else dist
        val_far(dist[train], issame[train], 0.0, f"training set of fold {fold + 1}")
        chosen[fold] = far_threshold(dist[train], issame[train], thresholds, far_target)
        val[fold], far[fold] = val_far(dist[test], issame[test], chosen[fold],
                                       f"test fold {fold + 1}")
    return Val(float(np.mean(val)), float(np.std(val)), float(np.mean(far)), far_target, chosen)


def _check_pairs(embeddings1: np.ndarray, embeddings2: np.ndarray, issame: np.ndarray) -> None:
    if embeddings1.ndim != 2 or embeddings1.shape != embeddings2.shape:
        raise EvaluationError(f"embeddings of the pairs' two sides must be N x D of one shape, "
                              f"found {embeddings1.shape} and {embeddings2.shape}")
    if len(issame) != embeddings1.shape[0]:
        raise EvaluationError(f"{embeddings1.shape[0]} pairs of embeddings but {len(issame)} "
                              "same/different labels")


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """``sklearn.metrics.auc``: trapezoid rule over a monotonic fpr."""
    dx = np.diff(fpr)
    direction = 1.0
    if np.any(dx < 0):
        if not np.all(dx <= 0):
            raise EvaluationError("fpr is not monotonic; cannot integrate the ROC curve")
        direction = -1.0
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz
    return float(direction * trapezoid(tpr, fpr))


def eer(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Equal error rate: the x where ``1 - x = interp1d(fpr, tpr)(x)`` (upstream: brentq).

    ``1 - x - tpr(x)`` decreases along the piecewise-linear ROC, so the root is found on the
    segment (or at the vertical jump of repeated fpr values) where the sign changes. NaN when
    the curve does not cross ``tpr = 1 - fpr`` (upstream's brentq raises then).
    """
    fpr = np.asarray(fpr, dtype=np.float64)
    tpr = np.asarray(tpr, dtype=np.float64)
    knots, first = np.unique(fpr, return_index=True)
    last = np.r_[first[1:], fpr.size] - 1
    low, high = tpr[first], tpr[last]        # value arriving at a knot, value leaving it
    for k, x in enumerate(knots):
        g_in, g_out = 1.0 - x - low[k], 1.0 - x - high[k]
        if g_in == 0.0 or (g_in > 0.0 >= g_out):
            return float(x)
        if k + 1 < knots.size:
            nx = knots[k + 1]
            g_next = 1.0 - nx - low[k + 1]
            if g_out > 0.0 > g_next:
                slope = (low[k + 1] - high[k]) / (nx - x)
                return float(x + g_out / (1.0 + slope))
    return float("nan")


# ------------------------------------------------------------------------------- evaluate

def combine_flipped(embeddings: np.ndarray, flipped: np.ndarray | None) -> np.ndarray:
    """validate_on_lfw.py: float64 rows, ``[emb(image), emb(mirrored image)]`` with flips."""
    if flipped is None:
        return np.asarray(embeddings, dtype=np.float64)
    out = np.zeros((embeddings.shape[0], embeddings.shape[1] * 2))
    out[:, :embeddings.shape[1]] = embeddings
    out[:, embeddings.shape[1]:] = flipped
    return out


@dataclass
class Calibration:
    """The threshold for a target FAR on all pairs (no folds) and what it gives there."""

    far_target: float
    threshold: float             # in the metric's units (squared euclidean for euclidean)
    verify_threshold: float | None  # plain euclidean, as ``verify --threshold`` takes it
    val: float
    far: float


@dataclass
class Evaluation:
    """Everything ``evaluate`` reports."""

    pairs: int
    folds: int
    metric: str
    subtract_mean: bool
    flipped: bool
    roc: Roc
    val: Val
    auc: float
    eer: float
    best_threshold: float
    calibration: Calibration
    notes: list[str] = field(default_factory=list)

    @property
    def accuracy_mean(self) -> float:
        return float(np.mean(self.roc.accuracy))

    @property
    def accuracy_std(self) -> float:
        return float(np.std(self.roc.accuracy))

    def summary(self) -> dict[str, Any]:
        cal = self.calibration
        return {
            "pairs": self.pairs, "folds": self.folds, "distance_metric": self.metric,
            "subtract_mean": self.subtract_mean, "use_flipped_images": self.flipped,
            "accuracy": self.accuracy_mean, "accuracy_std": self.accuracy_std,
            "accuracy_per_fold": self.roc.accuracy.tolist(),
            "best_threshold_per_fold": self.roc.best_thresholds.tolist(),
            "val": self.val.val, "val_std": self.val.val_std, "far": self.val.far,
            "far_target": self.val.far_target,
            "val_threshold_per_fold": self.val.thresholds.tolist(),
            "auc": self.auc, "eer": None if math.isnan(self.eer) else self.eer,
            "best_threshold": self.best_threshold,
            "calibration": {"far_target": cal.far_target, "threshold": cal.threshold,
                            "verify_threshold": cal.verify_threshold, "val": cal.val,
                            "far": cal.far},
            "notes": self.notes,
        }

    def lines(self) -> list[str]:
        """The human-readable report (upstream validate_on_lfw.py's lines, then ours)."""
        unit = "squared euclidean" if self.metric == "euclidean" else "arccos(cos)/pi"
        cal = self.calibration
        verify = (f"; verify --threshold {cal.verify_threshold:.4f}"
                  if cal.verify_threshold is not None else
                  " (verify uses plain euclidean distance: calibrate with the euclidean "
                  "metric, no --subtract-mean, no --use-flipped-images)")
        return [
            f"pairs: {self.pairs} ({self.folds} folds, {self.metric} distance"
            + (", mean subtracted" if self.subtract_mean else "")
            + (", flipped images concatenated" if self.flipped else "") + ")",
            f"Accuracy: {self.accuracy_mean:1.3f}+-{self.accuracy_std:1.3f}",
            (f"Validation rate: {self.val.val:2.5f}+-{self.val.val_std:2.5f} "
             f"@ FAR={self.val.far:2.5f}"),
            f"Area Under Curve (AUC): {self.auc:1.3f}",
            f"Equal Error Rate (EER): {self.eer:1.3f}",
            f"best threshold (all pairs, {unit}): {self.best_threshold:.2f}",
            (f"calibrated for FAR {cal.far_target:g} on all pairs: threshold "
             f"{cal.threshold:.4f} ({unit}), VAL {cal.val:.5f}, FAR {cal.far:.5f}{verify}"),
        ]


def check_embeddings(matrix: np.ndarray, names: Sequence[str], *,
                     error: type[ConverterError] = EvaluationError,
                     where: str | os.PathLike[str] | None = None) -> None:
    """Refuse embeddings no distance can be trusted on, in one line: not real numbers, NaN or
    Inf anywhere, or all-zero rows (a broken model or file; every figure would be noise)."""
    if matrix.dtype.kind not in "fiu":
        raise error(f"embeddings hold {matrix.dtype} values, not numbers; expected the float "
                    "rows `facenet-convert embed` writes", path=where)
    if matrix.size == 0:
        if matrix.ndim >= 1 and matrix.shape[0] > 0:
            raise error(f"{matrix.shape[0]} embeddings of shape {list(matrix.shape[1:])} hold "
                        "no values; expected rows of the model's width (128 or 512)",
                        path=where)
        return                                   # nothing embedded: the caller says so
    rows = matrix.reshape(matrix.shape[0], -1) if matrix.ndim else matrix.reshape(1, -1)
    bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
    if bad.size:
        raise error(f"{bad.size} of {rows.shape[0]} embeddings hold NaN or Inf (first: "
                    f"{names[bad[0]] if bad[0] < len(names) else bad[0]}); the weights or the "
                    "file are broken, no figure would mean anything", path=where)
    zero = np.flatnonzero(~rows.any(axis=1))
    if zero.size:
        raise error(f"{zero.size} of {rows.shape[0]} embeddings are all zero (first: "
                    f"{names[zero[0]] if zero[0] < len(names) else zero[0]}); the weights or "
                    "the file are broken, no figure would mean anything", path=where)


def evaluate(embeddings: np.ndarray, actual_issame: Sequence[bool], *, nrof_folds: int = 10,
             distance_metric: str = "euclidean", subtract_mean: bool = False,
             far_target: float = DEFAULT_FAR, flipped: bool = False) -> Evaluation:
    """Upstream ``lfw.evaluate`` on rows ``[pair0 a, pair0 b, pair1 a, ...]``, plus AUC, EER,
    the accuracy-maximizing threshold on all pairs and the calibration for ``far_target``."""
    if distance_metric not in METRICS:
        raise EvaluationError(f"unknown distance metric {distance_metric!r}; expected one of "
                              f"{', '.join(METRICS)}")
    if not 0.0 < far_target <= 1.0:
        raise EvaluationError(f"--far must be in (0, 1], found {far_target:g}")
    emb = np.asarray(embeddings)
    check_embeddings(emb, [])
    issame = np.asarray(actual_issame, dtype=bool)
    if emb.ndim != 2 or emb.shape[0] != 2 * issame.size:
        raise EvaluationError(f"expected 2 x {issame.size} embedding rows (two per pair), "
                              f"found shape {emb.shape}")
    metric = METRICS[distance_metric]
    embeddings1, embeddings2 = emb[0::2], emb[1::2]
    roc = calculate_roc(roc_thresholds(), embeddings1, embeddings2, issame, nrof_folds,
                        metric, subtract_mean)
    val = calculate_val(val_thresholds(), embeddings1, embeddings2, issame, far_target,
                        nrof_folds, metric, subtract_mean)
    if subtract_mean:
        mean = np.mean(np.concatenate([embeddings1, embeddings2]), axis=0)
        dist = distance(embeddings1 - mean, embeddings2 - mean, metric)
    else:
        dist = distance(embeddings1, embeddings2, metric)
    thresholds = roc_thresholds()
    best = float(thresholds[int(np.argmax(sweep(dist, issame, thresholds).accuracy))])
    calibration = calibrate(dist, issame, far_target,
                            plain_euclidean=metric == 0 and not subtract_mean and not flipped)
    notes = []
    if np.max(roc.fpr) < 1.0:
        notes.append("the ROC does not reach FPR 1 within the thresholds [0, 4)")
    return Evaluation(int(issame.size), nrof_folds, distance_metric, subtract_mean, flipped,
                      roc, val, auc(roc.fpr, roc.tpr), eer(roc.fpr, roc.tpr), best,
                      calibration, notes)


def calibrate(dist: np.ndarray, issame: np.ndarray, far_target: float, *,
              plain_euclidean: bool = True) -> Calibration:
    """Threshold for ``far_target`` on all pairs, by ``calculate_val``'s rule (0.001 grid,
    slinear interpolation); for squared euclidean distances also its square root, which is
    what ``verify --threshold`` compares the plain euclidean distance with."""
    issame = np.asarray(issame, dtype=bool)
    val_far(dist, issame, 0.0, "the pairs set")
    threshold = far_threshold(dist, issame, val_thresholds(), far_target)
    val, far = val_far(dist, issame, threshold, "the pairs set")
    verify = math.sqrt(threshold) if plain_euclidean else None
    return Calibration(far_target, float(threshold), verify, val, far)
