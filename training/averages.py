"""``tf.train.ExponentialMovingAverage`` as ``facenet.train`` uses it, on torch tensors.

``ExponentialMovingAverage(moving_average_decay, global_step)`` keeps a shadow of every
trainable variable (slim puts BatchNorm's moving statistics among them) with the decay
``min(decay, (1 + step) / (10 + step))``; ``facenet.train`` runs it beside the optimizer
(neither waits for the other), so it reads the variables as they were when the step began.
The loss averages (``ExponentialMovingAverage(0.9, name='avg')``) have no ``num_updates``.
Each update is ``assign_moving_average``: ``shadow -= (shadow - value) * (1 - decay)``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from facenet_convert.models.embedding_net import float32_value

MOVING_AVERAGE_DECAY = 0.9999
LOSS_AVERAGE_DECAY = 0.9


class ExponentialMovingAverage:
    """Shadows by name; ``update(values, num_updates)`` moves each toward its value."""

    def __init__(self, decay: float = MOVING_AVERAGE_DECAY, *,
                 shadows: Mapping[str, Tensor] | None = None) -> None:
        self.decay = float(decay)
        self.shadows: dict[str, Tensor] = dict(shadows or {})

    def effective_decay(self, num_updates: int | None, like: Tensor) -> Tensor:
        """``min(decay, (1 + n) / (10 + n))`` in the variables' dtype (TF: the graph's)."""
        decay = torch.tensor(float32_value(self.decay), dtype=like.dtype)
        if num_updates is None:
            return decay
        n = torch.tensor(float(num_updates), dtype=like.dtype)
        return torch.minimum(decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, values: Mapping[str, Tensor], num_updates: int | None = None) -> None:
        """Shadow every value (a new name starts at its value, as TF's initializer does)."""
        if not values:
            return
        like = next(iter(values.values()))
        one_minus = 1.0 - self.effective_decay(num_updates, like)
        for name, value in values.items():
            shadow = self.shadows.get(name)
            if shadow is None:
                self.shadows[name] = value.detach().clone()
                continue
            shadow.sub_((shadow - value.detach()) * one_minus.to(shadow.dtype))

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.shadows)
