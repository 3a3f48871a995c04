"""PyTorch models for the converted weights: FaceNet's Inception-ResNet-V1 and MTCNN's nets.

Importing this package never imports TensorFlow, and imports torch only when a model class is
first used, so that :mod:`models.releases` (pure data) stays cheap to import (CLI ``--help``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from facenet_convert.models.inception_resnet_v1 import InceptionResNetV1, InceptionResnetV1
    from facenet_convert.models.mtcnn import ONet, PNet, RNet
    from facenet_convert.models.mtcnn.detector import MTCNN

__all__ = ["MTCNN", "InceptionResNetV1", "InceptionResnetV1", "ONet", "PNet", "RNet"]

_HOMES = {"InceptionResNetV1": "facenet_convert.models.inception_resnet_v1",
          "InceptionResnetV1": "facenet_convert.models.inception_resnet_v1",
          "PNet": "facenet_convert.models.mtcnn", "RNet": "facenet_convert.models.mtcnn",
          "ONet": "facenet_convert.models.mtcnn", "MTCNN": "facenet_convert.models.mtcnn.detector"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'facenet_convert.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
