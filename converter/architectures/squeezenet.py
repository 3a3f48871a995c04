"""SqueezeNet: davidsandberg/facenet's ``models/squeezenet.py``.

Target: our ``SqueezeNet``. Upstream returns no ``end_points``; parity compares the output of
every layer scope in network order (``conv1``, the pools, each ``fireN`` concat, ``conv10``,
``avgpool10``), the bottleneck before and after its BatchNorm and the embeddings.
"""

from __future__ import annotations

from facenet_convert.converter.architecture import (
    LOGITS_END_POINT,
    Architecture,
    LayerRow,
    conv,
    conv_bn,
    embedding_head,
    head_end_points,
    slim_schemes,
)
from facenet_convert.converter.mapping import TargetEntry
from facenet_convert.converter.tables import squeezenet_slim as slim

#: fire module -> (input channels, squeeze, expand), in network order
FIRES = {"fire2": (96, 16, 64), "fire3": (128, 16, 64), "fire4": (128, 32, 128),
         "fire5": (256, 32, 128), "fire6": (256, 48, 192), "fire7": (384, 48, 192),
         "fire8": (384, 64, 256), "fire9": (512, 64, 256)}
DEFAULT_EMBEDDING_SIZE = 128  # train_softmax.py's --embedding_size default


def layout(embedding_size: int | None = None, num_classes: int | None = None
           ) -> list[TargetEntry]:
    """``SqueezeNet`` state_dict layout, logits only with classes."""
    entries = conv_bn("conv1", 3, 96, 7)
    for name, (cin, squeeze, expand) in FIRES.items():
        entries += [*conv_bn(f"{name}.squeeze", cin, squeeze, 1),
                    *conv_bn(f"{name}.expand1x1", squeeze, expand, 1),
                    *conv_bn(f"{name}.expand3x3", squeeze, expand, 3)]
    entries += conv("conv10", 512, 1000, 1)
    size = DEFAULT_EMBEDDING_SIZE if embedding_size is None else embedding_size
    return entries + embedding_head(1000, size, num_classes)


_P = "squeezenet/"


def _row(label: str, tensor: str) -> LayerRow:
    return LayerRow(label, (f"{_P}{label}/{tensor}:0",), label, "nhwc")


END_POINTS: tuple[LayerRow, ...] = (
    _row("conv1", "Relu"),
    _row("maxpool1", "MaxPool"),
    *(_row(name, "concat") for name in ("fire2", "fire3", "fire4")),
    _row("maxpool4", "MaxPool"),
    *(_row(name, "concat") for name in ("fire5", "fire6", "fire7", "fire8")),
    _row("maxpool8", "MaxPool"),
    _row("fire9", "concat"),
    _row("conv10", "BiasAdd"),
    _row("avgpool10", "AvgPool"),
    *head_end_points("squeezenet"),
)

RECORDS = (
    Architecture(
        name="squeezenet",
        task="embedding",
        model="facenet_convert.models.squeezenet:SqueezeNet",
        layout=layout,
        schemes=(
            *slim_schemes(slim.CHECKPOINT, slim.FROZEN, "squeezenet"),
        ),
        description="FaceNet-trained SqueezeNet (davidsandberg train_softmax.py "
                    "--model_def models.squeezenet)",
        input_size=(160, 160),
        preprocessing="fixed_standardization",
        default_embedding_size=DEFAULT_EMBEDDING_SIZE,
        end_points=END_POINTS,
        logits_end_point=LOGITS_END_POINT,
        upstream_model_def="squeezenet",
        upstream_scope="squeezenet",
        embedding_key="last_linear.weight",
        classes_key="logits.weight",
    ),
)
