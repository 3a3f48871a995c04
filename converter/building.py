"""The one model builder: converted weights (a file) or a release (a name) -> our model, its
architecture record, and the input standardization it expects.

embed, verify, compare, evaluate, export, parity, the engines and the Ray engine all build
their model here (:func:`load_model`, or :func:`build_model` when the state dict is already
read), and :func:`choose_preprocessing` is the one statement of the preprocessing rule. It
lives above the model zoo: the zoo knows its models, not the converter's records.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from facenet_convert.converter.core.errors import ConverterError, MappingError
from facenet_convert.converter.registry import get_architecture, head_sizes, match_state, names

if TYPE_CHECKING:
    from torch import Tensor, nn

    from facenet_convert.converter.architecture import Architecture


def build_model(record: Architecture, state: Mapping[str, Tensor],
                source: str | os.PathLike[str]) -> nn.Module:
    """Our model of ``record`` sized by ``state``'s head, ``state`` loaded strictly, eval mode.

    The one place a converted file becomes a model (embed, export and parity call it)."""
    if record.task == "embedding":
        embedding, classes = head_sizes(record, {k: tuple(v.shape) for k, v in state.items()})
        if embedding is None:
            raise MappingError(f"expected a {record.name} state dict with a 2-d "
                               f"{record.embedding_key}", path=source, key=record.embedding_key)
        net = record.model_class()(embedding_size=embedding, num_classes=classes)
    else:
        net = record.model_class()()
    from facenet_convert.models.weights import load_strict

    load_strict(net, state, source)
    return net.eval()


@dataclass
class BuiltModel:
    """A model ready for inference: what :func:`load_model` returns."""

    model: nn.Module                 # eval mode, strictly loaded
    record: Architecture
    preprocessing: str               # the input standardization (``mtcnn`` for PNet/RNet/ONet)
    source: str                      # the weights file, or the release name
    note: str | None = None          # how the preprocessing was guessed, when it was


def choose_preprocessing(record: Architecture, model: nn.Module, *,
                         release_name: str | None = None, file_name: str | None = None,
                         override: str | None = None) -> tuple[str, str | None]:
    """The input standardization and, when it is a guess, a note saying so.

    ``override`` wins; then the release (by name, or the release whose file name the weights
    have); MTCNN's nets take ``(x - 127.5) * 0.0078125`` (``mtcnn``); an unknown
    Inception-ResNet-V1 file is judged by its embedding size (128-d releases prewhiten, 512-d
    ones use fixed standardization); any other architecture takes its record's.
    """
    from facenet_convert.models.preprocessing import guess_preprocessing, preprocessing_for
    from facenet_convert.models.releases import RELEASES, get_release

    if override is not None:
        return override, None
    if release_name is not None:
        return preprocessing_for(get_release(release_name)), None
    if record.task == "detection":
        return "mtcnn", None
    named = next((r for r in RELEASES if r.architecture == record.name
                  and r.filename == file_name), None)
    if named is not None:
        return preprocessing_for(named), None
    size = int(getattr(model, "embedding_size", 512))
    if record.name == "inception_resnet_v1":
        chosen = guess_preprocessing(size)
        return chosen, (f"{file_name}: unknown release, assuming {chosen} for {size}-d "
                        "embeddings; pass --preprocessing to choose")
    return record.preprocessing or guess_preprocessing(size), None


def load_model(weights: str | os.PathLike[str] | None = None, *, release: str | None = None,
               model: str = "auto", preprocessing: str | None = None,
               task: str | None = None,
               error: type[ConverterError] = MappingError) -> BuiltModel:
    """Our model from a converted weights file or a release name (exactly one of them).

    ``model``: the registry architecture to insist on (``auto``: the one whose layout the
    weights have). ``task``: ``embedding`` or ``detection`` when the caller needs one. Errors
    are ``error`` (the caller's class), one line each.
    """
    from facenet_convert.models.preprocessing import standardization
    from facenet_convert.models.releases import get_release
    from facenet_convert.models.weights import load_weights_file

    if (weights is None) == (release is None):
        raise error("pass exactly one of a weights file or a release name")
    if preprocessing is not None:
        try:
            standardization(preprocessing)
        except ValueError as problem:
            raise error(str(problem)) from None
    wanted = ", ".join(names(task)) if task else ", ".join(names())
    if release is not None:
        found = get_release(release)
        record = get_architecture(found.architecture)
        if task is not None and record.task != task:
            raise error(f"release {found.name} is a {record.name} ({record.task}) model, not "
                        f"an {task} model; {task} architectures: {wanted}")
        net = record.model_class()(pretrained=found.name).eval()
        chosen, note = choose_preprocessing(record, net, release_name=found.name,
                                            override=preprocessing)
        return BuiltModel(net, record, chosen, found.name, note)
    path = Path(os.fspath(weights))  # type: ignore[arg-type]
    if not path.is_file():
        raise error("no such weights file; give a .pt or .safetensors state dict written by "
                    "`facenet-convert convert`", path=path)
    state = load_weights_file(path)
    found_record = match_state({key: tuple(value.shape) for key, value in state.items()})
    record = found_record if model == "auto" else get_architecture(model)
    if record is None or (task is not None and record.task != task):
        what = (f"a {record.task} architecture ({record.name})" if record is not None else
                "an unknown architecture")
        needed = f"an {task} model" if task else "a registry model"
        raise error(f"these weights fit {what}, not {needed} ({wanted}); give weights "
                    "written by `facenet-convert convert`", path=path)
    if found_record is not None and found_record.name != record.name:
        raise error(f"--model {record.name} but the weights are for {found_record.name}",
                    path=path)
    net = build_model(record, state, path)
    chosen, note = choose_preprocessing(record, net, file_name=path.name,
                                        override=preprocessing)
    return BuiltModel(net, record, chosen, str(path), note)
