"""``run_parity``: the TF reference and our model on the same inputs, gated in float64."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facenet_convert.converter.architecture import Architecture, LayerRow
from facenet_convert.converter.core.errors import ParityError
from facenet_convert.converter.parity.figures import (
    DEFAULT_TOLERANCE,
    Accumulator,
    Figures,
    Gate,
    ParityReport,
    locate_divergence,
)
from facenet_convert.converter.parity.inputs import (
    ANY_SIZE_INPUT,
    build_torch_model,
    detect_model,
    image_batches,
    image_files,
    input_size,
    random_batches,
)
from facenet_convert.converter.registry import (
    get_architecture,
    names,
)

DEFAULT_FLOAT64_INPUTS = 8
MODELS = ("auto", *names())


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
            _check_onnx(report, record, reference, net, onnx, batch_iter)
        else:
            _check_outputs(report, record, reference, net, batch_iter, per_layer=per_layer,
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


def _check_onnx(report: ParityReport, record: Architecture, reference: Any, net: Any,
                  onnx: Any, batch_iter: Iterator[np.ndarray]) -> None:
    """TF float32 vs the ONNX model's outputs (in our model's return order), float32 gate."""
    import torch

    height, width = record.input_size or ANY_SIZE_INPUT
    outs, captured = _forward(net, torch.zeros((1, 3, height, width)),
                              [row.module for row in record.end_points], None)
    plan = _plan(report, record, reference, _output_rows(record, outs, captured), None,
                 per_layer=False)
    outputs = plan.outputs
    fetch = [checked.tf_tensor for checked in outputs]
    order = (0, 3, 2, 1) if plan.swapped else (0, 2, 3, 1)
    with reference.open(fetch, float64=False) as graph32:
        for batch in batch_iter:
            tf32 = graph32.run(np.ascontiguousarray(batch.transpose(order)), fetch)
            for checked, theirs, ours in zip(outputs, tf32, _run_onnx(onnx, batch),
                                             strict=True):
                checked.acc.add32(_to_ours(theirs, checked.layout), ours)
    report.outputs = [checked.acc.figures for checked in outputs]
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
class _Checked:
    """One TF tensor compared with one of our module outputs."""

    acc: Accumulator
    tf_tensor: str
    layout: str
    ours: str


@dataclass
class _Plan:
    """What to fetch and compare, decided once from the record, the model and the graph."""

    outputs: list[_Checked]
    layers: list[Figures] | None
    per_layer: list[_Checked]
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
    outputs: list[_Checked] = []
    for row in output_rows:
        name = reference.first_present(row.tf_tensors)
        if name is None:
            raise ParityError(f"the TF graph has no {' or '.join(row.tf_tensors)}, the output "
                              f"parity checks with our {row.module or 'model output'}")
        label = row.module or row.label
        outputs.append(_Checked(Accumulator(Figures(label, row.module, name),
                                             cosine=record.task == "embedding"),
                                name, row.layout, row.module))
    logits: tuple[str, str] | None = None
    lrow = record.logits_end_point
    if lrow is not None:
        theirs = reference.first_present(lrow.tf_tensors)
        if ours_logits is not None and theirs is not None:
            logits = ours_logits
            outputs.append(_Checked(Accumulator(Figures(lrow.module, lrow.module, theirs)),
                                    theirs, lrow.layout, lrow.module))
        elif ours_logits is not None:
            report.notes.append(f"our weights have a {lrow.module} layer but the TF graph has "
                                f"no {lrow.tf_tensors[0]} (frozen graphs drop it): not compared")
        elif theirs is not None:
            report.notes.append(f"the TF graph has {lrow.label} but the converted weights do "
                                "not: not compared")
    layers: list[Figures] | None = None
    checks: list[_Checked] = []
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
                checks.append(_Checked(Accumulator(fig), name, row.layout, row.module))
        if missing:
            report.notes.append(f"{len(missing)} per-layer tensors are not in the TF reference "
                                f"and were skipped: {', '.join(missing)}")
    modules = [c.ours for c in outputs + checks if logits is None or c.ours != logits[1]]
    # the input's layout is the first end point's (the layer nearest the input)
    swapped = bool(record.end_points) and record.end_points[0].layout == "nhwc-swapped"
    return _Plan(outputs, layers, checks, modules, logits, swapped)


def _to_ours(array: np.ndarray, layout: str) -> np.ndarray:
    """A TF tensor in our layout (NCHW / as-is)."""
    if array.ndim != 4 or layout == "nc":
        return array
    if layout == "nhwc-swapped":
        return array.transpose(0, 3, 2, 1)
    return array.transpose(0, 3, 1, 2)


def _check_outputs(report: ParityReport, record: Architecture, reference: Any, net: Any,
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
    fetch = list(dict.fromkeys(checked.tf_tensor for checked in every))
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
            for checked in every:
                theirs = _to_ours(tf32[position[checked.tf_tensor]], checked.layout)
                ours = pt32[checked.ours]
                checked.acc.add32(theirs, ours)
                if count > 0:
                    checked.acc.add64(_to_ours(tf64[position[checked.tf_tensor]],
                                               checked.layout), pt64[checked.ours],
                                      theirs[:count], ours[:count])
    report.outputs = [checked.acc.figures for checked in plan.outputs]
    report.gates = [Gate(f"{fig.name} float64 max abs / scale", fig.rel_max_abs64,
                         report.tolerance) for fig in report.outputs]
    report.layers = plan.layers
    if report.layers is not None:
        report.divergence = locate_divergence(report.layers, report.tolerance)
