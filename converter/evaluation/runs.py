"""``evaluate`` end to end: a pairs file and its images (or an ``embed`` .npz) through the
model, upstream's metrics, and the TF graph's decisions beside ours (task parity)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facenet_convert.converter.core.errors import EvaluationError
from facenet_convert.converter.evaluation.metrics import (
    DEFAULT_FAR,
    METRICS,
    Evaluation,
    check_embeddings,
    combine_flipped,
    distance,
    evaluate,
    kfold,
)
from facenet_convert.converter.evaluation.pairs import PairPaths, pair_paths, read_pairs
from facenet_convert.converter.parity.task import TaskParity, task_parity, tf_reference


@dataclass
class PairsPlan:
    """A pairs file resolved against IMAGES_DIR: the images to embed, each once."""

    pairs_file: Path
    images_dir: Path
    resolved: PairPaths
    total_pairs: int

    @property
    def unique_paths(self) -> list[Path]:
        return list(dict.fromkeys(self.resolved.paths))


def plan_pairs(pairs_file: str | os.PathLike[str], images_dir: str | os.PathLike[str],
               ext: str | None = None) -> PairsPlan:
    pairs = read_pairs(pairs_file)
    return PairsPlan(Path(pairs_file), Path(images_dir), pair_paths(images_dir, pairs, ext),
                     len(pairs))


@dataclass
class PairsEvaluation:
    """``evaluate``'s whole result: the figures, what was skipped, task-level parity."""

    evaluation: Evaluation
    plan: PairsPlan
    skipped_images: list[tuple[str, str]]
    dropped_pairs: int
    parity: TaskParity | None = None

    def lines(self) -> list[str]:
        out = self.evaluation.lines()
        if self.parity is not None:
            out += self.parity.lines()
        return out

    def extra(self) -> dict[str, Any]:
        resolved = self.plan.resolved
        return {"pairs_file": str(self.plan.pairs_file), "images_dir": str(self.plan.images_dir),
                "pairs_in_file": self.plan.total_pairs,
                "pairs_missing_images": len(resolved.missing),
                "pairs_unembeddable": self.dropped_pairs,
                "task_parity": None if self.parity is None else self.parity.summary()}


def name_key(name: str) -> str:
    return os.path.normcase(os.path.abspath(name))


def embeddings_by_path(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Rows of an ``embed`` ``.npz`` by image path (with ``--detect`` names, face ``#0``)."""
    file = Path(path)
    if file.suffix.lower() != ".npz":
        raise EvaluationError("--embeddings expects the .npz that `facenet-convert embed` "
                              "writes (arrays names, embeddings)", path=file)
    try:
        with np.load(file, allow_pickle=False) as data:
            names = [str(n) for n in data["names"]]
            matrix = np.asarray(data["embeddings"])
            detected = "boxes" in data.files
    except (OSError, ValueError, KeyError) as error:
        raise EvaluationError(f"cannot read embeddings ({error}); expected an .npz with "
                              "arrays names and embeddings", path=file) from error
    if matrix.ndim != 2 or matrix.shape[0] != len(names):
        raise EvaluationError(f"embeddings shape {matrix.shape} does not match "
                              f"{len(names)} names", path=file)
    check_embeddings(matrix, names, where=file)
    rows: dict[str, np.ndarray] = {}
    for name, row in zip(names, matrix, strict=True):
        if detected:
            stem, _, face = name.rpartition("#")
            if face != "0":
                continue
            name = stem
        rows[name_key(name)] = row
    return rows


def evaluate_pairs(plan: PairsPlan, *, loaded: Any = None, embeddings_file: str | None = None,
                   detector: Any = None, folds: int = 10, metric: str = "euclidean",
                   subtract_mean: bool = False, flipped: bool = False,
                   far_target: float = DEFAULT_FAR, compare_with: str | None = None,
                   batch_size: int = 32, workers: int = 0, fit: str = "resize",
                   on_done: Any = None, embed: Any = None) -> PairsEvaluation:
    """Embed the pairs' images (or take them from ``embeddings_file``) and evaluate them as
    upstream's validate_on_lfw.py does; with ``compare_with`` also with the TF graph.
    ``embed`` replaces ``embedding.embed_paths`` (same call; e.g. ``scale.path_embedder``)."""
    from contextlib import nullcontext

    if (loaded is None) == (embeddings_file is None):
        raise EvaluationError("give the model (--weights / --pretrained) or --embeddings, "
                              "exactly one")
    if embeddings_file is not None and (flipped or compare_with or detector is not None):
        raise EvaluationError("--embeddings holds finished embeddings: --use-flipped-images, "
                              "--compare-with and --detect need the model (--weights or "
                              "--pretrained)")
    resolved = plan.resolved
    rows: dict[Path, int] = {}
    skipped: list[tuple[str, str]] = []
    reference = reference_flipped = flips = None
    if embeddings_file is not None:
        table = embeddings_by_path(embeddings_file)
        found = [p for p in plan.unique_paths if name_key(str(p)) in table]
        skipped = [(str(p), f"{p}: not in {embeddings_file}") for p in plan.unique_paths
                   if name_key(str(p)) not in table]
        matrix = (np.stack([table[name_key(str(p))] for p in found]) if found
                  else np.zeros((0, 1), dtype=np.float32))
        rows = {p: i for i, p in enumerate(found)}
    else:
        from facenet_convert.converter.embedding import embed_paths

        context = tf_reference(compare_with) if compare_with else nullcontext(None)
        with context as run_tf:
            result = (embed or embed_paths)(loaded, plan.unique_paths, detector=detector,
                                            flip=flipped, batch_size=batch_size,
                                            workers=workers, fit=fit, reference=run_tf,
                                            on_done=on_done)
        matrix, flips, skipped = result.embeddings, result.flipped, result.skipped
        reference, reference_flipped = result.reference, result.reference_flipped
        rows = {p: i for i, p in enumerate(result.paths)}
    keep = [k for k in range(len(resolved.issame))
            if resolved.paths[2 * k] in rows and resolved.paths[2 * k + 1] in rows]
    if not keep:
        raise EvaluationError(f"no pair has both images embedded ({len(skipped)} images "
                              "skipped); nothing to evaluate", path=plan.images_dir)
    order = [rows[resolved.paths[2 * k + side]] for k in keep for side in (0, 1)]
    issame = np.asarray([resolved.issame[k] for k in keep], dtype=bool)
    lines = [resolved.lines[k] for k in keep]
    ours = combine_flipped(matrix[order], None if flips is None else flips[order])
    evaluation = evaluate(ours, issame, nrof_folds=folds, distance_metric=metric,
                          subtract_mean=subtract_mean, far_target=far_target, flipped=flipped)
    out = PairsEvaluation(evaluation, plan, skipped, len(resolved.issame) - len(keep))
    if reference is not None:
        theirs = combine_flipped(reference[order], None if reference_flipped is None
                                 else reference_flipped[order])
        tf_eval = evaluate(theirs, issame, nrof_folds=folds, distance_metric=metric,
                           subtract_mean=subtract_mean, far_target=far_target, flipped=flipped)
        out.parity = _parity_of(str(compare_with), evaluation, tf_eval, ours, theirs, issame,
                                lines, subtract_mean)
    return out


def _parity_of(source: str, ours_eval: Evaluation, tf_eval: Evaluation, ours: np.ndarray,
               theirs: np.ndarray, issame: np.ndarray, lines: Sequence[int],
               subtract_mean: bool) -> TaskParity:
    metric = METRICS[ours_eval.metric]
    folds = kfold(issame.size, ours_eval.folds)
    if subtract_mean:   # one mean per side over all pairs: the decision rule stays per fold
        dist_ours = distance(ours[0::2] - ours.mean(0), ours[1::2] - ours.mean(0), metric)
        dist_tf = distance(theirs[0::2] - theirs.mean(0), theirs[1::2] - theirs.mean(0), metric)
    else:
        dist_ours = distance(ours[0::2], ours[1::2], metric)
        dist_tf = distance(theirs[0::2], theirs[1::2], metric)
    parity = task_parity(source, folds, ours_eval.roc.best_thresholds, dist_ours, dist_tf,
                         issame, ours, theirs, lines)
    parity.accuracy_ours = ours_eval.accuracy_mean
    parity.accuracy_tf = tf_eval.accuracy_mean
    return parity
