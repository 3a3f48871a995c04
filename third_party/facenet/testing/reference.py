"""Run the TensorFlow side of a comparison: upstream graphs on given inputs, outputs as numpy.

Used by tests and by the parity checker. TensorFlow is imported lazily, each run builds its own
``tf.Graph`` inside ``compat.upstream_mode()`` so the process's TF2 settings are left alone.

What can be fetched (checked with TF 2.21, control flow v1; the graph has a ``cond`` per
BatchNorm on ``phase_train``, fed False):
- An imported graph (``run_frozen``, ``run_checkpoint`` with ``meta``): every layer output
  (``.../Conv2D:0``, ``.../BatchNorm/cond_1/Merge:0``, ``.../Relu:0``, end points) and every
  tensor of the inference (false) branch, e.g. ``.../BatchNorm/cond/FusedBatchNormV3_1:0``.
  Tensors of the training (true) branch are dead at run time and fail.
- A graph built in this process (``run_checkpoint`` without ``meta``): TF marks every op inside a
  ``cond`` branch unfetchable, so only the ``Merge`` outputs and ops outside the conds.
- ``run_rebuilt`` builds the graph with ``phase_train`` a Python bool: no cond at all, so every
  tensor exists, and it returns the upstream ``end_points`` by name. ``phase_train=True`` gives
  training-mode batch statistics (and active dropout, so only layers before it are stable).
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np

from facenet_convert.converter.core.errors import ParityError, UnsafeSourceError

Fetch = Sequence[str] | str

# Output tensors upstream create_mtcnn returns for each net, and its input shapes.
MTCNN_NETS = {
    "pnet": ("PNet", "det1", (None, None, None, 3),
             {"conv4-2": "pnet/conv4-2/BiasAdd:0", "prob1": "pnet/prob1:0"}),
    "rnet": ("RNet", "det2", (None, 24, 24, 3),
             {"conv5-2": "rnet/conv5-2/conv5-2:0", "prob1": "rnet/prob1:0"}),
    "onet": ("ONet", "det3", (None, 48, 48, 3),
             {"conv6-2": "onet/conv6-2/conv6-2:0", "conv6-3": "onet/conv6-3/conv6-3:0",
              "prob1": "onet/prob1:0"}),
}


def reference_images(seed: int, batch_size: int, size: int = 160) -> np.ndarray:
    """Seeded N(0, 1) float32 NHWC images (prewhitened faces have this scale)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch_size, size, size, 3), dtype=np.float32)


def _names(fetch: Fetch) -> list[str]:
    return [fetch] if isinstance(fetch, str) else list(fetch)


def _images(images: Any, path: Any) -> np.ndarray:
    array = np.ascontiguousarray(images, dtype=np.float32)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ParityError(f"images: expected NHWC float32 with 3 channels, found shape "
                          f"{array.shape}", path=path)
    return array


def _feed(graph: Any, images: np.ndarray) -> dict[Any, Any]:
    """``input:0`` plus ``phase_train:0`` = False when the graph has that switch."""
    feed = {graph.get_tensor_by_name("input:0"): images}
    try:
        feed[graph.get_tensor_by_name("phase_train:0")] = False
    except KeyError:
        pass
    return feed


def _checkpoint_shapes(prefix: str | os.PathLike[str]) -> dict[str, list[int]]:
    import tensorflow as tf

    return dict(tf.train.list_variables(str(prefix)))


def _infer_sizes(prefix: str | os.PathLike[str], embedding_size: int | None,
                 num_classes: int | None) -> tuple[int, int | None]:
    """An embedding size not given is read from the checkpoint's Bottleneck weights."""
    if embedding_size is not None:
        return embedding_size, num_classes or None
    bottleneck = _checkpoint_shapes(prefix).get("InceptionResnetV1/Bottleneck/weights")
    if bottleneck is None:
        raise ParityError("no InceptionResnetV1/Bottleneck/weights: not an upstream "
                          "inception_resnet_v1 checkpoint, pass embedding_size", path=prefix)
    return int(bottleneck[-1]), num_classes or None


def _ema_name(variable: Any) -> str:
    """Where facenet.train's ExponentialMovingAverage keeps a variable's shadow.

    (``ExponentialMovingAverage.average_name`` would uniquify against an imported metagraph
    that already holds the shadows and answer ``..._1``.)
    """
    return f"{variable.op.name}/ExponentialMovingAverage"


def _restore_model(tf: Any, sess: Any, prefix: str | os.PathLike[str], use_ema: bool) -> None:
    """Restore only the model's variables (the checkpoint may hold slots, centers, ...)."""
    variables = tf.global_variables()
    if use_ema:
        var_list: Any = {_ema_name(v): v for v in variables}
    else:
        var_list = variables
    tf.train.Saver(var_list).restore(sess, str(prefix))


def run_checkpoint(prefix: str | os.PathLike[str], meta: str | os.PathLike[str] | None = None,
                   images_nhwc: Any = None, fetch: Fetch = ("embeddings:0",), *,
                   embedding_size: int | None = None, num_classes: int | None = None,
                   use_ema: bool = False) -> dict[str, np.ndarray]:
    """Embeddings (or any fetchable tensors) of a checkpoint, keyed by tensor name.

    With ``meta`` the user's metagraph is imported and restored as is (``use_ema`` restores
    ``<var>/ExponentialMovingAverage`` into the model variables instead). Without it the upstream
    inference graph is rebuilt for ``embedding_size`` (read from the checkpoint when None) and
    ``num_classes`` (None: no Logits layer) and only model variables are restored.
    """
    from facenet_convert.third_party.facenet.compat import load_upstream, upstream_mode
    from facenet_convert.third_party.facenet.graphs import build_inference

    if images_nhwc is None:
        raise ParityError("run_checkpoint needs images_nhwc", path=prefix)
    images = _images(images_nhwc, prefix)
    up = load_upstream()
    tf = up.tf
    with upstream_mode(), tf.Graph().as_default() as graph, tf.Session(graph=graph) as sess:
        if meta is not None:
            saver = tf.train.import_meta_graph(str(meta), clear_devices=True)
            if use_ema:
                tf.train.Saver({_ema_name(v): v for v in tf.trainable_variables()}
                               ).restore(sess, str(prefix))
            else:
                saver.restore(sess, str(prefix))
        else:
            size, classes = _infer_sizes(prefix, embedding_size, num_classes)
            build_inference(up, embedding_size=size, num_classes=classes)
            _restore_model(tf, sess, prefix, use_ema)
        names = _names(fetch)
        values = sess.run([graph.get_tensor_by_name(n) for n in names], _feed(graph, images))
    return dict(zip(names, values, strict=True))


def run_rebuilt(prefix: str | os.PathLike[str], images: Any, embedding_size: int | None = None,
                num_classes: int | None = None, fetch_endpoints: bool = True, *,
                fetch: Fetch = (), use_ema: bool = False,
                phase_train: bool = False) -> dict[str, np.ndarray]:
    """Upstream graph rebuilt with ``phase_train`` a Python bool, restored from ``prefix``.

    Returns the upstream ``end_points`` by name (``Conv2d_1a_3x3`` ... ``PreLogitsFlatten``) when
    ``fetch_endpoints``, plus ``prelogits`` (Bottleneck output), ``embeddings``, ``logits`` (with
    ``num_classes``), plus any tensor names in ``fetch`` under their own names.
    """
    from facenet_convert.third_party.facenet.compat import load_upstream, upstream_mode
    from facenet_convert.third_party.facenet.graphs import build_inference

    array = _images(images, prefix)
    up = load_upstream()
    tf = up.tf
    size, classes = _infer_sizes(prefix, embedding_size, num_classes)
    with upstream_mode(), tf.Graph().as_default() as graph, tf.Session(graph=graph) as sess:
        model = build_inference(up, embedding_size=size, num_classes=classes,
                                phase_train=bool(phase_train))
        _restore_model(tf, sess, prefix, use_ema)
        targets: dict[str, Any] = {}
        if fetch_endpoints:
            targets.update(model.end_points)
        targets["prelogits"] = model.prelogits
        targets["embeddings"] = model.embeddings
        if model.logits is not None:
            targets["logits"] = model.logits
        for name in _names(fetch):
            targets[name] = graph.get_tensor_by_name(name)
        keys = list(targets)
        values = sess.run([targets[k] for k in keys], {model.images: array})
    return dict(zip(keys, values, strict=True))


def run_frozen(pb_path: str | os.PathLike[str], images: Any,
               fetch: Fetch = ("embeddings:0",)) -> dict[str, np.ndarray]:
    """Run a frozen GraphDef. A graph is code: this executes the user's graph as TF would."""
    from facenet_convert.third_party.facenet.compat import load_upstream, upstream_mode

    array = _images(images, pb_path)
    up = load_upstream()
    tf = up.tf
    graph_def = tf.GraphDef()
    graph_def.ParseFromString(Path(pb_path).read_bytes())
    with upstream_mode(), tf.Graph().as_default() as graph:
        tf.import_graph_def(graph_def, name="")
        names = _names(fetch)
        with tf.Session(graph=graph) as sess:
            values = sess.run([graph.get_tensor_by_name(n) for n in names],
                              _feed(graph, array))
    return dict(zip(names, values, strict=True))


# ---------------------------------------------------------------------------- MTCNN


_NPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Allows only what np.save of a dict of arrays needs; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _NPY_GLOBALS:
            raise UnsafeSourceError(f"pickle global {module}.{name} is not allowed in an MTCNN "
                                    "det*.npy (only numpy arrays and dicts)")
        if name == "_reconstruct":
            return np._core.multiarray._reconstruct
        return getattr(np, name)


def load_det_npy(path: str | os.PathLike[str]) -> dict[str, dict[str, np.ndarray]]:
    """The ``{layer: {param: array}}`` dict of a det*.npy, without executing pickled code."""
    from numpy.lib import format as npy_format

    with open(path, "rb") as handle:
        version = npy_format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = npy_format.read_array_header_1_0(handle)
        else:
            shape, _, dtype = npy_format.read_array_header_2_0(handle)
        payload = handle.read()
    if shape != () or dtype != np.dtype(object):
        raise ParityError(f"expected a 0-d object array, found shape {shape} dtype {dtype}",
                          path=path)
    array = _NumpyOnlyUnpickler(io.BytesIO(payload), encoding="latin1").load()
    value = array.item() if isinstance(array, np.ndarray) else array
    if not isinstance(value, dict):
        raise ParityError(f"expected a dict of layers, found {type(value).__name__}", path=path)
    return value


def _det_path(det: Any, npy: str) -> Path:
    if isinstance(det, Mapping):
        return Path(det[npy])
    path = Path(det)
    return path / f"{npy}.npy" if path.is_dir() else path


def run_mtcnn(det: str | os.PathLike[str] | Mapping[str, Any], which: str, images_nhwc: Any,
              *, all_layers: bool = False) -> dict[str, np.ndarray]:
    """Outputs of one upstream MTCNN net (detect_face.PNet/RNet/ONet) on the real weights.

    ``det`` is a folder holding det1/2/3.npy, a mapping like ``{"det1": path, ...}`` or the
    .npy file of that net. ``images_nhwc`` is fed as is, i.e. in the layout the upstream nets
    take: detect_face transposes images to (N, W, H, C) before every net (the nets come from
    Caffe's column-major layout), so pass transposed images to compare with an (N, H, W, C)
    model, or compare a model that works on the swapped layout. rnet needs 24x24 inputs, onet
    48x48; pnet any size >= 12. Keys are layer names (``conv4-2``, ``prob1`` for pnet;
    ``conv5-2``, ``prob1`` for rnet; ``conv6-2``, ``conv6-3``, ``prob1`` for onet), every
    layer output with ``all_layers``.
    """
    from facenet_convert.third_party.facenet.compat import load_upstream, upstream_mode

    if which not in MTCNN_NETS:
        raise ParityError(f"unknown MTCNN net {which!r}; expected one of "
                          f"{', '.join(MTCNN_NETS)}")
    class_name, npy, shape, outputs = MTCNN_NETS[which]
    path = _det_path(det, npy)
    weights = load_det_npy(path)
    array = np.ascontiguousarray(images_nhwc, dtype=np.float32)
    fixed = [(want, got) for want, got in zip(shape[1:3], array.shape[1:3], strict=False)
             if want is not None]
    if array.ndim != 4 or array.shape[-1] != 3 or any(want != got for want, got in fixed):
        raise ParityError(f"{which} input: expected shape {shape}, found {array.shape}")
    up = load_upstream()
    tf = up.tf
    with upstream_mode(), tf.Graph().as_default() as graph, tf.Session(graph=graph) as sess:
        with tf.variable_scope(which):
            data = tf.placeholder(tf.float32, shape, "input")
            net = getattr(up.detect_face, class_name)({"data": data})
            _load_net(tf, sess, weights, path)
        targets = {key: graph.get_tensor_by_name(name) for key, name in outputs.items()}
        if all_layers:
            targets.update({key: value for key, value in net.layers.items() if key != "data"})
        keys = list(targets)
        values = sess.run([targets[k] for k in keys], {data: array})
    return dict(zip(keys, values, strict=True))


def _load_net(tf: Any, sess: Any, weights: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    """detect_face.Network.load over an already-unpickled dict (every variable must be set)."""
    scope = tf.get_variable_scope().name
    expected = {v.op.name for v in tf.global_variables() if v.op.name.startswith(scope + "/")}
    assigned: set[str] = set()
    for op_name, params in weights.items():
        with tf.variable_scope(op_name, reuse=True):
            for param_name, data in params.items():
                try:
                    var = tf.get_variable(param_name)
                except ValueError:
                    raise ParityError(f"{op_name}/{param_name} is not a variable of the "
                                      "upstream net", path=path) from None
                var.load(data, sess)
                assigned.add(var.op.name)
    missing = sorted(expected - assigned)
    if missing:
        raise ParityError(f"det file sets no value for {', '.join(missing)}", path=path)


def list_checkpoint(prefix: str | os.PathLike[str]) -> dict[str, list[int]]:
    """Variable names and shapes as TensorFlow reads them (``tf.train.list_variables``)."""
    return _checkpoint_shapes(prefix)


__all__ = [
    "MTCNN_NETS", "list_checkpoint", "load_det_npy", "reference_images", "run_checkpoint",
    "run_frozen", "run_mtcnn", "run_rebuilt",
]


class UpstreamDetector:
    """davidsandberg's ``detect_face`` on det1/2/3.npy, set up as align_dataset_mtcnn does.

    ``create_mtcnn`` loads the pinned wheel's det*.npy with numpy's pickle loader: trusted
    files only. Use as a context manager; :meth:`detect` returns upstream's (boxes, points).
    """

    def __init__(self) -> None:
        from facenet_convert.third_party.facenet.compat import (
            MTCNN_MEMBERS,
            load_upstream,
            upstream_mode,
        )
        from facenet_convert.third_party.wheels import FACENET, wheel_member

        self._up = load_upstream()
        self._mode = upstream_mode
        folder = Path(wheel_member(FACENET, MTCNN_MEMBERS["det1"])).parent
        for member in MTCNN_MEMBERS.values():
            wheel_member(FACENET, member)
        tf = self._up.tf
        self._graph = tf.Graph()
        with upstream_mode(), self._graph.as_default():
            self._session = tf.Session(graph=self._graph)
            with self._session.as_default():
                self._nets = self._up.detect_face.create_mtcnn(self._session, str(folder))

    @property
    def uses_real_cv2(self) -> bool:
        """False when detect_face was loaded with our cv2 stub (no OpenCV installed)."""
        return getattr(self._up.detect_face.cv2, "INTER_AREA", None) is not None

    def detect(self, image: np.ndarray, minsize: int = 20,
               thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
               factor: float = 0.709) -> tuple[np.ndarray, np.ndarray]:
        with self._mode(), self._graph.as_default():
            return self._up.detect_face.detect_face(image, minsize, *self._nets,
                                                    list(thresholds), factor)

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def align_crop(photo: np.ndarray, box: np.ndarray, margin: int = 32,
               size: int = 160) -> np.ndarray:
    """align_dataset_mtcnn.py's crop of one detected face: its integer box arithmetic with
    ``margin`` pixels, then a bilinear resize (what its ``misc.imresize`` did) to ``size``."""
    from PIL import Image

    height, width = photo.shape[:2]
    bb = np.zeros(4, dtype=np.int32)
    bb[0] = np.maximum(box[0] - margin / 2, 0)
    bb[1] = np.maximum(box[1] - margin / 2, 0)
    bb[2] = np.minimum(box[2] + margin / 2, width)
    bb[3] = np.minimum(box[3] + margin / 2, height)
    cropped = photo[bb[1]:bb[3], bb[0]:bb[2], :]
    return np.asarray(Image.fromarray(cropped).resize((size, size), Image.BILINEAR))
