"""``compare``: the distance matrix of a handful of images, as upstream ``compare.py`` prints
it, and its JSON / CSV files."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facenet_convert.converter.core.checks import dumps as json_dumps
from facenet_convert.converter.core.errors import EmbedError
from facenet_convert.converter.evaluation.metrics import check_embeddings


def distance_matrix(embeddings: np.ndarray) -> np.ndarray:
    """compare.py's ``sqrt(sum(square(subtract(emb[i], emb[j]))))`` for every i, j, in the
    embeddings' own dtype (float32 from the model, as TF returned them to compare.py)."""
    emb = np.asarray(embeddings)
    rows = [np.sqrt(np.sum(np.square(np.subtract(emb[i, :], emb)), axis=1))
            for i in range(emb.shape[0])]
    return np.stack(rows) if rows else np.zeros((0, 0), dtype=emb.dtype)


def matrix_table(names: Sequence[str], matrix: np.ndarray) -> list[str]:
    """compare.py's printout: the numbered images, then the matrix with ``%1.4f`` cells."""
    lines = ["Images:"] + [f"{i}: {name}" for i, name in enumerate(names)] + ["",
                                                                            "Distance matrix"]
    lines.append("    " + "".join(f"    {i:<1d}     " for i in range(len(names))))
    for i, row in enumerate(matrix):
        lines.append(f"{i:<1d}  " + "".join(f"  {float(d):1.4f}  " for d in row))
    return lines


def matrix_csv(names: Sequence[str], matrix: np.ndarray) -> str:
    import csv
    import io

    text = io.StringIO(newline="")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["", *names])
    for name, row in zip(names, matrix, strict=True):
        writer.writerow([name, *(f"{float(d):.9g}" for d in row)])
    return text.getvalue()


@dataclass
class DistanceMatrix:
    """compare.py's result: the images embedded (in order), their matrix, what was skipped."""

    names: list[str]
    matrix: np.ndarray
    skipped: list[tuple[str, str]]

    def summary(self) -> dict[str, Any]:
        return {"images": self.names, "distance": self.matrix.astype(np.float64).tolist(),
                "metric": "euclidean (L2-normalized embeddings)",
                "skipped": [{"image": p, "reason": why} for p, why in self.skipped]}


def compare_images(loaded: Any, paths: Sequence[Path], *, detector: Any = None,
                   fit: str = "resize", batch_size: int = 32) -> DistanceMatrix:
    """Embed each image (its best face with a detector, as compare.py takes the first box) and
    give upstream compare.py's distance matrix; images that fail are skipped (compare.py drops
    the ones without a face)."""
    from facenet_convert.converter.embedding import embed_paths

    result = embed_paths(loaded, paths, detector=detector, fit=fit, batch_size=batch_size)
    check_embeddings(np.asarray(result.embeddings), [str(p) for p in result.paths],
                     error=EmbedError)
    return DistanceMatrix([str(p) for p in result.paths], distance_matrix(result.embeddings),
                          result.skipped)


def write_matrix(result: DistanceMatrix, *, json_path: str | None, csv_path: str | None,
                 force: bool, inputs: Sequence[Path]) -> dict[str, str]:
    """Write ``--json`` / ``--csv`` files atomically; ``-`` returns the text for stdout."""
    from facenet_convert.converter.core.atomic import staged_outputs

    texts = {}
    if json_path is not None:
        texts[json_path] = json_dumps(result.summary(), indent=2) + "\n"
    if csv_path is not None:
        texts[csv_path] = matrix_csv(result.names, result.matrix)
    files = {Path(k): v for k, v in texts.items() if k != "-"}
    if files:
        with staged_outputs(list(files), force=force, inputs=inputs, final=True) as handles:
            for path, text in files.items():
                handles[path].write(text.encode("utf-8"))
    return {k: v for k, v in texts.items() if k == "-"}
