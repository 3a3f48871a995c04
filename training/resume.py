"""A TF training checkpoint onto PyTorch: model, optimizer slots, centers, EMA, global step.

:func:`resume_from` reads an upstream checkpoint (``train_softmax.py`` saves every global
variable) with our own reader, maps the network variables exactly as ``convert`` does, and
every other tensor by the same rule: ``<var>/<slot>`` (``Adam``/``Adam_1``, ``RMSProp``/
``RMSProp_1``, ``Momentum``, ``Adagrad``, ``Adadelta``/``Adadelta_1``) and
``<var>/ExponentialMovingAverage`` take their variable's target key and layout transform;
``beta1_power``/``beta2_power``, ``global_step``, ``centers`` (+ its slots: upstream's
optimizer trains it too) and the loss averages ``<loss>/avg`` have their own places. Every
source tensor is accounted for (``accounting``) and every target has a source; anything else
(a slot missing, a shape that differs, an optimizer we do not implement) is one line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from facenet_convert.converter.building import build_model
from facenet_convert.converter.conversion import convert
from facenet_convert.converter.core.errors import ConverterError, CorruptSourceError
from facenet_convert.converter.registry import get_architecture
from facenet_convert.converter.sources import open_source
from facenet_convert.training.averages import (
    LOSS_AVERAGE_DECAY,
    MOVING_AVERAGE_DECAY,
    ExponentialMovingAverage,
)
from facenet_convert.training.optimizers import (
    CLASSES,
    UPSTREAM,
    TrainingError,
    make_optimizer,
)
from facenet_convert.training.step import LossSettings, Trainer, trainable_parameters

EMA_SUFFIX = "ExponentialMovingAverage"
CENTERS = "centers"
GLOBAL_STEP = "global_step"
BETA_POWERS = ("beta1_power", "beta2_power")
_LOSS_AVERAGE = re.compile(r"(?P<loss>\w+)/avg")
#: slot suffixes of TF1 optimizers we do not implement (named in the refusal)
_OTHER_SLOTS = {"Ftrl": "FtrlOptimizer", "Ftrl_1": "FtrlOptimizer",
                "ProximalAdagrad": "ProximalAdagradOptimizer", "mg": "centered RMSProp",
                "AdagradDA": "AdagradDAOptimizer", "Adam_2": "a second Adam"}

#: inverse of converter.mapping's transforms: our layout back to TF's
TO_TF: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda a: a,
    "conv_hwio_to_oihw": lambda a: a.transpose(2, 3, 1, 0),
    "dense_io_to_oi": lambda a: a.transpose(1, 0),
}


class ResumeError(TrainingError):
    """A training checkpoint cannot be resumed (missing or misshapen state, unknown optimizer).
    ``unreadable``: its files could not be read (damaged, truncated), as opposed to holding
    no resumable state."""

    unreadable = False


class UnreadableCheckpointError(ResumeError):
    """The checkpoint's files could not be read: damage, not a missing training state."""

    unreadable = True


@dataclass
class Accounted:
    """Where one checkpoint tensor went."""

    source: str
    role: str          # variable | slot | ema | centers | beta_power | global_step | loss_average
    target: str        # our key (state-dict key, "centers", "optimizer.<key>.<slot>"...)

    def to_dict(self) -> dict[str, str]:
        return {"source": self.source, "role": self.role, "target": self.target}


@dataclass
class TrainingState:
    """Everything a TF training checkpoint holds, in our names and layouts."""

    source: str
    architecture: str
    model: nn.Module                              # float32, eval mode, raw weights
    variables: dict[str, tuple[str, str]]         # TF variable -> (our key, transform)
    optimizer: str | None                         # UPSTREAM key, None: no slots
    slots: dict[str, dict[str, np.ndarray]]       # our key (or "centers") -> {state key: array}
    beta_powers: dict[str, float]
    centers: np.ndarray | None
    ema: dict[str, np.ndarray]                    # our key -> shadow
    loss_averages: dict[str, float]               # loss name -> average
    global_step: int
    accounting: list[Accounted] = field(default_factory=list)
    fills: list[str] = field(default_factory=list)  # our keys with no TF source (gamma = 1...)

    def report(self) -> dict[str, Any]:
        return {"source": self.source, "architecture": self.architecture,
                "optimizer": self.optimizer, "global_step": self.global_step,
                "centers": None if self.centers is None else list(self.centers.shape),
                "ema_shadows": len(self.ema), "loss_averages": dict(self.loss_averages),
                "accounted": [a.to_dict() for a in self.accounting], "filled": list(self.fills)}

    def trainer(self, *, settings: LossSettings | None = None, learning_rate: float = 0.0,
                dtype: torch.dtype = torch.float32, optimizer: str | None = None,
                moving_average_decay: float = MOVING_AVERAGE_DECAY) -> Trainer:
        """A :class:`Trainer` that goes on exactly where the checkpoint stopped."""
        name = (optimizer or self.optimizer or "").upper()
        if not name:
            raise ResumeError("the checkpoint holds no optimizer slots; pass optimizer= (one "
                              f"of {', '.join(CLASSES)}) to start fresh ones", path=self.source)
        if self.optimizer is not None and name != self.optimizer:
            raise ResumeError(f"the checkpoint holds {self.optimizer} slots; resuming with "
                              f"{name} would throw them away: pass optimizer={self.optimizer!r}",
                              path=self.source)
        model = self.model.to(dtype)
        params = trainable_parameters(model)
        centers = None if self.centers is None else torch.tensor(self.centers, dtype=dtype)
        ordered = list(params.values()) + ([] if centers is None else [centers])
        opt = make_optimizer(name, ordered, learning_rate)
        for key, slots in self.slots.items():
            param = centers if key == CENTERS else params[key]
            state = opt.state[param]
            for slot_key, value in slots.items():
                state[slot_key] = torch.tensor(value, dtype=dtype)
        for group in opt.param_groups:
            for power, value in self.beta_powers.items():
                group[power] = torch.tensor(value, dtype=dtype)
        ema = None
        if self.ema:
            ema = ExponentialMovingAverage(moving_average_decay, shadows={
                k: torch.tensor(v, dtype=dtype) for k, v in self.ema.items()})
        averages = ExponentialMovingAverage(LOSS_AVERAGE_DECAY, shadows={
            k: torch.tensor(v, dtype=dtype) for k, v in self.loss_averages.items()})
        return Trainer(model, opt, settings=settings, centers=centers, ema=ema,
                       loss_averages=averages, global_step=self.global_step)


def _which_optimizer(suffixes: set[str], source: str) -> str | None:
    if not suffixes:
        return None
    for name, upstream in UPSTREAM.items():
        if upstream.slots and suffixes == set(upstream.slots):
            return name
    known = sorted(s for s in suffixes if s in _OTHER_SLOTS)
    if known:
        raise ResumeError(f"the checkpoint was trained with {_OTHER_SLOTS[known[0]]} (slots "
                          f"{', '.join(sorted(suffixes))}), which is not supported; supported: "
                          f"{', '.join(CLASSES)}", path=source)
    expected = ", ".join(f"{k} ({'/'.join(u.slots)})" for k, u in UPSTREAM.items() if u.slots)
    raise ResumeError(f"unknown optimizer: slot suffixes {', '.join(sorted(suffixes))} match "
                      f"none of {expected}", path=source)


def _scalar(reader: Any, name: str, source: str) -> np.ndarray:
    value = np.asarray(reader.read(name))
    if value.size != 1:
        raise ResumeError(f"{name} has shape {list(value.shape)}; expected a scalar",
                          path=source, key=name)
    return value.reshape(())


def resume_from(checkpoint: str | os.PathLike[str], *, model: str = "auto") -> TrainingState:
    """Read a TF training checkpoint (prefix or folder) into a :class:`TrainingState`."""
    reader = open_source(checkpoint)
    source = str(reader.path)
    try:
        return _resume(reader, source, model)
    except ResumeError:
        raise
    except CorruptSourceError as error:
        raise UnreadableCheckpointError(str(error)) from None
    except ConverterError as error:
        raise ResumeError(str(error)) from None
    finally:
        reader.close()


def _resume(reader: Any, source: str, model_name: str) -> TrainingState:
    tensors = reader.tensors()
    # The optimizer first: slots of one we do not know would otherwise fail as "no rule".
    suffixes = {name.rpartition("/")[2] for name in tensors
                if name.rpartition("/")[0] in tensors and not name.endswith("/" + EMA_SUFFIX)}
    optimizer = _which_optimizer(suffixes, source)
    result = convert(reader, model_name, weights="raw")
    record = get_architecture(result.architecture)
    net = build_model(record, result.state_dict, source)
    variables = {a.source: (a.target, a.transform or "identity")
                 for a in result.plan.mapped if a.source is not None}
    fills = [a.target for a in result.plan.filled]
    accounting = [Accounted(name, "variable", key) for name, (key, _) in variables.items()]
    used = set(variables)

    def read_as(name: str, like: str, transform: str) -> np.ndarray:
        info, want = tensors[name], tensors[like]
        if tuple(info.shape) != tuple(want.shape):
            raise ResumeError(f"{name} has shape {list(info.shape)} but its variable {like} "
                              f"has {list(want.shape)}", path=source, key=name)
        from facenet_convert.converter.mapping import TRANSFORMS

        return np.ascontiguousarray(TRANSFORMS[transform].apply(np.asarray(reader.read(name))))

    has_centers = CENTERS in tensors

    # Optimizer slots: every variable with a gradient (all but the moving statistics).
    slots: dict[str, dict[str, np.ndarray]] = {}
    if optimizer is not None:
        upstream, keys = UPSTREAM[optimizer], CLASSES[optimizer].STATE_KEYS
        with_gradient = [n for n, (k, _) in variables.items()
                         if not k.endswith((".running_mean", ".running_var"))]
        if has_centers:
            with_gradient.append(CENTERS)
        for var in with_gradient:
            key, transform = variables.get(var, (CENTERS, "identity"))
            for suffix, state_key in zip(upstream.slots, keys, strict=True):
                slot = f"{var}/{suffix}"
                if slot not in tensors:
                    raise ResumeError(f"{optimizer} slot {slot} is missing (every trained "
                                      f"variable has {'/'.join(upstream.slots)})",
                                      path=source, key=slot)
                slots.setdefault(key, {})[state_key] = read_as(slot, var, transform)
                accounting.append(Accounted(slot, "slot", f"optimizer.{key}.{state_key}"))
                used.add(slot)

    beta_powers: dict[str, float] = {}
    if optimizer == "ADAM":
        for power in BETA_POWERS:
            if power not in tensors:
                raise ResumeError(f"Adam's {power} is missing", path=source, key=power)
            beta_powers[power] = float(_scalar(reader, power, source))
            accounting.append(Accounted(power, "beta_power", f"optimizer.{power}"))
            used.add(power)

    ema: dict[str, np.ndarray] = {}
    shadows = {name: f"{name}/{EMA_SUFFIX}" for name in variables}
    present = [name for name, shadow in shadows.items() if shadow in tensors]
    if present:
        absent = [shadows[n] for n in variables if shadows[n] not in tensors]
        if absent:
            raise ResumeError(f"{len(absent)} EMA shadows are missing, e.g. {absent[0]} "
                              "(upstream averages every trainable variable)", path=source,
                              key=absent[0])
        for name, (key, transform) in variables.items():
            ema[key] = read_as(shadows[name], name, transform)
            accounting.append(Accounted(shadows[name], "ema", f"ema.{key}"))
            used.add(shadows[name])

    centers = None
    if has_centers:
        centers = np.asarray(reader.read(CENTERS))
        embedding = result.embedding_size
        if centers.ndim != 2 or (embedding is not None and centers.shape[1] != embedding):
            raise ResumeError(f"centers has shape {list(centers.shape)}; expected [classes, "
                              f"{embedding}]", path=source, key=CENTERS)
        accounting.append(Accounted(CENTERS, "centers", CENTERS))
        used.add(CENTERS)

    global_step = 0
    if GLOBAL_STEP in tensors:
        global_step = int(_scalar(reader, GLOBAL_STEP, source))
        accounting.append(Accounted(GLOBAL_STEP, "global_step", GLOBAL_STEP))
        used.add(GLOBAL_STEP)

    loss_averages: dict[str, float] = {}
    for name in tensors:
        match = _LOSS_AVERAGE.fullmatch(name)
        if match is not None and name not in used:
            loss = match.group("loss")
            loss_averages[loss] = float(_scalar(reader, name, source))
            accounting.append(Accounted(name, "loss_average", f"loss_averages.{loss}"))
            used.add(name)

    left = sorted(set(tensors) - used - {"_CHECKPOINTABLE_OBJECT_GRAPH"})
    if left:
        raise ResumeError(f"{len(left)} tensors have no place in the training state, e.g. "
                          f"{left[0]}; refusing to resume part of a run", path=source, key=left[0])
    return TrainingState(source, result.architecture, net, variables, optimizer, slots,
                         beta_powers, centers, ema, loss_averages, global_step, accounting, fills)


def tf_variables(state: TrainingState, trainer: Trainer) -> dict[str, np.ndarray]:
    """The trainer's state under the checkpoint's TF names and layouts (float64 copies)."""
    out: dict[str, np.ndarray] = {}
    model_state = trainer.model.state_dict()
    params = trainable_parameters(trainer.model)
    opt = trainer.optimizer
    keys = CLASSES[opt.NAME].STATE_KEYS
    suffixes = UPSTREAM[opt.NAME].slots

    def host(tensor: torch.Tensor) -> np.ndarray:
        return np.array(tensor.detach().to(torch.float64).cpu().numpy(), copy=True)

    for name, (key, transform) in state.variables.items():
        back = TO_TF[transform]
        out[name] = back(host(model_state[key]))
        if trainer.ema is not None and key in trainer.ema.shadows:
            out[f"{name}/{EMA_SUFFIX}"] = back(host(trainer.ema.shadows[key]))
        param = params.get(key)
        if param is not None and param in opt.state:
            for suffix, slot_key in zip(suffixes, keys, strict=True):
                out[f"{name}/{suffix}"] = back(host(opt.state[param][slot_key]))
    if trainer.centers is not None:
        out[CENTERS] = host(trainer.centers)
        if trainer.centers in opt.state:
            for suffix, slot_key in zip(suffixes, keys, strict=True):
                out[f"{CENTERS}/{suffix}"] = host(opt.state[trainer.centers][slot_key])
    for power in BETA_POWERS:
        if power in opt.param_groups[0]:
            out[power] = host(opt.param_groups[0][power])
    for loss, value in trainer.loss_averages.shadows.items():
        out[f"{loss}/avg"] = host(value)
    out[GLOBAL_STEP] = np.asarray(trainer.global_step, dtype=np.int64)
    return out


def state_tensors(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Plain arrays of a mapping of tensors (for reports and comparisons)."""
    return {k: np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v)
            for k, v in state.items()}
