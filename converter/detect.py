"""Tell what a source holds from its tensor names and shapes alone (no data is read).

Used by ``convert --model auto`` to pick a table and a target layout, and by ``inspect``.
Every test is a whole-name match against the naming schemes the tables know.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from facenet_convert.converter.sources.base import TensorInfo

_EMA = re.compile(r".+/ExponentialMovingAverage")
_SLOT = re.compile(r".+/(?P<slot>Adam|RMSProp|Momentum|Adagrad|Adadelta|Ftrl)(?:_1)?")
#: optimizer slot family -> facenet.train's optimizer option
OPTIMIZERS = {"Adam": "ADAM", "RMSProp": "RMSPROP", "Momentum": "MOM", "Adagrad": "ADAGRAD",
              "Adadelta": "ADADELTA", "Ftrl": "FTRL"}

SLIM_BOTTLENECK = "InceptionResnetV1/Bottleneck/weights"
SLIM_LOGITS = "Logits/weights"
KERAS_BOTTLENECK = "Bottleneck/kernel"


@dataclass(frozen=True)
class Detection:
    """What a source looks like: architecture, naming scheme, head sizes, training extras."""

    architecture: str | None      # inception_resnet_v1 | pnet | rnet | onet | None
    scheme: str | None            # tf-slim | tf-slim-frozen | keras-facenet | mtcnn-det1/2/3
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
    extras = {"ema": ema, "optimizer": optimizer, "optimizer_slots": slots,
              "centers": "centers" in names}

    if SLIM_BOTTLENECK in names:
        scheme, table = (("tf-slim-frozen", "inception_resnet_v1.tf_slim_frozen") if frozen
                         else ("tf-slim", "inception_resnet_v1.tf_slim"))
        return Detection("inception_resnet_v1", scheme, table,
                         embedding_size=_second_dim(tensors[SLIM_BOTTLENECK]),
                         num_classes=_second_dim(tensors.get(SLIM_LOGITS)), notes=notes,
                         **extras)
    if KERAS_BOTTLENECK in names:
        return Detection("inception_resnet_v1", "keras-facenet",
                         "inception_resnet_v1.keras_facenet",
                         embedding_size=_second_dim(tensors[KERAS_BOTTLENECK]), notes=notes,
                         **extras)
    if "conv6-3/weights" in names:
        return Detection("onet", "mtcnn-det3", "onet.mtcnn_npy", notes=notes, **extras)
    if "conv5-1/weights" in names:
        return Detection("rnet", "mtcnn-det2", "rnet.mtcnn_npy", notes=notes, **extras)
    if "conv4-1/weights" in names and len(tensors["conv4-1/weights"].shape) == 4:
        return Detection("pnet", "mtcnn-det1", "pnet.mtcnn_npy", notes=notes, **extras)
    notes.append("no known marker tensor (InceptionResnetV1/Bottleneck/weights, "
                 "Bottleneck/kernel, conv4-1/weights, conv5-1/weights, conv6-3/weights)")
    return Detection(None, None, None, notes=notes, **extras)


#: Default table per architecture when the user names a model the detection did not find.
DEFAULT_TABLES = {"inception_resnet_v1": "inception_resnet_v1.tf_slim",
                  "pnet": "pnet.mtcnn_npy", "rnet": "rnet.mtcnn_npy", "onet": "onet.mtcnn_npy"}
