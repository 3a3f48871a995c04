"""Upstream's losses (facenet 1.0.5 ``facenet.py`` and ``train_softmax.py``), in torch.

* softmax cross-entropy: ``mean(sparse_softmax_cross_entropy_with_logits)``;
* center loss: ``mean(square(prelogits - centers[labels]))``; the centers move by ``alfa``,
  not by the loss's gradient: ``centers[labels] -= (1 - alfa) * (centers[labels] -
  prelogits)`` (``tf.scatter_sub``, repeated labels add up). ``train_softmax.py`` also hands
  ``centers`` to the optimizer (it optimises ``tf.global_variables()``), so they get a
  gradient step on top: :class:`~facenet_convert.training.step.Trainer` does both;
* prelogits norm: ``mean(norm(abs(prelogits) + 1e-4, ord=p, axis=1))``;
* slim weight decay: ``weight_decay * sum(w**2) / 2`` per ``weights`` variable (every conv
  and fully connected kernel, never biases or BatchNorm);
* triplet loss: ``mean(max(|a-p|^2 - |a-n|^2 + alpha, 0))`` and ``select_triplets``
  (``train_tripletloss.py``).

Factors and constants are float32-rounded, as the float32 graph held them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional

from facenet_convert.models.embedding_net import float32_value

PRELOGITS_NORM_EPS = 1e-4


def softmax_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """``tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))``."""
    return functional.cross_entropy(logits, labels.to(torch.long), reduction="mean")


def center_loss(prelogits: Tensor, labels: Tensor, centers: Tensor) -> tuple[Tensor, Tensor]:
    """``facenet.center_loss``'s loss and the gathered centers (before their update)."""
    centers_batch = centers[labels.to(torch.long)]
    return (prelogits - centers_batch).square().mean(), centers_batch


@torch.no_grad()
def update_centers(centers: Tensor, labels: Tensor, prelogits: Tensor,
                   centers_batch: Tensor, alfa: float) -> None:
    """``tf.scatter_sub(centers, labels, (1 - alfa) * (centers_batch - prelogits))``."""
    diff = float32_value(1 - alfa) * (centers_batch.detach() - prelogits.detach())
    centers.index_add_(0, labels.to(torch.long), -diff)


def prelogits_norm(prelogits: Tensor, p: float = 1.0) -> Tensor:
    """``reduce_mean(tf.norm(tf.abs(prelogits) + eps, ord=p, axis=1))``."""
    x = prelogits.abs() + float32_value(PRELOGITS_NORM_EPS)
    if p == 1:
        norms = x.abs().sum(dim=1)
    elif p == 2:
        norms = x.square().sum(dim=1).sqrt()
    else:
        norms = x.abs().pow(p).sum(dim=1).pow(1.0 / p)
    return norms.mean()


def regularized_weights(model: nn.Module) -> list[Tensor]:
    """The tensors slim's ``weights_regularizer`` covers: conv and fully connected kernels."""
    return [module.weight for module in model.modules()
            if isinstance(module, (nn.Conv2d, nn.Linear)) and module.weight.requires_grad]


def weight_decay(weights: Iterable[Tensor], scale: float) -> Tensor | None:
    """Sum of ``slim.l2_regularizer(scale)`` terms: ``scale * sum(w**2) / 2`` each."""
    factor = float32_value(scale)
    terms = [factor * (w.square().sum() / 2) for w in weights]
    return torch.stack(terms).sum() if terms else None


def triplet_loss(anchor: Tensor, positive: Tensor, negative: Tensor, alpha: float) -> Tensor:
    """``facenet.triplet_loss``."""
    pos_dist = (anchor - positive).square().sum(dim=1)
    neg_dist = (anchor - negative).square().sum(dim=1)
    basic = pos_dist - neg_dist + float32_value(alpha)
    return torch.clamp(basic, min=0.0).mean(dim=0)


def select_triplets(embeddings: np.ndarray, images_per_class: Sequence[int],
                    people_per_batch: int, alpha: float, rng: np.random.Generator
                    ) -> tuple[list[tuple[int, int, int]], int]:
    """``train_tripletloss.select_triplets`` (VGG Face selection) on row indices.

    For every anchor-positive pair of a class, one random negative among those with
    ``neg_dist - pos_dist < alpha``; returns the shuffled triplets and the number of pairs.
    """
    triplets: list[tuple[int, int, int]] = []
    start = 0
    pairs = 0
    for person in range(people_per_batch):
        count = int(images_per_class[person])
        for j in range(1, count):
            a_idx = start + j - 1
            neg_dists = np.sum(np.square(embeddings[a_idx] - embeddings), 1)
            for pair in range(j, count):
                p_idx = start + pair
                pos_dist = np.sum(np.square(embeddings[a_idx] - embeddings[p_idx]))
                neg_dists[start:start + count] = np.nan
                with np.errstate(invalid="ignore"):
                    candidates = np.where(neg_dists - pos_dist < alpha)[0]
                if candidates.shape[0] > 0:
                    n_idx = int(candidates[rng.integers(candidates.shape[0])])
                    triplets.append((a_idx, p_idx, n_idx))
                pairs += 1
        start += count
    order = rng.permutation(len(triplets))
    return [triplets[i] for i in order], pairs
