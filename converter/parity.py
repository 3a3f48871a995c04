"""Parity: does a converted model compute what the TensorFlow model computes, and if not, where
does it stop doing so?

**The verdict is float64.** The TF reference is rewritten to float64 (``tf_float64``: variables
folded from our own reading of the weights, training branches pruned, float32 retyped to
float64, FusedBatchNorm expanded) and our PyTorch model is cast to float64; both keep the
float32-rounded constants of the float32 model (REFERENCE §7). Both get the same seeded
N(0, 1) inputs (or real images). Without float32 rounding noise, a correct conversion differs
by about 1e-14 of the output's scale, a wrong one (one conv's weights off by 1e-6) by 1e-7, on
any CPU. The gate, per output: ``max |TF64 - PT64| / max |TF64| <= tolerance`` (1e-10).

The float32 figures are reported beside it, for information: L2 and max abs of TF32 - PT32,
min cosine, and the **noise ratio** ``L2(TF32 - PT32) / sqrt(L2(TF32 - TF64)^2 +
L2(PT32 - PT64)^2)``: the float32 difference over the float32 noise both sides are expected to
add (each side's distance from its own float64 run), about 1 for a correct conversion on any
CPU. Float64 runs cost more: by default the first ``float64_inputs`` (8) of the inputs run in
float64 as well, all of them in float32; the float32 noise ratio is taken over those 8.

Per-layer localisation (``per_layer=True``) compares, in float64, every end point of the
architecture record (upstream tensor names, our module paths) in network order, and names the
first one whose relative max abs difference exceeds the gate: an error enters the network
there, later layers only carry it.

The outputs compared are the end points our model returns (found by identity of the tensors
its forward returns with its modules' outputs), plus the record's logits end point when both
sides have logits (our logits module applied to the end point before the model output).

Running the TF side imports and runs the user's graph: a graph is code. TensorFlow and torch
are imported inside functions only.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facenet_convert.converter.architecture import Architecture, LayerRow
from facenet_convert.converter.core.errors import ParityError
from facenet_convert.converter.registry import (
    get_architecture,
    match_state,
    names,
)

DEFAULT_TOLERANCE = 1e-10
DEFAULT_FLOAT64_INPUTS = 8
MODELS = ("auto", *names())
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: (height, width) of the random inputs of a model that takes any size (PNet).
ANY_SIZE_INPUT = (160, 160)


def input_size(model: str) -> tuple[int, int]:
    """(height, width) of the inputs ``model`` gets."""
    return get_architecture(model).input_size or ANY_SIZE_INPUT


# ------------------------------------------------------------------------------- figures


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


class _Accumulator:
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


# -------------------------------------------------------------------------------- inputs


def random_batches(shape_hw: tuple[int, int], *, batches: int, batch_size: int,
                   seed: int) -> Iterator[np.ndarray]:
    """Seeded N(0, 1) float32 batches, NCHW."""
    rng = np.random.default_rng(seed)
    height, width = shape_hw
    for _ in range(batches):
        yield rng.standard_normal((batch_size, 3, height, width), dtype=np.float32)


def image_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    path = Path(folder)
    if not path.is_dir():
        raise ParityError("--images expects a folder of face images", path=path)
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ParityError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder",
                          path=path)
    return files


def image_batches(files: Sequence[Path], model: str, *, batch_size: int) -> Iterator[np.ndarray]:
    """Real images, RGB, resized to the model's input and standardized as the model expects:
    ``(x - 127.5) / 128`` (facenet 2018 releases' fixed standardization) or MTCNN's
    ``(x - 127.5) * 0.0078125`` (the same numbers). NCHW float32."""
    try:
        from PIL import Image
    except ImportError as error:
        raise ParityError("--images needs Pillow to read images: pip install pillow") from error
    height, width = input_size(model)
    for start in range(0, len(files), batch_size):
        arrays = []
        for file in files[start:start + batch_size]:
            try:
                with Image.open(file) as image:
                    rgb = image.convert("RGB")
                    if rgb.size != (width, height):
                        rgb = rgb.resize((width, height), Image.BILINEAR)
                    arrays.append(np.asarray(rgb, dtype=np.float32))
            except (OSError, ValueError) as error:
                raise ParityError(f"cannot read image ({error})", path=file) from error
        batch = (np.stack(arrays) - 127.5) / 128.0
        yield np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)


# --------------------------------------------------------------------------------- model


def weights_choice(choice: str, weights: str | os.PathLike[str]) -> str:
    """``raw``/``ema`` as given; ``auto``: the ``weights`` metadata of a .safetensors file
    written by ``convert``, else ``raw``."""
    if choice != "auto":
        return choice
    path = Path(weights)
    if path.suffix != ".safetensors" or not path.is_file():
        return "raw"
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
    except Exception:  # noqa: BLE001 - unreadable here: load_weights_file reports it later
        return "raw"
    return "ema" if metadata.get("weights") == "ema" else "raw"


def detect_model(state: Mapping[str, Any], path: str | os.PathLike[str]) -> str:
    """Which model a converted state dict is for: the record whose layout has its keys."""
    record = match_state({key: tuple(value.shape) for key, value in state.items()})
    if record is None:
        raise ParityError("these weights fit no known model's layout (expected the keys of "
                          f"one of {', '.join(names())}); pass --model", path=path)
    return record.name


def build_torch_model(model: str, state: Mapping[str, Any], path: Path) -> Any:
    """Our model for ``model`` with ``state`` loaded strictly, in eval mode."""
    from facenet_convert.converter.building import build_model

    return build_model(get_architecture(model), state, path)


# ---------------------------------------------------------------------------------- check


def run_parity(source: str | os.PathLike[str], weights: str | os.PathLike[str], *,
               model: str = "auto", batches: int = 5, batch_size: int = 8, seed: int = 0,
               tolerance: float = DEFAULT_TOLERANCE,
               float64_inputs: int = DEFAULT_FLOAT64_INPUTS, per_layer: bool = False,
               images: str | os.PathLike[str] | None = None, tf_weights: str = "raw",
               verbose: bool = False) -> ParityReport:
    """Run the TF (or Keras) reference of ``source`` and our model with ``weights`` on the
    same inputs, in float32 and (the first ``float64_inputs``) in float64; return the figures,
    the float64 gates and (``per_layer``) the per-layer localisation.

    ``tf_weights="ema"`` gives the TF side the checkpoint's ExponentialMovingAverage shadows
    (for weights converted with ``--weights ema``). ``verbose`` lets TensorFlow's own log
    lines through.
    """
    started = time.perf_counter()
    if model not in MODELS:
        raise ParityError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")
    if batches < 1 or batch_size < 1 or float64_inputs < 1:
        raise ParityError(f"--batches {batches}, --batch-size {batch_size} and --float64-inputs "
                          f"{float64_inputs} must be >= 1")
    if not tolerance >= 0:
        raise ParityError(f"--tolerance {tolerance} must be >= 0")
    if tf_weights not in ("raw", "ema"):
        raise ParityError(f"unknown weights choice {tf_weights!r}; expected raw or ema")

    from facenet_convert.converter.parity_tf import (
        open_reference,
        quiet_tensorflow,
        resolve_tf_source,
    )
    from facenet_convert.models.weights import load_weights_file

    weights_path = Path(weights)
    if not weights_path.is_file():
        raise ParityError("no such weights file (expected the converted .pt or .safetensors)",
                          path=weights_path)
    src = resolve_tf_source(source)
    onnx: Any = None
    if weights_path.suffix.lower() == ".onnx":      # an export: its metadata names the model
        from facenet_convert.converter.engines import OnnxModel, match_onnx

        onnx = OnnxModel(weights_path)
        detected = match_onnx(onnx).name
    else:
        state = load_weights_file(weights_path)
        detected = detect_model(state, weights_path)
    chosen = detected if model == "auto" else model
    if chosen != detected:
        raise ParityError(f"--model {chosen} but the weights are for {detected}",
                          path=weights_path)
    record = get_architecture(chosen)
    if (src.kind == "mtcnn") != (record.task == "detection"):
        raise ParityError(f"the source is {src.description} but the weights are for {chosen}; "
                          "pair a checkpoint, .pb or .h5 with embedding-model weights and "
                          "det1/2/3.npy with pnet/rnet/onet weights", path=src.path)
    if src.kind == "mtcnn" and src.net is not None and src.net != chosen:
        raise ParityError(f"{src.path.name} holds upstream {src.net} but the weights are for "
                          f"{chosen} (det1=pnet, det2=rnet, det3=onet)", path=src.path)

    net = build_torch_model(chosen, state, weights_path) if onnx is None else _stand_in(record,
                                                                                         onnx)
    shape_nchw = [3, *input_size(chosen)]
    if images is not None:
        files = image_files(images)
        batch_iter = image_batches(files, chosen, batch_size=batch_size)
        inputs: dict[str, Any] = {"kind": "images", "folder": str(images), "count": len(files),
                                  "batch_size": batch_size, "shape_nchw": shape_nchw}
    else:
        batch_iter = random_batches(input_size(chosen), batches=batches,
                                    batch_size=batch_size, seed=seed)
        inputs = {"kind": "random-normal", "seed": seed, "batches": batches,
                  "batch_size": batch_size, "count": batches * batch_size,
                  "shape_nchw": shape_nchw}
    inputs["float64_count"] = min(float64_inputs, inputs["count"]) if onnx is None else 0
    report = ParityReport(model=chosen, source=str(source), source_kind=src.kind,
                          source_description=src.description, weights=str(weights_path),
                          inputs=inputs, tolerance=tolerance)
    if onnx is None:
        report.notes.append(f"float64 verdict on the first {inputs['float64_count']} of the "
                            f"{inputs['count']} inputs (float64 runs are slower); float32 "
                            f"figures over all {inputs['count']}, their noise ratio over the "
                            "float64 ones")
    else:
        report.tolerance = ONNX_TOLERANCE
        report.notes.append(f"ONNX model: run by ONNX Runtime in float32 only, so the float64 "
                            f"verdict does not apply; gate: float32 max abs / scale <= "
                            f"{ONNX_TOLERANCE:g} per output (float32 noise of both sides is "
                            "about 1e-6); prove the weights with `parity SOURCE WEIGHTS.pt` "
                            "(float64) and the export with its report (1e-5 vs our model)"
                            + ("; per-layer localisation needs the .pt weights: skipped"
                               if per_layer else ""))
    quiet_tensorflow(verbose)  # before TensorFlow's first import
    with open_reference(src, model=chosen, tf_weights=tf_weights) as reference:
        report.notes.extend(reference.notes)
        if onnx is not None:
            _compare_onnx(report, record, reference, net, onnx, batch_iter)
        else:
            _compare(report, record, reference, net, batch_iter, per_layer=per_layer,
                     float64_count=inputs["float64_count"])
    report.versions = _versions()
    report.seconds = time.perf_counter() - started
    return report


ONNX_TOLERANCE = 1e-4
"""``parity SOURCE OUT.onnx``: float32 max abs / scale per output (no float64 run exists)."""


def _stand_in(record: Architecture, onnx: Any) -> Any:
    """Our model of the ONNX file's architecture, untrained: only its output order is used
    (which end point each ONNX output is, as ``_output_rows`` finds them)."""
    cls = record.model_class()
    if record.task != "embedding":
        return cls().eval()
    from facenet_convert.converter.engines import onnx_embedding_size

    return cls(embedding_size=onnx_embedding_size(onnx)).eval()


def _compare_onnx(report: ParityReport, record: Architecture, reference: Any, net: Any,
                  onnx: Any, batch_iter: Iterator[np.ndarray]) -> None:
    """TF float32 vs the ONNX model's outputs (in our model's return order), float32 gate."""
    import torch

    height, width = record.input_size or ANY_SIZE_INPUT
    outs, captured = _forward(net, torch.zeros((1, 3, height, width)),
                              [row.module for row in record.end_points], None)
    plan = _plan(report, record, reference, _output_rows(record, outs, captured), None,
                 per_layer=False)
    outputs = plan.outputs
    fetch = [compare.tf_tensor for compare in outputs]
    order = (0, 3, 2, 1) if plan.swapped else (0, 2, 3, 1)
    with reference.open(fetch, float64=False) as graph32:
        for batch in batch_iter:
            tf32 = graph32.run(np.ascontiguousarray(batch.transpose(order)), fetch)
            for compare, theirs, ours in zip(outputs, tf32, _run_onnx(onnx, batch),
                                             strict=True):
                compare.acc.add32(_to_ours(theirs, compare.layout), ours)
    report.outputs = [compare.acc.figures for compare in outputs]
    report.gates = [Gate(f"{fig.name} float32 max abs / scale (ONNX)", fig.rel_max_abs,
                         report.tolerance) for fig in report.outputs]


def _run_onnx(onnx: Any, batch: np.ndarray) -> list[np.ndarray]:
    """The export's outputs for ``batch``, in slices of its batch size when that is fixed."""
    step = onnx.fixed_batch or batch.shape[0]
    if batch.shape[0] % step:
        raise ParityError(f"the export takes batches of {step} only; pass --batch-size "
                          f"{step} (or a multiple)")
    parts = [onnx.run(batch[start:start + step]) for start in range(0, batch.shape[0], step)]
    return [np.concatenate([part[k] for part in parts]) for k in range(len(parts[0]))]


def _versions() -> dict[str, str]:
    import tensorflow as tf
    import torch

    from facenet_convert.converter.core.version import __version__

    return {"facenet-convert": __version__, "tensorflow": tf.__version__,
            "torch": torch.__version__, "numpy": np.__version__}


def _capture(net: Any, modules: Sequence[str]) -> tuple[dict[str, Any], list[Any]]:
    """Forward hooks storing each named module's output ("" = the model itself)."""
    captured: dict[str, Any] = {}
    handles = []
    for path in dict.fromkeys(modules):
        try:
            module = net.get_submodule(path)
        except AttributeError as error:
            raise ParityError(f"our model has no module {path!r} (architecture record end "
                              "points out of date?)") from error

        def hook(_module: Any, _inputs: Any, output: Any, path: str = path) -> None:
            captured[path] = output

        handles.append(module.register_forward_hook(hook))
    return captured, handles


def _forward(net: Any, x: Any, modules: Sequence[str], logits: tuple[str, str] | None
             ) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The model's outputs and the hooked modules' outputs; ``logits`` = (input module,
    logits module): the logits module applied to the input module's output."""
    import torch

    hooked = [*modules, *(logits[:1] if logits else ())]
    captured, handles = _capture(net, hooked)
    try:
        with torch.no_grad():
            out = net(x)
            if logits is not None:
                captured[logits[1]] = net.get_submodule(logits[1])(captured[logits[0]])
    finally:
        for handle in handles:
            handle.remove()
    return (out if isinstance(out, tuple) else (out,)), captured


def _numpy(captured: Mapping[str, Any]) -> dict[str, np.ndarray]:
    import torch

    return {key: value.numpy() for key, value in captured.items()
            if isinstance(value, torch.Tensor)}


@dataclass
class _Compare:
    """One TF tensor compared with one of our module outputs."""

    acc: _Accumulator
    tf_tensor: str
    layout: str
    ours: str


@dataclass
class _Plan:
    """What to fetch and compare, decided once from the record, the model and the graph."""

    outputs: list[_Compare]
    layers: list[Figures] | None
    per_layer: list[_Compare]
    modules: list[str]
    logits: tuple[str, str] | None
    swapped: bool


def _has_module(net: Any, path: str) -> bool:
    try:
        net.get_submodule(path)
    except AttributeError:
        return False
    return True


def _logits_pair(record: Architecture, net: Any) -> tuple[str, str] | None:
    """(input module, logits module) when our model has the record's logits layer: its input
    is the end point before the model output (the prelogits)."""
    lrow = record.logits_end_point
    modules = [row.module for row in record.end_points]
    if lrow is None or not _has_module(net, lrow.module) or "" not in modules:
        return None
    position = modules.index("")
    return (modules[position - 1], lrow.module) if position > 0 else None


def _output_rows(record: Architecture, outs: Sequence[Any], captured: Mapping[str, Any]
                 ) -> list[LayerRow]:
    """The end points our model returns, in its return order (found by tensor identity)."""
    found = []
    for index, tensor in enumerate(outs):
        row = next((r for r in record.end_points if captured.get(r.module) is tensor), None)
        if row is None:
            raise ParityError(f"output {index} of our {record.name} model is no end point's "
                              "module output (architecture record end points out of date?)")
        found.append(row)
    return found


def _plan(report: ParityReport, record: Architecture, reference: Any,
          output_rows: Sequence[LayerRow], ours_logits: tuple[str, str] | None,
          per_layer: bool) -> _Plan:
    outputs: list[_Compare] = []
    for row in output_rows:
        name = reference.first_present(row.tf_tensors)
        if name is None:
            raise ParityError(f"the TF graph has no {' or '.join(row.tf_tensors)}, the output "
                              f"parity compares with our {row.module or 'model output'}")
        label = row.module or row.label
        outputs.append(_Compare(_Accumulator(Figures(label, row.module, name),
                                             cosine=record.task == "embedding"),
                                name, row.layout, row.module))
    logits: tuple[str, str] | None = None
    lrow = record.logits_end_point
    if lrow is not None:
        theirs = reference.first_present(lrow.tf_tensors)
        if ours_logits is not None and theirs is not None:
            logits = ours_logits
            outputs.append(_Compare(_Accumulator(Figures(lrow.module, lrow.module, theirs)),
                                    theirs, lrow.layout, lrow.module))
        elif ours_logits is not None:
            report.notes.append(f"our weights have a {lrow.module} layer but the TF graph has "
                                f"no {lrow.tf_tensors[0]} (frozen graphs drop it): not compared")
        elif theirs is not None:
            report.notes.append(f"the TF graph has {lrow.label} but the converted weights do "
                                "not: not compared")
    layers: list[Figures] | None = None
    compares: list[_Compare] = []
    if per_layer:
        rows = list(record.end_points)
        if logits is not None and lrow is not None:
            rows.append(lrow)
        layers, missing = [], []
        for row in rows:
            name = reference.first_present(row.tf_tensors)
            fig = Figures(row.display, row.module, name or row.tf_tensors[0],
                          missing=name is None)
            layers.append(fig)
            if name is None:
                missing.append(row.label)
            else:
                compares.append(_Compare(_Accumulator(fig), name, row.layout, row.module))
        if missing:
            report.notes.append(f"{len(missing)} per-layer tensors are not in the TF reference "
                                f"and were skipped: {', '.join(missing)}")
    modules = [c.ours for c in outputs + compares if logits is None or c.ours != logits[1]]
    # the input's layout is the first end point's (the layer nearest the input)
    swapped = bool(record.end_points) and record.end_points[0].layout == "nhwc-swapped"
    return _Plan(outputs, layers, compares, modules, logits, swapped)


def _to_ours(array: np.ndarray, layout: str) -> np.ndarray:
    """A TF tensor in our layout (NCHW / as-is)."""
    if array.ndim != 4 or layout == "nc":
        return array
    if layout == "nhwc-swapped":
        return array.transpose(0, 3, 2, 1)
    return array.transpose(0, 3, 1, 2)


def _compare(report: ParityReport, record: Architecture, reference: Any, net: Any,
             batch_iter: Iterator[np.ndarray], *, per_layer: bool, float64_count: int) -> None:
    """The one comparison loop: feed both sides, forward, accumulate; then gate."""
    import copy

    import torch

    # our first float32 batch, every end point hooked, tells which end points it returns
    batches = iter(batch_iter)
    first = next(batches, None)
    if first is None:
        raise ParityError("no inputs to compare")
    ours_logits = _logits_pair(record, net)
    outs, captured = _forward(net, torch.from_numpy(first),
                              [row.module for row in record.end_points], ours_logits)
    plan = _plan(report, record, reference, _output_rows(record, outs, captured), ours_logits,
                 per_layer)
    first_pt32: dict[str, np.ndarray] | None = _numpy(captured)
    every = plan.outputs + plan.per_layer
    fetch = list(dict.fromkeys(compare.tf_tensor for compare in every))
    position = {name: index for index, name in enumerate(fetch)}
    net64 = copy.deepcopy(net).double()
    done64 = 0
    # upstream's MTCNN nets work on W/H-swapped images: NCHW -> NWHC, else NCHW -> NHWC
    order = (0, 3, 2, 1) if plan.swapped else (0, 2, 3, 1)
    with reference.open(fetch, float64=False) as graph32, \
            reference.open(fetch, float64=True) as graph64:
        report.notes.extend(graph64.notes)
        for batch in itertools.chain([first], batches):
            tf_in = np.ascontiguousarray(batch.transpose(order))
            tf32 = graph32.run(tf_in, fetch)
            if first_pt32 is not None:
                pt32, first_pt32 = first_pt32, None
            else:
                pt32 = _numpy(_forward(net, torch.from_numpy(batch), plan.modules,
                                       plan.logits)[1])
            count = min(len(batch), float64_count - done64)
            if count > 0:
                tf64 = graph64.run(tf_in[:count], fetch)
                x64 = torch.from_numpy(batch[:count]).double()
                pt64 = _numpy(_forward(net64, x64, plan.modules, plan.logits)[1])
                done64 += count
            for compare in every:
                theirs = _to_ours(tf32[position[compare.tf_tensor]], compare.layout)
                ours = pt32[compare.ours]
                compare.acc.add32(theirs, ours)
                if count > 0:
                    compare.acc.add64(_to_ours(tf64[position[compare.tf_tensor]],
                                               compare.layout), pt64[compare.ours],
                                      theirs[:count], ours[:count])
    report.outputs = [compare.acc.figures for compare in plan.outputs]
    report.gates = [Gate(f"{fig.name} float64 max abs / scale", fig.rel_max_abs64,
                         report.tolerance) for fig in report.outputs]
    report.layers = plan.layers
    if report.layers is not None:
        report.divergence = locate_divergence(report.layers, report.tolerance)
