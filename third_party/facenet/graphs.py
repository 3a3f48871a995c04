"""The upstream inference graph, built by davidsandberg's own model code (pinned wheel).

Parity rebuilds it when a checkpoint comes without its ``.meta``; the test builders add the
training parts around it. Call inside ``compat.upstream_mode()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IMAGE_SIZE = 160
KEEP_PROBABILITY = 0.8
WEIGHT_DECAY = 5e-4


@dataclass
class InferenceGraph:
    """Handles of the inference part of the upstream graph."""

    images: Any
    phase_train: Any
    prelogits: Any
    end_points: dict[str, Any]
    logits: Any | None
    embeddings: Any


def build_inference(up: Any, *, embedding_size: int, num_classes: int | None,
                    phase_train: bool | None = None,
                    model_def: str = "inception_resnet_v1") -> InferenceGraph:
    """The upstream inference graph in the current default graph (call inside upstream_mode).

    ``phase_train=None`` gives the ``phase_train`` placeholder (default False) as in released
    graphs; a Python bool builds one branch only, so every internal tensor can be fetched.
    ``model_def`` is upstream's ``--model_def`` module (an architecture record's
    ``upstream_model_def``), whose ``inference()`` builds the network and its bottleneck.
    """
    tf, slim = up.tf, up.slim
    images = tf.placeholder(tf.float32, [None, IMAGE_SIZE, IMAGE_SIZE, 3], name="input")
    if phase_train is None:
        phase = tf.placeholder_with_default(False, shape=(), name="phase_train")
    else:
        phase = bool(phase_train)
    prelogits, end_points = up.model(model_def).inference(
        images, KEEP_PROBABILITY, phase_train=phase, bottleneck_layer_size=embedding_size,
        weight_decay=WEIGHT_DECAY)
    logits = None
    if num_classes:
        logits = slim.fully_connected(
            prelogits, num_classes, activation_fn=None,
            weights_initializer=slim.initializers.xavier_initializer(),
            weights_regularizer=slim.l2_regularizer(WEIGHT_DECAY), scope="Logits", reuse=False)
    embeddings = tf.nn.l2_normalize(prelogits, 1, 1e-10, name="embeddings")
    return InferenceGraph(images, phase, prelogits, dict(end_points or {}), logits, embeddings)
