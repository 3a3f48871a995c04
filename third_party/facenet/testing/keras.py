"""Keras ``.h5`` files written by tf-keras itself: keras-facenet's model with trained-looking
random weights (BatchNorm statistics away from 0 / 1), for parity tests and the CI report."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

SCHEME = "inception_resnet_v1.keras_facenet"


def write_keras_h5(path: str | os.PathLike[str], *, embedding_size: int = 128,
                   weights_only: bool = False, seed: int = 3, scheme: str = SCHEME) -> Path:
    """Save the pinned keras-facenet model (``model.save`` or ``save_weights``) at ``path``."""
    from facenet_convert.third_party.facenet.keras_facenet import build_model

    model = build_model(scheme, embedding_size, float64=False)
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        shape = tuple(weight.shape)
        if "moving_variance" in weight.name:
            value = rng.uniform(0.5, 1.5, shape)
        elif "kernel" in weight.name:
            value = rng.normal(0, np.sqrt(2.0 / np.prod(shape[:-1])), shape)
        else:
            value = rng.normal(0, 0.1, shape)
        weight.assign(value.astype(np.float32))
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if weights_only:
        model.save_weights(str(target))
    else:
        model.save(str(target))
    return target
