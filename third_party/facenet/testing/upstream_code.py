"""davidsandberg's own functions, compiled from the pinned wheel, for tests and benchmarks.

Only the named top-level functions of an upstream file are compiled, into a namespace that
holds just what the caller gives them (``np``, stubs): the rest of the file (its TensorFlow,
scipy.misc or cv2 imports) is never run. Never shipped in the wheel.
"""

from __future__ import annotations

import ast
import math
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from facenet_convert.third_party.wheels import FACENET, PinnedWheel, wheel_member

#: facenet.py's functions that lfw.evaluate calls
FACENET_EVALUATION = ("distance", "calculate_roc", "calculate_accuracy", "calculate_val",
                      "calculate_val_far")


def upstream_functions(member: str, names: tuple[str, ...],
                       namespace: dict[str, Any] | None = None, *,
                       wheel: PinnedWheel = FACENET) -> dict[str, Any]:
    """Compile the top-level functions ``names`` of ``member`` (a file of ``wheel``) into
    ``namespace`` (default: just ``np``) and return it."""
    source = Path(wheel_member(wheel, member)).read_text()
    chosen = [node for node in ast.parse(source).body
              if isinstance(node, ast.FunctionDef) and node.name in names]
    found = {node.name for node in chosen}
    if found != set(names):
        raise LookupError(f"{member} has no function {sorted(set(names) - found)}")
    scope: dict[str, Any] = {"np": np} if namespace is None else namespace
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)      # upstream's `method is 'Min'`
        code = compile(ast.Module(body=chosen, type_ignores=[]), member, "exec")
    exec(code, scope)  # noqa: S102 - upstream functions from the sha256-pinned wheel
    return scope


def lfw_evaluation(interpolate: Any, kfold: Any) -> types.SimpleNamespace:
    """facenet's evaluation functions and ``lfw.evaluate``, with scipy's ``interpolate`` and
    sklearn's ``KFold`` given by the caller."""
    facenet = upstream_functions("facenet/src/facenet.py", FACENET_EVALUATION,
                                 {"np": np, "math": math, "interpolate": interpolate,
                                  "KFold": kfold})
    module = types.SimpleNamespace(**{n: facenet[n] for n in FACENET_EVALUATION})
    lfw = upstream_functions("facenet/src/lfw.py", ("evaluate",), {"np": np, "facenet": module})
    module.evaluate = lfw["evaluate"]
    return module


class OldScipyInterpolate:
    """scipy <= 1.8 ``interp1d(kind='slinear')``: stable sort, then ``make_interp_spline(x, y,
    k=1)``, whose k=1 branch is ``BSpline.construct_fast(r_[x[0], x, x[-1]], y, 1)``; scipy 1.9
    added only the duplicate check in front of it. Out-of-range x raises, as interp1d does."""

    @staticmethod
    def interp1d(x: Any, y: Any, kind: str) -> Any:
        from scipy import interpolate

        if kind != "slinear":
            raise ValueError(f"only kind='slinear' is modelled, not {kind!r}")
        x = np.asarray(x, dtype=np.float64)
        order = np.argsort(x, kind="mergesort")
        xs, ys = x[order], np.asarray(y, dtype=np.float64)[order]
        spline = interpolate.BSpline.construct_fast(np.r_[xs[0], xs, xs[-1]],
                                                    np.ascontiguousarray(ys), 1)

        def at(value: float) -> np.ndarray:
            if not xs[0] <= value <= xs[-1]:
                raise ValueError("A value in x_new is outside the interpolation range.")
            return spline(value)

        return at


def lfw_like(seed: int, pairs: int = 6000, dim: int = 128, dtype: Any = np.float64
             ) -> tuple[np.ndarray, np.ndarray]:
    """LFW's order (sets of same pairs then different pairs), L2-normalized rows a0 b0 a1 b1."""
    rng = np.random.default_rng(seed)
    issame = (np.arange(pairs) // max(pairs // 20, 1)) % 2 == 0
    a = rng.standard_normal((pairs, dim))
    b = np.where(issame[:, None], a + rng.uniform(0.4, 1.6, (pairs, 1))
                 * rng.standard_normal((pairs, dim)), rng.standard_normal((pairs, dim)))
    rows = np.empty((2 * pairs, dim))
    rows[0::2], rows[1::2] = a, b
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows.astype(dtype), issame
