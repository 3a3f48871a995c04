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

import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np

from facenet_convert.converter.architecture import Architecture
from facenet_convert.converter.core.errors import ParityError
from facenet_convert.converter.core.extras import require_extra
from facenet_convert.converter.registry import architectures

#: upstream facenet's names, for every model it trains: the input, the training flag, output.
INPUT_NODE = "input"
PHASE_TRAIN = "phase_train"
EMBEDDINGS = "embeddings:0"
EMA_SUFFIX = "/ExponentialMovingAverage"

MTCNN_NETS = {"det1": "pnet", "det2": "rnet", "det3": "onet"}
MTCNN_CLASSES = {"pnet": "PNet", "rnet": "RNet", "onet": "ONet"}
_CKPT_STEP = re.compile(r"^(?P<stem>.+)\.ckpt-\d+$")


@dataclass(frozen=True)
class TFSource:
    """What SOURCE is, resolved to concrete files."""

    kind: str                    # "checkpoint" | "checkpoint-rebuilt" | "frozen" | "mtcnn"
    #                              | "keras"
    path: Path                   # as given
    prefix: Path | None = None   # checkpoint prefix
    meta: Path | None = None     # the meta graph, when there is one
    pb: Path | None = None       # frozen graph
    npy: Path | None = None      # MTCNN weights
    h5: Path | None = None       # Keras weights (full model or weights only)
    net: str | None = None       # "pnet" | "rnet" | "onet" for MTCNN (from the file name)
    notes: tuple[str, ...] = ()

    @property
    def description(self) -> str:
        if self.kind == "checkpoint":
            return f"checkpoint {self.prefix} with meta graph {self.meta}"
        if self.kind == "checkpoint-rebuilt":
            return (f"checkpoint {self.prefix} (no .meta: upstream inference graph rebuilt by "
                    "the pinned facenet 1.0.5 code)")
        if self.kind == "frozen":
            return f"frozen graph {self.pb}"
        if self.kind == "keras":
            return (f"Keras weights {self.h5} in the pinned keras-facenet 0.3.2 model "
                    "(tf-keras)")
        return f"upstream detect_face {self.net} with weights {self.npy}"


# ------------------------------------------------------------------------------ quiet TF


@contextmanager
def _stderr_to_file() -> Iterator[None]:
    """Send file descriptor 2 to a temporary file (TF's C++ logging writes there, whatever
    TF_CPP_MIN_LOG_LEVEL says, before absl is initialised); replay it if the block fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            os.write(2, sink.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def quiet_tensorflow(verbose: bool = False) -> None:
    """Import TensorFlow (and tf-slim) with its C++ start-up lines (oneDNN notice, absl
    pre-init warning, CUDA probes) and Python warnings kept off the terminal; ``verbose``
    leaves everything as TensorFlow prints it. Errors still show."""
    import logging
    import warnings

    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    require_extra("tf", "parity (the TensorFlow reference)")
    fresh = "tensorflow" not in sys.modules
    try:
        if fresh and not verbose:
            with _stderr_to_file():
                import tensorflow as tf
        else:
            import tensorflow as tf
        import tf_slim  # noqa: F401  (the upstream graph code needs it)
    except ImportError as error:
        raise ParityError(f"parity runs the TensorFlow reference and needs TensorFlow and "
                          f"tf-slim ({error}); install them: pip install "
                          "'facenet-convert[tf]'") from error
    if verbose:
        return
    tf.get_logger().setLevel(logging.ERROR)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:
        pass
    try:
        from tensorflow.python.util import deprecation

        deprecation._PRINT_DEPRECATION_WARNINGS = False
    except (ImportError, AttributeError):
        pass
    for module in ("tensorflow", "tf_slim", "keras", "tf_keras"):
        warnings.filterwarnings("ignore", module=module)
    warnings.filterwarnings("ignore", category=SyntaxWarning)


# ------------------------------------------------------------------------------ sources


def _find_meta(prefix: Path) -> Path | None:
    """``PREFIX.meta``, or upstream's ``model-NAME.meta`` beside ``model-NAME.ckpt-STEP``."""
    candidates = [Path(f"{prefix}.meta")]
    match = _CKPT_STEP.match(prefix.name)
    if match:
        candidates.append(prefix.with_name(f"{match['stem']}.meta"))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    metas = sorted(prefix.parent.glob("*.meta"))
    return metas[0] if len(metas) == 1 else None


def resolve_tf_source(source: str | os.PathLike[str]) -> TFSource:
    """Decide how to build the reference for SOURCE (no TensorFlow needed)."""
    from facenet_convert.converter.sources import detect_format

    path = Path(source)
    if path.suffix == ".meta" and path.is_file():
        return _meta_source(path)
    fmt = detect_format(path)
    if fmt == "mtcnn-npy":
        return TFSource("mtcnn", path, npy=path, net=MTCNN_NETS.get(path.stem))
    if fmt == "tf-graphdef":
        return TFSource("frozen", path, pb=path)
    if fmt == "keras-h5":
        return TFSource("keras", path, h5=path)
    if fmt == "tf-checkpoint":
        from facenet_convert.converter.sources.tf_bundle import resolve_prefix

        prefix, how = resolve_prefix(path)
        meta = _find_meta(prefix)
        kind = "checkpoint" if meta is not None else "checkpoint-rebuilt"
        return TFSource(kind, path, prefix=prefix, meta=meta, notes=(how,))
    raise ParityError(f"parity needs a TensorFlow or Keras source (checkpoint folder or prefix, "
                      f"frozen .pb, Keras .h5, MTCNN det*.npy); this is a {fmt} file, which has "
                      "no model to run", path=path)


def _meta_source(meta: Path) -> TFSource:
    """A ``.meta`` given as SOURCE: its checkpoint is ``X`` for ``X.meta``, else the folder's
    (upstream names them ``model-NAME.meta`` and ``model-NAME.ckpt-STEP``)."""
    from facenet_convert.converter.sources.tf_bundle import resolve_prefix

    same = meta.with_suffix("")
    if Path(f"{same}.index").is_file():
        prefix, how = same, f"prefix {same} (named like the given {meta.name})"
    else:
        prefix, how = resolve_prefix(meta.parent)
    return TFSource("checkpoint", meta, prefix=prefix, meta=meta, notes=(how,))


def _required(path: Path | None, src: TFSource) -> Path:
    if path is None:
        raise ParityError(f"source resolved as {src.kind} without its file", path=src.path)
    return path


def _first_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"


@contextmanager
def _tf_errors(what: str, path: Path | None) -> Iterator[None]:
    try:
        yield
    except ParityError:
        raise
    except Exception as error:  # TF / protobuf raise many types with multi-line text
        raise ParityError(f"{what} failed ({_first_line(error)})", path=path) from error


def _head_sizes(record: Architecture, shapes: dict[str, tuple[int, ...]], *, graph: bool
                ) -> tuple[int, int | None] | None:
    """(embedding size, classes) when one of ``record``'s schemes fits these tensors."""
    for scheme in record.schemes:
        if not scheme.fits(set(shapes), graph=graph) or scheme.embedding_tensor is None:
            continue
        embedding = shapes.get(scheme.embedding_tensor, ())
        if len(embedding) != 2:
            continue
        classes = shapes.get(scheme.classes_tensor or "", ())
        return int(embedding[1]), int(classes[1]) if len(classes) == 2 else None
    return None


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
                              f"({_first_line(error)})") from error
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

        with _tf_errors("preparing the reference graph", None):
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

    pb = _required(src.pb, src)
    with _tf_errors("parsing the frozen graph", pb):
        graph_def = tf.compat.v1.GraphDef.FromString(pb.read_bytes())
    return _with_input(TFReference(graph_def, INPUT_NODE, flags={PHASE_TRAIN: False},
                                   notes=list(src.notes)), pb)


def _with_input(reference: TFReference, path: Path) -> TFReference:
    from facenet_convert.converter.tf_float64 import input_node

    with _tf_errors("finding the graph's input", path):
        reference.input_name = input_node(reference.graph_def, (reference.input_name,))
    reference.flags = {k: v for k, v in reference.flags.items() if reference.has(f"{k}:0")}
    return reference


def _checkpoint_reference(src: TFSource, tf_weights: str) -> TFReference:
    import tensorflow as tf

    from facenet_convert.converter.sources import open_source

    prefix = _required(src.prefix, src)
    notes = list(src.notes)
    reader = open_source(prefix, format="tf-checkpoint")
    try:
        shapes = {name: tuple(info.shape) for name, info in reader.tensors().items()}
        if src.kind == "checkpoint":
            meta = _required(src.meta, src)
            with _tf_errors("parsing the meta graph", meta):
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
        sizes = _head_sizes(record, shapes, graph=False)
        if sizes is None:
            continue
        embedding_size, num_classes = sizes
        up = load_upstream()
        with upstream_mode():
            graph = tf.Graph()
            with graph.as_default(), _tf_errors("rebuilding the upstream graph", prefix):
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

    npy = _required(src.npy, src)
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
                              f"({_first_line(error)})") from error
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

        h5 = _required(src.h5, src)
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

        with _tf_errors("building the keras-facenet model", self.path):
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
