"""NaN-proof comparisons and JSON: a NaN or Inf anywhere fails a check, never passes it.

``max(0.0, nan)`` is ``0.0`` and ``nan <= tol`` is False but ``not nan > tol`` is True: every
verification goes through :func:`max_abs_difference` and :func:`within`, and every JSON
report through :func:`dumps`, so that a broken model cannot print "verified, max abs 0".
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

__all__ = ["dumps", "finite_or_none", "max_abs_difference", "within", "worst"]


def max_abs_difference(got: Any, want: Any) -> float:
    """``max |got - want|`` of two arrays or tensors (numpy or torch); ``inf`` when either
    holds a NaN or Inf (so that it exceeds every tolerance)."""
    import numpy as np

    a = np.asarray(got.detach().cpu().double() if hasattr(got, "detach") else got,
                   dtype=np.float64)
    b = np.asarray(want.detach().cpu().double() if hasattr(want, "detach") else want,
                   dtype=np.float64)
    if a.shape != b.shape:
        return math.inf
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return math.inf
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def worst(values: Iterable[float]) -> float:
    """The largest of ``values``, NaN counting as larger than anything (``inf``)."""
    result = 0.0
    for value in values:
        if not math.isfinite(value) or value > result:
            result = math.inf if math.isnan(value) else value
    return result


def within(value: float, tolerance: float) -> bool:
    """``value <= tolerance`` for a finite value; NaN and Inf are never within."""
    return math.isfinite(value) and value <= tolerance


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None, recursively (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    return value


def dumps(value: Any, **options: Any) -> str:
    """Strict JSON: non-finite floats become null (never a bare NaN or Infinity)."""
    return json.dumps(finite_or_none(value), allow_nan=False, **options)


def require_choice(value: Any, allowed: Iterable[Any], what: str,
                   error: type[Exception]) -> None:
    """Refuse a setting outside ``allowed`` in one line that lists the choices (library callers
    that bypass the CLI's own choice lists meet the same words)."""
    choices = list(allowed)
    if value not in choices:
        raise error(f"unknown {what} {value!r}; expected one of "
                    f"{', '.join(str(choice) for choice in choices)}")
