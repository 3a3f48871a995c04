"""The Python API: ``convert(source, model="auto", ...)`` -> :class:`ConversionResult`.

One pass: open the source, detect the variant from names and shapes, plan with the table
(every target filled once, every source consumed or dropped by an explicit rule, shapes
checked), read + transform, then optionally write the outputs and the JSON report as one
all-or-nothing staged set. The CLI ``convert`` command is a thin layer over this.

The result holds **numpy arrays** (``result.arrays``, target order, contiguous, owned) so
that converting to ``.safetensors`` never imports torch; ``result.state_dict`` gives the
same data as torch tensors (zero-copy), ready for ``model.load_state_dict(..., strict=True)``.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facenet_convert.converter.core.atomic import check_output_path, staged_outputs
from facenet_convert.converter.core.errors import MappingError, OutputError
from facenet_convert.converter.core.hashing import sha256_file
from facenet_convert.converter.core.version import __version__
from facenet_convert.converter.mapping import Plan, Table, materialize, plan
from facenet_convert.converter.recognition import Detection, detect
from facenet_convert.converter.registry import get_architecture, get_table, names
from facenet_convert.converter.sources.base import SourceReader
from facenet_convert.converter.writers import (
    HashingWriter,
    resolve_format,
    split_paths,
    split_state,
    write_json,
    write_state,
)

WEIGHTS = ("raw", "ema")
Progress = Callable[[int, int, str], None]


@dataclass
class OutputFile:
    """One written file: path, sha256 and size in bytes."""

    path: Path
    sha256: str
    size: int
    role: str  # model | features | logits | report

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "sha256": self.sha256, "size": self.size,
                "role": self.role}


@dataclass
class ConversionResult:
    """Converted arrays (target order), the decisions behind them, and what was written."""

    arrays: dict[str, np.ndarray]
    plan: Plan
    detection: Detection
    table: str
    architecture: str
    weights: str
    nonfinite: list[str]
    source: str
    source_sha256: dict[str, str] = field(default_factory=dict)
    outputs: list[OutputFile] = field(default_factory=list)

    @property
    def state_dict(self) -> dict[str, Any]:
        """The arrays as torch tensors sharing their memory (imports torch)."""
        import torch

        return {key: torch.from_numpy(value) for key, value in self.arrays.items()}

    def _head(self, key: str | None) -> int | None:
        value = None if key is None else self.arrays.get(key)
        return None if value is None else int(value.shape[0])

    @property
    def embedding_size(self) -> int | None:
        return self._head(get_architecture(self.architecture).embedding_key)

    @property
    def num_classes(self) -> int | None:
        return self._head(get_architecture(self.architecture).classes_key)

    @property
    def report(self) -> dict[str, Any]:
        """Every mapping decision, fills, drops, NaN findings, detection and outputs."""
        return {
            "converter": "facenet-convert", "converter_version": __version__,
            "source": self.source, "source_sha256": dict(self.source_sha256),
            "detection": self.detection.to_dict(), "architecture": self.architecture,
            "table": self.table, "weights": self.weights,
            "embedding_size": self.embedding_size, "num_classes": self.num_classes,
            "nonfinite": list(self.nonfinite),
            "outputs": [o.to_dict() for o in self.outputs if o.role != "report"],
            **self.plan.to_dict(),
        }

    def summary(self) -> str:
        """One line: counts, NaN findings, and the main output's size and sha256."""
        text = (f"{self.architecture} ({self.table}, weights={self.weights}): "
                f"{len(self.plan.mapped)} tensors mapped, {len(self.plan.drops)} dropped, "
                f"{len(self.plan.filled)} filled")
        if self.plan.ema_missing:
            text += f", {len(self.plan.ema_missing)} without EMA shadow (raw used)"
        if self.nonfinite:
            text += f", NaN/Inf in {len(self.nonfinite)}: {', '.join(self.nonfinite[:3])}"
            if len(self.nonfinite) > 3:
                text += f" and {len(self.nonfinite) - 3} more"
        main = next((o for o in self.outputs if o.role == "model"), None)
        if main is not None:
            text += f"; wrote {main.path} ({main.size / 1e6:.1f} MB, sha256 {main.sha256})"
        return text


class _Hasher(threading.Thread):
    """sha256 of the source files on a side thread (hashlib releases the GIL)."""

    def __init__(self, files: list[Path]) -> None:
        super().__init__(daemon=True)
        self.files = files
        self.digests: dict[str, str] = {}
        self.error: OSError | None = None

    def run(self) -> None:
        try:
            for path in self.files:
                self.digests[path.name] = sha256_file(path)
        except OSError as error:
            self.error = error

    def result(self) -> dict[str, str]:
        self.join()
        if self.error is not None:
            raise OutputError(f"cannot hash source file: {self.error}",
                              path=getattr(self.error, "filename", None))
        return dict(self.digests)


def _import_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        pass  # write_pt imports it again and reports the error there


def _open(source: str | os.PathLike[str] | SourceReader | Mapping[str, np.ndarray]
          ) -> tuple[SourceReader, bool]:
    if isinstance(source, SourceReader):
        return source, False
    if isinstance(source, Mapping):
        from facenet_convert.converter.sources.memory import ArraySource

        return ArraySource(source), True
    from facenet_convert.converter.sources import open_source

    return open_source(source), True


def _choose_table(model: str, found: Detection, frozen: bool) -> Table:
    if model == "auto":
        if found.table is None:
            raise MappingError("cannot tell which model this source holds ("
                               + "; ".join(found.notes) + "); pass --model")
        return get_table(found.table)
    if found.architecture == model and found.table is not None:
        return get_table(found.table)
    if found.architecture is not None:
        raise MappingError(f"the source holds {found.architecture} weights ({found.scheme} "
                           f"names), not {model}; pass --model auto or {found.architecture}")
    return get_architecture(model).default_scheme(graph=frozen).table


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC: a conversion allocates thousands of small, acyclic objects (index
    entries, plan records) while torch's many objects are alive, and every collection would
    walk them all (about 5% of a release-sized .pt conversion)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def convert(source: str | os.PathLike[str] | SourceReader | Mapping[str, np.ndarray],
            model: str = "auto", *, weights: str = "raw", strict: bool = False,
            output: str | os.PathLike[str] | None = None, format: str | None = None,
            split: bool = False, force: bool = False,
            report: str | os.PathLike[str] | None = None,
            progress: Progress | None = None) -> ConversionResult:
    """Convert ``source`` (path, open reader, or ``{name: array}``) to a target state_dict.

    ``model``: ``auto`` (detect) or one of inception_resnet_v1/pnet/rnet/onet. ``weights``:
    ``raw`` (what upstream inference restores) or ``ema`` (``<name>/ExponentialMovingAverage``
    where present). ``strict`` turns NaN/Inf findings into a MappingError. With ``output``,
    writes ``.pt`` or ``.safetensors`` (``format`` or the extension), the ``-features`` /
    ``-logits`` pair with ``split``, and the JSON ``report`` — all or nothing; an existing
    output needs ``force``. ``progress(done, total, key)`` is called per target tensor.
    """
    with _gc_paused():
        return _convert(source, model, weights=weights, strict=strict, output=output,
                        format=format, split=split, force=force, report=report,
                        progress=progress)


def _convert(source: str | os.PathLike[str] | SourceReader | Mapping[str, np.ndarray],
             model: str, *, weights: str, strict: bool, output: str | os.PathLike[str] | None,
             format: str | None, split: bool, force: bool,
             report: str | os.PathLike[str] | None,
             progress: Progress | None) -> ConversionResult:
    if model != "auto" and model not in names():
        raise MappingError(f"unknown model {model!r}; expected auto or one of "
                           f"{', '.join(names())}")
    if weights not in WEIGHTS:
        raise MappingError(f"unknown weights {weights!r}; expected one of {list(WEIGHTS)}")
    if output is None and (split or report is not None or format is not None):
        raise OutputError("split, report and format need an output path")
    fmt = resolve_format(output, format) if output is not None else None

    reader, owned = _open(source)
    try:
        inputs = reader.files()
        guarded = reader.guarded_files()  # + files only consulted (a checkpoint state file)
        outs: list[tuple[Path, str]] = []
        if output is not None:
            outs.append((Path(output), "model"))
            if split:
                features, logits = split_paths(output)
                outs += [(features, "features"), (logits, "logits")]
            if report is not None:
                outs.append((Path(report), "report"))
            for path, _ in outs:  # fail before the expensive part; staging re-checks
                check_output_path(path, force=force, inputs=guarded)
        torch_loader = None
        if output is not None and fmt == "pt" and "torch" not in sys.modules:
            # torch's import is most of a .pt conversion's time; overlap it with reading.
            torch_loader = threading.Thread(target=_import_torch, daemon=True)
            torch_loader.start()
        hasher = None
        if output is not None and (fmt == "safetensors" or report is not None):
            hasher = _Hasher(inputs)
            hasher.start()

        tensors = reader.tensors()
        frozen = reader.node_names() is not None
        found = detect(tensors, frozen=frozen)
        try:
            table = _choose_table(model, found, frozen)
            record = get_architecture(table.architecture)
            layout = record.layout(found.embedding_size, found.num_classes)
            if split and not any(entry.key == record.classes_key for entry in layout):
                raise OutputError("split needs a model with a logits layer (this source has "
                                  "no Logits); drop --split", path=output)
            the_plan = plan(table, tensors, layout, weights=weights)
            done = materialize(the_plan, reader, strict=strict, progress=progress)
        except MappingError as error:
            if error.path is not None:
                raise
            # Name the source: the user may be converting many files.
            raise MappingError(str(error), path=reader.path) from None
        result = ConversionResult(done.arrays, the_plan, found, table.name, table.architecture,
                                  weights, done.nonfinite, str(reader.path))
        if output is None:
            return result
        if hasher is not None:
            result.source_sha256 = hasher.result()
        if owned:
            # Unmap the source before torch comes in: its touched pages count in RSS.
            reader.close()
            owned = False
        if torch_loader is not None:
            torch_loader.join()
        _write(result, outs, fmt or "pt", force=force, inputs=guarded)
        return result
    finally:
        if owned:
            reader.close()


def _metadata(result: ConversionResult, part: str) -> dict[str, str]:
    import json

    meta = {"format": "pt", "converter": "facenet-convert",
            "converter_version": __version__, "spec": result.table,
            "architecture": result.architecture, "weights": result.weights, "part": part,
            "source_sha256": json.dumps(result.source_sha256, sort_keys=True)}
    if result.embedding_size is not None:
        meta["embedding_size"] = str(result.embedding_size)
    if result.num_classes is not None:
        meta["num_classes"] = str(result.num_classes)
    return meta


def _write(result: ConversionResult, outs: list[tuple[Path, str]], fmt: str, *,
           force: bool, inputs: list[Path]) -> None:
    features, logits = split_state(result.arrays)
    parts = {"model": result.arrays, "features": features, "logits": logits}
    with staged_outputs([path for path, _ in outs], force=force, inputs=inputs,
                        final=True) as handles:
        written: list[OutputFile] = []
        report_path = None
        for path, role in outs:
            if role == "report":
                report_path = path
                continue
            sink = HashingWriter(handles[path])
            write_state(parts[role], sink, fmt, _metadata(result, role))
            written.append(OutputFile(path, sink.sha256, sink.size, role))
        result.outputs = written
        if report_path is not None:
            sink = HashingWriter(handles[report_path])
            write_json(result.report, sink)
            result.outputs.append(OutputFile(report_path, sink.sha256, sink.size, "report"))
