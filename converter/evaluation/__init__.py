"""LFW-protocol evaluation as upstream computes it, split by concern:

* :mod:`.metrics` upstream's figures, exactly (ROC, VAL@FAR, AUC, EER, k-fold, calibration);
* :mod:`.pairs` reading ``pairs.txt`` and the LFW image layout;
* :mod:`.reports` the JSON report and the ROC curve (CSV, PNG);
* :mod:`.runs` a pairs file end to end (task parity against the TF graph is
  :mod:`facenet_convert.converter.parity.task`).

The names below are the package's API (``facenet_convert.converter.evaluation.evaluate``...).
"""

from __future__ import annotations

from facenet_convert.converter.evaluation.metrics import (
    DEFAULT_FAR,
    METRICS,
    ROC_STEP,
    VAL_STEP,
    Calibration,
    Counts,
    Evaluation,
    Roc,
    Val,
    auc,
    calculate_roc,
    calculate_val,
    calibrate,
    check_embeddings,
    combine_flipped,
    distance,
    eer,
    evaluate,
    far_threshold,
    kfold,
    roc_thresholds,
    slinear_at,
    sweep,
    val_far,
    val_thresholds,
)
from facenet_convert.converter.evaluation.pairs import (
    PAIRS_HEADER_FIELDS,
    Pair,
    PairPaths,
    lfw_path,
    pair_paths,
    read_pairs,
)
from facenet_convert.converter.evaluation.reports import roc_csv, roc_png, write_report
from facenet_convert.converter.evaluation.runs import (
    PairsEvaluation,
    PairsPlan,
    embeddings_by_path,
    evaluate_pairs,
    name_key,
    plan_pairs,
)
from facenet_convert.converter.parity.task import TaskParity, task_parity, tf_reference

__all__ = [
    "DEFAULT_FAR", "METRICS", "PAIRS_HEADER_FIELDS", "ROC_STEP", "VAL_STEP", "Calibration",
    "Counts", "Evaluation", "Pair", "PairPaths", "PairsEvaluation", "PairsPlan", "Roc",
    "TaskParity", "Val", "auc", "calculate_roc", "calculate_val", "calibrate",
    "check_embeddings", "combine_flipped", "distance", "eer", "embeddings_by_path",
    "evaluate", "evaluate_pairs", "far_threshold", "kfold", "lfw_path", "name_key",
    "pair_paths", "plan_pairs", "read_pairs", "roc_csv", "roc_png", "roc_thresholds",
    "slinear_at", "sweep", "task_parity", "tf_reference", "val_far", "val_thresholds",
    "write_report",
]
