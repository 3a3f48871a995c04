"""Build checkpoints with the real upstream facenet graph, laid out like a release folder.

The graph is davidsandberg's ``train_softmax.py`` graph (``<model_def>.inference`` for any
upstream ``--model_def`` an architecture record names, V1 by default; the ``Logits`` layer,
``embeddings``, center loss, ``facenet.train``'s optimizer and EMA) built by the pinned upstream
code through ``third_party.facenet.compat``. Every variable is then overwritten
with seeded values of realistic scale (a random init plus no training would leave BN stats at
0/1 and EMA shadows equal to the raw weights, which hides mapping mistakes), and EMA shadows
differ from the raw weights so the choice between them is testable.

Builds are cached: ``build.json`` records the parameters; an equal complete build is reused
without touching TensorFlow, and builds happen in a sibling temp folder renamed into place.

``python -m third_party.facenet.testing.build DIR [options]`` builds one from the command line.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import sys
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facenet_convert.converter.core.errors import ConverterError
from facenet_convert.converter.registry import architectures
from facenet_convert.third_party.facenet.graphs import (
    IMAGE_SIZE,
    InferenceGraph,
    build_inference,
)

BUILDER_VERSION = 3
OPTIMIZERS = ("ADAGRAD", "ADADELTA", "ADAM", "RMSPROP", "MOM")
SAVED_CHOICES = ("all", "trainable")
MOVING_AVERAGE_DECAY = 0.9999
CENTER_LOSS_ALFA = 0.95
BUILD_JSON = "build.json"
_NAME = re.compile(r"^[\w\-]+$")
#: upstream's --model_def when none is given (not part of V1's cache parameters)
DEFAULT_MODEL_DEF = "inception_resnet_v1"
# Node name prefixes upstream freeze_graph.py turns into constants, after the network's scope.
FREEZE_WHITELIST_EXTRA = ("embeddings", "phase_train", "Bottleneck", "Logits")


class BuildError(ConverterError):
    """A reference checkpoint cannot be built with the requested parameters or in that folder."""


@dataclass(frozen=True)
class UpstreamCheckpoint:
    """A built release-like folder and the parameters it was built with."""

    directory: Path          # a folder laid out like a release folder
    prefix: Path             # directory / f"model-{name}.ckpt-{step}"
    meta: Path               # directory / f"model-{name}.meta"
    frozen_pb: Path | None   # directory / f"{name}.pb" when freeze=True
    name: str
    embedding_size: int
    num_classes: int | None  # None = no Logits layer
    ema: bool
    optimizer: str | None    # "ADAM" | "RMSPROP" | "MOM" | "ADAGRAD" | "ADADELTA" | None
    centers: bool
    step: int
    seed: int
    saved: str = "all"       # "all": every global variable; "trainable": upstream's own Saver
    state_file: bool = False
    model_def: str = DEFAULT_MODEL_DEF  # upstream's --model_def (an architecture record's)

    @property
    def data_file(self) -> Path:
        """The single data shard TF wrote next to the index."""
        return self.prefix.with_name(self.prefix.name + ".data-00000-of-00001")

    @property
    def index_file(self) -> Path:
        return self.prefix.with_name(self.prefix.name + ".index")


def _make_optimizer(tf: Any, name: str, learning_rate: Any) -> Any:
    """The optimizers and hyper-parameters of upstream facenet.train."""
    train = tf.train
    if name == "ADAGRAD":
        return train.AdagradOptimizer(learning_rate)
    if name == "ADADELTA":
        return train.AdadeltaOptimizer(learning_rate, rho=0.9, epsilon=1e-6)
    if name == "ADAM":
        return train.AdamOptimizer(learning_rate, beta1=0.9, beta2=0.999, epsilon=0.1)
    if name == "RMSPROP":
        return train.RMSPropOptimizer(learning_rate, decay=0.9, momentum=0.9, epsilon=1.0)
    if name == "MOM":
        return train.MomentumOptimizer(learning_rate, 0.9, use_nesterov=True)
    raise BuildError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")


@dataclass
class _TrainingGraph:
    model: InferenceGraph
    global_step: Any
    optimizer: Any | None
    grads_and_vars: list[tuple[Any, Any]]
    ema: Any | None
    saver: Any


def _build_training_graph(up: Any, params: dict[str, Any]) -> _TrainingGraph:
    """train_softmax.py's graph minus its input queues: losses, optimizer slots, EMA, saver."""
    tf = up.tf
    num_classes = params["num_classes"]
    global_step = tf.Variable(0, trainable=False, name="global_step")
    model = build_inference(up, embedding_size=params["embedding_size"],
                            num_classes=num_classes, model_def=_model_def(params))
    label_batch = tf.placeholder(tf.int32, [None], name="label_batch")
    learning_rate_placeholder = tf.placeholder(tf.float32, name="learning_rate")

    prelogits_norm = tf.reduce_mean(tf.norm(tf.abs(model.prelogits) + 1e-4, ord=1.0, axis=1))
    tf.add_to_collection(tf.GraphKeys.REGULARIZATION_LOSSES, prelogits_norm * 5e-4)
    if params["centers"]:
        # facenet.center_loss: a non-trainable `centers` variable updated by scatter_sub.
        centers = tf.get_variable("centers", [num_classes, params["embedding_size"]],
                                  dtype=tf.float32, initializer=tf.constant_initializer(0),
                                  trainable=False)
        labels = tf.reshape(label_batch, [-1])
        centers_batch = tf.gather(centers, labels)
        diff = (1 - CENTER_LOSS_ALFA) * (centers_batch - model.prelogits)
        centers_update = tf.scatter_sub(centers, labels, diff)
        with tf.control_dependencies([centers_update]):
            center_loss = tf.reduce_mean(tf.square(model.prelogits - centers_batch))
        tf.add_to_collection(tf.GraphKeys.REGULARIZATION_LOSSES, center_loss * 0.01)
    learning_rate = tf.train.exponential_decay(learning_rate_placeholder, global_step,
                                               100 * 1000, 1.0, staircase=True)
    terms = list(tf.get_collection(tf.GraphKeys.REGULARIZATION_LOSSES))
    if model.logits is not None:
        cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=label_batch, logits=model.logits, name="cross_entropy_per_example")
        cross_entropy_mean = tf.reduce_mean(cross_entropy, name="cross_entropy")
        tf.add_to_collection("losses", cross_entropy_mean)
        terms.insert(0, cross_entropy_mean)
    total_loss = tf.add_n(terms, name="total_loss")

    # facenet.train: loss averages, optimizer over all global variables, EMA of trainables.
    update_vars = tf.global_variables()
    optimizer = None
    grads_and_vars: list[tuple[Any, Any]] = []
    ema = None
    train_deps = []
    if params["optimizer"] is not None:
        loss_averages = tf.train.ExponentialMovingAverage(0.9, name="avg")
        loss_averages_op = loss_averages.apply(tf.get_collection("losses") + [total_loss])
        with tf.control_dependencies([loss_averages_op]):
            optimizer = _make_optimizer(tf, params["optimizer"], learning_rate)
            grads_and_vars = optimizer.compute_gradients(total_loss, update_vars)
        train_deps.append(optimizer.apply_gradients(grads_and_vars, global_step=global_step))
    if params["ema"]:
        ema = tf.train.ExponentialMovingAverage(MOVING_AVERAGE_DECAY, global_step)
        train_deps.append(ema.apply(tf.trainable_variables()))
    with tf.control_dependencies(train_deps):
        tf.no_op(name="train")
    saved = tf.global_variables() if params["saved"] == "all" else tf.trainable_variables()
    saver = tf.train.Saver(saved, max_to_keep=3)
    return _TrainingGraph(model, global_step, optimizer,
                          [(g, v) for g, v in grads_and_vars if g is not None], ema, saver)


# ---------------------------------------------------------------------------- values


def _rng(seed: int, name: str, purpose: str) -> np.random.Generator:
    """A generator that depends only on the seed and the variable, not on creation order."""
    return np.random.default_rng([seed, zlib.crc32(f"{purpose}:{name}".encode())])


def _model_value(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Trained-looking values: He-scaled weights (activations keep their scale through the
    stem and the 21 residual blocks), BN statistics away from their 0/1 init."""
    leaf = name.rsplit("/", 1)[-1]
    if leaf == "weights":
        fan_in = int(np.prod(shape[:-1]))
        value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
    elif leaf == "moving_variance":
        value = rng.uniform(0.5, 1.5, shape)
    elif leaf in ("moving_mean", "beta"):
        value = rng.normal(0.0, 0.1, shape)
    elif leaf == "biases":
        value = rng.normal(0.0, 0.05, shape)
    else:
        value = rng.normal(0.0, 0.1, shape)
    return value.astype(np.float32)


def _shadow_value(raw: np.ndarray, name: str, rng: np.random.Generator) -> np.ndarray:
    """An EMA shadow close to but distinct from the raw value (positive where raw must be)."""
    if name.rsplit("/", 1)[-1] == "moving_variance":
        return (raw * rng.uniform(0.9, 1.1, raw.shape)).astype(np.float32)
    scale = 0.05 * float(np.std(raw)) + 1e-3
    return (raw + rng.normal(0.0, scale, raw.shape)).astype(np.float32)


_POSITIVE_SLOTS = ("v", "rms", "accumulator", "accum", "accum_update")


def _slot_value(slot: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if slot in _POSITIVE_SLOTS:
        return rng.uniform(1e-6, 1e-3, shape).astype(np.float32)
    return rng.normal(0.0, 1e-3, shape).astype(np.float32)


def _other_values(tf: Any, graph: _TrainingGraph, params: dict[str, Any],
                  skip: set[str]) -> dict[str, np.ndarray]:
    """Optimizer slots, Adam's beta powers, global_step, centers, loss averages."""
    seed, step = params["seed"], params["step"]
    values: dict[str, np.ndarray] = {}
    if graph.optimizer is not None:
        for slot in graph.optimizer.get_slot_names():
            for _, var in graph.grads_and_vars:
                slot_var = graph.optimizer.get_slot(var, slot)
                if slot_var is not None:
                    values[slot_var.op.name] = _slot_value(
                        slot, tuple(slot_var.shape.as_list()), _rng(seed, slot_var.op.name, slot))
    for var in tf.global_variables():
        name = var.op.name
        if name in values or name in skip:
            continue
        shape = tuple(var.shape.as_list())
        if var is graph.global_step:
            values[name] = np.asarray(step, dtype=var.dtype.base_dtype.as_numpy_dtype)
        elif name == "beta1_power":
            values[name] = np.full(shape, 0.9 ** step, np.float32)
        elif name == "beta2_power":
            values[name] = np.full(shape, 0.999 ** step, np.float32)
        elif name == "centers":
            values[name] = _rng(seed, name, "centers").normal(0.0, 0.1, shape).astype(np.float32)
        else:  # loss averages and anything else scalar-ish
            values[name] = np.abs(_rng(seed, name, "other").normal(1.0, 0.5, shape)).astype(
                var.dtype.base_dtype.as_numpy_dtype)
    return values


def _load(sess: Any, variables: dict[str, Any], values: dict[str, np.ndarray]) -> None:
    """Set many variables in one run (each Variable.load would prune the whole graph again)."""
    names = [name for name in variables if name in values]
    sess.run([variables[name].initializer for name in names],
             {variables[name].initializer.inputs[1]: values[name] for name in names})


def _calibrate_batch_norm(raw: dict[str, np.ndarray], params: dict[str, Any]
                          ) -> dict[str, np.ndarray]:
    """Moving statistics near the real batch statistics of N(0, 1) images, as training leaves
    them. Without this, ReLU offsets dominate and all inputs give nearly the same embedding.

    A second graph with ``phase_train=True`` (a Python bool: ops in a v1 cond branch cannot be
    fetched) normalizes every layer with its own batch statistics, which the fused BatchNorm
    ops also output. Values are rounded to float16 precision so that thread-order differences
    in TF's reductions do not change the checkpoint.
    """
    from facenet_convert.third_party.facenet.compat import load_upstream, upstream_mode

    up = load_upstream()
    tf, seed = up.tf, params["seed"]
    with upstream_mode(), tf.Graph().as_default() as graph_obj:
        graph_obj.seed = seed  # the dropout before Bottleneck is active in training mode
        model = build_inference(up, embedding_size=params["embedding_size"],
                                num_classes=params["num_classes"], phase_train=True,
                                model_def=_model_def(params))
        by_scope: dict[str, Any] = {}
        for op in graph_obj.get_operations():
            if (op.type.startswith("FusedBatchNorm") and "/BatchNorm/" in op.name
                    and not op.type.startswith("FusedBatchNormGrad")):
                scope = op.name[:op.name.index("/BatchNorm/")] + "/BatchNorm"
                if scope in by_scope:
                    raise BuildError(f"two batch norms under {scope}")
                by_scope[scope] = op
        scopes = sorted(by_scope)
        rng = np.random.default_rng([seed, zlib.crc32(b"calibration")])
        images = rng.standard_normal((8, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
        with tf.Session(graph=graph_obj) as sess:
            _load(sess, {v.op.name: v for v in tf.global_variables()}, raw)
            fetched = sess.run([(by_scope[s].outputs[1], by_scope[s].outputs[2])
                                for s in scopes], {model.images: images})
    values: dict[str, np.ndarray] = {}
    for scope, (mean, variance) in zip(scopes, fetched, strict=True):
        noise = _rng(seed, scope, "calibration")
        std = np.sqrt(np.maximum(variance, 1e-6))
        moving_mean = mean + noise.normal(0.0, 0.05, mean.shape) * std
        moving_variance = np.maximum(variance, 1e-4) * noise.uniform(0.8, 1.25, variance.shape)
        values[f"{scope}/moving_mean"] = moving_mean.astype(np.float16).astype(np.float32)
        values[f"{scope}/moving_variance"] = moving_variance.astype(np.float16).astype(
            np.float32)
    return values


def _model_values(params: dict[str, Any], shapes: dict[str, tuple[int, ...]]
                  ) -> dict[str, np.ndarray]:
    """Raw values of the trainable variables (weights, biases, BN beta and moving stats)."""
    raw = {name: _model_value(name, shape, _rng(params["seed"], name, "raw"))
           for name, shape in shapes.items()}
    raw.update(_calibrate_batch_norm(raw, params))
    return raw


def _assign_values(tf: Any, sess: Any, graph: _TrainingGraph, params: dict[str, Any]) -> None:
    """Initialize every global variable with deterministic values for ``params['seed']``."""
    seed = params["seed"]
    variables = {v.op.name: v for v in tf.global_variables()}
    raw = _model_values(params, {v.op.name: tuple(v.shape.as_list())
                                 for v in tf.trainable_variables()})
    shadows = {}
    if graph.ema is not None:
        for var in tf.trainable_variables():
            name = var.op.name
            shadows[graph.ema.average(var).op.name] = _shadow_value(
                raw[name], name, _rng(seed, name, "ema"))
    others = _other_values(tf, graph, params, set(raw) | set(shadows))
    _load(sess, variables, {**others, **raw, **shadows})
    missing = sorted(set(variables) - set(others) - set(raw) - set(shadows))
    if missing:
        raise BuildError(f"no value for {', '.join(missing[:5])}")


# ---------------------------------------------------------------------------- files


def _files(directory: Path, params: dict[str, Any]) -> dict[str, Path]:
    name, step = params["name"], params["step"]
    prefix = directory / f"model-{name}.ckpt-{step}"
    files = {
        "index": prefix.with_name(prefix.name + ".index"),
        "data": prefix.with_name(prefix.name + ".data-00000-of-00001"),
        "meta": directory / f"model-{name}.meta",
    }
    if params["freeze"]:
        files["frozen_pb"] = directory / f"{name}.pb"
    if params["state_file"]:
        files["state"] = directory / "checkpoint"
    return files


def _result(directory: Path, params: dict[str, Any]) -> UpstreamCheckpoint:
    files = _files(directory, params)
    return UpstreamCheckpoint(
        directory=directory, prefix=directory / f"model-{params['name']}.ckpt-{params['step']}",
        meta=files["meta"], frozen_pb=files.get("frozen_pb"), name=params["name"],
        embedding_size=params["embedding_size"], num_classes=params["num_classes"],
        ema=params["ema"], optimizer=params["optimizer"], centers=params["centers"],
        step=params["step"], seed=params["seed"], saved=params["saved"],
        state_file=params["state_file"], model_def=_model_def(params))


def _read_build_json(directory: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((directory / BUILD_JSON).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _complete(directory: Path, params: dict[str, Any]) -> bool:
    """An earlier build with these exact parameters whose files are all there, sizes intact."""
    record = _read_build_json(directory)
    if record is None or record.get("builder_version") != BUILDER_VERSION:
        return False
    if record.get("params") != params:
        return False
    sizes = record.get("sizes", {})
    for key, path in _files(directory, params).items():
        try:
            if path.stat().st_size != sizes.get(key):
                return False
        except OSError:
            return False
    return True


def _write_build(tmp: Path, final: Path, params: dict[str, Any]) -> None:
    """Build, save and (optionally) freeze into ``tmp``; ``final`` is where it will live."""
    from facenet_convert.third_party.facenet.compat import load_upstream, upstream_mode

    up = load_upstream()
    tf = up.tf
    files = _files(tmp, params)
    prefix = tmp / f"model-{params['name']}.ckpt"
    with upstream_mode(), tf.Graph().as_default() as graph_obj:
        graph_obj.seed = params["seed"]
        graph = _build_training_graph(up, params)
        with tf.Session(graph=graph_obj) as sess:
            _assign_values(tf, sess, graph, params)  # initializes every variable
            # train_softmax.save_variables_and_metagraph, minus the state file release
            # folders do not have.
            graph.saver.save(sess, str(prefix), global_step=params["step"],
                             write_meta_graph=False, write_state=False)
            graph.saver.export_meta_graph(str(files["meta"]))
    if params["state_file"]:
        # What a training machine leaves: the absolute path TF was given.
        tf.train.update_checkpoint_state(
            str(tmp), str(final / f"model-{params['name']}.ckpt-{params['step']}"))
    if params["freeze"]:
        _freeze(up, files["meta"], tmp / f"model-{params['name']}.ckpt-{params['step']}",
                files["frozen_pb"], _upstream_scope(_model_def(params)))


def _model_def(params: dict[str, Any]) -> str:
    return params.get("model_def", DEFAULT_MODEL_DEF)


def _upstream_scope(model_def: str) -> str:
    """The top variable scope of the record whose upstream ``--model_def`` this is."""
    scopes = {record.upstream_model_def: record.upstream_scope for record in architectures()
              if record.upstream_model_def and record.upstream_scope}
    if model_def not in scopes:
        raise BuildError(f"model_def {model_def!r}: no architecture record builds it; "
                         f"expected one of {', '.join(sorted(scopes))}")
    return scopes[model_def]


def _freeze(up: Any, meta: Path, prefix: Path, output: Path, scope: str) -> None:
    """upstream freeze_graph.py: import the metagraph, restore, fix BN ref ops, freeze.

    Like freeze_graph.py, only nodes under the network's ``scope`` and the head's names
    (:data:`FREEZE_WHITELIST_EXTRA`) become constants.
    """
    from facenet_convert.third_party.facenet.compat import upstream_mode

    tf = up.tf
    with (upstream_mode(), tf.Graph().as_default() as graph_obj,
          tf.Session(graph=graph_obj) as sess):
        saver = tf.train.import_meta_graph(str(meta), clear_devices=True)
        sess.run(tf.global_variables_initializer())
        sess.run(tf.local_variables_initializer())
        saver.restore(sess, str(prefix))
        graph_def = graph_obj.as_graph_def()
        for node in graph_def.node:
            if node.op == "RefSwitch":
                node.op = "Switch"
                for index, name in enumerate(node.input):
                    if "moving_" in name:
                        node.input[index] = name + "/read"
            elif node.op in ("AssignSub", "AssignAdd"):
                node.op = "Sub" if node.op == "AssignSub" else "Add"
                if "use_locking" in node.attr:
                    del node.attr["use_locking"]
        prefixes = (scope, *FREEZE_WHITELIST_EXTRA)
        whitelist = [node.name for node in graph_def.node if node.name.startswith(prefixes)]
        frozen = tf.graph_util.convert_variables_to_constants(
            sess, graph_def, ["embeddings"], variable_names_whitelist=whitelist)
    output.write_bytes(frozen.SerializeToString())


def build_checkpoint(directory: str | os.PathLike[str], *, name: str = "20990101-000000",
                     embedding_size: int = 512, num_classes: int | None = None,
                     ema: bool = True, optimizer: str | None = "ADAM", centers: bool = False,
                     freeze: bool = False, step: int = 1, seed: int = 0, saved: str = "all",
                     state_file: bool = False,
                     model_def: str = DEFAULT_MODEL_DEF) -> UpstreamCheckpoint:
    """Build (or reuse) an upstream-graph checkpoint folder at ``directory``.

    ``saved="all"`` stores every global variable (EMA shadows, optimizer slots, centers,
    global_step: what a full Saver writes); ``saved="trainable"`` is upstream
    train_softmax.py's own ``Saver(tf.trainable_variables())``. ``model_def`` is upstream's
    ``--model_def`` (``inception_resnet_v2``, ``squeezenet``...).
    """
    _upstream_scope(model_def)  # refuse a model_def no record describes before any work
    if not _NAME.match(name):
        raise BuildError(f"name {name!r} must match {_NAME.pattern} (it is part of file names)")
    if embedding_size < 1 or (num_classes is not None and num_classes < 1) or step < 0:
        raise BuildError(f"embedding_size {embedding_size}, num_classes {num_classes}, step "
                         f"{step}: expected positive sizes and a non-negative step")
    if optimizer is not None and optimizer not in OPTIMIZERS:
        raise BuildError(f"optimizer {optimizer!r}: expected one of {', '.join(OPTIMIZERS)} "
                         "or None")
    if centers and not num_classes:
        raise BuildError("centers=True needs num_classes (center loss has one row per class)")
    if saved not in SAVED_CHOICES:
        raise BuildError(f"saved={saved!r}: expected one of {', '.join(SAVED_CHOICES)}")
    params = {"name": name, "embedding_size": int(embedding_size),
              "num_classes": None if num_classes is None else int(num_classes),
              "ema": bool(ema), "optimizer": optimizer, "centers": bool(centers),
              "freeze": bool(freeze), "step": int(step), "seed": int(seed), "saved": saved,
              "state_file": bool(state_file)}
    if model_def != DEFAULT_MODEL_DEF:  # V1's parameters (and so its cached builds) unchanged
        params["model_def"] = model_def
    final = Path(directory).absolute()
    if _complete(final, params):
        return _result(final, params)
    final.parent.mkdir(parents=True, exist_ok=True)
    # parallel test workers (pytest-xdist) ask for the same fixture: one builds, the others
    # wait for it and then find it complete
    with open(_lock_path(final), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _complete(final, params):
            return _result(final, params)
        return _build_locked(final, params)


def _lock_path(final: Path) -> Path:
    """A lock file per build folder, kept out of the folder's parent (which holds builds and
    nothing else)."""
    import hashlib

    folder = Path(tempfile.gettempdir()) / f"facenet-convert-build-locks-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder / (hashlib.sha256(os.fsencode(final)).hexdigest()[:32] + ".lock")


def _build_locked(final: Path, params: dict[str, Any]) -> UpstreamCheckpoint:
    if final.exists() and (not final.is_dir() or (
            any(final.iterdir()) and _read_build_json(final) is None)):
        raise BuildError("exists and is not an earlier build (no build.json); refusing to "
                         "replace it, pass an empty or new folder", path=final)
    _remove_stale_temps(final)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.building-"))
    try:
        _write_build(tmp, final, params)
        record = {"builder_version": BUILDER_VERSION, "params": params,
                  "upstream": "facenet==1.0.5",
                  "sizes": {key: path.stat().st_size for key, path in _files(tmp, params).items()}}
        (tmp / BUILD_JSON).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        _move_into_place(tmp, final, params)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return _result(final, params)


def _remove_stale_temps(final: Path, max_age_s: float = 3600.0) -> None:
    """Temp folders of builds killed before their cleanup ran (a build takes about a minute)."""
    now = time.time()
    for pattern in (f".{final.name}.building-*", f".{final.name}.old-*"):
        for stale in final.parent.glob(pattern):
            try:
                if stale.is_dir() and now - stale.stat().st_mtime > max_age_s:
                    shutil.rmtree(stale, ignore_errors=True)
            except OSError:
                continue


def _move_into_place(tmp: Path, final: Path, params: dict[str, Any]) -> None:
    """Rename the finished build over ``final``; a concurrent equal build may have won."""
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.old-"))
        os.rmdir(old)
        try:
            os.rename(final, old)
        except FileNotFoundError:
            old = None
    try:
        os.rename(tmp, final)
    except OSError:
        if not _complete(final, params):
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------- CLI


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m facenet_convert.third_party.facenet.testing.build",
        description="Build a release-like folder with the upstream facenet graph (cached).")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--name", default="20990101-000000")
    parser.add_argument("--embedding-size", type=int, default=512)
    parser.add_argument("--num-classes", type=int, default=None,
                        help="add a Logits layer with this many classes (release: 8631)")
    parser.add_argument("--no-ema", dest="ema", action="store_false")
    parser.add_argument("--optimizer", default="ADAM", choices=[*OPTIMIZERS, "NONE"])
    parser.add_argument("--centers", action="store_true")
    parser.add_argument("--freeze", action="store_true")
    parser.add_argument("--step", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--saved", default="all", choices=SAVED_CHOICES)
    parser.add_argument("--state-file", action="store_true")
    parser.add_argument("--model-def", default=DEFAULT_MODEL_DEF,
                        help="upstream --model_def (inception_resnet_v2, squeezenet, ...)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    start = time.perf_counter()
    try:
        built = build_checkpoint(
            args.directory, name=args.name, embedding_size=args.embedding_size,
            num_classes=args.num_classes, ema=args.ema,
            optimizer=None if args.optimizer == "NONE" else args.optimizer,
            centers=args.centers, freeze=args.freeze, step=args.step, seed=args.seed,
            saved=args.saved, state_file=args.state_file, model_def=args.model_def)
    except ConverterError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    elapsed = time.perf_counter() - start
    summary = {key: (str(value) if isinstance(value, Path) else value)
               for key, value in asdict(built).items()}
    summary["data_bytes"] = built.data_file.stat().st_size
    summary["seconds"] = round(elapsed, 2)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
