"""Options shared by the commands that embed faces (embed, verify, and the ones after them).

``warn`` (the one-line warning) is re-exported here for the commands."""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from typing import Any, Self

import click

from facenet_convert.converter.commands.declare import Input, warn
from facenet_convert.converter.core.atomic import raise_if_interrupted
from facenet_convert.converter.core.errors import EmbedError
from facenet_convert.models.releases import release_names

__all__ = ["ModelOptions", "Progress", "alignment_options", "detect_options", "model_options",
           "scale_options", "warn"]


class Progress:
    """A progress bar on stderr, drawn only on a terminal and started once the total is known
    (``start``, or ``Progress(label, total)``); ``update(n)`` is safe either way. A context
    manager: the bar is closed however the work ends."""

    def __init__(self, label: str, total: int | None = None) -> None:
        self.label = label
        self._bar: Any = None
        if total is not None:
            self.start(total)

    def start(self, total: int) -> None:
        if self._bar is None and total > 0 and sys.stderr.isatty():
            self._bar = click.progressbar(length=total, label=self.label, file=sys.stderr)
            self._bar.__enter__()

    def update(self, done: int) -> None:
        raise_if_interrupted()      # long work stops at the next item after a signal
        if self._bar is not None:
            self._bar.update(done)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


@dataclass(frozen=True)
class ModelOptions:
    """The model a command embeds with, as its options chose it (made by
    :func:`model_options`; the one description of it the commands pass on)."""

    weights: str | None = None
    pretrained: str | None = None
    preprocessing: str | None = None
    device: str = "cpu"
    backend: str = "auto"
    precision: str = "fp32"
    calibration: str | None = None

    @property
    def chosen(self) -> bool:
        return self.weights is not None or self.pretrained is not None

    def check(self) -> None:
        """Exactly one model, said with the flags (the library speaks of its arguments)."""
        if (self.weights is None) == (self.pretrained is None):
            raise EmbedError("pass exactly one of --weights FILE or --pretrained NAME")

    def load(self, *, fuse: bool = True) -> Any:
        """The loaded model (``converter.embedding.LoadedModel``)."""
        from facenet_convert.converter.embedding import load_embedding_model

        self.check()
        return load_embedding_model(self.weights, self.pretrained, self.preprocessing,
                                    self.device, fuse=fuse, backend=self.backend,
                                    precision=self.precision, calibration=self.calibration)

    def spec(self, **fields: Any) -> Any:
        """The Ray engine's picklable description of the same model (``scale.EmbedSpec``)."""
        from facenet_convert.converter.scale import EmbedSpec

        self.check()
        return EmbedSpec(weights=self.weights, pretrained=self.pretrained,
                         preprocessing=self.preprocessing, device=self.device,
                         backend=self.backend, precision=self.precision,
                         calibration=self.calibration, **fields)


def model_options(func: Any) -> Any:
    """--weights / --pretrained / --preprocessing / --device / --backend / --precision /
    --calibration, shared by embed, verify, compare and evaluate, given to the command as one
    :class:`ModelOptions` (``model``)."""
    names = release_names("inception_resnet_v1")

    @functools.wraps(func)
    def command(*args: Any, weights: str | None, pretrained: str | None,
                preprocessing: str | None, device: str, backend: str, precision: str,
                calibration: str | None, **kwargs: Any) -> Any:
        return func(*args, model=ModelOptions(weights, pretrained, preprocessing, device,
                                              backend, precision, calibration), **kwargs)

    command = click.option("--calibration", type=Input("folder", folder=True), default=None,
                           metavar="DIR", help="int8: calibrate on the aligned face crops in "
                           "DIR (default: real faces shipped with the package).")(command)
    command = click.option("--precision", type=click.Choice(["fp32", "bf16", "int8"]),
                           default="fp32", show_default=True, help="bf16 (torch, CPUs with "
                           "AVX512_BF16 or AMX only) or int8 (ONNX Runtime quantization, "
                           "calibrated on real faces): "
                           "faster, embeddings differ from fp32 (printed); checked, else fp32 "
                           "runs.")(command)
    command = click.option("--backend", type=click.Choice(["auto", "torch", "onnxruntime"]),
                           default="auto", show_default=True, help="Inference engine (auto: "
                           "ONNX Runtime when installed, else torch frozen for inference); each "
                           "checks itself against the plain model and falls back.")(command)
    command = click.option("--device", default="cpu", show_default=True,
                           help="torch device to run on.")(command)
    command = click.option("--preprocessing", type=click.Choice(["fixed_standardization",
                                                                 "prewhiten"]),
                           default=None, help="Input standardization (default: the release's; "
                           "for an unknown file, by embedding size).")(command)
    command = click.option("--pretrained", default=None, metavar="NAME",
                           help=f"A cached release ({', '.join(names)}) or alias.")(command)
    command = click.option("--weights", type=Input("weights"), default=None,
                           help="Converted Inception-ResNet-V1 weights (.pt/.safetensors)."
                           )(command)
    return command


def detect_options(func: Any) -> Any:
    """--detect and the MTCNN settings, shared with ``verify``."""
    func = click.option("--min-face-size", type=click.FloatRange(min=1), default=20.0,
                        show_default=True, help="Smallest face MTCNN looks for (pixels).")(func)
    func = click.option("--margin", type=click.FloatRange(min=0), default=32.0,
                        show_default=True,
                        help="Pixels added around each box before cropping.")(func)
    func = click.option("--mtcnn", "mtcnn_dir", type=Input("mtcnn", folder=True),
                        default=None, help="Folder with pnet/rnet/onet weights (default: the "
                        "weights shipped in the package).")(func)
    func = click.option("--detect", is_flag=True,
                        help="Find faces with MTCNN and embed each (default: every image is "
                        "an aligned face crop).")(func)
    return func


def alignment_options(func: Any) -> Any:
    """--alignment box|similarity and --template facenet|arcface: how MTCNN's faces are
    cropped (models/face_alignment.py), shared by align and embed --detect."""
    from facenet_convert.models.face_alignment import ALIGNMENTS, TEMPLATES

    func = click.option("--template", type=click.Choice(TEMPLATES), default="facenet",
                        show_default=True, help="--alignment similarity: where the landmarks "
                        "go (facenet: where upstream's 160 px / margin 32 box crop puts an "
                        "upright face; arcface: insightface's), scaled to the crop size.")(func)
    func = click.option("--alignment", type=click.Choice(ALIGNMENTS), default="box",
                        show_default=True, help="box: upstream's crop of the margin-grown box; "
                        "similarity: rotate and scale the face onto --template from its five "
                        "landmarks (--margin does not apply; a face whose landmarks cannot be "
                        "aligned is reported and skipped).")(func)
    return func






def scale_options(func: Any) -> Any:
    """--engine local|ray, --ray-address, --actors, --shard-size (converter/scale.py)."""
    func = click.option("--shard-size", type=click.IntRange(min=1), default=1024,
                        show_default=True, help="--engine ray: inputs per shard (the unit "
                        "written, retried and resumed; embed rounds it up to a multiple of "
                        "--batch-size).")(func)
    func = click.option("--actors", type=click.IntRange(min=1), default=2, show_default=True,
                        help="--engine ray: actors (one CPU each), each loading the models "
                        "once.")(func)
    func = click.option("--ray-address", default=None, metavar="ADDRESS",
                        help="--engine ray: a running cluster ('auto', HOST:6379, ray://...); "
                        "default: start a local Ray bound to 127.0.0.1.")(func)
    func = click.option("--engine", "scale_engine", type=click.Choice(["local", "ray"]),
                        default="local", show_default=True, help="local: this process; ray: "
                        "Ray Data actor pools, writing shards and a manifest.json to a folder "
                        "(resumable; needs facenet-convert[ray]).")(func)
    return func
