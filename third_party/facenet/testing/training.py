"""Upstream's training graph run from a checkpoint: the reference for ``training``'s proof.

The graph is ``train_softmax.py``'s (its losses around ``<model_def>.inference``, the
``Logits`` layer, ``facenet.center_loss``) and ``facenet.train`` itself: ``center_loss``,
``_add_loss_summaries`` and ``train`` are compiled from the pinned facenet 1.0.5 wheel
(``upstream_code``), so the optimizer, the EMA and the loss averages are upstream's own code.
``phase_train`` is the Python bool True (the live branch of upstream's placeholder fed True).

``float64=True`` rewrites the float32 graph to float64 (every DT_FLOAT attr becomes DT_DOUBLE,
float32 constants widened exactly, so the graph keeps the float32-rounded constants it was
built with). TF 2.21 has no float64 FusedBatchNorm kernels, forward or gradient, so for that
run the graph is built with slim's fused batch norm expanded into primitive ops *before*
``compute_gradients``: the same outputs as the fused training kernel (biased variance to
normalise, ``n / (n - 1)`` times it reported for the moving average), differentiated by TF.

Values are loaded from the checkpoint by name into every global variable (the graph's set and
the checkpoint's must be equal), one ``sess.run(train_op)`` per batch, every variable fetched
after each step. Not shipped in the wheel.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from facenet_convert.third_party.facenet.testing.upstream_code import upstream_functions

FACENET_TRAINING = ("center_loss", "_add_loss_summaries", "train", "triplet_loss")
LEARNING_RATE_DECAY_STEPS = 100 * 1000   # the fixtures' graph: exponential_decay(..., 1.0)


@dataclass(frozen=True)
class UpstreamSettings:
    """``train_softmax.py`` arguments the reference graph takes."""

    optimizer: str
    learning_rate: float
    weight_decay: float = 5e-4
    center_loss_factor: float = 0.01
    center_loss_alfa: float = 0.95
    prelogits_norm_loss_factor: float = 5e-4
    prelogits_norm_p: float = 1.0
    keep_probability: float = 1.0
    moving_average_decay: float = 0.9999


def facenet_training(tf: Any) -> Any:
    """facenet.py's training functions compiled against ``tf`` (tf.compat.v1)."""
    import types

    scope = upstream_functions("facenet/src/facenet.py", FACENET_TRAINING, {"tf": tf, "np": np})
    return types.SimpleNamespace(**{name: scope[name] for name in FACENET_TRAINING})


class _ExpandedNN:
    """``tensorflow.python.ops.nn`` as slim's layers module sees it, with ``fused_batch_norm``
    (training mode) as primitive ops of the input's dtype."""

    def __init__(self, nn: Any, tf: Any) -> None:
        self._nn, self._tf = nn, tf

    def __getattr__(self, name: str) -> Any:
        return getattr(self._nn, name)

    def fused_batch_norm(self, x: Any, scale: Any, offset: Any, mean: Any = None,
                         variance: Any = None, epsilon: float = 0.001,
                         data_format: str = "NHWC", is_training: bool = True,
                         name: str | None = None, **_: Any) -> tuple[Any, Any, Any]:
        tf = self._tf
        if not is_training or data_format != "NHWC":
            raise NotImplementedError("only NHWC training-mode batch norm is expanded")
        axes = [0, 1, 2]
        batch_mean = tf.reduce_mean(x, axes)
        centred = x - batch_mean
        batch_var = tf.reduce_mean(tf.square(centred), axes)
        # the wrapper's floor, then the float32 attribute the kernel would hold
        eps = tf.constant(np.float32(max(epsilon, 1.001e-5)), dtype=x.dtype)
        y = centred * tf.math.rsqrt(batch_var + eps) * scale + offset
        count = tf.cast(tf.size(x) // tf.shape(x)[-1], x.dtype)
        reported = batch_var * (count / tf.maximum(count - 1.0, 1.0))
        return y, batch_mean, reported


@contextlib.contextmanager
def expanded_batch_norm(tf: Any) -> Iterator[None]:
    """Within the block, slim's fused batch norm is built as primitive (float64-able) ops."""
    from tf_slim.layers import layers as slim_layers

    real = slim_layers.nn
    slim_layers.nn = _ExpandedNN(real, tf)
    try:
        yield
    finally:
        slim_layers.nn = real


def _retype_float64(graph_def: Any) -> None:
    """Every DT_FLOAT attr -> DT_DOUBLE; float32 Const values widened (exact)."""
    import tensorflow as tf

    f32, f64 = tf.float32.as_datatype_enum, tf.float64.as_datatype_enum
    for node in graph_def.node:
        if node.op == "Const" and node.attr["dtype"].type == f32:
            widened = tf.make_ndarray(node.attr["value"].tensor).astype(np.float64)
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(widened))
        for attr in node.attr.values():
            if attr.type == f32:
                attr.type = f64
            if attr.HasField("list") and f32 in attr.list.type:
                retyped = [f64 if t == f32 else t for t in attr.list.type]
                del attr.list.type[:]
                attr.list.type.extend(retyped)


_EMA_SCOPE = "ExponentialMovingAverage/"
_WRITERS = frozenset({"Assign", "AssignSub", "AssignAdd", "ScatterSub", "ScatterAdd",
                      "ScatterUpdate"})


def averaging_first(graph_def: Any) -> int:
    """Order what ``facenet.train`` leaves unordered: the EMA reads before any write.

    ``train_op`` waits for the optimizer and the EMA, but neither waits for the other, nor for
    the forward pass, whose BatchNorm updates write the moving statistics the EMA reads (ref
    variables: a read sees whatever was there). TF usually runs the EMA first, as it needs no
    input; a run that does not gives a different shadow for the first layers. Every variable
    write of the step (BN updates, center update, optimizer, ``global_step``) here waits for
    every EMA update, which is that usual order, always. Returns the number of writes gated.
    """
    ema = [node.name for node in graph_def.node
           if node.name.startswith(_EMA_SCOPE) and node.op == "AssignSub"]
    gated = 0
    for node in graph_def.node:
        writes = node.op in _WRITERS or "Apply" in node.op
        if (not writes or node.name.startswith((_EMA_SCOPE, "load_"))
                or node.name.endswith("/Assign")):   # initializers: never run here
            continue
        node.input.extend(f"^{name}" for name in ema)
        gated += 1
    return gated


@dataclass
class _Built:
    graph: Any
    train: str
    images: str
    labels: str
    learning_rate: str
    variables: dict[str, str]                 # name -> tensor name
    assigns: dict[str, tuple[str, str]]       # name -> (placeholder, assign op)


def _build(up: Any, *, model_def: str, embedding_size: int, num_classes: int, centers: bool,
           batch: tuple[int, ...], settings: UpstreamSettings, float64: bool) -> _Built:
    tf, slim = up.tf, up.slim
    facenet = facenet_training(tf)
    from facenet_convert.third_party.facenet.compat import upstream_mode

    expand = expanded_batch_norm(tf) if float64 else contextlib.nullcontext()
    with upstream_mode(), tf.Graph().as_default() as graph, expand:
        global_step = tf.Variable(0, trainable=False, name="global_step")
        images = tf.placeholder(tf.float32, list(batch), name="input")
        labels = tf.placeholder(tf.int32, [batch[0]], name="label_batch")
        lr_in = tf.placeholder(tf.float32, name="learning_rate")
        prelogits, _ = up.model(model_def).inference(
            images, settings.keep_probability, phase_train=True,
            bottleneck_layer_size=embedding_size, weight_decay=settings.weight_decay)
        logits = slim.fully_connected(
            prelogits, num_classes, activation_fn=None,
            weights_initializer=slim.initializers.xavier_initializer(),
            weights_regularizer=slim.l2_regularizer(settings.weight_decay), scope="Logits",
            reuse=False)
        tf.nn.l2_normalize(prelogits, 1, 1e-10, name="embeddings")
        eps = 1e-4
        norm = tf.reduce_mean(tf.norm(tf.abs(prelogits) + eps, ord=settings.prelogits_norm_p,
                                      axis=1))
        tf.add_to_collection(tf.GraphKeys.REGULARIZATION_LOSSES,
                             norm * settings.prelogits_norm_loss_factor)
        if centers:
            loss, _ = facenet.center_loss(prelogits, labels, settings.center_loss_alfa,
                                          num_classes)
            tf.add_to_collection(tf.GraphKeys.REGULARIZATION_LOSSES,
                                 loss * settings.center_loss_factor)
        learning_rate = tf.train.exponential_decay(lr_in, global_step,
                                                   LEARNING_RATE_DECAY_STEPS, 1.0,
                                                   staircase=True)
        cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=labels, logits=logits, name="cross_entropy_per_example")
        cross_entropy_mean = tf.reduce_mean(cross_entropy, name="cross_entropy")
        tf.add_to_collection("losses", cross_entropy_mean)
        regularization = tf.get_collection(tf.GraphKeys.REGULARIZATION_LOSSES)
        total_loss = tf.add_n([cross_entropy_mean] + regularization, name="total_loss")
        train_op = facenet.train(total_loss, global_step, settings.optimizer, learning_rate,
                                 settings.moving_average_decay, tf.global_variables(),
                                 log_histograms=False)
        variables, assigns = {}, {}
        for index, var in enumerate(tf.global_variables()):
            name = var.op.name
            feed = tf.placeholder(var.dtype.base_dtype, var.shape, name=f"feed_{index}")
            assign = tf.assign(var, feed, name=f"load_{index}")
            variables[name] = var.op.name + ":0"
            assigns[name] = (feed.op.name + ":0", assign.op.name)
        built = _Built(graph, train_op.name, images.name, labels.name, lr_in.name, variables,
                       assigns)
    graph_def = built.graph.as_graph_def()
    if float64:
        _retype_float64(graph_def)
    averaging_first(graph_def)
    with upstream_mode(), tf.Graph().as_default() as pinned:
        tf.graph_util.import_graph_def(graph_def, name="")
    built.graph = pinned
    return built


def run_upstream_training(checkpoint: Any, batches: Sequence[tuple[np.ndarray, np.ndarray]],
                          settings: UpstreamSettings, *, float64: bool,
                          threads: int = 1) -> list[dict[str, np.ndarray]]:
    """Load ``checkpoint`` (an ``UpstreamCheckpoint``), run one step per ``(images NHWC,
    labels)`` batch, and return every variable after each step (float64 arrays, int64 step)."""
    from facenet_convert.third_party.facenet.compat import load_upstream, upstream_mode

    up = load_upstream()
    tf = up.tf
    first = np.asarray(batches[0][0])
    built = _build(up, model_def=checkpoint.model_def, embedding_size=checkpoint.embedding_size,
                   num_classes=checkpoint.num_classes, centers=checkpoint.centers,
                   batch=first.shape, settings=settings, float64=float64)
    reader = tf.train.load_checkpoint(str(checkpoint.prefix))
    stored = set(reader.get_variable_to_shape_map())
    if stored != set(built.variables):
        raise LookupError(f"graph and checkpoint differ: only in graph "
                          f"{sorted(set(built.variables) - stored)[:5]}, only in checkpoint "
                          f"{sorted(stored - set(built.variables))[:5]}")
    dtype = np.float64 if float64 else np.float32
    config = tf.ConfigProto(inter_op_parallelism_threads=threads,
                            intra_op_parallelism_threads=threads)
    # grappler would only rearrange arithmetic of a graph that runs three times
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    out: list[dict[str, np.ndarray]] = []
    with upstream_mode(), tf.Session(graph=built.graph, config=config) as sess:
        feeds, ops = {}, []
        for name, (feed, assign) in built.assigns.items():
            value = reader.get_tensor(name)
            if np.asarray(value).dtype.kind == "f":
                value = np.asarray(value).astype(dtype)
            feeds[feed] = value
            ops.append(assign)
        sess.run(ops, feeds)
        for images, labels in batches:
            sess.run(built.train, {built.images: np.asarray(images, dtype),
                                   built.labels: np.asarray(labels, np.int32),
                                   built.learning_rate: dtype(np.float32(settings.learning_rate))})
            values = sess.run(built.variables)
            out.append({k: np.asarray(v, np.float64) if np.asarray(v).dtype.kind == "f"
                        else np.asarray(v) for k, v in values.items()})
    return out


@contextlib.contextmanager
def upstream_training_steps(checkpoint: Any, batch_shape: tuple[int, ...],
                            settings: UpstreamSettings, *, threads: int = 1,
                            ) -> Iterator[Any]:
    """The same float32 graph and session as :func:`run_upstream_training`, loaded from
    ``checkpoint``; yields ``step(images NHWC, labels)``, which runs one ``train_op`` and
    fetches nothing (for benchmarks: ``scripts/bench_train.py``)."""
    from facenet_convert.third_party.facenet.compat import load_upstream, upstream_mode

    up = load_upstream()
    tf = up.tf
    built = _build(up, model_def=checkpoint.model_def, embedding_size=checkpoint.embedding_size,
                   num_classes=checkpoint.num_classes, centers=checkpoint.centers,
                   batch=tuple(batch_shape), settings=settings, float64=False)
    reader = tf.train.load_checkpoint(str(checkpoint.prefix))
    config = tf.ConfigProto(inter_op_parallelism_threads=threads,
                            intra_op_parallelism_threads=threads)
    with upstream_mode(), tf.Session(graph=built.graph, config=config) as sess:
        sess.run([assign for _, assign in built.assigns.values()],
                 {feed: reader.get_tensor(name) for name, (feed, _) in built.assigns.items()})
        rate = np.float32(settings.learning_rate)

        def step(images: np.ndarray, labels: np.ndarray) -> None:
            sess.run(built.train, {built.images: np.asarray(images, np.float32),
                                   built.labels: np.asarray(labels, np.int32),
                                   built.learning_rate: rate})

        yield step
