"""What ``evaluate`` writes: the JSON report, the ROC curve as CSV or PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facenet_convert.converter.core.checks import dumps as json_dumps
from facenet_convert.converter.core.errors import EvaluationError
from facenet_convert.converter.core.extras import require_extra
from facenet_convert.converter.evaluation.metrics import Evaluation, Roc


def roc_csv(roc: Roc) -> bytes:
    """``threshold,fpr,tpr`` rows (``%.17g``: the float64 values round-trip)."""
    rows = ["threshold,fpr,tpr"]
    rows += [f"{t:.17g},{f:.17g},{p:.17g}" for t, f, p in zip(roc.thresholds.tolist(),
                                                             roc.fpr.tolist(), roc.tpr.tolist(),
                                                             strict=True)]
    return ("\n".join(rows) + "\n").encode("ascii")


def roc_png(result: Evaluation, title: str) -> bytes:
    """The ROC curve (matplotlib, Agg backend, no display needed) as PNG bytes."""
    import io

    require_extra("plot", "a .png ROC plot (or write --roc F.csv)")
    import matplotlib
    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 5), dpi=100)
    axes = figure.add_subplot()
    axes.plot(result.roc.fpr, result.roc.tpr, lw=1.5,
              label=f"AUC {result.auc:.3f}, accuracy {result.accuracy_mean:.3f}")
    line = np.r_[0.0, np.geomspace(1e-4, 1.0, 200)]   # sampled: the x axis is not linear
    axes.plot(line, 1.0 - line, ls=":", lw=0.8, color="grey",
              label=f"EER line (EER {result.eer:.3f})")
    axes.set_xscale("symlog", linthresh=1e-3)
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
    axes.set_xlabel("false positive rate (symlog)")
    axes.set_ylabel("true positive rate")
    axes.set_title(title, fontsize=9)
    axes.grid(True, lw=0.3)
    axes.legend(loc="lower right", fontsize=8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_report(result: Evaluation, *, json_path: str | None, roc_path: str | None,
                 force: bool, inputs: Sequence[Path], title: str,
                 extra: dict[str, Any] | None = None) -> list[Path]:
    """Write ``--json`` and ``--roc`` (``.png`` or ``.csv``) all or nothing."""
    from facenet_convert.converter.core.atomic import staged_outputs

    contents: dict[Path, bytes] = {}
    if roc_path is not None:
        suffix = Path(roc_path).suffix.lower()
        if suffix == ".csv":
            contents[Path(roc_path)] = roc_csv(result.roc)
        elif suffix == ".png":
            contents[Path(roc_path)] = roc_png(result, title)
        else:
            raise EvaluationError(f"--roc expects a .png or .csv file, found "
                                  f"{Path(roc_path).suffix or '(no extension)'}", path=roc_path)
    if json_path is not None:
        body = {**result.summary(), **(extra or {})}
        contents[Path(json_path)] = (json_dumps(body, indent=2) + "\n").encode("utf-8")
    if not contents:
        return []
    with staged_outputs(list(contents), force=force, inputs=inputs, final=True) as handles:
        for path, data in contents.items():
            handles[path].write(data)
    return list(contents)
