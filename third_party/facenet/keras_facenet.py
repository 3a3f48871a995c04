"""keras-facenet's Inception-ResNet-V1 (PyPI ``keras-facenet==0.3.2``), built with tf-keras.

The model code is read from the sha256-pinned sdist (fetched into the cache like facenet 1.0.5,
never committed or installed). Its ``tensorflow.keras`` imports are pointed at ``tf_keras``
(Keras 2, what the package was written for) by rewriting those import lines, and nothing else.

``build_model`` builds it in float32 or float64 (the Keras dtype policy, ``floatx``). The float64
model keeps the float32 model's constants: a float32 graph multiplies by ``float32(0.17)`` and
adds ``float32(0.001)``, so the float64 image of that model uses those values, widened (the
Lambda layers' float arguments and the BatchNorm epsilons), never the Python literals.
"""

from __future__ import annotations

import os
import tarfile
import threading
import types
from collections.abc import Callable
from typing import Any

import numpy as np

from facenet_convert.converter.core.errors import FetchError
from facenet_convert.third_party.wheels import KERAS_FACENET, cache_dir, fetch_wheel

MODEL_MEMBER = "keras-facenet-0.3.2/keras_facenet/inception_resnet_v1.py"
_IMPORTS = "from tensorflow.keras"
_LOCK = threading.RLock()
_LOADED: types.ModuleType | None = None
_BUILT: dict[tuple[str, int, bool], Any] = {}

#: mapping-table name (a record's scheme) -> ``builder(module, embedding_size)``.
BUILDERS: dict[str, Callable[[types.ModuleType, int], Any]] = {
    "inception_resnet_v1.keras_facenet":
        lambda module, embedding_size: module.InceptionResNetV1(classes=embedding_size),
}


def source_file() -> Any:
    """The pinned ``inception_resnet_v1.py``, extracted once under the cache."""
    dest = cache_dir() / "keras-facenet-0.3.2" / "inception_resnet_v1.py"
    if dest.is_file():
        return dest
    archive = fetch_wheel(KERAS_FACENET)
    with tarfile.open(archive) as tar:
        try:
            member = tar.extractfile(MODEL_MEMBER)
        except KeyError:
            member = None
        if member is None:
            raise FetchError(f"{KERAS_FACENET.filename} has no file {MODEL_MEMBER}")
        data = member.read()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(f".{os.getpid()}.part")   # parallel test workers extract it too
    tmp.write_bytes(data)
    tmp.replace(dest)
    return dest


def load_module() -> types.ModuleType:
    """keras-facenet's ``inception_resnet_v1`` module, importing tf_keras instead of
    tensorflow.keras."""
    global _LOADED
    with _LOCK:
        if _LOADED is not None:
            return _LOADED
        path = source_file()
        text = path.read_text(encoding="utf-8")
        if _IMPORTS not in text:
            raise FetchError(f"{path} has no '{_IMPORTS}' imports: not the pinned source")
        text = text.replace(_IMPORTS, "from tf_keras")
        module = types.ModuleType("keras_facenet_inception_resnet_v1")
        module.__file__ = str(path)
        exec(compile(text, str(path), "exec"), module.__dict__)  # noqa: S102 - pinned source
        _LOADED = module
        return module


def float32_constants(model: Any) -> int:
    """Round the model's float hyper-constants to their float32 values (see module doc)."""
    changed = 0
    for layer in model.layers:
        if hasattr(layer, "epsilon") and isinstance(layer.epsilon, float):
            layer.epsilon = float(np.float32(layer.epsilon))
            changed += 1
        arguments = getattr(layer, "arguments", None)
        if isinstance(arguments, dict):
            for key, value in arguments.items():
                if isinstance(value, float):
                    arguments[key] = float(np.float32(value))
                    changed += 1
    return changed


def build_model(scheme: str, embedding_size: int, *, float64: bool) -> Any:
    """The Keras model of mapping table ``scheme`` in float32 or float64.

    Built once per process and shape (building takes seconds): callers set every weight
    before use, so a cached model carries nothing over.
    """
    import tf_keras

    builder = BUILDERS.get(scheme)
    if builder is None:
        raise KeyError(scheme)
    module = load_module()
    key = (scheme, embedding_size, float64)
    with _LOCK:
        if key in _BUILT:
            return _BUILT[key]
        saved = tf_keras.backend.floatx()
        tf_keras.backend.set_floatx("float64" if float64 else "float32")
        try:
            model = builder(module, embedding_size)
        finally:
            tf_keras.backend.set_floatx(saved)
        if float64:
            float32_constants(model)
        _BUILT[key] = model
        return model
