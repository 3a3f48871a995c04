"""facenet-convert: move TensorFlow-trained FaceNet weights into PyTorch, proven identical.

This file is the root of the one import package, ``facenet_convert``: setup.cfg maps the
repository root to it, so ``converter/``, ``models/`` and ``third_party/`` install as
``facenet_convert.converter``, ``facenet_convert.models`` and ``facenet_convert.third_party``.

The public API is re-exported here and loaded on first use, so that ``import facenet_convert``
imports neither torch nor TensorFlow (the CLI's ``--help`` stays fast).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from facenet_convert.converter.core.version import __version__

if TYPE_CHECKING:
    from facenet_convert.converter.conversion import convert
    from facenet_convert.converter.sources import open_source
    from facenet_convert.models.inception_resnet_v1 import InceptionResNetV1, InceptionResnetV1
    from facenet_convert.models.mtcnn import ONet, PNet, RNet
    from facenet_convert.models.mtcnn.detector import MTCNN

#: public name -> module that defines it
_EXPORTS = {
    "convert": "facenet_convert.converter.conversion",
    "open_source": "facenet_convert.converter.sources",
    "InceptionResNetV1": "facenet_convert.models.inception_resnet_v1",
    "InceptionResnetV1": "facenet_convert.models.inception_resnet_v1",
    "MTCNN": "facenet_convert.models.mtcnn.detector",
    "PNet": "facenet_convert.models.mtcnn",
    "RNet": "facenet_convert.models.mtcnn",
    "ONet": "facenet_convert.models.mtcnn",
    "scale": "facenet_convert.converter.scale",     # a module: the Ray Data engine's API
}

__all__ = ["MTCNN", "InceptionResNetV1", "InceptionResnetV1", "ONet", "PNet", "RNet", "__version__",
           "convert", "open_source", "scale"]


def __getattr__(name: str) -> Any:
    home = _EXPORTS.get(name)
    if home is None:
        raise AttributeError(f"module 'facenet_convert' has no attribute {name!r}")
    module = importlib.import_module(home)
    value = module if home.rpartition(".")[2] == name else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
