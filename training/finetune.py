"""Fine-tuning over an aligned class-folder dataset: what ``facenet-convert finetune`` runs.

The dataset is upstream's (``facenet.get_dataset``): one sub-folder per class, classes sorted
by name, images sorted within a class (upstream takes ``os.listdir`` order; sorting makes runs
repeatable). A deterministic held-out split (upstream's ``split_dataset`` ``SPLIT_IMAGES``
rule, the shuffle seeded by ``seed`` and the class) gives verification figures before and
after training (``converter/evaluation``'s ``evaluate`` over every held-out pair).

Every step is :class:`~facenet_convert.training.step.Trainer`'s (upstream's order, TF1's
optimizers). An epoch is one pass over the training images in an order drawn from
``(seed, epoch)`` alone, and dropout is seeded the same way, so a run resumed from the
checkpoint of epoch ``k`` continues exactly as if it had never stopped.

After every epoch ``OUT_DIR/checkpoint-<epoch>.safetensors`` is committed atomically
(``converter/core/atomic.py``, a finished part): the model, centers, optimizer slots, Adam's
beta powers, EMA shadows and loss averages as tensors, the rest (epoch, global step, what the
run was asked, the figures before training) as JSON in the safetensors metadata. Only the
newest is kept. ``resume=True`` continues from it. A NaN or infinite loss stops before the
step moves anything and names the step, the batch and the checkpoint that is kept.

The result, ``OUT_DIR/model.safetensors`` (or ``model.pt``) and ``OUT_DIR/finetune.json``, is
a state dict like ``convert`` writes (its metadata names the source and its sha256), so
``embed``, ``export`` and ``evaluate`` take it as any converted file.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from facenet_convert.converter.building import choose_preprocessing
from facenet_convert.converter.core.atomic import (
    atomic_output,
    check_output_path,
    staged_outputs,
)
from facenet_convert.converter.core.checks import require_choice
from facenet_convert.converter.core.hashing import sha256_file
from facenet_convert.converter.core.inputs import input_inside, regular_file_problem
from facenet_convert.converter.core.version import __version__
from facenet_convert.converter.registry import get_architecture, match_state
from facenet_convert.converter.writers import HashingWriter, write_json, write_state
from facenet_convert.models.preprocessing import load_image, resize_uint8, standardization
from facenet_convert.training.averages import (
    LOSS_AVERAGE_DECAY,
    MOVING_AVERAGE_DECAY,
    ExponentialMovingAverage,
)
from facenet_convert.training.losses import select_triplets
from facenet_convert.training.optimizers import CLASSES, TrainingError, make_optimizer
from facenet_convert.training.resume import BETA_POWERS, ResumeError, resume_from
from facenet_convert.training.schedule import Schedule, read_schedule
from facenet_convert.training.step import LossSettings, Trainer, trainable_parameters

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
WEIGHTS_SUFFIXES = (".pt", ".pth", ".safetensors")
LOSSES = ("softmax", "triplet")
#: epochs 1 to 999,999,999: the name of anything larger is no name this module wrote
CHECKPOINT = re.compile(r"checkpoint-(?P<epoch>[1-9]\d{0,8})\.safetensors")
LOOKS_LIKE_CHECKPOINT = re.compile(r"checkpoint-.*\.safetensors", re.DOTALL)
MODEL_FILES = {"safetensors": "model.safetensors", "pt": "model.pt"}
REPORT_FILE = "finetune.json"
STATE_KEY = "facenet_convert_finetune"
DIGEST_KEY = "tensors_sha256"
#: ``train_softmax.py``'s ``--optimizer`` default
DEFAULT_OPTIMIZER = "ADAGRAD"
EMBED_BATCH = 64


class FinetuneError(TrainingError):
    """A fine-tune cannot start or go on (dataset, checkpoint, source, NaN loss)."""


@dataclass(frozen=True)
class ImageClass:
    """One class folder: its name and its images (sorted)."""

    name: str
    paths: tuple[Path, ...]


@dataclass(frozen=True)
class FinetuneSettings:
    """What a run is asked (``train_softmax.py`` / ``train_tripletloss.py`` defaults)."""

    loss: str = "softmax"
    epochs: int = 10
    batch_size: int = 90
    optimizer: str | None = None         # None: the checkpoint's, else ADAGRAD
    learning_rate: float = 0.1
    schedule: str | None = None          # upstream's learning-rate file (wins over the rate)
    image_size: int = 160
    seed: int = 666
    held_out: float = 0.2
    losses: LossSettings = field(default_factory=LossSettings)
    moving_average_decay: float = MOVING_AVERAGE_DECAY
    people_per_batch: int = 45
    images_per_person: int = 40
    random_crop: bool = False
    random_flip: bool = False
    preprocessing: str | None = None
    format: str = "safetensors"

    def trajectory(self) -> dict[str, Any]:
        """Everything that decides the weights of a given epoch (a resume must match it)."""
        out = asdict(self)
        for key in ("epochs", "format", "schedule"):
            out.pop(key)
        return out


@dataclass
class FinetuneResult:
    """What a run wrote and measured."""

    model_path: Path
    report_path: Path
    sha256: str
    global_step: int
    epochs_done: int
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    notes: list[str]
    report: dict[str, Any]


# --------------------------------------------------------------------------------- dataset


def get_dataset(data_dir: str | os.PathLike[str],
                on_skip: Callable[[Path, str], None] | None = None) -> list[ImageClass]:
    """``facenet.get_dataset``: sorted class sub-folders and their image files (sorted).
    An image name that is no regular file (a FIFO, a device, a folder, a dangling link) is
    left out and passed to ``on_skip(path, why)``."""
    root = Path(data_dir)
    if not root.is_dir():
        raise FinetuneError("not a folder; give a folder of class sub-folders of aligned face "
                            "images", path=root)
    classes = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        paths = []
        for image in sorted(os.scandir(entry.path), key=lambda e: e.name):
            if image.name.startswith(".") or not image.name.lower().endswith(IMAGE_SUFFIXES):
                continue
            problem = regular_file_problem(image.path)
            if problem is None:
                paths.append(Path(image.path))
            elif on_skip is not None:
                on_skip(Path(image.path), problem)
        if paths:
            classes.append(ImageClass(entry.name, tuple(paths)))
    return classes


@dataclass
class Split:
    """Training and held-out ``(path, label)`` lists."""

    classes: list[str]
    train: list[tuple[Path, int]]
    held_out: list[tuple[Path, int]]


def split_dataset(dataset: Sequence[ImageClass], ratio: float, seed: int) -> Split:
    """Upstream's ``SPLIT_IMAGES``: per class, ``floor(n * (1 - ratio))`` images train, at
    least one is held out when ``ratio > 0``; a class of one image only trains. The shuffle is
    drawn from ``(seed, class index)``."""
    train: list[tuple[Path, int]] = []
    held: list[tuple[Path, int]] = []
    for label, image_class in enumerate(dataset):
        paths = list(image_class.paths)
        count = len(paths)
        if ratio <= 0 or count < 2:
            train += [(p, label) for p in paths]
            continue
        order = np.random.default_rng([seed, label]).permutation(count)
        split = min(math.floor(count * (1 - ratio)), count - 1)
        split = max(split, 1)
        train += [(paths[i], label) for i in sorted(order[:split])]
        held += [(paths[i], label) for i in sorted(order[split:])]
    return Split([c.name for c in dataset], train, held)


def check_dataset(dataset: Sequence[ImageClass], split: Split, settings: FinetuneSettings,
                  where: str | os.PathLike[str]) -> None:
    """One line for a dataset the loss cannot train on."""
    if not dataset:
        raise FinetuneError("no class sub-folders with images (.png, .jpg...); expected "
                            "DATA_DIR/<class>/<image>, as align writes them", path=where)
    if len(dataset) < 2:
        raise FinetuneError(f"1 class ({dataset[0].name}); {settings.loss} loss needs at least "
                            "2 classes (one sub-folder per person)", path=where)
    if settings.batch_size < 2:
        raise FinetuneError("--batch-size must be at least 2 (BatchNorm trains on batch "
                            "statistics)")
    if settings.loss == "triplet":
        if settings.batch_size % 3:
            raise FinetuneError(f"--batch-size {settings.batch_size}: a triplet batch holds "
                                "whole triplets; give a multiple of 3")
        if len(split.train) < settings.batch_size:
            raise FinetuneError(f"{len(split.train)} training images, fewer than one triplet "
                                f"batch ({settings.batch_size}); lower --batch-size or add "
                                "images", path=where)
        if not any(len(c.paths) >= 2 for c in dataset):
            raise FinetuneError("no class has 2 images; a triplet needs an anchor and a "
                                "positive of one person", path=where)
    elif len(split.train) < 2:
        raise FinetuneError(f"{len(split.train)} training image; need at least 2", path=where)


# ---------------------------------------------------------------------------------- images


def load_batch(paths: Sequence[Path], settings: FinetuneSettings, standardize: str,
               rng: np.random.Generator | None = None) -> Tensor:
    """Standardized ``(N, 3, size, size)`` float32 images; random crop/flip only with
    ``rng`` and the settings asking for them (upstream's ``--random_crop``/``--random_flip``)."""
    size = settings.image_size
    norm = standardization(standardize)
    out = []
    for path in paths:
        image = load_image(path)
        if (rng is not None and settings.random_crop and image.shape[0] >= size
                and image.shape[1] >= size):
            top = int(rng.integers(image.shape[0] - size + 1))
            left = int(rng.integers(image.shape[1] - size + 1))
            image = image[top:top + size, left:left + size]
        else:
            image = resize_uint8(image, size)
        if rng is not None and settings.random_flip and rng.random() < 0.5:
            image = image[:, ::-1]
        out.append(norm(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))))
    return torch.stack(out)


@torch.no_grad()
def embed(model: nn.Module, paths: Sequence[Path], settings: FinetuneSettings,
          standardize: str) -> np.ndarray:
    """L2-normalized embeddings (eval mode, the model's own weights)."""
    was_training = model.training
    model.eval()
    rows = []
    try:
        for start in range(0, len(paths), EMBED_BATCH):
            images = load_batch(paths[start:start + EMBED_BATCH], settings, standardize)
            rows.append(nn.functional.normalize(model.prelogits(images), dim=1,
                                                eps=1e-10).numpy())
    finally:
        model.train(was_training)
    return np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)


def verification(model: nn.Module, held_out: Sequence[tuple[Path, int]],
                 settings: FinetuneSettings, standardize: str) -> dict[str, Any] | None:
    """``evaluate`` (upstream ``lfw.evaluate``, euclidean) over the pairs of held-out images;
    None with fewer than two same-person or two different-person pairs.

    Folds are ``min(10, same, different)``; each fold gets an equal share of both kinds, as
    LFW's pairs file interleaves them (a few pairs beyond a multiple of the folds are left
    out)."""
    from facenet_convert.converter.evaluation.metrics import evaluate

    every = [(i, j) for i in range(len(held_out)) for j in range(i + 1, len(held_out))]
    same = [p for p in every if held_out[p[0]][1] == held_out[p[1]][1]]
    different = [p for p in every if held_out[p[0]][1] != held_out[p[1]][1]]
    folds = min(10, len(same), len(different))
    if folds < 2:
        return None
    same, different = (same[:len(same) // folds * folds],
                       different[:len(different) // folds * folds])
    pairs = [p for f in range(folds) for p in same[f::folds] + different[f::folds]]
    issame = [held_out[i][1] == held_out[j][1] for i, j in pairs]
    vectors = embed(model, [p for p, _ in held_out], settings, standardize)
    rows = np.stack([vectors[k] for pair in pairs for k in pair])
    result = evaluate(rows, issame, nrof_folds=folds)
    dist = np.sum(np.square(rows[0::2] - rows[1::2]), axis=1)
    same = np.asarray(issame)
    return {"images": len(held_out), "pairs": len(pairs), "same_pairs": int(same.sum()),
            "folds": result.folds, "accuracy": result.accuracy_mean,
            "accuracy_std": result.accuracy_std, "auc": result.auc,
            "eer": None if math.isnan(result.eer) else result.eer, "val": result.val.val,
            "far": result.val.far,
            "mean_distance_same": float(dist[same].mean()),
            "mean_distance_different": float(dist[~same].mean())}


def describe_figures(figures: dict[str, Any] | None) -> str:
    if figures is None:
        return "too few held-out pairs (2 same-person and 2 different-person needed)"
    eer = "n/a" if figures["eer"] is None else f"{figures['eer']:.3f}"
    return (f"accuracy {figures['accuracy']:.3f}, AUC {figures['auc']:.3f}, EER {eer}, "
            f"mean distance same {figures['mean_distance_same']:.3f} / different "
            f"{figures['mean_distance_different']:.3f} ({figures['pairs']} pairs)")


# ------------------------------------------------------------------------ starting states


@dataclass
class _Start:
    trainer: Trainer
    architecture: str
    preprocessing: str
    source_sha256: dict[str, str]
    notes: list[str]
    epochs_done: int = 0
    before: dict[str, Any] | None = None
    measured_before: bool = False


def _fits(net: nn.Module, size: int, device: str) -> bool:
    """Whether ``net`` (in eval mode) takes one ``size`` image."""
    try:
        with torch.no_grad():
            net(torch.zeros((1, 3, size, size), device=device))
    except RuntimeError:
        return False
    return True


def check_image_size(net: nn.Module, size: int, architecture: str) -> None:
    """Refuse an image size the network cannot take (its valid convolutions and pools shrink
    the image to nothing), naming the smallest it takes (found on a copy on the meta
    device: shapes only)."""
    import copy

    training, device = net.training, str(next(net.parameters()).device)
    try:
        if _fits(net.eval(), size, device):
            return
    finally:
        net.train(training)
    probe = copy.deepcopy(net).to("meta").eval()
    smallest = next((s for s in range(size + 1, 1025) if _fits(probe, s, "meta")), None)
    what = f"at least {smallest}" if smallest is not None else "a larger one"
    raise FinetuneError(f"--image-size {size} is too small for {architecture} (its layers "
                        f"shrink such an image to nothing); use {what}, or upstream's 160")


def _source_hashes(source: Path) -> dict[str, str]:
    if source.is_file() and source.suffix.lower() in WEIGHTS_SUFFIXES:
        return {source.name: sha256_file(source)}
    from facenet_convert.converter.sources import open_source

    reader = open_source(source)
    try:
        return {path.name: sha256_file(path) for path in reader.files()}
    finally:
        reader.close()


def _head(net: nn.Module, classes: int | None, seed: int) -> None:
    """A fresh logits layer (upstream: xavier weights, zero biases), or none for triplets."""
    if "logits" in net._modules:
        del net._modules["logits"]
    if classes is None:
        return
    layer = nn.Linear(int(net.embedding_size), classes)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        nn.init.xavier_uniform_(layer.weight, generator=generator)
        layer.bias.zero_()
    net.logits = layer


def _net_from_state(state: dict[str, Tensor], source: Path, classes: int | None,
                    settings: FinetuneSettings) -> tuple[nn.Module, Any]:
    from facenet_convert.models.weights import load_strict

    record = match_state({k: tuple(v.shape) for k, v in state.items()})
    if record is None or record.task != "embedding":
        what = "an unknown architecture" if record is None else f"{record.name} ({record.task})"
        raise FinetuneError(f"these weights are {what}, not an embedding model finetune can "
                            "train", path=source)
    body = {k: v for k, v in state.items() if not k.startswith("logits.")}
    embedding = int(body[record.embedding_key].shape[0])
    net = record.model_class()(embedding_size=embedding,
                               dropout_prob=1.0 - settings.losses.keep_probability)
    load_strict(net, body, source)
    _head(net, classes, settings.seed)
    return net, record


def _fresh_trainer(net: nn.Module, classes: int, settings: FinetuneSettings,
                   global_step: int = 0) -> Trainer:
    name = (settings.optimizer or DEFAULT_OPTIMIZER).upper()
    params = list(trainable_parameters(net).values())
    centers = None
    if settings.loss == "softmax" and settings.losses.center_loss_factor > 0:
        centers = torch.zeros(classes, int(net.embedding_size))   # facenet.center_loss's init
        params.append(centers)
    optimizer = make_optimizer(name, params, settings.learning_rate)
    ema = ExponentialMovingAverage(settings.moving_average_decay)
    return Trainer(net, optimizer, settings=settings.losses, centers=centers, ema=ema,
                   global_step=global_step)


def _start_from_source(source: Path, classes: int, settings: FinetuneSettings,
                       fresh_optimizer: bool) -> _Start:
    from facenet_convert.models.weights import load_weights_file

    hashes = _source_hashes(source)
    head = classes if settings.loss == "softmax" else None
    notes: list[str] = []
    if source.is_file() and source.suffix.lower() in WEIGHTS_SUFFIXES:
        net, record = _net_from_state(load_weights_file(source), source, head, settings)
        notes.append(f"converted weights {source.name}: fresh "
                     f"{(settings.optimizer or DEFAULT_OPTIMIZER).upper()} optimizer, new "
                     f"{'logits layer for ' + str(classes) + ' classes' if head else 'head'}")
        return _Start(_fresh_trainer(net, classes, settings), record.name,
                      _preprocessing(record, net, source, settings, notes), hashes, notes)
    try:
        state = resume_from(source)
    except ResumeError as error:
        if error.unreadable and not fresh_optimizer:   # damage is no reason to start afresh
            raise FinetuneError(f"cannot read its training state ({error}); pass "
                                "--fresh-optimizer to train a new optimizer from its weights",
                                path=source) from None
        state = None
        why = str(error)
    if state is not None and get_architecture(state.architecture).task != "embedding":
        raise FinetuneError(f"{state.architecture} is a detection model; finetune trains "
                            "embedding models", path=source)
    if state is not None and state.optimizer is not None and not fresh_optimizer:
        return _resume_training_state(state, source, classes, settings, hashes)
    if state is None:
        from facenet_convert.converter.conversion import convert

        result = convert(source, "auto", weights="raw")
        weights = {k: torch.from_numpy(v) for k, v in result.arrays.items()}
        notes.append(f"no training state resumed ({why}); fresh optimizer from the converted "
                     "weights")
    else:
        weights = {k: v.detach().clone() for k, v in state.model.state_dict().items()}
        notes.append("--fresh-optimizer: the checkpoint's training state is not resumed"
                     if state.optimizer is not None else
                     "the source holds no optimizer slots: fresh "
                     f"{(settings.optimizer or DEFAULT_OPTIMIZER).upper()} optimizer from its "
                     "weights")
    net, record = _net_from_state(weights, source, head, settings)
    return _Start(_fresh_trainer(net, classes, settings), record.name,
                  _preprocessing(record, net, source, settings, notes), hashes, notes)


def _resume_training_state(state: Any, source: Path, classes: int,
                           settings: FinetuneSettings, hashes: dict[str, str]) -> _Start:
    found = state.model.num_classes
    if settings.loss == "softmax" and found != classes:
        raise FinetuneError(f"the checkpoint's Logits layer has {found} classes, the dataset "
                            f"{classes}; its optimizer state cannot carry over: pass "
                            "--fresh-optimizer to train a new head from its weights",
                            path=source)
    if settings.losses.center_loss_factor > 0 and state.centers is None:
        raise FinetuneError("--center-loss-factor > 0 but the checkpoint holds no centers to "
                            "resume; pass --center-loss-factor 0 or --fresh-optimizer",
                            path=source)
    trainer = state.trainer(settings=settings.losses, learning_rate=settings.learning_rate,
                            optimizer=settings.optimizer,
                            moving_average_decay=settings.moving_average_decay)
    resumed = [f"{state.optimizer} slots"]
    if state.optimizer == "ADAM":
        resumed.append("beta powers")
    if state.centers is not None:
        resumed.append("centers")
    if state.ema:
        resumed.append("EMA")
    if state.loss_averages:
        resumed.append("loss averages")
    notes = [(f"resumed the TF training state ({', '.join(resumed)}, global_step "
              f"{state.global_step}) from {source}")]
    if state.centers is not None and settings.losses.center_loss_factor == 0:
        notes.append("the checkpoint holds centers: they keep moving; pass the run's "
                     "--center-loss-factor")
    record = get_architecture(state.architecture)
    return _Start(trainer, record.name,
                  _preprocessing(record, trainer.model, source, settings, notes), hashes,
                  notes)


def _preprocessing(record: Any, net: nn.Module, source: Path, settings: FinetuneSettings,
                   notes: list[str]) -> str:
    chosen, note = choose_preprocessing(record, net, file_name=source.name,
                                        override=settings.preprocessing)
    if note:
        notes.append(note)
    return chosen


# ----------------------------------------------------------------------------- checkpoints


def checkpoints(out_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of the complete checkpoints in ``out_dir`` (commits are atomic, so
    every file of that name is complete), oldest first."""
    root = Path(out_dir)
    if not root.is_dir():
        return []
    found = []
    for entry in os.scandir(root):
        if not LOOKS_LIKE_CHECKPOINT.fullmatch(entry.name):
            continue
        match = CHECKPOINT.fullmatch(entry.name)
        # what this module never writes: another run's or a person's file, not ours to
        # resume from or to remove
        if match is None:
            raise FinetuneError("not a checkpoint name this command writes "
                                "(checkpoint-<epoch>.safetensors); move it away", path=entry.path)
        if not entry.is_file(follow_symlinks=False):
            raise FinetuneError("a checkpoint that is not a regular file (a folder, link or "
                                "device); move it away", path=entry.path)
        found.append((int(match.group("epoch")), Path(entry.path)))
    return sorted(found)


def _host(tensor: Tensor) -> np.ndarray:
    return np.array(tensor.detach().cpu().numpy(), copy=True)


def checkpoint_tensors(trainer: Trainer) -> dict[str, np.ndarray]:
    """Every tensor a run needs to go on (names ``model/``, ``slot/``, ``ema/``...)."""
    out = {f"model/{k}": _host(v) for k, v in trainer.model.state_dict().items()}
    names = {id(p): k for k, p in trainable_parameters(trainer.model).items()}
    if trainer.centers is not None:
        out["centers"] = _host(trainer.centers)
        names[id(trainer.centers)] = "centers"
    opt = trainer.optimizer
    for param, slots in opt.state.items():
        for key, value in slots.items():
            out[f"slot/{names[id(param)]}/{key}"] = _host(value)
    for power in BETA_POWERS:
        if power in opt.param_groups[0]:
            out[f"optimizer/{power}"] = _host(opt.param_groups[0][power])
    if trainer.ema is not None:
        out.update({f"ema/{k}": _host(v) for k, v in trainer.ema.shadows.items()})
    out.update({f"loss_average/{k}": _host(v)
                for k, v in trainer.loss_averages.shadows.items()})
    return out


def read_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors and JSON state of a checkpoint written by :func:`write_checkpoint`."""
    from safetensors import safe_open

    from facenet_convert.models.weights import load_weights_file

    tensors = load_weights_file(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        state = json.loads(metadata[STATE_KEY])
    except (KeyError, ValueError, OSError) as error:
        raise FinetuneError(f"not a finetune checkpoint ({type(error).__name__}); remove it or "
                            "start over with --force", path=path) from None
    if not isinstance(state, dict):
        raise FinetuneError("not a finetune checkpoint (its state is not a JSON object)",
                            path=path)
    found = tensors_digest({name: tensor.numpy() for name, tensor in tensors.items()})
    if metadata.get(DIGEST_KEY) != found:
        raise FinetuneError(f"its tensors do not match the digest written with them (recorded "
                            f"{str(metadata.get(DIGEST_KEY))[:16]}..., found {found[:16]}...): "
                            "damaged or edited; remove it to resume from the checkpoint before "
                            "it, or start over with --force", path=path)
    return tensors, state


def _trainer_from_checkpoint(tensors: dict[str, Tensor], state: dict[str, Any],
                             settings: FinetuneSettings, path: Path) -> Trainer:
    from facenet_convert.models.weights import load_strict

    record = get_architecture(state["architecture"])
    model_state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    classes = state["classes"] if settings.loss == "softmax" else None
    net = record.model_class()(embedding_size=int(state["embedding_size"]), num_classes=classes,
                               dropout_prob=1.0 - settings.losses.keep_probability)
    load_strict(net, model_state, path)
    params = trainable_parameters(net)
    ordered = list(params.values())
    centers = tensors.get("centers")
    if centers is not None:
        centers = centers.clone()
        ordered.append(centers)
    opt = make_optimizer(state["optimizer"], ordered, settings.learning_rate)
    for key, value in tensors.items():
        if key.startswith("slot/"):
            name, _, slot = key[len("slot/"):].rpartition("/")
            param = centers if name == "centers" else params.get(name)
            if param is None or slot not in CLASSES[opt.NAME].STATE_KEYS:
                raise FinetuneError(f"slot {key} has no parameter in {record.name}", path=path,
                                    key=key)
            opt.state[param][slot] = value.clone()
    for power in BETA_POWERS:
        if f"optimizer/{power}" in tensors:
            opt.param_groups[0][power] = tensors[f"optimizer/{power}"].clone()
    ema_shadows = {k[len("ema/"):]: v.clone() for k, v in tensors.items() if k.startswith("ema/")}
    ema = (ExponentialMovingAverage(settings.moving_average_decay, shadows=ema_shadows)
           if state.get("ema") else None)
    averages = ExponentialMovingAverage(LOSS_AVERAGE_DECAY, shadows={
        k[len("loss_average/"):]: v.clone() for k, v in tensors.items()
        if k.startswith("loss_average/")})
    return Trainer(net, opt, settings=settings.losses, centers=centers, ema=ema,
                   loss_averages=averages, global_step=int(state["global_step"]))


def write_checkpoint(out_dir: Path, epoch: int, trainer: Trainer, state: dict[str, Any],
                     *, force: bool) -> Path:
    """``checkpoint-<epoch>.safetensors``, committed all or nothing (a finished part)."""
    path = out_dir / f"checkpoint-{epoch}.safetensors"
    tensors = checkpoint_tensors(trainer)
    metadata = {STATE_KEY: json.dumps(state, sort_keys=True), "format": "pt",
                DIGEST_KEY: tensors_digest(tensors)}
    with atomic_output(path, force=force, part=True) as handle:
        write_state(tensors, handle, "safetensors", metadata)
    return path


def tensors_digest(tensors: Mapping[str, np.ndarray]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order: what a resume
    reads back is checked against what was written (a flipped bit in an optimizer slot would
    otherwise train on silently)."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        digest.update(f"{name}\0{array.dtype.str}\0{list(array.shape)}\0".encode())
        digest.update(array.data)
    return digest.hexdigest()


def _check_finite(trainer: Trainer, epoch: int) -> None:
    for key, value in trainer.model.state_dict().items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise FinetuneError(f"epoch {epoch}: {key} holds NaN or Inf after training; "
                                "the last good checkpoint is kept", key=key)


# ------------------------------------------------------------------------------------ run

OnStep = Callable[[int | None], None]


def _epoch_batches(train: Sequence[tuple[Path, int]], batch_size: int, seed: int,
                   epoch: int) -> list[list[tuple[Path, int]]]:
    order = np.random.default_rng([seed, epoch]).permutation(len(train))
    batches = [[train[i] for i in order[s:s + batch_size]]
               for s in range(0, len(order), batch_size)]
    return [b for b in batches if len(b) >= 2]     # BatchNorm needs two rows


def _triplet_rows(trainer: Trainer, split: Split, settings: FinetuneSettings,
                  standardize: str, rng: np.random.Generator) -> list[Path]:
    """``train_tripletloss.py``'s round: sample people, embed them, ``select_triplets``;
    rows ``a0 p0 n0 a1 p1 n1 ...`` (whole batches only)."""
    by_class: dict[int, list[Path]] = {}
    for path, label in split.train:
        by_class.setdefault(label, []).append(path)
    people = [c for c in rng.permutation(sorted(by_class)).tolist()][:settings.people_per_batch]
    sampled: list[Path] = []
    counts: list[int] = []
    for person in people:
        paths = by_class[person]
        take = [paths[i] for i in rng.permutation(len(paths))[:settings.images_per_person]]
        sampled += take
        counts.append(len(take))
    vectors = embed(trainer.model, sampled, settings, standardize)
    triplets, _ = select_triplets(vectors, counts, len(people), settings.losses.triplet_alpha,
                                  rng)
    rows = [sampled[i] for triplet in triplets for i in triplet]
    return rows[:len(rows) // settings.batch_size * settings.batch_size]


def finetune(data_dir: str | os.PathLike[str], source: str | os.PathLike[str],
             out_dir: str | os.PathLike[str], settings: FinetuneSettings, *,
             resume: bool = False, force: bool = False, fresh_optimizer: bool = False,
             on_step: OnStep | None = None,
             echo: Callable[[str], None] = lambda line: None) -> FinetuneResult:
    """Fine-tune ``source`` on ``data_dir`` into ``out_dir`` (see the module docstring).

    ``on_step(total)`` is called after every step (``total``: the steps of the whole run when
    known); the CLI's progress bar raises there after a signal, between two steps. ``echo``
    gets the progress lines (what was resumed, each epoch's losses and checkpoint).
    """
    out = Path(out_dir)
    created = not os.path.lexists(out)
    if not created and out.is_dir() and input_inside(out, [source]) is not None:
        raise FinetuneError("--from is inside the output folder, whose files this run "
                            "replaces and removes; move it out first", path=source)
    try:
        return _finetune(data_dir, source, out, settings, resume=resume, force=force,
                         fresh_optimizer=fresh_optimizer, on_step=on_step, echo=echo)
    except BaseException:
        if created:                      # a run that fails leaves no empty folder behind
            try:
                out.rmdir()              # only when empty: finished checkpoints stay
            except OSError:
                pass
        raise


def _finetune(data_dir: str | os.PathLike[str], source: str | os.PathLike[str], out: Path,
              settings: FinetuneSettings, *, resume: bool, force: bool,
              fresh_optimizer: bool, on_step: OnStep | None,
              echo: Callable[[str], None]) -> FinetuneResult:
    require_choice(settings.loss, LOSSES, "loss", FinetuneError)
    require_choice(settings.format, MODEL_FILES, "format", FinetuneError)
    source_path, data = Path(source), Path(data_dir)
    dataset = get_dataset(data_dir, lambda path, why: echo(
        f"facenet-convert: warning: {path}: {why}; skipped"))
    split = split_dataset(dataset, settings.held_out, settings.seed)
    check_dataset(dataset, split, settings, data_dir)
    schedule: Schedule | None = (read_schedule(settings.schedule)
                                 if settings.schedule is not None else None)
    model_path, report_path = out / MODEL_FILES[settings.format], out / REPORT_FILE
    if not out.exists():
        try:
            out.mkdir()
        except OSError as error:
            raise FinetuneError(f"cannot create the output folder ({error.strerror})",
                                path=out) from None
    elif not out.is_dir():
        raise FinetuneError("output exists and is not a folder", path=out)
    found = checkpoints(out)
    earlier = model_path.exists() or report_path.exists()
    if not resume and not force and (found or earlier):
        raise FinetuneError("holds an earlier run (checkpoints or a model); pass --resume to "
                            "continue it or --force to start over", path=out)
    if resume and not force and earlier and not found:
        raise FinetuneError("holds an earlier run's model but no checkpoint to resume from; "
                            "pass --force to start over (the model is replaced)", path=out)
    for path in (model_path, report_path):   # before any work, not after the training
        check_output_path(path, force=True, inputs=[source_path])
    fingerprint = {"classes": split.classes,
                   "train": [p.relative_to(data).as_posix() for p, _ in split.train],
                   "held_out": [p.relative_to(data).as_posix() for p, _ in split.held_out],
                   "settings": settings.trajectory()}
    # --force: a new run, whose checkpoints must not mix with the earlier run's; those go once
    # the new run has committed its first (a run that fails before destroys nothing)
    superseded = [] if resume else [old for _, old in found]
    if not resume:
        found = []

    start = None
    if found:
        epoch, path = found[-1]
        tensors, state = read_checkpoint(path)
        if state.get("epoch") != epoch:
            raise FinetuneError(f"its name says epoch {epoch} but it holds epoch "
                                f"{state.get('epoch')!r}; move it away or start over with "
                                "--force", path=path)
        _check_resumable(state, fingerprint, _source_hashes(source_path), path)
        trainer = _trainer_from_checkpoint(tensors, state, settings, path)
        note = f"resumed from {path.name} (epoch {epoch}, global_step {trainer.global_step})"
        start = _Start(trainer, state["architecture"], state["preprocessing"],
                       state["source_sha256"], [note], epochs_done=epoch,
                       before=state.get("before"), measured_before=True)
    else:
        if resume:
            echo(f"no checkpoint in {out}; starting from {source_path}")
        start = _start_from_source(source_path, len(split.classes), settings, fresh_optimizer)
    for note in start.notes:
        echo(note)
    trainer, standardize = start.trainer, start.preprocessing
    check_image_size(trainer.model, settings.image_size, start.architecture)
    if not start.measured_before:
        start.before = verification(trainer.model, split.held_out, settings, standardize)
        echo(f"held-out verification before: {describe_figures(start.before)}")
    optimizer_name = trainer.optimizer.NAME

    def state_of(epoch: int) -> dict[str, Any]:
        return {"epoch": epoch, "global_step": trainer.global_step,
                "architecture": start.architecture, "preprocessing": standardize,
                "embedding_size": int(trainer.model.embedding_size),
                "classes": len(split.classes), "optimizer": optimizer_name,
                "ema": trainer.ema is not None, "source": str(source_path),
                "source_sha256": start.source_sha256, "before": start.before,
                "fingerprint": fingerprint, "converter_version": __version__}

    rates = {}
    for epoch in range(start.epochs_done + 1, settings.epochs + 1):
        rate = settings.learning_rate if schedule is None else schedule.rate_for_epoch(epoch)
        if rate is None:
            echo(f"the schedule {settings.schedule} stops before epoch {epoch}")
            break
        rates[epoch] = rate
    per_epoch = (len(_epoch_batches(split.train, settings.batch_size, settings.seed, 1))
                 if settings.loss == "softmax" else None)
    total = None if per_epoch is None else per_epoch * len(rates)
    last = found[-1][1] if found else None
    for epoch, rate in rates.items():
        rng = np.random.default_rng([settings.seed, epoch, 1])
        torch.manual_seed(settings.seed * 1_000_003 + epoch)      # dropout
        losses = []
        if settings.loss == "softmax":
            drawn = _epoch_batches(split.train, settings.batch_size, settings.seed, epoch)
            batches = [[p for p, _ in b] for b in drawn]
            labels = [[label for _, label in b] for b in drawn]
        else:
            rows = _triplet_rows(trainer, split, settings, standardize, rng)
            batches = [rows[s:s + settings.batch_size]
                       for s in range(0, len(rows), settings.batch_size)]
            labels = [[] for _ in batches]
            if not batches:
                echo(f"epoch {epoch}: no triplet violates the margin; no step")
        for number, (paths, batch_labels) in enumerate(zip(batches, labels, strict=True), 1):
            images = load_batch(paths, settings, standardize, rng)
            try:
                if settings.loss == "softmax":
                    result = trainer.step(images, torch.tensor(batch_labels), rate)
                else:
                    result = trainer.triplet_step(images, rate)
            except TrainingError as error:
                kept = f"{last} is kept" if last else "none was written yet"
                raise FinetuneError(f"epoch {epoch}, batch {number} of {len(batches)} (first "
                                    f"image {paths[0]}): {error}; the last good checkpoint: "
                                    f"{kept}") from None
            losses.append(result.total_loss)
            if on_step is not None:
                on_step(total)
        _check_finite(trainer, epoch)
        last = write_checkpoint(out, epoch, trainer, state_of(epoch), force=True)
        for old_epoch, old in checkpoints(out):
            if old_epoch < epoch or (old in superseded and old != last):
                old.unlink(missing_ok=True)
        superseded = []
        mean = f"{np.mean(losses):.4f}" if losses else "n/a"
        echo(f"epoch {epoch}/{settings.epochs}: lr {rate:g}, {len(losses)} steps, mean loss "
             f"{mean}, global_step {trainer.global_step}; wrote {last.name}")
        start.epochs_done = epoch
    after = verification(trainer.model, split.held_out, settings, standardize)
    echo(f"held-out verification after: {describe_figures(after)}")
    return _write_result(out, model_path, report_path, trainer, start, split, settings,
                         source_path, after, force=force or resume)


def _check_resumable(state: dict[str, Any], fingerprint: dict[str, Any],
                     hashes: dict[str, str], path: Path) -> None:
    recorded = state.get("fingerprint", {})
    for key in ("classes", "train", "held_out"):
        if recorded.get(key) != fingerprint[key]:
            raise FinetuneError(f"the dataset's {key.replace('_', '-')} images differ from the "
                                "run this checkpoint continues; resume with the same DATA_DIR "
                                "or start over with --force", path=path)
    theirs, ours = recorded.get("settings", {}), fingerprint["settings"]
    for key in ours:
        if theirs.get(key) != ours[key]:
            raise FinetuneError(f"{key} was {theirs.get(key)!r} in the run this checkpoint "
                                f"continues, now {ours[key]!r}; resume with the same options "
                                "or start over with --force", path=path)
    if state.get("source_sha256") != hashes:
        raise FinetuneError("--from is not the source this run started from (sha256 differs); "
                            "give the same source or start over with --force", path=path)


def _write_result(out: Path, model_path: Path, report_path: Path, trainer: Trainer,
                  start: _Start, split: Split, settings: FinetuneSettings, source: Path,
                  after: dict[str, Any] | None, *, force: bool) -> FinetuneResult:
    arrays = {k: _host(v) for k, v in trainer.model.state_dict().items()}
    record = get_architecture(start.architecture)
    num_classes = getattr(trainer.model, "num_classes", None)
    metadata = {"format": "pt", "converter": "facenet-convert",
                "converter_version": __version__, "spec": "finetune",
                "architecture": record.name, "weights": "raw", "part": "model",
                "source_sha256": json.dumps(start.source_sha256, sort_keys=True),
                "finetuned_from": str(source), "preprocessing": start.preprocessing,
                "global_step": str(trainer.global_step), "epochs": str(start.epochs_done),
                "embedding_size": str(int(trainer.model.embedding_size))}
    if num_classes is not None:
        metadata["num_classes"] = str(num_classes)
    report: dict[str, Any] = {
        "converter": "facenet-convert", "converter_version": __version__,
        "finetuned_from": str(source), "source_sha256": start.source_sha256,
        "architecture": record.name, "preprocessing": start.preprocessing,
        "optimizer": trainer.optimizer.NAME, "global_step": trainer.global_step,
        "epochs": start.epochs_done, "classes": split.classes,
        "train_images": len(split.train), "held_out_images": len(split.held_out),
        "settings": asdict(settings),
        "verification_before": start.before, "verification_after": after,
        "notes": start.notes}
    with staged_outputs([model_path, report_path], force=force, final=True) as handles:
        sink = HashingWriter(handles[model_path])
        write_state(arrays, sink, settings.format, metadata)
        report["model"] = {"path": model_path.name, "sha256": sink.sha256, "size": sink.size}
        write_json(report, handles[report_path])
    return FinetuneResult(model_path, report_path, sink.sha256, trainer.global_step,
                          start.epochs_done, start.before, after, start.notes, report)
