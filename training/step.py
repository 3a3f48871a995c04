"""One training step in upstream's order (``train_softmax.py`` + ``facenet.train``).

What one ``sess.run(train_op)`` of upstream does, written as torch:

1. the variables' EMA and its ``num_updates`` read the variables and ``global_step`` as the
   step found them (``facenet.train`` runs the averaging beside the optimizer, and it has no
   input to wait for);
2. the forward pass in training mode: dropout, BatchNorm on batch statistics with its moving
   statistics updated in place (``decay`` 0.995, the batch variance unbiased, as TF's fused
   kernel reports it; ``epsilon`` 0.001);
3. the losses: cross-entropy, slim's weight decay, prelogits norm, center loss; the centers
   move by ``alfa`` (``scatter_sub``) before the optimizer sees them;
4. the loss averages (decay 0.9) of the cross-entropy and the total loss;
5. gradients of the total loss and the optimizer's update of every variable that has one
   (``tf.global_variables()``: the network and the centers);
6. ``global_step += 1``.

BatchNorm's gamma does not exist upstream (``scale=False``): it stays 1 and is not trained.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from facenet_convert.models.embedding_net import float32_value, l2_normalize
from facenet_convert.training.averages import LOSS_AVERAGE_DECAY, ExponentialMovingAverage
from facenet_convert.training.losses import (
    center_loss,
    prelogits_norm,
    regularized_weights,
    softmax_cross_entropy,
    triplet_loss,
    update_centers,
    weight_decay,
)
from facenet_convert.training.optimizers import TF1Optimizer, TrainingError

#: slim batch_norm_params of upstream's model_defs
BATCH_NORM_DECAY = 0.995
BATCH_NORM_EPSILON = 0.001


@dataclass
class LossSettings:
    """``train_softmax.py``'s loss arguments (its defaults; the recipe in docs/training.md)."""

    weight_decay: float = 0.0
    center_loss_factor: float = 0.0
    center_loss_alfa: float = 0.95
    prelogits_norm_loss_factor: float = 0.0
    prelogits_norm_p: float = 1.0
    keep_probability: float = 1.0
    triplet_alpha: float = 0.2


@dataclass
class StepResult:
    """The losses of one step (float values of what upstream would log)."""

    step: int
    total_loss: float
    cross_entropy: float | None
    losses: dict[str, float] = field(default_factory=dict)


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters upstream trains: all but BatchNorm's gamma (``scale=False``)."""
    frozen = {f"{name}.weight" if name else "weight"
              for name, module in model.named_modules()
              if isinstance(module, nn.modules.batchnorm._BatchNorm)}
    return {name: p for name, p in model.named_parameters() if name not in frozen}


def averaged_variables(model: nn.Module) -> dict[str, Tensor]:
    """What upstream's ``tf.trainable_variables()`` holds: the trained parameters and
    BatchNorm's moving statistics (slim adds them to that collection)."""
    values: dict[str, Tensor] = dict(trainable_parameters(model))
    for name, buffer in model.named_buffers():
        if name.endswith((".running_mean", ".running_var")):
            values[name] = buffer
    state_order = list(model.state_dict(keep_vars=True))
    return {name: values[name] for name in state_order if name in values}


def prepare_model(model: nn.Module, keep_probability: float) -> None:
    """Training mode with upstream's BatchNorm decay and dropout; gamma frozen at 1."""
    momentum = float32_value(1.0 - BATCH_NORM_DECAY)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum
            if module.weight is not None:
                module.weight.requires_grad_(False)
        elif isinstance(module, nn.Dropout):
            module.p = 1.0 - keep_probability
    for name in trainable_parameters(model):
        model.get_parameter(name).requires_grad_(True)
    model.train()


class Trainer:
    """Upstream's training step over a model, its optimizer, centers, EMA and loss averages."""

    def __init__(self, model: nn.Module, optimizer: TF1Optimizer, *,
                 settings: LossSettings | None = None, centers: Tensor | None = None,
                 ema: ExponentialMovingAverage | None = None,
                 loss_averages: ExponentialMovingAverage | None = None,
                 global_step: int = 0) -> None:
        self.model = model
        self.optimizer = optimizer
        self.settings = settings or LossSettings()
        self.centers = centers
        self.ema = ema
        self.loss_averages = loss_averages or ExponentialMovingAverage(LOSS_AVERAGE_DECAY)
        self.global_step = int(global_step)
        prepare_model(model, self.settings.keep_probability)
        if centers is not None:
            centers.requires_grad_(True)

    def _regularization(self, prelogits: Tensor, labels: Tensor | None
                        ) -> tuple[list[Tensor], dict[str, Tensor], Tensor | None]:
        s = self.settings
        terms: list[Tensor] = []
        named: dict[str, Tensor] = {}
        decay = weight_decay(regularized_weights(self.model), s.weight_decay)
        if decay is not None and s.weight_decay:
            terms.append(decay)
            named["weight_decay"] = decay
        norm = prelogits_norm(prelogits, s.prelogits_norm_p)
        terms.append(norm * float32_value(s.prelogits_norm_loss_factor))
        named["prelogits_norm"] = norm
        centers_batch = None
        if self.centers is not None and labels is not None:
            loss, centers_batch = center_loss(prelogits, labels, self.centers)
            terms.append(loss * float32_value(s.center_loss_factor))
            named["center_loss"] = loss
        return terms, named, centers_batch

    def _begin(self, learning_rate: float) -> None:
        """What every step does first, in upstream's order: the EMA reads the variables
        before the optimizer moves them, then the step's learning rate, training mode."""
        if self.ema is not None:
            self.ema.update(averaged_variables(self.model), self.global_step)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        self.model.train()

    def step(self, images: Tensor, labels: Tensor, learning_rate: float) -> StepResult:
        """One softmax (+ center loss) step on ``images`` (NCHW) and class ``labels``."""
        self._begin(learning_rate)
        prelogits = self.model.prelogits(images)
        logits = self.model.logits(prelogits) if hasattr(self.model, "logits") else None
        terms, named, centers_batch = self._regularization(prelogits, labels)
        cross_entropy = None
        if logits is not None:
            cross_entropy = softmax_cross_entropy(logits, labels)
            terms.insert(0, cross_entropy)
        total = torch.stack(terms).sum()
        return self._finish(total, cross_entropy, named, prelogits, labels, centers_batch)

    def triplet_step(self, images: Tensor, learning_rate: float) -> StepResult:
        """One ``train_tripletloss.py`` step: rows ``a0 p0 n0 a1 p1 n1 ...`` in one batch."""
        if images.shape[0] % 3:
            raise TrainingError(f"a triplet batch needs a multiple of 3 images, got "
                                f"{images.shape[0]}")
        self._begin(learning_rate)
        prelogits = self.model.prelogits(images)
        embeddings = l2_normalize(prelogits)
        loss = triplet_loss(embeddings[0::3], embeddings[1::3], embeddings[2::3],
                            self.settings.triplet_alpha)
        terms = [loss]
        decay = weight_decay(regularized_weights(self.model), self.settings.weight_decay)
        if decay is not None and self.settings.weight_decay:
            terms.append(decay)
        total = torch.stack(terms).sum()
        return self._finish(total, None, {"triplet_loss": loss}, prelogits, None, None,
                            loss_name="triplet_loss", loss_value=loss)

    def _finish(self, total: Tensor, cross_entropy: Tensor | None, named: Mapping[str, Tensor],
                prelogits: Tensor, labels: Tensor | None, centers_batch: Tensor | None, *,
                loss_name: str = "cross_entropy", loss_value: Tensor | None = None) -> StepResult:
        value = float(total.detach())
        if not math.isfinite(value):
            raise TrainingError(f"step {self.global_step}: the total loss is {value}; stopped "
                                "before any variable moved")
        if centers_batch is not None and labels is not None and self.centers is not None:
            update_centers(self.centers, labels, prelogits, centers_batch,
                           self.settings.center_loss_alfa)
        tracked = cross_entropy if cross_entropy is not None else loss_value
        averages = {"total_loss": total.detach()}
        if tracked is not None:
            averages = {loss_name: tracked.detach(), **averages}
        self.loss_averages.update(averages)
        self.optimizer.zero_grad(set_to_none=True)
        if self.centers is not None:
            self.centers.grad = None
        total.backward()
        rows = {}
        if self.centers is not None and labels is not None:
            rows[self.centers] = labels
        self.optimizer.step(sparse_rows=rows)
        self.global_step += 1
        return StepResult(self.global_step, value,
                          None if cross_entropy is None else float(cross_entropy.detach()),
                          {k: float(v.detach()) for k, v in named.items()})
