"""What one architecture record says: the type of the registry's entries (data, no torch).

A record (:class:`Architecture`) describes an architecture once: its PyTorch model class, its
target state_dict layout, one mapping table per naming scheme with the tensor that recognises
that scheme, its input and preprocessing, the end points parity localises divergence on, and
the upstream ``--model_def`` that builds its TF graph. Records live in
``converter/architectures/``; :mod:`facenet_convert.converter.registry` collects them.

Layouts are written as data (builders below mirror torch's registration order) so that a
``.safetensors`` conversion never imports torch; a schema test checks each against the model's
real ``state_dict()``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from facenet_convert.converter.core.errors import MappingError
from facenet_convert.converter.mapping import Table, TargetEntry

#: ``layout(embedding_size, num_classes)`` -> ordered target entries.
Layout = Callable[[int | None, int | None], list[TargetEntry]]

TASKS = ("embedding", "detection")


@dataclass(frozen=True)
class LayerRow:
    """One comparable point of the network for parity's per-layer localisation."""

    label: str                   # upstream name shown in reports (end point or block scope)
    tf_tensors: tuple[str, ...]  # candidate tensor names in the TF graph, first present wins
    module: str                  # our module path (``model.get_submodule``); "" = model output
    layout: str                  # "nhwc" | "nc" | "nhwc-swapped" (MTCNN's W/H-swapped nets)

    @property
    def display(self) -> str:
        """``block17_4 (repeat_2.3)``: both names, as the report shows them."""
        return f"{self.label} ({self.module or 'output'})"


@dataclass(frozen=True)
class Scheme:
    """One naming scheme of an architecture's sources and the tensor that recognises it."""

    table: Table
    marker: str                         # whole tensor name present only in this scheme
    graph: bool | None = None           # True: GraphDef sources only; False: never; None: any
    embedding_tensor: str | None = None  # its dim 1 is the embedding size
    classes_tensor: str | None = None    # its dim 1 is the class count

    @property
    def name(self) -> str:
        return self.table.scheme

    def fits(self, names: set[str], *, graph: bool) -> bool:
        return self.marker in names and (self.graph is None or self.graph == graph)


@dataclass(frozen=True)
class Architecture:
    """One architecture, described once (see the module docstring)."""

    name: str                       # ``--model`` name, e.g. "inception_resnet_v1"
    task: str                       # "embedding" | "detection"
    model: str                      # "module:Class" of the PyTorch model (imported on use)
    layout: Layout
    schemes: tuple[Scheme, ...]     # in detection order; the first fitting one wins
    description: str
    input_size: tuple[int, int] | None = None    # (H, W); None = any size (PNet)
    preprocessing: str | None = None             # default input standardization
    default_embedding_size: int | None = None
    end_points: tuple[LayerRow, ...] = ()        # parity localisation, network order
    logits_end_point: LayerRow | None = None     # added when both sides have logits
    upstream_model_def: str | None = None        # facenet/src/models/<name>.py (TF graph)
    upstream_scope: str | None = None            # its top variable scope
    embedding_key: str | None = None             # target key whose dim 0 is the embedding size
    classes_key: str | None = None               # target key whose dim 0 is the class count

    @property
    def tables(self) -> dict[str, Table]:
        """This architecture's mapping tables by name."""
        return {scheme.table.name: scheme.table for scheme in self.schemes}

    def default_scheme(self, *, graph: bool) -> Scheme:
        """The scheme assumed when the user names this model and detection found none."""
        return next(s for s in self.schemes if s.graph is None or s.graph == graph)

    def model_class(self) -> type[Any]:
        """The PyTorch model class (imports torch)."""
        module, _, attr = self.model.partition(":")
        return getattr(importlib.import_module(module), attr)


# --------------------------------------------------------------------------- layout builders

def batch_norm(prefix: str, channels: int) -> list[TargetEntry]:
    """torch ``BatchNorm*d`` parameters and buffers."""
    return [TargetEntry(f"{prefix}.weight", (channels,)),
            TargetEntry(f"{prefix}.bias", (channels,)),
            TargetEntry(f"{prefix}.running_mean", (channels,)),
            TargetEntry(f"{prefix}.running_var", (channels,)),
            TargetEntry(f"{prefix}.num_batches_tracked", (), "int64")]


def conv(prefix: str, cin: int, cout: int, kh: int, kw: int | None = None, *,
         bias: bool = True) -> list[TargetEntry]:
    """torch ``Conv2d`` (``kw`` defaults to ``kh``)."""
    entries = [TargetEntry(f"{prefix}.weight", (cout, cin, kh, kh if kw is None else kw))]
    if bias:
        entries.append(TargetEntry(f"{prefix}.bias", (cout,)))
    return entries


def conv_bn(prefix: str, cin: int, cout: int, kh: int, kw: int | None = None
            ) -> list[TargetEntry]:
    """facenet-pytorch ``BasicConv2d``: ``.conv`` without bias, then ``.bn``."""
    return [*conv(f"{prefix}.conv", cin, cout, kh, kw, bias=False),
            *batch_norm(f"{prefix}.bn", cout)]


def linear(prefix: str, cin: int, cout: int, *, bias: bool = True) -> list[TargetEntry]:
    """torch ``Linear``."""
    entries = [TargetEntry(f"{prefix}.weight", (cout, cin))]
    if bias:
        entries.append(TargetEntry(f"{prefix}.bias", (cout,)))
    return entries


def embedding_head(features: int, embedding_size: int, num_classes: int | None
                   ) -> list[TargetEntry]:
    """Upstream's embedding head: bottleneck without bias, BatchNorm, optional logits."""
    if embedding_size < 1 or (num_classes is not None and num_classes < 1):
        raise MappingError(f"embedding_size and num_classes must be positive, got "
                           f"{embedding_size} and {num_classes}")
    entries = [*linear("last_linear", features, embedding_size, bias=False),
               *batch_norm("last_bn", embedding_size)]
    if num_classes is not None:
        entries += linear("logits", embedding_size, num_classes)
    return entries


# --------------------------------------------------------------------------- upstream's head

#: The logits row of every upstream embedding graph (train_softmax.py builds ``Logits``
#: outside the network's scope).
LOGITS_END_POINT = LayerRow("Logits", ("Logits/BiasAdd:0",), "logits", "nc")


def head_end_points(scope: str) -> tuple[LayerRow, ...]:
    """The end points upstream's embedding head adds under ``scope``: bottleneck, its
    BatchNorm (fused 4-d between two reshapes in newer tf_slim, unfused in older: either is
    the (N, E) prelogits tensor) and the embeddings."""
    return (
        LayerRow("Bottleneck", (f"{scope}/Bottleneck/MatMul:0",), "last_linear", "nc"),
        LayerRow("Bottleneck/BatchNorm", (f"{scope}/Bottleneck/BatchNorm/Reshape_1:0",
                                          f"{scope}/Bottleneck/BatchNorm/batchnorm/add_1:0"),
                 "last_bn", "nc"),
        LayerRow("embeddings", ("embeddings:0",), "", "nc"),
    )


def slim_schemes(checkpoint: Table, frozen: Table, scope: str) -> tuple[Scheme, Scheme]:
    """A TF-slim embedding network's two schemes, both recognised by ``scope``'s bottleneck:
    training checkpoints (not GraphDefs) and frozen graphs (GraphDefs only)."""
    bottleneck = f"{scope}/Bottleneck/weights"
    return (Scheme(checkpoint, bottleneck, graph=False, embedding_tensor=bottleneck,
                   classes_tensor="Logits/weights"),
            Scheme(frozen, bottleneck, graph=True, embedding_tensor=bottleneck,
                   classes_tensor="Logits/weights"))
