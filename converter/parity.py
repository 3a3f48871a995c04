"""Parity: does a converted model compute what the TensorFlow model computes, and if not, where
does it stop doing so?

Both sides get the same seeded N(0, 1) batches (NHWC for TF, NCHW for PyTorch) or the same
real images. Beside the raw figures (L2 distance of the embedding batch, max abs difference,
min cosine similarity) the check reports the float32 **noise ratio**

    L2(TF32 - PT32) / L2(PT64 - PT32)

where PT64 is our model run in float64: float32 arithmetic alone moves the outputs by about
L2(PT64 - PT32), so a correct conversion sits near 1 and a wrong one orders of magnitude above,
which an L2 figure alone cannot tell apart. Default gates: embeddings max abs <= 1e-5 and
noise ratio <= 2; logits (unnormalised) max abs relative to their scale <= 10 x the tolerance;
MTCNN: every output's max abs <= 1e-5 and the noise ratio of all outputs pooled <= 2.

Per-layer localisation (``per_layer=True``) fetches the upstream end points and block outputs
listed in each architecture record (``end_points``) and compares them with our modules' outputs
(forward hooks), in network order. The first divergent layer is the first one whose noise ratio
jumps: at least ``JUMP_FACTOR`` (100) times the largest ratio of the layers before it (floored
at 1). Float32 noise keeps every layer of a correct conversion within a few units, and an error
introduced by one layer shows there first, then propagates (so later layers never jump again
relative to it). If no layer jumps but the check failed, the layer with the largest increase is
named instead, and the report says so.

Running the TF side imports and runs the user's graph: a graph is code. TensorFlow and torch
are imported inside functions only.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facenet_convert.converter.core.errors import ParityError
from facenet_convert.converter.registry import get_architecture, head_sizes, match_state, names

DEFAULT_TOLERANCE = 1e-5
DEFAULT_MAX_NOISE_RATIO = 2.0
JUMP_FACTOR = 100.0
FALLBACK_JUMP = 10.0
LOGITS_REL_FACTOR = 10.0
FEW_INPUTS = 16
MODELS = ("auto", *names())
MTCNN_MODELS = names("detection")
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


@dataclass
class Figures:
    """TF32 vs PT32 (and PT64 vs PT32) differences of one output or one layer."""

    name: str
    module: str
    tf_tensor: str
    shape: tuple[int, ...] = ()      # per sample, our layout
    values: int = 0                   # how many values were compared
    l2: float = 0.0                   # L2(TF32 - PT32) over every value compared
    max_abs: float = 0.0              # max |TF32 - PT32|
    ref_max_abs: float = 0.0          # max |TF32|: the scale of the output
    noise_l2: float = 0.0             # L2(PT64 - PT32): the float32 noise floor
    min_cosine: float | None = None   # min over samples of cos(TF32, PT32) (embeddings)
    missing: bool = False             # the TF graph lacks this tensor

    @property
    def rel_max_abs(self) -> float:
        """max abs difference relative to the output's scale (for unnormalised outputs)."""
        return self.max_abs / self.ref_max_abs if self.ref_max_abs > 0 else self.max_abs

    @property
    def noise_ratio(self) -> float:
        """L2(TF32 - PT32) / L2(PT64 - PT32); 0 when both are exactly 0."""
        if self.noise_l2 > 0:
            return self.l2 / self.noise_l2
        return 0.0 if self.l2 == 0 else math.inf

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["shape"] = list(self.shape)
        data["rel_max_abs"] = self.rel_max_abs
        data["noise_ratio"] = self.noise_ratio
        return data


class _Accumulator:
    """Running sums so that batches (and per-layer activations) need not be kept."""

    def __init__(self, figures: Figures, cosine: bool = False) -> None:
        self.figures = figures
        self.cosine = cosine
        self._sq = 0.0
        self._sq_noise = 0.0

    def add(self, tf32: np.ndarray, pt32: np.ndarray, pt64: np.ndarray) -> None:
        if tf32.shape != pt32.shape or pt64.shape != pt32.shape:
            raise ParityError(f"{self.figures.name}: TF output shape {tuple(tf32.shape)} does "
                              f"not match ours {tuple(pt32.shape)} (after layout change); the "
                              "weights do not belong to this graph or model")
        fig = self.figures
        ref = tf32.astype(np.float64)
        ours = pt32.astype(np.float64)
        diff = ref - ours
        noise = pt64.astype(np.float64) - ours
        self._sq += float(np.sum(diff * diff))
        self._sq_noise += float(np.sum(noise * noise))
        fig.l2 = math.sqrt(self._sq)
        fig.noise_l2 = math.sqrt(self._sq_noise)
        if diff.size:
            fig.max_abs = max(fig.max_abs, float(np.max(np.abs(diff))))
            fig.ref_max_abs = max(fig.ref_max_abs, float(np.max(np.abs(ref))))
        fig.values += int(diff.size)
        fig.shape = tuple(int(d) for d in pt32.shape[1:])
        if self.cosine:
            a = ref.reshape(len(ref), -1)
            b = ours.reshape(len(ours), -1)
            norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
            cos = np.sum(a * b, axis=1) / np.where(norms > 0, norms, 1.0)
            worst = float(np.min(cos)) if len(cos) else 1.0
            fig.min_cosine = worst if fig.min_cosine is None else min(fig.min_cosine, worst)


def pooled_figures(name: str, parts: Sequence[Figures]) -> Figures:
    """Several outputs' figures as if their values were one vector."""
    pooled = Figures(name, "", "+".join(part.tf_tensor for part in parts))
    pooled.l2 = math.sqrt(sum(part.l2 ** 2 for part in parts))
    pooled.noise_l2 = math.sqrt(sum(part.noise_l2 ** 2 for part in parts))
    pooled.max_abs = max((part.max_abs for part in parts), default=0.0)
    pooled.ref_max_abs = max((part.ref_max_abs for part in parts), default=0.0)
    pooled.values = sum(part.values for part in parts)
    return pooled


@dataclass
class Divergence:
    """Where the TF and PyTorch computations part."""

    label: str
    module: str
    tf_tensor: str
    noise_ratio: float
    previous_ratio: float
    max_abs: float
    reason: str


def locate_divergence(layers: Sequence[Figures], *, jump: float = JUMP_FACTOR,
                      failed: bool = True) -> Divergence | None:
    """The first layer whose noise ratio is ``jump`` times the largest before it (floor 1).

    Without such a jump, and only when the check ``failed``, the layer with the largest
    increase, provided that increase is at least ``FALLBACK_JUMP`` (10x): smaller steps are
    float32 noise and naming one would mislead.
    """
    worst = 1.0
    best: tuple[float, Figures, float] | None = None
    for layer in layers:
        if layer.missing:
            continue
        ratio = layer.noise_ratio
        increase = ratio / worst
        if increase >= jump:
            return Divergence(layer.name, layer.module, layer.tf_tensor, ratio, worst,
                              layer.max_abs, f"noise ratio {_fmt(ratio)} is >= {jump:g}x the "
                              f"largest before it ({_fmt(worst)})")
        if best is None or increase > best[0]:
            best = (increase, layer, worst)
        worst = max(worst, ratio)
    if failed and best is not None and best[0] >= FALLBACK_JUMP:
        increase, layer, before = best
        return Divergence(layer.name, layer.module, layer.tf_tensor, layer.noise_ratio, before,
                          layer.max_abs, f"no layer jumps {jump:g}x; largest increase "
                          f"({increase:.3g}x) of the noise ratio, to {_fmt(layer.noise_ratio)}")
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
    max_noise_ratio: float
    outputs: list[Figures] = field(default_factory=list)
    gates: list[Gate] = field(default_factory=list)
    layers: list[Figures] | None = None
    divergence: Divergence | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(gate.passed for gate in self.gates)

    @property
    def failed_gates(self) -> list[Gate]:
        return [gate for gate in self.gates if not gate.passed]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite floats become the strings "inf" / "nan")."""
        data = {
            "tool": "facenet-convert parity",
            "passed": self.passed,
            "model": self.model,
            "source": {"path": self.source, "kind": self.source_kind,
                       "description": self.source_description},
            "weights": self.weights,
            "inputs": self.inputs,
            "gates_settings": {"tolerance": self.tolerance,
                               "max_noise_ratio": self.max_noise_ratio},
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
    from facenet_convert.models.inception_resnet_v1 import load_strict

    record = get_architecture(model)
    if record.task == "embedding":
        embedding, classes = head_sizes(record, {k: tuple(v.shape) for k, v in state.items()})
        if embedding is None:
            raise ParityError(f"expected a {model} state dict with a 2-d "
                              f"{record.embedding_key}", path=path, key=record.embedding_key)
        net = record.model_class()(embedding_size=embedding, num_classes=classes)
    else:
        net = record.model_class()()
    load_strict(net, state, path)
    return net.eval()


def _to_ours(array: np.ndarray, layout: str) -> np.ndarray:
    """A TF tensor in our layout (NCHW / as-is)."""
    if array.ndim != 4 or layout == "nc":
        return array
    if layout == "nhwc-swapped":
        return array.transpose(0, 3, 2, 1)
    return array.transpose(0, 3, 1, 2)


# ---------------------------------------------------------------------------------- check


def run_parity(source: str | os.PathLike[str], weights: str | os.PathLike[str], *,
               model: str = "auto", batches: int = 5, batch_size: int = 8, seed: int = 0,
               tolerance: float = DEFAULT_TOLERANCE,
               max_noise_ratio: float = DEFAULT_MAX_NOISE_RATIO, per_layer: bool = False,
               images: str | os.PathLike[str] | None = None,
               tf_weights: str = "raw") -> ParityReport:
    """Run the TF reference graph of ``source`` and our model with ``weights`` on the same
    inputs; return the figures, the gates and (``per_layer``) the per-layer localisation.

    ``tf_weights="ema"`` restores the checkpoint's ExponentialMovingAverage shadows on the TF
    side (for weights converted with ``--weights ema``).
    """
    started = time.perf_counter()
    if model not in MODELS:
        raise ParityError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")
    if batches < 1 or batch_size < 1:
        raise ParityError(f"--batches {batches} and --batch-size {batch_size} must be >= 1")
    if not (tolerance >= 0 and max_noise_ratio >= 0):
        raise ParityError(f"--tolerance {tolerance} and --max-noise-ratio {max_noise_ratio} "
                          "must be >= 0")
    if tf_weights not in ("raw", "ema"):
        raise ParityError(f"unknown weights choice {tf_weights!r}; expected raw or ema")

    from facenet_convert.converter.parity_tf import quiet_tensorflow, resolve_tf_source
    from facenet_convert.models.inception_resnet_v1 import load_weights_file

    weights_path = Path(weights)
    if not weights_path.is_file():
        raise ParityError("no such weights file (expected the converted .pt or .safetensors)",
                          path=weights_path)
    src = resolve_tf_source(source)
    state = load_weights_file(weights_path)
    detected = detect_model(state, weights_path)
    chosen = detected if model == "auto" else model
    if chosen != detected:
        raise ParityError(f"--model {chosen} but the weights are for {detected}",
                          path=weights_path)
    if (src.kind == "mtcnn") != (chosen in MTCNN_MODELS):
        raise ParityError(f"the source is {src.description} but the weights are for {chosen}; "
                          "pair a checkpoint or .pb with Inception-ResNet-V1 weights and "
                          "det1/2/3.npy with pnet/rnet/onet weights", path=src.path)
    if src.kind == "mtcnn" and src.net is not None and src.net != chosen:
        raise ParityError(f"{src.path.name} holds upstream {src.net} but the weights are for "
                          f"{chosen} (det1=pnet, det2=rnet, det3=onet)", path=src.path)

    net = build_torch_model(chosen, state, weights_path)
    if images is not None:
        files = image_files(images)
        batch_iter = image_batches(files, chosen, batch_size=batch_size)
        inputs = {"kind": "images", "folder": str(images), "count": len(files),
                  "batch_size": batch_size,
                  "shape_nchw": [3, *input_size(chosen)]}
    else:
        batch_iter = random_batches(input_size(chosen), batches=batches,
                                    batch_size=batch_size, seed=seed)
        inputs = {"kind": "random-normal", "seed": seed, "batches": batches,
                  "batch_size": batch_size, "count": batches * batch_size,
                  "shape_nchw": [3, *input_size(chosen)]}

    report = ParityReport(model=chosen, source=str(source), source_kind=src.kind,
                          source_description=src.description, weights=str(weights_path),
                          inputs=inputs, tolerance=tolerance, max_noise_ratio=max_noise_ratio)
    if inputs["count"] < FEW_INPUTS:
        report.notes.append(f"only {inputs['count']} inputs: the noise ratio is a statistic and "
                            f"scatters below about {FEW_INPUTS} inputs (a correct conversion "
                            "measured 1.6-2.1 with 2-5 inputs, 1.7-1.8 with 40, on TF 2.21 "
                            "with oneDNN); use more before trusting a narrow noise-ratio failure")
    quiet_tensorflow()
    if chosen in MTCNN_MODELS:
        _check_mtcnn(report, src, net, chosen, batch_iter, per_layer)
    else:
        _check_irn(report, src, net, batch_iter, per_layer, tf_weights)
    report.versions = _versions()
    report.seconds = time.perf_counter() - started
    return report


def _versions() -> dict[str, str]:
    import tensorflow as tf
    import torch

    from facenet_convert.converter.core.version import __version__

    return {"facenet-convert": __version__, "tensorflow": tf.__version__,
            "torch": torch.__version__, "numpy": np.__version__}


def _capture(net: Any, modules: Sequence[str]) -> tuple[dict[str, Any], list[Any]]:
    """Forward hooks storing each named module's output."""
    captured: dict[str, Any] = {}
    handles = []
    for path in modules:
        if not path:
            continue
        try:
            module = net.get_submodule(path)
        except AttributeError as error:
            raise ParityError(f"our model has no module {path!r} (parity layer table out of "
                              "date?)") from error

        def hook(_module: Any, _inputs: Any, output: Any, path: str = path) -> None:
            captured[path] = output.detach()

        handles.append(module.register_forward_hook(hook))
    return captured, handles


def _irn_forward(net: Any, x: Any, modules: Sequence[str], with_logits: bool
                 ) -> dict[str, np.ndarray]:
    """Embeddings (key ""), logits ("logits") and the hooked module outputs, as numpy."""
    import torch

    hooked = list(modules)
    if with_logits and "last_bn" not in hooked:
        hooked.append("last_bn")
    captured, handles = _capture(net, hooked)
    try:
        with torch.no_grad():
            embeddings = net(x)
            out = {"": embeddings}
            if with_logits:
                out["logits"] = net.logits(captured["last_bn"])
    finally:
        for handle in handles:
            handle.remove()
    out.update({path: value for path, value in captured.items() if path in modules})
    return {key: value.numpy() for key, value in out.items()}


@dataclass
class _Compare:
    """One TF tensor compared with one of our outputs (key of the PyTorch results dict)."""

    acc: _Accumulator
    tf_tensor: str
    layout: str
    ours: str


def _compare_rows(graph: Any, rows: Sequence[Any], report: ParityReport
                  ) -> tuple[list[Figures], list[_Compare]]:
    """Per-layer figures (in table order) and comparisons for the tensors the graph has."""
    figures: list[Figures] = []
    compares: list[_Compare] = []
    missing = []
    for row in rows:
        name = graph.first_present(row.tf_tensors)
        fig = Figures(row.display, row.module, name or row.tf_tensors[0], missing=name is None)
        figures.append(fig)
        if name is None:
            missing.append(row.label)
        else:
            compares.append(_Compare(_Accumulator(fig), name, row.layout, row.module))
    if missing:
        report.notes.append(f"{len(missing)} per-layer tensors are not in the TF graph and were "
                            f"skipped: {', '.join(missing)}")
    return figures, compares


def _accumulate(compares: Sequence[_Compare], tf_values: Sequence[np.ndarray],
                pt32: Mapping[str, np.ndarray], pt64: Mapping[str, np.ndarray]) -> None:
    for compare, value in zip(compares, tf_values, strict=True):
        compare.acc.add(_to_ours(value, compare.layout), pt32[compare.ours], pt64[compare.ours])


def _finish(report: ParityReport, outputs: Sequence[_Compare], layers: list[Figures] | None
            ) -> None:
    report.outputs = [compare.acc.figures for compare in outputs]
    if report.layers is None and layers is not None:
        report.layers = layers


def _check_irn(report: ParityReport, src: Any, net: Any, batch_iter: Iterator[np.ndarray],
               per_layer: bool, tf_weights: str) -> None:
    import copy

    import torch

    from facenet_convert.converter.parity_tf import (
        EMBEDDINGS,
        LOGITS,
        open_checkpoint_graph,
        open_frozen_graph,
    )

    if src.kind == "frozen":
        if tf_weights == "ema":
            report.notes.append("EMA has no meaning for a frozen graph (its constants are "
                                "whatever was frozen): compared as it is")
        graph = open_frozen_graph(src)
    else:
        graph = open_checkpoint_graph(src, weights=tf_weights)
    net64 = copy.deepcopy(net).double()
    with graph:
        report.notes.extend(graph.notes)
        ours_logits = net.num_classes is not None
        tf_logits = graph.has(LOGITS)
        with_logits = ours_logits and tf_logits
        if ours_logits and not tf_logits:
            report.notes.append("our weights have a logits layer but the TF graph has no "
                                f"{LOGITS} (frozen graphs drop it): logits not compared")
        elif tf_logits and not ours_logits:
            report.notes.append("the TF graph has logits but the converted weights do not: "
                                "logits not compared")
        outputs = [_Compare(_Accumulator(Figures("embeddings", "", EMBEDDINGS), cosine=True),
                            EMBEDDINGS, "nc", "")]
        if with_logits:
            outputs.append(_Compare(_Accumulator(Figures("logits", "logits", LOGITS)),
                                    LOGITS, "nc", "logits"))
        layers: list[Figures] | None = None
        compares: list[_Compare] = []
        if per_layer:
            record = get_architecture(report.model)
            table = list(record.end_points)
            if with_logits and record.logits_end_point is not None:
                table.append(record.logits_end_point)
            layers, compares = _compare_rows(graph, table, report)
        every = outputs + compares
        fetch = [compare.tf_tensor for compare in every]
        modules = [c.ours for c in compares if c.ours not in ("", "logits")]
        for batch in batch_iter:
            tf_values = graph.run(np.ascontiguousarray(batch.transpose(0, 2, 3, 1)), fetch)
            x32 = torch.from_numpy(batch)
            pt32 = _irn_forward(net, x32, modules, with_logits)
            pt64 = _irn_forward(net64, x32.double(), modules, with_logits)
            _accumulate(every, tf_values, pt32, pt64)

    _finish(report, outputs, layers)
    embeddings = report.outputs[0]
    report.gates = [Gate("embeddings max abs", embeddings.max_abs, report.tolerance),
                    Gate("embeddings noise ratio", embeddings.noise_ratio,
                         report.max_noise_ratio)]
    if with_logits:
        logits = report.outputs[1]
        # Logits are not normalised: their float32 error grows with them (about 1e-5 of their
        # scale on upstream-scale weights), so their gate is relative, at LOGITS_REL_FACTOR x
        # the tolerance. Their noise ratio is reported, not gated: few classes x few inputs
        # make it scatter (the embeddings' ratio is the gated one).
        report.gates.append(Gate("logits relative max abs", logits.rel_max_abs,
                                 report.tolerance * LOGITS_REL_FACTOR))
    if report.layers is not None:
        report.divergence = locate_divergence(report.layers, failed=not report.passed)


def _mtcnn_forward(net: Any, x: Any, names: Sequence[str], modules: Sequence[str]
                   ) -> dict[str, np.ndarray]:
    import torch

    captured, handles = _capture(net, modules)
    try:
        with torch.no_grad():
            outs = net(x)
    finally:
        for handle in handles:
            handle.remove()
    values = {name: out.numpy() for name, out in zip(names, outs, strict=True)}
    values.update({path: value.numpy() for path, value in captured.items()})
    return values


def _check_mtcnn(report: ParityReport, src: Any, net: Any, model: str,
                 batch_iter: Iterator[np.ndarray], per_layer: bool) -> None:
    import copy

    import torch

    from facenet_convert.converter.parity_tf import MTCNN_IO, open_mtcnn_graph

    _input, io = MTCNN_IO[model]
    names = [name for name, _tensor in io]
    net64 = copy.deepcopy(net).double()
    graph = open_mtcnn_graph(src, model)
    with graph:
        report.notes.extend(graph.notes)
        # upstream's MTCNN nets work on W/H-swapped images: outputs come back swapped too
        outputs = [_Compare(_Accumulator(Figures(name, name, tensor)), tensor,
                            "nhwc-swapped", name) for name, tensor in io]
        layers: list[Figures] | None = None
        compares: list[_Compare] = []
        if per_layer:
            layers, compares = _compare_rows(graph, get_architecture(model).end_points, report)
        every = outputs + compares
        fetch = [compare.tf_tensor for compare in every]
        modules = [compare.ours for compare in compares]
        for batch in batch_iter:
            tf_values = graph.run(np.ascontiguousarray(batch.transpose(0, 3, 2, 1)), fetch)
            x32 = torch.from_numpy(batch)
            pt32 = _mtcnn_forward(net, x32, names, modules)
            pt64 = _mtcnn_forward(net64, x32.double(), names, modules)
            _accumulate(every, tf_values, pt32, pt64)
    _finish(report, outputs, layers)
    report.gates = [Gate(f"{figures.name} max abs", figures.max_abs, report.tolerance)
                    for figures in report.outputs]
    # One noise-ratio gate over all outputs together: RNet/ONet give only 2-10 values per
    # input, too few for a stable ratio per output (each one is still reported).
    pooled = pooled_figures("all outputs", report.outputs)
    report.gates.append(Gate(f"noise ratio, {', '.join(f.name for f in report.outputs)} pooled",
                             pooled.noise_ratio, report.max_noise_ratio))
    if report.layers is not None:
        report.divergence = locate_divergence(report.layers, failed=not report.passed)
