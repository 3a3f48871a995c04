"""Task-level parity: our model and the TF graph deciding the same verification pairs.

``evaluate --compare-with SOURCE`` embeds the pairs with both, and every pair is decided with
its fold's threshold on each side's distances: the decisions that differ are what a user of
the converted model would see change.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from facenet_convert.converter.core.errors import EvaluationError


@dataclass
class TaskParity:
    """Our model and the TF graph on the same pairs: decisions, accuracies, differences."""

    source: str
    pairs: int
    agree: int
    disagree_lines: list[int]
    accuracy_ours: float
    accuracy_tf: float
    max_abs_embedding: float
    max_abs_distance: float

    def summary(self) -> dict[str, Any]:
        return {"source": self.source, "pairs": self.pairs, "same_decisions": self.agree,
                "all_decisions_equal": self.agree == self.pairs,
                "disagreeing_pair_lines": self.disagree_lines,
                "accuracy_ours": self.accuracy_ours, "accuracy_tf": self.accuracy_tf,
                "max_abs_embedding_difference": self.max_abs_embedding,
                "max_abs_distance_difference": self.max_abs_distance}

    def lines(self) -> list[str]:
        verdict = ("both models make the same decision on every pair" if self.agree == self.pairs
                   else f"decisions differ on {self.pairs - self.agree} pairs (pairs-file lines "
                   f"{', '.join(map(str, self.disagree_lines[:10]))})")
        return [(f"task-level parity with {self.source}: {verdict} ({self.agree}/{self.pairs} "
                 "at the per-fold thresholds)"),
                (f"  accuracy ours {self.accuracy_ours:1.5f}, TF {self.accuracy_tf:1.5f}; "
                 f"max |embedding difference| {self.max_abs_embedding:.3g}, max |distance "
                 f"difference| {self.max_abs_distance:.3g}")]


def task_parity(source: str, folds: list[tuple[np.ndarray, np.ndarray]],
                thresholds: Sequence[float], dist_ours: np.ndarray, dist_tf: np.ndarray,
                issame: np.ndarray, ours: np.ndarray, tf_rows: np.ndarray,
                lines: Sequence[int]) -> TaskParity:
    """Decide every test pair with its fold's threshold (the evaluation's per-fold best),
    for both models' distances."""
    decide_ours = np.zeros(issame.size, dtype=bool)
    decide_tf = np.zeros(issame.size, dtype=bool)
    for (_, test), threshold in zip(folds, thresholds, strict=True):
        decide_ours[test] = np.less(dist_ours[test], threshold)
        decide_tf[test] = np.less(dist_tf[test], threshold)
    differ = np.flatnonzero(decide_ours != decide_tf)
    return TaskParity(source, int(issame.size), int(issame.size - differ.size),
                      [int(lines[i]) for i in differ],
                      float(np.mean(decide_ours == issame)), float(np.mean(decide_tf == issame)),
                      float(np.max(np.abs(ours.astype(np.float64) - tf_rows))),
                      float(np.max(np.abs(dist_ours - dist_tf))))


def tf_reference(source: str | os.PathLike[str]) -> Any:
    """The upstream TF graph of SOURCE (checkpoint, .meta or frozen .pb) as a context manager
    that yields ``run(nchw float32) -> embeddings``; uses the parity layer's TF runner."""
    from contextlib import contextmanager

    from facenet_convert.converter.parity_tf import (
        EMBEDDINGS,
        open_checkpoint_graph,
        open_frozen_graph,
        quiet_tensorflow,
        resolve_tf_source,
    )

    src = resolve_tf_source(source)
    if src.kind == "mtcnn":
        raise EvaluationError("--compare-with needs an Inception-ResNet-V1 graph (checkpoint "
                              "or frozen .pb), not MTCNN weights", path=source)

    @contextmanager
    def opened() -> Any:
        quiet_tensorflow()
        graph = open_frozen_graph(src) if src.kind == "frozen" else open_checkpoint_graph(src)
        with graph:
            yield lambda nchw: graph.run(np.ascontiguousarray(nchw.transpose(0, 2, 3, 1)),
                                         [EMBEDDINGS])[0]

    return opened()
