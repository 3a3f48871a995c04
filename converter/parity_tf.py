"""The TensorFlow side of the parity check: run the user's upstream graph on given inputs.

Four ways to get the reference graph, chosen from SOURCE:

* a checkpoint with its ``.meta``: ``import_meta_graph`` + ``restore`` (what upstream
  ``facenet.load_model`` does);
* a frozen ``.pb``: ``import_graph_def``;
* a checkpoint without ``.meta``: the upstream inference graph rebuilt by the pinned upstream
  code (``third_party.facenet``) for the embedding size and logits layer the checkpoint holds,
  then ``restore``;
* an MTCNN ``det1/2/3.npy``: upstream ``detect_face`` PNet/RNet/ONet, weights assigned from
  the file as read by our restricted reader (upstream's own loader unpickles freely).

Importing or running a meta graph or a frozen graph executes the ops it contains: a graph is
code. Only run parity on graphs you trust. TensorFlow is imported inside functions only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np

from facenet_convert.converter.core.errors import ParityError

IRN_INPUT = "input:0"
PHASE_TRAIN = "phase_train:0"
EMBEDDINGS = "embeddings:0"
LOGITS = "Logits/BiasAdd:0"
BOTTLENECK_WEIGHTS = "InceptionResnetV1/Bottleneck/weights"
LOGITS_WEIGHTS = "Logits/weights"
EMA_SUFFIX = "/ExponentialMovingAverage"

MTCNN_NETS = {"det1": "pnet", "det2": "rnet", "det3": "onet"}
# detect_face.create_mtcnn: placeholders and the tensors its pnet/rnet/onet functions fetch,
# in the order our models return them (boxes, [landmarks,] probs).
MTCNN_IO: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "pnet": ("pnet/input:0", (("boxes", "pnet/conv4-2/BiasAdd:0"), ("probs", "pnet/prob1:0"))),
    "rnet": ("rnet/input:0", (("boxes", "rnet/conv5-2/conv5-2:0"), ("probs", "rnet/prob1:0"))),
    "onet": ("onet/input:0", (("boxes", "onet/conv6-2/conv6-2:0"),
                              ("landmarks", "onet/conv6-3/conv6-3:0"),
                              ("probs", "onet/prob1:0"))),
}
MTCNN_INPUT_SHAPES = {"pnet": (None, None, None, 3), "rnet": (None, 24, 24, 3),
                      "onet": (None, 48, 48, 3)}
_CKPT_STEP = re.compile(r"^(?P<stem>.+)\.ckpt-\d+$")


@dataclass(frozen=True)
class TFSource:
    """What SOURCE is, resolved to concrete files."""

    kind: str                    # "checkpoint" | "checkpoint-rebuilt" | "frozen" | "mtcnn"
    path: Path                   # as given
    prefix: Path | None = None   # checkpoint prefix
    meta: Path | None = None     # the meta graph, when there is one
    pb: Path | None = None       # frozen graph
    npy: Path | None = None      # MTCNN weights
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
        return f"upstream detect_face {self.net} with weights {self.npy}"


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


def quiet_tensorflow() -> None:
    """Keep TF's Python deprecation chatter off the terminal (errors still show).

    TF 2.21 prints a few C++ start-up lines whatever TF_CPP_MIN_LOG_LEVEL says.
    """
    import logging
    import warnings

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
        import tf_slim  # noqa: F401  (the upstream graph code needs it)
    except ImportError as error:
        raise ParityError(f"parity runs the TensorFlow reference and needs TensorFlow and "
                          f"tf-slim ({error}); install them: pip install "
                          "'facenet-convert[tf]'") from error

    tf.get_logger().setLevel(logging.ERROR)
    try:
        from tensorflow.python.util import deprecation

        deprecation._PRINT_DEPRECATION_WARNINGS = False
    except (ImportError, AttributeError):
        pass
    for module in ("tensorflow", "tf_slim", "keras"):
        warnings.filterwarnings("ignore", module=module)
    warnings.filterwarnings("ignore", category=SyntaxWarning)


def resolve_tf_source(source: str | os.PathLike[str]) -> TFSource:
    """Decide how to build the reference graph for SOURCE (no TensorFlow needed)."""
    from facenet_convert.converter.sources import detect_format

    path = Path(source)
    if path.suffix == ".meta" and path.is_file():
        return _meta_source(path)
    fmt = detect_format(path)
    if fmt == "mtcnn-npy":
        stem = path.stem
        net = MTCNN_NETS.get(stem)
        return TFSource("mtcnn", path, npy=path, net=net)
    if fmt == "tf-graphdef":
        return TFSource("frozen", path, pb=path)
    if fmt == "tf-checkpoint":
        from facenet_convert.converter.sources.tf_bundle import resolve_prefix

        prefix, how = resolve_prefix(path)
        meta = _find_meta(prefix)
        kind = "checkpoint" if meta is not None else "checkpoint-rebuilt"
        return TFSource(kind, path, prefix=prefix, meta=meta, notes=(how,))
    raise ParityError(f"parity needs a TensorFlow source (checkpoint folder or prefix, frozen "
                      f".pb, MTCNN det*.npy); this is a {fmt} file, which has no graph to run",
                      path=path)


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


def checkpoint_head_sizes(prefix: Path) -> tuple[int, int | None]:
    """Embedding size and logits classes a checkpoint holds (read without TensorFlow)."""
    from facenet_convert.converter.sources.tf_bundle import TFCheckpointReader

    with TFCheckpointReader(prefix) as reader:
        tensors = reader.tensors()
        bottleneck = tensors.get(BOTTLENECK_WEIGHTS)
        if bottleneck is None or len(bottleneck.shape) != 2:
            raise ParityError("cannot rebuild the upstream graph: the checkpoint has no 2-d "
                              f"{BOTTLENECK_WEIGHTS} (not a davidsandberg Inception-ResNet-V1 "
                              "checkpoint?); give the .meta or a frozen .pb instead",
                              path=prefix, key=BOTTLENECK_WEIGHTS)
        logits = tensors.get(LOGITS_WEIGHTS)
        classes = int(logits.shape[1]) if logits is not None and len(logits.shape) == 2 else None
        return int(bottleneck.shape[1]), classes


@dataclass
class TFGraph:
    """A TF1 graph and session ready to run; close it when done (or use as a context)."""

    graph: Any
    session: Any
    input_name: str
    feeds: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def has(self, tensor_name: str) -> bool:
        """Whether the graph has a tensor of that name (``op:index``)."""
        op_name, _, index = tensor_name.rpartition(":")
        try:
            op = self.graph.get_operation_by_name(op_name)
        except KeyError:
            return False
        return int(index) < len(op.outputs)

    def first_present(self, names: Sequence[str]) -> str | None:
        """The first of ``names`` the graph has."""
        return next((name for name in names if self.has(name)), None)

    def run(self, inputs: np.ndarray, fetch: Sequence[str]) -> list[np.ndarray]:
        """Feed ``inputs`` (plus fixed feeds such as phase_train=False), fetch tensors by name."""
        feed = {self.input_name: inputs, **self.feeds}
        try:
            with self.graph.as_default():
                values = self.session.run(list(fetch), feed_dict=feed)
        except Exception as error:  # TF raises many types with multi-line text
            first = (str(error).strip().splitlines() or [""])[0]
            raise ParityError(f"TensorFlow failed to run the reference graph "
                              f"({type(error).__name__}: {first})") from error
        return [np.asarray(value) for value in values]

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _required(path: Path | None, src: TFSource) -> Path:
    if path is None:
        raise ParityError(f"source resolved as {src.kind} without its file", path=src.path)
    return path


def _session(tf: Any, graph: Any) -> Any:
    return tf.compat.v1.Session(graph=graph)


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


def _restore_ema(tf: Any, session: Any, prefix: Path, graph: Any) -> list[str]:
    """Overwrite model variables by their EMA shadows where the checkpoint has one."""
    reader = tf.compat.v1.train.NewCheckpointReader(str(prefix))
    saved = set(reader.get_variable_to_shape_map())
    with graph.as_default():
        # the model's variables (upstream keeps BN moving statistics trainable too), not the
        # optimizer slots that live under the same scopes
        variables = [v for v in tf.compat.v1.trainable_variables()
                     if v.op.name.startswith(("InceptionResnetV1/", "Logits/"))]
        mapping = {v.op.name + EMA_SUFFIX: v for v in variables
                   if v.op.name + EMA_SUFFIX in saved}
        if not mapping:
            raise ParityError("--weights ema: the checkpoint holds no ExponentialMovingAverage "
                              "shadows; use --weights raw", path=prefix)
        tf.compat.v1.train.Saver(var_list=mapping).restore(session, str(prefix))
    return sorted(v.op.name for v in variables if v.op.name + EMA_SUFFIX not in saved)


def open_checkpoint_graph(src: TFSource, *, weights: str = "raw") -> TFGraph:
    """import_meta_graph + restore (or the rebuilt upstream graph + restore)."""
    import tensorflow as tf

    from facenet_convert.third_party.facenet.compat import upstream_mode

    v1 = tf.compat.v1
    prefix = _required(src.prefix, src)
    notes: list[str] = list(src.notes)
    with upstream_mode():
        graph = tf.Graph()
        with graph.as_default():
            if src.kind == "checkpoint":
                with _tf_errors("importing the meta graph", src.meta):
                    saver = v1.train.import_meta_graph(str(src.meta), clear_devices=True)
                if saver is None:
                    raise ParityError("the meta graph has no variables to restore", path=src.meta)
            else:
                from facenet_convert.third_party.facenet.compat import load_upstream
                from facenet_convert.third_party.facenet.graphs import build_inference

                embedding_size, num_classes = checkpoint_head_sizes(prefix)
                up = load_upstream()
                with _tf_errors("rebuilding the upstream graph", prefix):
                    build_inference(up, embedding_size=embedding_size, num_classes=num_classes)
                    saver = v1.train.Saver(v1.global_variables())
                notes.append(f"rebuilt the upstream inference graph: {embedding_size}-d "
                             f"embeddings, {num_classes or 'no'} logits classes")
            # restore inside the graph context: outside it, TF2's Saver takes the eager path
            session = _session(tf, graph)
            try:
                with _tf_errors("restoring the checkpoint", prefix):
                    saver.restore(session, str(prefix))
                if weights == "ema":
                    with _tf_errors("restoring the EMA shadows", prefix):
                        raw_only = _restore_ema(tf, session, prefix, graph)
                    notes.append("TF side restored the ExponentialMovingAverage shadows" + (
                        f" ({len(raw_only)} variables have none: raw)" if raw_only else ""))
                result = TFGraph(graph, session, IRN_INPUT, notes=notes)
                _check_irn_graph(result, prefix)
                return result
            except BaseException:
                session.close()
                raise


def open_frozen_graph(src: TFSource) -> TFGraph:
    """Import a frozen GraphDef into a fresh graph."""
    import tensorflow as tf

    from facenet_convert.third_party.facenet.compat import upstream_mode

    pb = _required(src.pb, src)
    v1 = tf.compat.v1
    with _tf_errors("parsing the frozen graph", pb):
        graph_def = v1.GraphDef.FromString(pb.read_bytes())
    with upstream_mode():
        graph = tf.Graph()
        with graph.as_default(), _tf_errors("importing the frozen graph", pb):
            tf.graph_util.import_graph_def(graph_def, name="")
        session = _session(tf, graph)
    result = TFGraph(graph, session, IRN_INPUT, notes=list(src.notes))
    try:
        _check_irn_graph(result, pb)
    except BaseException:
        session.close()
        raise
    return result


def _check_irn_graph(result: TFGraph, path: Path) -> None:
    for name in (IRN_INPUT, EMBEDDINGS):
        if not result.has(name):
            raise ParityError(f"the graph has no tensor {name}; parity feeds input:0 and fetches "
                              "embeddings:0 as upstream facenet graphs name them", path=path)
    if result.has(PHASE_TRAIN):
        result.feeds[PHASE_TRAIN] = False


def read_mtcnn_npy(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """``{layer: {param: array}}`` from a det*.npy through our restricted reader."""
    from facenet_convert.converter.sources import open_source

    layers: dict[str, dict[str, np.ndarray]] = {}
    with open_source(path, format="mtcnn-npy") as reader:
        for name in reader.tensors():
            layer, sep, param = name.rpartition("/")
            if not sep:
                raise ParityError(f"unexpected MTCNN tensor name {name!r}; expected layer/param",
                                  path=path, key=name)
            layers.setdefault(layer, {})[param] = np.array(reader.read(name))
    return layers


def open_mtcnn_graph(src: TFSource, net: str) -> TFGraph:
    """Upstream detect_face's ``net`` with the weights of ``src.npy`` assigned to it."""
    import tensorflow as tf

    from facenet_convert.third_party.facenet.compat import load_upstream, upstream_mode

    npy = _required(src.npy, src)
    layers = read_mtcnn_npy(npy)
    up = load_upstream()
    v1 = up.tf
    input_name, _ = MTCNN_IO[net]
    cls = {"pnet": up.detect_face.PNet, "rnet": up.detect_face.RNet,
           "onet": up.detect_face.ONet}[net]
    with upstream_mode():
        graph = tf.Graph()
        with graph.as_default():
            with v1.variable_scope(net):
                data = v1.placeholder(tf.float32, MTCNN_INPUT_SHAPES[net], "input")
                cls({"data": data}, trainable=False)
            session = _session(tf, graph)
            try:
                _assign_mtcnn(v1, session, net, layers, npy)
            except BaseException:
                session.close()
                raise
    return TFGraph(graph, session, input_name, notes=list(src.notes))


def _assign_mtcnn(v1: Any, session: Any, net: str,
                  layers: dict[str, dict[str, np.ndarray]], npy: Path) -> None:
    """What detect_face.Network.load does, minus the unpickling; every variable must be set."""
    variables = {v.op.name: v for v in v1.global_variables()}
    done: set[str] = set()
    for layer, params in layers.items():
        for param, value in params.items():
            name = f"{net}/{layer}/{param}"
            var = variables.get(name)
            if var is None:
                raise ParityError(f"{npy.name} has {layer}/{param}, which upstream {net} does not "
                                  f"have: is this the {net} file? (det1=pnet, det2=rnet, "
                                  "det3=onet)", path=npy, key=f"{layer}/{param}")
            expected = tuple(var.shape.as_list())
            if tuple(value.shape) != expected:
                raise ParityError(f"{layer}/{param} has shape {tuple(value.shape)}, upstream {net} "
                                  f"expects {expected}: is this the {net} file?",
                                  path=npy, key=f"{layer}/{param}")
            var.load(value.astype(np.float32), session)
            done.add(name)
    missing = sorted(set(variables) - done)
    if missing:
        raise ParityError(f"{npy.name} lacks {len(missing)} weights of upstream {net} "
                          f"({', '.join(missing[:4])}); is this the {net} file?", path=npy)
