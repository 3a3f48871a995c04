"""What parity measures and reports: per-output figures (float64 verdict, float32 noise),
the gates, the first diverging layer, and the report as text, JSON and markdown."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from facenet_convert.converter.core.errors import ParityError

DEFAULT_TOLERANCE = 1e-10


@dataclass
class Gate:
    """One pass/fail criterion: ``value <= limit``."""

    name: str
    value: float
    limit: float

    @property
    def passed(self) -> bool:
        return not math.isnan(self.value) and self.value <= self.limit


def _rel(diff: float, scale: float) -> float:
    return diff / scale if scale > 0 else diff


@dataclass
class Figures:
    """TF vs PyTorch differences of one output or one layer, float64 and float32."""

    name: str
    module: str
    tf_tensor: str
    shape: tuple[int, ...] = ()       # per sample, our layout
    # float64 (the gate)
    values64: int = 0                  # how many values were compared in float64
    max_abs64: float = 0.0             # max |TF64 - PT64|
    ref_max_abs64: float = 0.0         # max |TF64|: the output's scale
    # float32 (information)
    values: int = 0                    # how many values were compared in float32
    l2: float = 0.0                    # L2(TF32 - PT32) over every value compared
    max_abs: float = 0.0               # max |TF32 - PT32|
    ref_max_abs: float = 0.0           # max |TF32|
    min_cosine: float | None = None    # min over samples of cos(TF32, PT32) (embeddings)
    l2_on64: float = 0.0               # L2(TF32 - PT32) over the float64 inputs
    noise_tf_l2: float = 0.0           # L2(TF32 - TF64): TF's own float32 noise
    noise_pt_l2: float = 0.0           # L2(PT32 - PT64): ours
    missing: bool = False              # the TF graph lacks this tensor

    @property
    def rel_max_abs64(self) -> float:
        """max |TF64 - PT64| relative to the output's scale: the gated figure."""
        return _rel(self.max_abs64, self.ref_max_abs64)

    @property
    def rel_max_abs(self) -> float:
        """float32 max abs difference relative to the output's scale."""
        return _rel(self.max_abs, self.ref_max_abs)

    @property
    def expected_noise_l2(self) -> float:
        """The float32 noise of both sides together, sqrt(TF's^2 + ours^2)."""
        return math.hypot(self.noise_tf_l2, self.noise_pt_l2)

    @property
    def noise_ratio(self) -> float:
        """L2(TF32 - PT32) / expected float32 noise, on the float64 inputs; about 1 when
        correct; 0 when both are exactly 0."""
        expected = self.expected_noise_l2
        if expected > 0:
            return self.l2_on64 / expected
        return 0.0 if self.l2_on64 == 0 else math.inf

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["shape"] = list(self.shape)
        data["rel_max_abs64"] = self.rel_max_abs64
        data["rel_max_abs"] = self.rel_max_abs
        data["expected_noise_l2"] = self.expected_noise_l2
        data["noise_ratio"] = self.noise_ratio
        return data


def _max(values: np.ndarray) -> float:
    return float(np.max(np.abs(values))) if values.size else 0.0


class Accumulator:
    """Running sums so that batches (and per-layer activations) need not be kept."""

    def __init__(self, figures: Figures, cosine: bool = False) -> None:
        self.figures = figures
        self.cosine = cosine
        self._sq = 0.0
        self._sq_on64 = 0.0
        self._sq_tf = 0.0
        self._sq_pt = 0.0

    def _check(self, tf_value: np.ndarray, ours: np.ndarray) -> None:
        if tf_value.shape != ours.shape:
            raise ParityError(f"{self.figures.name}: TF output shape {tuple(tf_value.shape)} "
                              f"does not match ours {tuple(ours.shape)} (after layout change); "
                              "the weights do not belong to this graph or model")

    def add32(self, tf32: np.ndarray, pt32: np.ndarray) -> None:
        self._check(tf32, pt32)
        fig = self.figures
        ref = tf32.astype(np.float64)
        ours = pt32.astype(np.float64)
        diff = ref - ours
        self._sq += float(np.sum(diff * diff))
        fig.l2 = math.sqrt(self._sq)
        fig.max_abs = max(fig.max_abs, _max(diff))
        fig.ref_max_abs = max(fig.ref_max_abs, _max(ref))
        fig.values += int(diff.size)
        fig.shape = tuple(int(d) for d in pt32.shape[1:])
        if self.cosine and len(ref):
            a = ref.reshape(len(ref), -1)
            b = ours.reshape(len(ours), -1)
            norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
            cos = np.sum(a * b, axis=1) / np.where(norms > 0, norms, 1.0)
            worst = float(np.min(cos))
            fig.min_cosine = worst if fig.min_cosine is None else min(fig.min_cosine, worst)

    def add64(self, tf64: np.ndarray, pt64: np.ndarray, tf32: np.ndarray | None,
              pt32: np.ndarray | None) -> None:
        """float64 values of the float64 inputs (and the float32 ones of the same inputs)."""
        self._check(tf64, pt64)
        fig = self.figures
        fig.max_abs64 = max(fig.max_abs64, _max(tf64 - pt64))
        fig.ref_max_abs64 = max(fig.ref_max_abs64, _max(tf64))
        fig.values64 += int(tf64.size)
        fig.shape = tuple(int(d) for d in pt64.shape[1:])
        if tf32 is None or pt32 is None:
            return
        self._check(tf32, pt64)
        pairs = ((tf32.astype(np.float64) - pt32.astype(np.float64), "_sq_on64"),
                 (tf32.astype(np.float64) - tf64, "_sq_tf"),
                 (pt32.astype(np.float64) - pt64, "_sq_pt"))
        for diff, attr in pairs:
            setattr(self, attr, getattr(self, attr) + float(np.sum(diff * diff)))
        fig.l2_on64 = math.sqrt(self._sq_on64)
        fig.noise_tf_l2 = math.sqrt(self._sq_tf)
        fig.noise_pt_l2 = math.sqrt(self._sq_pt)


@dataclass
class Divergence:
    """Where the TF and PyTorch computations part (float64)."""

    label: str
    module: str
    tf_tensor: str
    rel_max_abs64: float
    max_abs64: float
    reason: str


def locate_divergence(layers: Sequence[Figures], tolerance: float = DEFAULT_TOLERANCE
                      ) -> Divergence | None:
    """The first layer (network order) whose float64 relative max abs exceeds ``tolerance``.

    A correct conversion keeps every layer near 1e-14, so the first one above the gate is where
    an error enters; the layers after it only carry it on.
    """
    for layer in layers:
        if layer.missing or layer.values64 == 0:
            continue
        if not layer.rel_max_abs64 <= tolerance:
            return Divergence(layer.name, layer.module, layer.tf_tensor, layer.rel_max_abs64,
                              layer.max_abs64, f"first end point whose float64 max |TF64 - PT64|"
                              f" / scale ({_fmt(layer.rel_max_abs64)}) exceeds {tolerance:g}")
    return None


def _fmt(value: float) -> str:
    return f"{value:.3g}" if math.isfinite(value) else str(value)


# -------------------------------------------------------------------------------- report


@dataclass
class ParityReport:
    """Everything the check measured and decided; rendered by :mod:`converter.report`."""

    model: str
    source: str
    source_kind: str
    source_description: str
    weights: str
    inputs: dict[str, Any]
    tolerance: float
    outputs: list[Figures] = field(default_factory=list)
    gates: list[Gate] = field(default_factory=list)
    layers: list[Figures] | None = None
    divergence: Divergence | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.gates) and all(gate.passed for gate in self.gates)

    @property
    def failed_gates(self) -> list[Gate]:
        return [gate for gate in self.gates if not gate.passed]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite floats become the strings "inf" / "nan")."""
        data = {
            "tool": "facenet-convert parity",
            "passed": self.passed,
            "verdict": "float64",
            "model": self.model,
            "source": {"path": self.source, "kind": self.source_kind,
                       "description": self.source_description},
            "weights": self.weights,
            "inputs": self.inputs,
            "gates_settings": {"float64_rel_tolerance": self.tolerance},
            "gates": [{"name": g.name, "value": g.value, "limit": g.limit, "passed": g.passed}
                      for g in self.gates],
            "outputs": [figures.as_dict() for figures in self.outputs],
            "layers": None if self.layers is None else [f.as_dict() for f in self.layers],
            "divergence": None if self.divergence is None else asdict(self.divergence),
            "notes": list(self.notes),
            "seconds": round(self.seconds, 3),
            "versions": dict(self.versions),
        }
        return _finite(data)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value
