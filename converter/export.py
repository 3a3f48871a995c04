"""Export converted weights to ONNX or a torch.export program (``.pt2``), verified first.

Every architecture of the registry exports (embedding models and PNet/RNet/ONet; PNet with a
dynamic height and width). Before anything is written the exported model runs on seeded inputs
(ONNX Runtime for ``.onnx``, the reloaded exported program for ``.pt2``) beside our torch model
and must agree to float32 max abs :data:`TOLERANCE` (the parity gate) on every output; the
figures go into a JSON report written beside the model (``OUT.json``), both atomically.

The ONNX model carries metadata (``facenet_convert.*`` in ``metadata_props``): architecture,
source sha256, preprocessing, embedding size, input layout and converter version; a ``.pt2``
carries the same as ``facenet_convert.json`` in its extra files.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facenet_convert.converter.core.atomic import raise_if_interrupted
from facenet_convert.converter.core.checks import dumps as json_dumps
from facenet_convert.converter.core.checks import max_abs_difference, within, worst
from facenet_convert.converter.core.errors import ConverterError

if TYPE_CHECKING:
    from torch import Tensor, nn


FORMATS = {".onnx": "onnx", ".pt2": "torch.export"}
TOLERANCE = 1e-5
PNET_EXAMPLE = (36, 48)          # PNet's example H x W; exported with both dynamic (min 12)
PNET_CHECKS = ((13, 17), (61, 37))   # torch.export specializes PNet's 1x1 output (12 px)
MTCNN_SCALE = 0.0078125          # upstream detect_face: (x - 127.5) * 0.0078125
OUTPUT_NAMES = {"pnet": ("boxes", "probs"), "rnet": ("boxes", "probs"),
                "onet": ("boxes", "landmarks", "probs")}


class ExportError(ConverterError):
    """An export cannot be made or did not verify."""


@dataclass
class ExportReport:
    """What was exported, from what, and how it verified (written as ``OUT.json``)."""

    output: str
    format: str
    architecture: str
    weights: str
    metadata: dict[str, str]
    opset: int | None
    dynamic_batch: bool
    with_preprocessing: bool
    tolerance: float = TOLERANCE
    checks: list[dict[str, Any]] = field(default_factory=list)
    max_abs: float = 0.0
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return within(self.max_abs, self.tolerance)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def _make_wrapper(net: nn.Module, preprocessing: str) -> nn.Module:
    """``net`` taking 0..255 float RGB NCHW pixels (the standardization inside the graph)."""
    from torch import nn

    from facenet_convert.models.preprocessing import standardization

    class WithPreprocessing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, pixels: Tensor) -> Any:
            if preprocessing == "mtcnn":
                return self.net((pixels - 127.5) * MTCNN_SCALE)
            return self.net(standardization(preprocessing)(pixels))

    return WithPreprocessing().eval()


def _inputs(shapes: list[tuple[int, ...]], pixels: bool, seed: int) -> list[Tensor]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    if pixels:
        return [torch.rand(shape, generator=generator) * 255 for shape in shapes]
    return [torch.randn(shape, generator=generator) for shape in shapes]


def _outputs(value: Any) -> list[Tensor]:
    return list(value) if isinstance(value, (tuple, list)) else [value]


def _candidate(data: bytes, fmt: str) -> Any:
    if fmt == "onnx":
        from facenet_convert.converter.engines import OnnxModel

        return OnnxModel(data)
    import torch

    return torch.export.load(io.BytesIO(data)).module()


def export_model(weights: str | os.PathLike[str], output: str | os.PathLike[str], *,
                 model: str = "auto", opset: int | None = None, dynamic_batch: bool = True,
                 with_preprocessing: bool = False, force: bool = False,
                 seed: int = 0, also: Mapping[Path, bytes] | None = None,
                 preprocessing: str | None = None) -> ExportReport:
    """Export ``weights`` to ``output`` (``.onnx`` or ``.pt2``) after verifying the export.

    ``also``: more files (a Hub folder's) committed in the same all-or-nothing set;
    ``preprocessing``: the standardization of ``with_preprocessing`` and the metadata when
    the weights' own (release, embedding size) is not the one."""
    import torch

    from facenet_convert.converter.building import load_model
    from facenet_convert.converter.core.atomic import (
        check_output_path,
        staged_outputs,
    )
    from facenet_convert.converter.core.hashing import sha256_file
    from facenet_convert.converter.core.version import __version__
    from facenet_convert.converter.engines import DEFAULT_OPSET, onnx_bytes

    started = time.perf_counter()
    out = Path(output)
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise ExportError(f"unknown output type {out.suffix!r}; expected "
                          f"{' or '.join(FORMATS)}", path=out)
    report_path = out.with_name(out.name + ".json")
    extra = dict(also or {})
    for target in (out, report_path, *extra):
        check_output_path(target, force=force, inputs=[weights])
    if fmt == "onnx" and opset is None:
        opset = DEFAULT_OPSET
    if fmt != "onnx" and opset is not None:
        raise ExportError("--opset applies to .onnx outputs only", path=out)
    built = load_model(weights, model=model, preprocessing=preprocessing, error=ExportError)
    if preprocessing is not None and built.record.task != "embedding":
        raise ExportError(f"--preprocessing applies to embedding models; {built.record.name} "
                          "takes MTCNN's scaling", path=weights)
    record, net, preprocessing = built.record, built.model, built.preprocessing
    module = _make_wrapper(net, preprocessing) if with_preprocessing else net
    height, width = record.input_size or PNET_EXAMPLE
    example = _inputs([(2, 3, height, width)], with_preprocessing, seed)[0]
    dynamic: dict[int, tuple[str, int]] = {}
    checks = [(2, 3, height, width)]
    if dynamic_batch:
        dynamic[0] = ("batch", 1)
        checks.append((3, 3, height, width))
    if record.input_size is None:
        dynamic.update({2: ("height", 12), 3: ("width", 12)})
        checks += [(2, 3, h, w) for h, w in PNET_CHECKS]
    size = getattr(net, "embedding_size", None)
    metadata = {"architecture": record.name, "task": record.task,
                "source_sha256": sha256_file(weights), "source": Path(weights).name,
                "preprocessing": preprocessing,
                "input": ("float32 NCHW RGB pixels 0..255 (standardized inside)"
                          if with_preprocessing else
                          f"float32 NCHW RGB standardized with {preprocessing}"),
                "input_size": f"any (min {12 if fmt == 'onnx' else 13} px a side)"
                if record.input_size is None else f"{height}x{width}",
                "embedding_size": str(size) if size is not None else "",
                "outputs": ",".join(OUTPUT_NAMES.get(record.name, ("embeddings",))),
                "converter_version": __version__, "torch": torch.__version__}
    if fmt == "onnx":
        data = onnx_bytes(module, example, opset=int(opset or DEFAULT_OPSET),
                          output_names=OUTPUT_NAMES.get(record.name, ("embeddings",)),
                          dynamic=dynamic, metadata=metadata)
    else:
        data = _pt2_bytes(module, example, dynamic, metadata)
    report = ExportReport(str(out), fmt, record.name, str(weights), metadata, opset,
                          dynamic_batch, with_preprocessing)
    candidate = _candidate(data, fmt)
    with torch.inference_mode():
        for shape, batch in zip(checks, _inputs(checks, with_preprocessing, seed + 1),
                                strict=True):
            want, got = _outputs(module(batch)), _outputs(candidate(batch))
            diff = worst(max_abs_difference(g, w) for g, w in zip(got, want, strict=True))
            report.checks.append({"shape": list(shape), "max_abs": diff})
            report.max_abs = worst([report.max_abs, diff])
    report.seconds = time.perf_counter() - started
    if not report.passed:
        raise ExportError(f"the export differs from our model by {report.max_abs:.2e} > "
                          f"{TOLERANCE:g} (float32 max abs); nothing written; try another "
                          "--opset or the other format", path=out)
    text = json_dumps(report.to_dict(), indent=2) + "\n"
    with staged_outputs([out, report_path, *extra], force=force, inputs=[weights],
                        final=True) as handles:
        handles[out].write(data)
        handles[report_path].write(text.encode())
        for target, content in extra.items():
            handles[target].write(content)
    return report


def _pt2_bytes(module: nn.Module, example: Tensor, dynamic: dict[int, tuple[str, int]],
               metadata: dict[str, str]) -> bytes:
    """``torch.export`` program of ``module`` with the metadata as an extra file."""
    import torch

    # AUTO: let torch.export derive the relations (PNet's pooling ties height and width to
    # their rounding); the seeded checks then run at other sizes
    shapes = ({axis: torch.export.Dim.AUTO for axis in dynamic},) if dynamic else None
    try:
        program = torch.export.export(module, (example,), dynamic_shapes=shapes)
    except Exception as error:  # noqa: BLE001 - torch.export raises many types
        raise_if_interrupted()      # torch wraps the signal's exception in its own
        first = (str(error).strip().splitlines() or [""])[0][:200]
        raise ExportError(f"torch.export failed ({type(error).__name__}: {first})") from None
    buffer = io.BytesIO()
    torch.export.save(program, buffer,
                      extra_files={"facenet_convert.json": json_dumps(metadata, indent=2)})
    return buffer.getvalue()
