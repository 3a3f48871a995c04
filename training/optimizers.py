"""TF1's optimizers as torch optimizers: the update rules of TF's kernels, upstream's settings.

torch's optimizers are not TF1's: TF's Adam adds "epsilon hat" to ``sqrt(v)`` and keeps the
bias correction in the step size (``lr * sqrt(1 - beta2^t) / (1 - beta1^t)``), its RMSProp
starts the mean square at 1 and puts epsilon inside the square root, its Adagrad starts the
accumulator at 0.1. Each class below is the kernel of ``tensorflow/core/kernels/
training_ops.cc`` (``ApplyAdam``, ``ApplyRMSProp``, ``ApplyAdagrad``, ``ApplyAdadelta``,
``ApplyMomentum``, ``ApplyGradientDescent``) written out, and :data:`UPSTREAM` holds the
hyper-parameters ``facenet.train`` (facenet 1.0.5) gives them.

Constants are float32-rounded (:func:`float32_value`): a TF1 float32 graph holds ``0.9`` as
``float32(0.9)``, and a float64 run of the same training means those values. Updates are
computed in the parameters' dtype.

Sparse gradients (``tf.gather``: center loss's ``centers``) follow TF's sparse kernels: only
the gathered rows move, except Adam, whose sparse path decays ``m`` and ``v`` of every row and
moves the whole variable. Pass them as ``step(sparse_rows={param: rows})``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from facenet_convert.converter.core.errors import ConverterError
from facenet_convert.models.embedding_net import float32_value


class TrainingError(ConverterError):
    """Training cannot start or go on (bad state, unsupported optimizer, NaN loss...)."""


@dataclass(frozen=True)
class Upstream:
    """One of ``facenet.train``'s optimizers: its TF class and hyper-parameters."""

    name: str                 # facenet.train's --optimizer value
    tf_class: str             # tf.train.<tf_class>
    slots: tuple[str, ...]    # checkpoint suffixes ``<var>/<slot>``, in our state-key order
    hyper: tuple[tuple[str, float | bool], ...]


#: ``facenet.train``'s optimizers and settings (facenet 1.0.5, checked in its source), plus
#: plain gradient descent, which upstream never built but TF1 users did.
UPSTREAM: dict[str, Upstream] = {u.name: u for u in (
    Upstream("ADAGRAD", "AdagradOptimizer", ("Adagrad",), (("initial_accumulator", 0.1),)),
    Upstream("ADADELTA", "AdadeltaOptimizer", ("Adadelta", "Adadelta_1"),
             (("rho", 0.9), ("epsilon", 1e-6))),
    Upstream("ADAM", "AdamOptimizer", ("Adam", "Adam_1"),
             (("beta1", 0.9), ("beta2", 0.999), ("epsilon", 0.1))),
    Upstream("RMSPROP", "RMSPropOptimizer", ("RMSProp", "RMSProp_1"),
             (("decay", 0.9), ("momentum", 0.9), ("epsilon", 1.0))),
    Upstream("MOM", "MomentumOptimizer", ("Momentum",),
             (("momentum", 0.9), ("use_nesterov", True))),
    Upstream("SGD", "GradientDescentOptimizer", (), ()),
)}


def _scalar(value: float, like: Tensor) -> Tensor:
    return torch.tensor(value, dtype=like.dtype, device=like.device)


class TF1Optimizer(torch.optim.Optimizer):
    """Base: per-parameter slots named as TF names them; ``lr`` float32-rounded per step."""

    NAME: ClassVar[str]
    #: our state keys, in the order of ``UPSTREAM[NAME].slots`` (the checkpoint's suffixes)
    STATE_KEYS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float,
                 **hyper: Any) -> None:
        if not math.isfinite(lr) or lr < 0:
            raise TrainingError(f"learning rate {lr!r}: expected a finite value >= 0")
        super().__init__(params, {"lr": lr, **hyper})

    @property
    def upstream(self) -> Upstream:
        return UPSTREAM[self.NAME]

    def initial_slot(self, key: str, param: Tensor) -> Tensor:
        """A fresh slot as TF's ``_create_slots`` makes it (zeros unless said otherwise)."""
        return torch.zeros_like(param, memory_format=torch.preserve_format)

    def slots(self, param: Tensor) -> dict[str, Tensor]:
        """The slots of ``param`` (created on first use)."""
        state = self.state[param]
        for key in self.STATE_KEYS:
            if key not in state:
                state[key] = self.initial_slot(key, param)
        return state

    def _constant(self, group: dict[str, Any], name: str) -> float:
        return float32_value(float(group[name]))

    @torch.no_grad()
    def step(self, closure: Any = None, *,
             sparse_rows: Mapping[Tensor, Tensor] | None = None) -> Any:  # type: ignore[override]
        """One update of every parameter that has a gradient; ``sparse_rows`` as the module says."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rows_of = {id(p): r for p, r in (sparse_rows or {}).items()}
        for group in self.param_groups:
            lr = float32_value(float(group["lr"]))
            updated = False
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if grad.is_sparse:
                    raise TrainingError("sparse torch gradients are not supported; pass dense "
                                        "gradients and sparse_rows")
                rows = rows_of.get(id(param))
                if rows is None:
                    self._dense(group, param, grad, self.slots(param), lr)
                else:
                    self._sparse(group, param, grad, self.slots(param), lr,
                                 torch.unique(rows.to(torch.long)))
                updated = True
            if updated:
                self._finish(group)
        return loss

    def _dense(self, group: dict[str, Any], var: Tensor, grad: Tensor,
               state: dict[str, Tensor], lr: float) -> None:
        raise NotImplementedError

    def _sparse(self, group: dict[str, Any], var: Tensor, grad: Tensor,
                state: dict[str, Tensor], lr: float, rows: Tensor) -> None:
        """Default sparse kernel: the dense rule on the gathered rows only."""
        sub_var = var[rows]
        sub_state = {key: value[rows] for key, value in state.items()}
        self._dense(group, sub_var, grad[rows], sub_state, lr)
        var[rows] = sub_var
        for key, value in sub_state.items():
            state[key][rows] = value

    def _finish(self, group: dict[str, Any]) -> None:
        """After every variable of the group moved (Adam's beta powers)."""


class Adam(TF1Optimizer):
    """``tf.train.AdamOptimizer``: ``ApplyAdam``; ``beta1_power``/``beta2_power`` per group."""

    NAME = "ADAM"
    STATE_KEYS = ("m", "v")

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float, *,
                 beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 0.1) -> None:
        super().__init__(params, lr, beta1=beta1, beta2=beta2, epsilon=epsilon)
        for group in self.param_groups:
            like = group["params"][0]
            group.setdefault("beta1_power", _scalar(self._constant(group, "beta1"), like))
            group.setdefault("beta2_power", _scalar(self._constant(group, "beta2"), like))

    def _step_constants(self, group: dict[str, Any], var: Tensor,
                        lr: float) -> tuple[float, float, float, Tensor]:
        """beta1, beta2, epsilon and ``lr * sqrt(1 - beta2^t) / (1 - beta1^t)``: TF keeps the
        bias correction in the step size, not in the moments."""
        beta1, beta2 = self._constant(group, "beta1"), self._constant(group, "beta2")
        b1p, b2p = group["beta1_power"].to(var.dtype), group["beta2_power"].to(var.dtype)
        return beta1, beta2, self._constant(group, "epsilon"), lr * torch.sqrt(1 - b2p) / (1 - b1p)

    def _dense(self, group: dict[str, Any], var: Tensor, grad: Tensor,
               state: dict[str, Tensor], lr: float) -> None:
        beta1, beta2, eps, alpha = self._step_constants(group, var, lr)
        m, v = state["m"], state["v"]
        m.add_((grad - m) * (1 - _scalar(beta1, var)))
        v.add_((grad.square() - v) * (1 - _scalar(beta2, var)))
        var.sub_((m * alpha) / (v.sqrt() + eps))     # epsilon hat: outside the sqrt

    def _sparse(self, group: dict[str, Any], var: Tensor, grad: Tensor,
                state: dict[str, Tensor], lr: float, rows: Tensor) -> None:
        # AdamOptimizer._apply_sparse_shared: every row decays, the gathered rows add.
        beta1, beta2, eps, step = self._step_constants(group, var, lr)
        values = grad[rows]
        m, v = state["m"], state["v"]
        m.mul_(beta1)
        m.index_add_(0, rows, values * (1 - _scalar(beta1, var)))
        v.mul_(beta2)
        v.index_add_(0, rows, (values * values) * (1 - _scalar(beta2, var)))
        var.sub_(step * m / (v.sqrt() + eps))

    def _finish(self, group: dict[str, Any]) -> None:
        group["beta1_power"].mul_(self._constant(group, "beta1"))
        group["beta2_power"].mul_(self._constant(group, "beta2"))


class RMSProp(TF1Optimizer):
    """``tf.train.RMSPropOptimizer`` (not centered): ``ApplyRMSProp``; ``ms`` starts at 1."""

    NAME = "RMSPROP"
    STATE_KEYS = ("ms", "mom")

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float, *,
                 decay: float = 0.9, momentum: float = 0.9, epsilon: float = 1.0) -> None:
        super().__init__(params, lr, decay=decay, momentum=momentum, epsilon=epsilon)

    def initial_slot(self, key: str, param: Tensor) -> Tensor:
        if key == "ms":
            return torch.ones_like(param, memory_format=torch.preserve_format)
        return super().initial_slot(key, param)

    def _dense(self, group: dict[str, Any], var: Tensor, grad: Tensor,
               state: dict[str, Tensor], lr: float) -> None:
        rho, momentum = self._constant(group, "decay"), self._constant(group, "momentum")
        eps = self._constant(group, "epsilon")
        ms, mom = state["ms"], state["mom"]
        ms.add_((grad.square() - ms) * (1 - _scalar(rho, var)))
        mom.copy_(mom * momentum + (grad * lr) / (ms + eps).sqrt())   # epsilon inside the sqrt
        var.sub_(mom)


class Adagrad(TF1Optimizer):
    """``tf.train.AdagradOptimizer``: ``ApplyAdagrad``; the accumulator starts at 0.1."""

    NAME = "ADAGRAD"
    STATE_KEYS = ("accumulator",)

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float, *,
                 initial_accumulator: float = 0.1) -> None:
        super().__init__(params, lr, initial_accumulator=initial_accumulator)

    def initial_slot(self, key: str, param: Tensor) -> Tensor:
        # TF's constant_initializer takes the Python value in the variable's dtype: 0.1
        # rounded to float32 for a float32 variable, exact for a float64 one
        value = float(self.defaults["initial_accumulator"])
        return torch.full_like(param, value, memory_format=torch.preserve_format)

    def _dense(self, group: dict[str, Any], var: Tensor, grad: Tensor,
               state: dict[str, Tensor], lr: float) -> None:
        accum = state["accumulator"]
        accum.add_(grad.square())
        var.sub_(grad * lr * accum.rsqrt())


class Adadelta(TF1Optimizer):
    """``tf.train.AdadeltaOptimizer``: ``ApplyAdadelta``."""

    NAME = "ADADELTA"
    STATE_KEYS = ("accum", "accum_update")

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float, *,
                 rho: float = 0.9, epsilon: float = 1e-6) -> None:
        super().__init__(params, lr, rho=rho, epsilon=epsilon)

    def _dense(self, group: dict[str, Any], var: Tensor, grad: Tensor,
               state: dict[str, Tensor], lr: float) -> None:
        rho, eps = self._constant(group, "rho"), self._constant(group, "epsilon")
        accum, accum_update = state["accum"], state["accum_update"]
        one_minus_rho = 1 - _scalar(rho, var)
        accum.copy_(accum * rho + grad.square() * one_minus_rho)
        update = (accum_update + eps).sqrt() * (accum + eps).rsqrt() * grad
        var.sub_(update * lr)
        accum_update.copy_(accum_update * rho + update.square() * one_minus_rho)


class Momentum(TF1Optimizer):
    """``tf.train.MomentumOptimizer``: ``ApplyMomentum`` (upstream: Nesterov, 0.9)."""

    NAME = "MOM"
    STATE_KEYS = ("momentum",)

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float, *,
                 momentum: float = 0.9, use_nesterov: bool = True) -> None:
        super().__init__(params, lr, momentum=momentum, use_nesterov=use_nesterov)

    def _dense(self, group: dict[str, Any], var: Tensor, grad: Tensor,
               state: dict[str, Tensor], lr: float) -> None:
        momentum = self._constant(group, "momentum")
        accum = state["momentum"]
        accum.copy_(accum * momentum + grad)
        if group["use_nesterov"]:
            var.sub_(grad * lr + accum * momentum * lr)
        else:
            var.sub_(accum * lr)


class GradientDescent(TF1Optimizer):
    """``tf.train.GradientDescentOptimizer``: ``ApplyGradientDescent``, no slots."""

    NAME = "SGD"

    def _dense(self, group: dict[str, Any], var: Tensor, grad: Tensor,
               state: dict[str, Tensor], lr: float) -> None:
        var.sub_(grad * lr)


CLASSES: dict[str, type[TF1Optimizer]] = {cls.NAME: cls for cls in (
    Adagrad, Adadelta, Adam, RMSProp, Momentum, GradientDescent)}


def make_optimizer(name: str, params: Iterable[Tensor] | Iterable[dict[str, Any]],
                   lr: float) -> TF1Optimizer:
    """``facenet.train``'s optimizer ``name`` (``ADAM``, ``RMSPROP``...) with its settings."""
    key = name.upper()
    if key not in CLASSES:
        raise TrainingError(f"optimizer {name!r} is not supported; expected one of "
                            f"{', '.join(CLASSES)}")
    return CLASSES[key](params, lr, **dict(UPSTREAM[key].hyper))
