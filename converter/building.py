"""Building our model of an architecture record from a converted state dict.

The one place a converted file becomes a model (embed, export and parity call it). It lives
above the model zoo: the zoo knows its models, not the converter's architecture records.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from facenet_convert.converter.core.errors import MappingError
from facenet_convert.converter.registry import head_sizes

if TYPE_CHECKING:
    from torch import Tensor, nn

    from facenet_convert.converter.architecture import Architecture


def build_model(record: Architecture, state: Mapping[str, Tensor],
                source: str | os.PathLike[str]) -> nn.Module:
    """Our model of ``record`` sized by ``state``'s head, ``state`` loaded strictly, eval mode.

    The one place a converted file becomes a model (embed, export and parity call it)."""
    if record.task == "embedding":
        embedding, classes = head_sizes(record, {k: tuple(v.shape) for k, v in state.items()})
        if embedding is None:
            raise MappingError(f"expected a {record.name} state dict with a 2-d "
                               f"{record.embedding_key}", path=source, key=record.embedding_key)
        net = record.model_class()(embedding_size=embedding, num_classes=classes)
    else:
        net = record.model_class()()
    from facenet_convert.models.weights import load_strict

    load_strict(net, state, source)
    return net.eval()
