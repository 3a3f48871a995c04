"""Tell what a source holds from its tensor names and shapes alone (no data is read).

Used by ``convert --model auto`` to pick a table and a target layout, and by ``inspect``.
Every architecture record names, per naming scheme, the whole tensor name that marks it and
the tensors whose shapes give the embedding size and class count.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from facenet_convert.converter.registry import architectures
from facenet_convert.converter.sources.base import TensorInfo

_EMA = re.compile(r".+/ExponentialMovingAverage")
_SLOT = re.compile(r".+/(?P<slot>Adam|RMSProp|Momentum|Adagrad|Adadelta|Ftrl)(?:_1)?")
#: optimizer slot family -> facenet.train's optimizer option
OPTIMIZERS = {"Adam": "ADAM", "RMSProp": "RMSPROP", "Momentum": "MOM", "Adagrad": "ADAGRAD",
              "Adadelta": "ADADELTA", "Ftrl": "FTRL"}


@dataclass(frozen=True)
class Detection:
    """What a source looks like: architecture, naming scheme, head sizes, training extras."""

    architecture: str | None      # a registry name (inception_resnet_v1, pnet, ...) or None
    scheme: str | None            # tf-slim | tf-slim-frozen | keras-facenet | mtcnn-det1/2/3...
    table: str | None             # name of the mapping table that fits
    embedding_size: int | None = None
    num_classes: int | None = None
    ema: bool = False             # ExponentialMovingAverage shadows present
    optimizer: str | None = None  # ADAM | RMSPROP | MOM | ADAGRAD | ADADELTA | FTRL
    optimizer_slots: int = 0
    centers: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _second_dim(info: TensorInfo | None) -> int | None:
    if info is None or len(info.shape) != 2:
        return None
    return int(info.shape[1])


def detect(tensors: Mapping[str, TensorInfo], *, frozen: bool = False) -> Detection:
    """Detect architecture and variant; ``frozen`` says the source is a GraphDef."""
    names = set(tensors)
    ema = any(_EMA.fullmatch(n) for n in names)
    families = sorted({m.group("slot") for m in map(_SLOT.fullmatch, names) if m})
    slots = sum(1 for n in names if _SLOT.fullmatch(n))
    optimizer = OPTIMIZERS[families[0]] if len(families) == 1 else None
    notes = []
    if len(families) > 1:
        notes.append(f"slots of several optimizers: {', '.join(families)}")
    extras: dict[str, Any] = {"ema": ema, "optimizer": optimizer, "optimizer_slots": slots,
                              "centers": "centers" in names, "notes": notes}
    markers = []
    for record in architectures():
        for scheme in record.schemes:
            markers.append(scheme.marker)
            if not scheme.fits(names, graph=frozen):
                continue
            embedding = (None if scheme.embedding_tensor is None
                         else _second_dim(tensors.get(scheme.embedding_tensor)))
            classes = (None if scheme.classes_tensor is None
                       else _second_dim(tensors.get(scheme.classes_tensor)))
            return Detection(record.name, scheme.name, scheme.table.name,
                             embedding_size=embedding, num_classes=classes, **extras)
    notes.append(f"no known marker tensor ({', '.join(dict.fromkeys(markers))})")
    return Detection(None, None, None, **extras)
