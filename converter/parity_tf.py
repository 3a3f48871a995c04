"""The TensorFlow side of the parity check: the user's model as a TF reference, float32 or
float64.

SOURCE resolves to one of five forms (:func:`resolve_tf_source`), each turned into the same
thing, a float32 GraphDef plus the values of its variables:

* a checkpoint with its ``.meta``: the meta graph's GraphDef, values read by our own
  checkpoint reader (``--weights ema``: the ExponentialMovingAverage shadows where present);
* a checkpoint without ``.meta``: the upstream inference graph rebuilt by the pinned upstream
  code (``third_party.facenet``) for the architecture record whose checkpoint marker the
  checkpoint holds, at the embedding size and classes it holds;
* a frozen ``.pb``: its GraphDef (no variables);
* an MTCNN ``det1/2/3.npy``: upstream ``detect_face``'s net, values read by our restricted
  ``.npy`` reader (upstream's own loader unpickles freely).

:mod:`facenet_convert.converter.tf_float64` then makes one inference graph of it, by the same
steps for every form, in float32 or float64. A Keras ``.h5`` is the fifth form: the model of
the pinned keras-facenet source built with tf-keras in float32 or float64, its weights set
from our own h5 reader (:class:`KerasReference`).

Running a meta graph or a frozen graph executes the ops it contains: a graph is code. Only run
parity on graphs you trust. TensorFlow is imported inside functions only, after
:func:`quiet_tensorflow`.
"""


from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np

from facenet_convert.converter.architecture import Architecture
from facenet_convert.converter.core.errors import ParityError
from facenet_convert.converter.registry import architectures
from facenet_convert.converter.tf_sources import (  # noqa: F401  (parity_tf's API)
    MTCNN_NETS,
    TFSource,
    first_line,
    head_sizes_of,
    quiet_tensorflow,
    required_file,
    resolve_tf_source,
    tf_errors,
)

#: upstream facenet's names, for every model it trains: the input, the training flag, output.
INPUT_NODE = "input"
PHASE_TRAIN = "phase_train"
EMBEDDINGS = "embeddings:0"
EMA_SUFFIX = "/ExponentialMovingAverage"
MTCNN_CLASSES = {"pnet": "PNet", "rnet": "RNet", "onet": "ONet"}


# ---------------------------------------------------------------------------- running


@dataclass
class TFGraph:
    """One inference graph imported into a session; close it when done (or use as context)."""

    graph: Any
    session: Any
    input_name: str
    fetch_map: dict[str, str]
    float64: bool
    notes: list[str] = field(default_factory=list)

    def run(self, inputs: np.ndarray, fetch: Sequence[str]) -> list[np.ndarray]:
        """Feed ``inputs`` (cast to the graph's precision), fetch tensors by name."""
        dtype = np.float64 if self.float64 else np.float32
        try:
            names = [self.fetch_map[name] for name in fetch]
        except KeyError as error:
            raise ParityError(f"tensor {error.args[0]} was not prepared for this run") from None
        try:
            values = self.session.run(names, feed_dict={
                f"{self.input_name}:0": np.ascontiguousarray(inputs, dtype=dtype)})
        except Exception as error:  # TF raises many types with multi-line text
            raise ParityError(f"TensorFlow failed to run the reference graph "
                              f"({first_line(error)})") from error
        return [np.asarray(value) for value in values]

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class TFReference:
    """A TF model as found in SOURCE: float32 GraphDef, variable values, input, flags."""

    graph_def: Any
    input_name: str
    values: Any = None                      # tf_float64.ValueLookup or None (frozen)
    flags: dict[str, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    closers: list[Any] = field(default_factory=list)
    _outputs: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._outputs = {node.name: 1 for node in self.graph_def.node}

    def has(self, tensor_name: str) -> bool:
        """Whether the graph has the op of this tensor name (``op:index``)."""
        return tensor_name.rpartition(":")[0] in self._outputs

    def first_present(self, names: Sequence[str]) -> str | None:
        """The first of ``names`` the graph has."""
        return next((name for name in names if self.has(name)), None)

    def open(self, outputs: Sequence[str], *, float64: bool) -> TFGraph:
        """The inference graph computing ``outputs`` in float32 or float64, in a session."""
        import tensorflow as tf

        from facenet_convert.converter.tf_float64 import inference_graph

        with tf_errors("preparing the reference graph", None):
            prepared = inference_graph(self.graph_def, outputs=outputs,
                                       input_name=self.input_name, values=self.values,
                                       flags=self.flags, float64=float64)
            graph = tf.Graph()
            with graph.as_default():
                tf.graph_util.import_graph_def(prepared.graph_def, name="")
            session = tf.compat.v1.Session(graph=graph)
        return TFGraph(graph, session, self.input_name, prepared.fetch, float64, prepared.notes)

    def close(self) -> None:
        for closer in self.closers:
            closer()
        self.closers.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reader_lookup(reader: Any, *, ema: bool, raw_only: list[str]) -> Any:
    """``values(name)``: the checkpoint's value for a variable (its EMA shadow if asked)."""
    names = set(reader.tensors())

    def values(name: str) -> np.ndarray | None:
        if ema and name + EMA_SUFFIX in names:
            return np.asarray(reader.read(name + EMA_SUFFIX))
        if name not in names:
            return None
        if ema:
            raw_only.append(name)
        return np.asarray(reader.read(name))

    return values


def open_reference(src: TFSource, *, model: str, tf_weights: str = "raw") -> Any:
    """The TF (or Keras) reference of SOURCE for our model ``model`` (a registry name)."""
    from facenet_convert.converter.registry import get_architecture

    record = get_architecture(model)
    if src.kind == "keras":
        return KerasReference.from_source(src, record)
    if src.kind == "mtcnn":
        return _mtcnn_reference(src, record)
    if src.kind == "frozen":
        reference = _frozen_reference(src)
        if tf_weights == "ema":
            reference.notes.append("EMA has no meaning for a frozen graph (its constants are "
                                   "whatever was frozen): compared as it is")
        return reference
    return _checkpoint_reference(src, tf_weights)


def _frozen_reference(src: TFSource) -> TFReference:
    import tensorflow as tf

    pb = required_file(src.pb, src)
    with tf_errors("parsing the frozen graph", pb):
        graph_def = tf.compat.v1.GraphDef.FromString(pb.read_bytes())
    return _with_input(TFReference(graph_def, INPUT_NODE, flags={PHASE_TRAIN: False},
                                   notes=list(src.notes)), pb)


def _with_input(reference: TFReference, path: Path) -> TFReference:
    from facenet_convert.converter.tf_float64 import input_node

    with tf_errors("finding the graph's input", path):
        reference.input_name = input_node(reference.graph_def, (reference.input_name,))
    reference.flags = {k: v for k, v in reference.flags.items() if reference.has(f"{k}:0")}
    return reference


def _checkpoint_reference(src: TFSource, tf_weights: str) -> TFReference:
    import tensorflow as tf

    from facenet_convert.converter.sources import open_source

    prefix = required_file(src.prefix, src)
    notes = list(src.notes)
    reader = open_source(prefix, format="tf-checkpoint")
    try:
        shapes = {name: tuple(info.shape) for name, info in reader.tensors().items()}
        if src.kind == "checkpoint":
            meta = required_file(src.meta, src)
            with tf_errors("parsing the meta graph", meta):
                graph_def = tf.compat.v1.MetaGraphDef.FromString(meta.read_bytes()).graph_def
        else:
            graph_def = _rebuilt_graph(prefix, shapes, notes)
        raw_only: list[str] = []
        if tf_weights == "ema":
            if not any(name.endswith(EMA_SUFFIX) for name in shapes):
                raise ParityError("--weights ema: the checkpoint holds no ExponentialMovingAverage"
                                  " shadows; use --weights raw", path=prefix)
            notes.append("TF side uses the checkpoint's ExponentialMovingAverage shadows")
        values = _reader_lookup(reader, ema=tf_weights == "ema", raw_only=raw_only)
        reference = TFReference(graph_def, INPUT_NODE, values, {PHASE_TRAIN: False}, notes,
                                [reader.close])
        return _with_input(reference, prefix)
    except BaseException:
        reader.close()
        raise


def _rebuilt_graph(prefix: Path, shapes: dict[str, tuple[int, ...]], notes: list[str]) -> Any:
    """The upstream inference graph of the record whose checkpoint scheme fits (float32)."""
    import tensorflow as tf

    from facenet_convert.third_party.facenet.compat import load_upstream, upstream_mode
    from facenet_convert.third_party.facenet.graphs import build_inference

    for record in architectures("embedding"):
        if record.upstream_model_def is None:
            continue
        sizes = head_sizes_of(record, shapes, graph=False)
        if sizes is None:
            continue
        embedding_size, num_classes = sizes
        up = load_upstream()
        with upstream_mode():
            graph = tf.Graph()
            with graph.as_default(), tf_errors("rebuilding the upstream graph", prefix):
                build_inference(up, embedding_size=embedding_size, num_classes=num_classes,
                                model_def=record.upstream_model_def)
        notes.append(f"rebuilt the upstream {record.upstream_model_def} inference graph: "
                     f"{embedding_size}-d embeddings, {num_classes or 'no'} logits classes")
        return graph.as_graph_def()
    raise ParityError("cannot rebuild the upstream graph: the checkpoint fits no registered "
                      "architecture's checkpoint scheme; give the .meta or a frozen .pb instead",
                      path=prefix)


def read_mtcnn_npy(path: Path) -> dict[str, np.ndarray]:
    """``{layer/param: array}`` from a det*.npy through our restricted reader."""
    from facenet_convert.converter.sources import open_source

    with open_source(path, format="mtcnn-npy") as reader:
        return {name: np.array(reader.read(name)) for name in reader.tensors()}


def _mtcnn_reference(src: TFSource, record: Architecture) -> TFReference:
    """Upstream detect_face's net (its variables folded from our reading of the .npy)."""
    import tensorflow as tf

    from facenet_convert.third_party.facenet.compat import load_upstream, upstream_mode

    npy = required_file(src.npy, src)
    net = record.name
    arrays = read_mtcnn_npy(npy)
    up = load_upstream()
    height, width = record.input_size or (None, None)
    with upstream_mode():
        graph = tf.Graph()
        with graph.as_default():
            with up.tf.variable_scope(net):
                # upstream's nets take W/H-swapped images
                data = up.tf.placeholder(tf.float32, (None, width, height, 3), "input")
                getattr(up.detect_face, MTCNN_CLASSES[net])({"data": data}, trainable=False)
            variables = {v.op.name: tuple(v.shape.as_list())
                         for v in up.tf.global_variables()}
    expected = {f"{net}/{name}": name for name in arrays}
    extra = sorted(name for full, name in expected.items() if full not in variables)
    if extra:
        raise ParityError(f"{npy.name} has {extra[0]}, which upstream {net} does not have: is "
                          f"this the {net} file? (det1=pnet, det2=rnet, det3=onet)",
                          path=npy, key=extra[0])
    for full, name in expected.items():
        if tuple(arrays[name].shape) != variables[full]:
            raise ParityError(f"{name} has shape {tuple(arrays[name].shape)}, upstream {net} "
                              f"expects {variables[full]}: is this the {net} file?",
                              path=npy, key=name)
    missing = sorted(set(variables) - set(expected))
    if missing:
        raise ParityError(f"{npy.name} lacks {len(missing)} weights of upstream {net} "
                          f"({', '.join(missing[:4])}); is this the {net} file?", path=npy)

    def values(name: str) -> np.ndarray | None:
        short = expected.get(name)
        return None if short is None else arrays[short].astype(np.float32)

    return TFReference(graph.as_graph_def(), f"{net}/input", values, {}, list(src.notes))


# --------------------------------------------------------------------------- Keras


@dataclass
class KerasRunner:
    """The Keras model in one precision, with :class:`TFGraph`'s ``run`` interface."""

    model: Any
    outputs: tuple[str, ...]
    float64: bool
    notes: list[str] = field(default_factory=list)

    def run(self, inputs: np.ndarray, fetch: Sequence[str]) -> list[np.ndarray]:
        dtype = np.float64 if self.float64 else np.float32
        unknown = [name for name in fetch if name not in self.outputs]
        if unknown:
            raise ParityError(f"the Keras model has only its output, not {unknown[0]}")
        try:
            value = np.asarray(self.model(np.ascontiguousarray(inputs, dtype=dtype),
                                          training=False))
        except Exception as error:  # Keras raises many types
            raise ParityError(f"Keras failed to run the reference model "
                              f"({first_line(error)})") from error
        return [value for _ in fetch]

    def close(self) -> None:
        """Nothing to release (eager)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class KerasReference:
    """A Keras ``.h5`` whose model the pinned keras-facenet source builds; its weights are set
    from our own h5 reader (the file is never Keras-deserialised)."""

    arrays: dict[str, np.ndarray]
    scheme: str
    embedding_size: int
    outputs: tuple[str, ...]
    path: Path
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_source(cls, src: TFSource, record: Architecture) -> KerasReference:
        from facenet_convert.converter.sources import open_source
        from facenet_convert.third_party.facenet.keras_facenet import BUILDERS

        h5 = required_file(src.h5, src)
        with open_source(h5, format="keras-h5") as reader:
            shapes = {name: tuple(info.shape) for name, info in reader.tensors().items()}
            scheme = next((s for s in record.schemes if s.table.name in BUILDERS
                           and s.fits(set(shapes), graph=False)), None)
            if scheme is None or scheme.embedding_tensor is None:
                raise ParityError(f"no Keras reference model for these {record.name} weights "
                                  f"(parity builds: {', '.join(BUILDERS)})", path=h5)
            embedding = shapes[scheme.embedding_tensor]
            arrays = {name: np.array(reader.read(name)) for name in shapes}
        outputs = tuple(name for row in record.end_points if row.module == ""
                        for name in row.tf_tensors)
        return cls(arrays, scheme.table.name, int(embedding[-1]), outputs, h5,
                   [(f"TF side: the keras-facenet model built with tf-keras, weights from "
                     f"{h5.name} read by our h5 reader; per-layer tensors are not compared")])

    def has(self, tensor_name: str) -> bool:
        return tensor_name in self.outputs

    def first_present(self, names: Sequence[str]) -> str | None:
        return next((name for name in names if self.has(name)), None)

    def open(self, outputs: Sequence[str], *, float64: bool) -> KerasRunner:
        from facenet_convert.third_party.facenet.keras_facenet import build_model

        with tf_errors("building the keras-facenet model", self.path):
            model = build_model(self.scheme, self.embedding_size, float64=float64)
        self._assign(model, np.float64 if float64 else np.float32)
        return KerasRunner(model, self.outputs, float64)

    def _assign(self, model: Any, dtype: type) -> None:
        unused = set(self.arrays)
        for weight in model.weights:
            name = weight.name.removesuffix(":0")
            value = self.arrays.get(name)
            if value is None:
                raise ParityError(f"the Keras file has no weight {name}, which the keras-facenet "
                                  "model needs", path=self.path, key=name)
            if tuple(value.shape) != tuple(weight.shape):
                raise ParityError(f"{name} has shape {tuple(value.shape)}, the keras-facenet "
                                  f"model expects {tuple(weight.shape)}", path=self.path, key=name)
            weight.assign(value.astype(dtype))
            unused.discard(name)
        if unused:
            raise ParityError(f"the Keras file has {len(unused)} weights the keras-facenet model "
                              f"does not ({', '.join(sorted(unused)[:3])})", path=self.path)

    def close(self) -> None:
        """Nothing to release (arrays in memory)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------- embeddings only


def open_checkpoint_graph(src: TFSource, *, weights: str = "raw") -> TFGraph:
    """A checkpoint's float32 graph computing ``embeddings:0`` (for ``evaluate``)."""
    with _checkpoint_reference(src, weights) as reference:
        return reference.open([EMBEDDINGS], float64=False)


def open_frozen_graph(src: TFSource) -> TFGraph:
    """A frozen graph's float32 graph computing ``embeddings:0`` (for ``evaluate``)."""
    return _frozen_reference(src).open([EMBEDDINGS], float64=False)
