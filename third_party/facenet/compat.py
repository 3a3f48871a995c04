"""Run davidsandberg's TF1 facenet code (pinned facenet==1.0.5) on TensorFlow 2.x.

The upstream modules are imported from the sha256-checked wheel cache with ``tensorflow``
bound to ``tf.compat.v1`` and ``tensorflow.contrib.slim`` to ``tf_slim``; nothing of theirs is
committed. The TF1 behaviour switches (v1 TensorShape, v1 control flow, ref variables) are
process-global in TensorFlow, so ``upstream_mode()`` flips them only while an upstream graph is
built or run and restores them afterwards; callers build inside an explicit ``tf.Graph`` so eager
execution does not matter. ``apply_global_switches()`` applies the permanent recipe (REFERENCE
2b, eager off included) for scripts that run nothing else with TensorFlow.

Nothing in ``converter`` or ``models`` imports this module.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib.util
import sys
import threading
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from facenet_convert.third_party.wheels import FACENET, wheel_member

MODEL_MEMBER = "facenet/src/models/{model_def}.py"
DETECT_MEMBER = "facenet/src/align/detect_face.py"
MTCNN_MEMBERS = {name: f"facenet/src/align/{name}.npy" for name in ("det1", "det2", "det3")}

_LOCK = threading.RLock()
_LOADED: Upstream | None = None


@dataclass(frozen=True)
class Upstream:
    """The loaded upstream modules and the TF handles they were loaded against."""

    tf: Any                   # tensorflow.compat.v1, what the upstream code calls ``tf``
    slim: Any                 # tf_slim, what the upstream code calls ``slim``
    inception_resnet_v1: types.ModuleType
    detect_face: types.ModuleType
    _models: dict[str, types.ModuleType] = field(default_factory=dict, compare=False)

    def model(self, model_def: str) -> types.ModuleType:
        """Upstream's ``models/<model_def>.py`` (train_*.py's ``--model_def``), loaded once."""
        with _LOCK:
            if model_def == "inception_resnet_v1":
                return self.inception_resnet_v1
            if model_def not in self._models:
                if not model_def.isidentifier():
                    raise ImportError(f"not an upstream model_def: {model_def!r}")
                member = MODEL_MEMBER.format(model_def=model_def)
                with upstream_mode():
                    self._models[model_def] = _import_upstream(
                        model_def, str(wheel_member(FACENET, member)), self.tf, None)
            return self._models[model_def]


def _tf_slim_aliases() -> None:
    """Names tf_slim 1.1 still imports from TF internals that TF 2.21 moved or dropped."""
    import tensorflow as tf
    from tensorflow.python.framework import ops
    from tensorflow.python.ops import control_flow_ops

    if not hasattr(ops, "Tensor"):
        ops.Tensor = tf.Tensor
    if not hasattr(control_flow_ops, "cond"):
        control_flow_ops.cond = tf.compat.v1.cond


def _register_contrib(slim: types.ModuleType) -> None:
    """Make ``import tensorflow.contrib.slim`` resolve to tf_slim (TF 2 has no contrib)."""
    contrib = sys.modules.get("tensorflow.contrib")
    if contrib is None:
        contrib = types.ModuleType("tensorflow.contrib",
                                   "Alias registered by third_party.facenet.compat: slim only.")
        sys.modules["tensorflow.contrib"] = contrib
    contrib.slim = slim
    sys.modules.setdefault("tensorflow.contrib.slim", slim)


def _cv2_stub() -> types.ModuleType:
    """detect_face imports cv2 at the top; the networks never call it."""
    stub = types.ModuleType("cv2", "Stub: detect_face's networks do not need OpenCV.")

    def _missing(name: str) -> Any:
        raise AttributeError(f"cv2.{name}: OpenCV is not installed (only the upstream MTCNN "
                             "networks are supported here, not its image pipeline)")

    stub.__getattr__ = _missing  # type: ignore[attr-defined]
    return stub


def _import_upstream(name: str, path: str, tf_v1: Any, cv2: types.ModuleType | None
                     ) -> types.ModuleType:
    """Execute one upstream file as a private module whose ``import tensorflow`` is tf.compat.v1."""
    real_import = builtins.__import__

    def upstream_import(target: str, globals_: Any = None, locals_: Any = None,
                        fromlist: Any = (), level: int = 0) -> Any:
        if level == 0 and target == "tensorflow" and not fromlist:
            return tf_v1
        if level == 0 and target == "cv2" and cv2 is not None:
            return cv2
        return real_import(target, globals_, locals_, fromlist, level)

    spec = importlib.util.spec_from_file_location(f"third_party.facenet._upstream.{name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load upstream module {name} from {path}")
    module = importlib.util.module_from_spec(spec)
    module.__dict__["__builtins__"] = dict(vars(builtins), __import__=upstream_import)
    spec.loader.exec_module(module)
    return module


def load_upstream() -> Upstream:
    """Import the pinned upstream ``inception_resnet_v1`` and ``detect_face`` once (idempotent)."""
    global _LOADED
    with _LOCK:
        if _LOADED is not None:
            return _LOADED
        import tensorflow as tf

        _tf_slim_aliases()
        import tf_slim

        _register_contrib(tf_slim)
        try:
            import cv2  # noqa: F401  (only its presence matters)
            cv2_stub = None
        except ImportError:
            cv2_stub = _cv2_stub()
        tf_v1 = tf.compat.v1
        with upstream_mode():
            member = MODEL_MEMBER.format(model_def="inception_resnet_v1")
            model = _import_upstream("inception_resnet_v1", str(wheel_member(FACENET, member)),
                                     tf_v1, None)
            detect = _import_upstream("detect_face",
                                      str(wheel_member(FACENET, DETECT_MEMBER)), tf_v1, cv2_stub)
        _LOADED = Upstream(tf=tf_v1, slim=tf_slim, inception_resnet_v1=model, detect_face=detect)
        return _LOADED


@contextlib.contextmanager
def upstream_mode() -> Iterator[None]:
    """Within the block, graphs are built the 2018 way: VariableV2, Switch/Merge, v1 shapes.

    Restores the previous (process-global) settings on exit so TF2 code elsewhere in the same
    process (eager checkpoints, Keras) is unaffected. Build inside ``with tf.Graph().as_default()``.
    """
    import tensorflow as tf
    from tensorflow.python.framework import tensor_shape
    from tensorflow.python.ops import control_flow_util

    with _LOCK:
        saved_shape = tensor_shape._TENSORSHAPE_V2_OVERRIDE
        saved_flow = control_flow_util.ENABLE_CONTROL_FLOW_V2
        saved_resource = tf.compat.v1.resource_variables_enabled()
        tf.compat.v1.disable_v2_tensorshape()
        tf.compat.v1.disable_control_flow_v2()
        tf.compat.v1.disable_resource_variables()
        try:
            yield
        finally:
            tensor_shape._TENSORSHAPE_V2_OVERRIDE = saved_shape
            control_flow_util.ENABLE_CONTROL_FLOW_V2 = saved_flow
            if saved_resource:
                tf.compat.v1.enable_resource_variables()


def apply_global_switches() -> Upstream:
    """REFERENCE 2b's permanent recipe, eager off too: for processes that only run TF1 code."""
    import tensorflow as tf

    upstream = load_upstream()
    tf.compat.v1.disable_eager_execution()
    tf.compat.v1.disable_v2_tensorshape()
    tf.compat.v1.disable_control_flow_v2()
    tf.compat.v1.disable_resource_variables()
    return upstream
