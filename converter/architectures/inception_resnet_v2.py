"""Inception-ResNet-V2: davidsandberg/facenet's ``models/inception_resnet_v2.py``.

Target: our ``InceptionResNetV2`` (V1's key style). Parity end points are the upstream
``end_points`` (``Conv2d_1a_3x3`` ... ``Conv2d_7b_1x1``) plus the output of every repeated block
(``Repeat/block35_N``, ``Repeat_1/block17_N``, ``Repeat_2/block8_N``), the last ``Block8``,
the pool, the bottleneck before and after its BatchNorm and the embeddings.
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
from facenet_convert.converter.tables import inception_resnet_v2_slim as slim


def _block35(p: str) -> list[TargetEntry]:
    return [*conv_bn(f"{p}.branch0", 320, 32, 1),
            *conv_bn(f"{p}.branch1.0", 320, 32, 1), *conv_bn(f"{p}.branch1.1", 32, 32, 3),
            *conv_bn(f"{p}.branch2.0", 320, 32, 1), *conv_bn(f"{p}.branch2.1", 32, 48, 3),
            *conv_bn(f"{p}.branch2.2", 48, 64, 3), *conv(f"{p}.conv2d", 128, 320, 1)]


def _block17(p: str) -> list[TargetEntry]:
    return [*conv_bn(f"{p}.branch0", 1088, 192, 1),
            *conv_bn(f"{p}.branch1.0", 1088, 128, 1), *conv_bn(f"{p}.branch1.1", 128, 160, 1, 7),
            *conv_bn(f"{p}.branch1.2", 160, 192, 7, 1), *conv(f"{p}.conv2d", 384, 1088, 1)]


def _block8(p: str) -> list[TargetEntry]:
    return [*conv_bn(f"{p}.branch0", 2080, 192, 1),
            *conv_bn(f"{p}.branch1.0", 2080, 192, 1), *conv_bn(f"{p}.branch1.1", 192, 224, 1, 3),
            *conv_bn(f"{p}.branch1.2", 224, 256, 3, 1), *conv(f"{p}.conv2d", 448, 2080, 1)]


DEFAULT_EMBEDDING_SIZE = 128  # train_softmax.py's --embedding_size default


def layout(embedding_size: int | None = None, num_classes: int | None = None
           ) -> list[TargetEntry]:
    """``InceptionResNetV2`` state_dict layout, logits only with classes."""
    entries = [*conv_bn("conv2d_1a", 3, 32, 3), *conv_bn("conv2d_2a", 32, 32, 3),
               *conv_bn("conv2d_2b", 32, 64, 3), *conv_bn("conv2d_3b", 64, 80, 1),
               *conv_bn("conv2d_4a", 80, 192, 3),
               *conv_bn("mixed_5b.branch0", 192, 96, 1),
               *conv_bn("mixed_5b.branch1.0", 192, 48, 1),
               *conv_bn("mixed_5b.branch1.1", 48, 64, 5),
               *conv_bn("mixed_5b.branch2.0", 192, 64, 1),
               *conv_bn("mixed_5b.branch2.1", 64, 96, 3),
               *conv_bn("mixed_5b.branch2.2", 96, 96, 3),
               *conv_bn("mixed_5b.branch3.1", 192, 64, 1)]
    for index in range(10):
        entries += _block35(f"repeat_1.{index}")
    entries += [*conv_bn("mixed_6a.branch0", 320, 384, 3),
                *conv_bn("mixed_6a.branch1.0", 320, 256, 1),
                *conv_bn("mixed_6a.branch1.1", 256, 256, 3),
                *conv_bn("mixed_6a.branch1.2", 256, 384, 3)]
    for index in range(20):
        entries += _block17(f"repeat_2.{index}")
    entries += [*conv_bn("mixed_7a.branch0.0", 1088, 256, 1),
                *conv_bn("mixed_7a.branch0.1", 256, 384, 3),
                *conv_bn("mixed_7a.branch1.0", 1088, 256, 1),
                *conv_bn("mixed_7a.branch1.1", 256, 288, 3),
                *conv_bn("mixed_7a.branch2.0", 1088, 256, 1),
                *conv_bn("mixed_7a.branch2.1", 256, 288, 3),
                *conv_bn("mixed_7a.branch2.2", 288, 320, 3)]
    for index in range(9):
        entries += _block8(f"repeat_3.{index}")
    entries += [*_block8("block8"), *conv_bn("conv2d_7b", 2080, 1536, 1)]
    size = DEFAULT_EMBEDDING_SIZE if embedding_size is None else embedding_size
    return entries + embedding_head(1536, size, num_classes)


_P = "InceptionResnetV2/"


def _row(label: str, tensor: str, module: str) -> LayerRow:
    return LayerRow(label, (f"{_P}{label}/{tensor}:0",), module, "nhwc")


def _block_row(scope: str, block: str, index: int, module: str) -> LayerRow:
    return LayerRow(f"{block}_{index}", (f"{_P}{scope}/{block}_{index}/Relu:0",),
                    f"{module}.{index - 1}", "nhwc")


END_POINTS: tuple[LayerRow, ...] = (
    _row("Conv2d_1a_3x3", "Relu", "conv2d_1a"),
    _row("Conv2d_2a_3x3", "Relu", "conv2d_2a"),
    _row("Conv2d_2b_3x3", "Relu", "conv2d_2b"),
    _row("MaxPool_3a_3x3", "MaxPool", "maxpool_3a"),
    _row("Conv2d_3b_1x1", "Relu", "conv2d_3b"),
    _row("Conv2d_4a_3x3", "Relu", "conv2d_4a"),
    _row("MaxPool_5a_3x3", "MaxPool", "maxpool_5a"),
    _row("Mixed_5b", "concat", "mixed_5b"),
    *(_block_row("Repeat", "block35", i, "repeat_1") for i in range(1, 11)),
    _row("Mixed_6a", "concat", "mixed_6a"),
    *(_block_row("Repeat_1", "block17", i, "repeat_2") for i in range(1, 21)),
    _row("Mixed_7a", "concat", "mixed_7a"),
    *(_block_row("Repeat_2", "block8", i, "repeat_3") for i in range(1, 10)),
    _row("Block8", "add", "block8"),
    _row("Conv2d_7b_1x1", "Relu", "conv2d_7b"),  # also the end point PrePool
    LayerRow("AvgPool_1a_8x8", (f"{_P}Logits/AvgPool_1a_8x8/AvgPool:0",), "avgpool_1a", "nhwc"),
    *head_end_points("InceptionResnetV2"),
)

RECORDS = (
    Architecture(
        name="inception_resnet_v2",
        task="embedding",
        model="facenet_convert.models.inception_resnet_v2:InceptionResNetV2",
        layout=layout,
        schemes=(
            *slim_schemes(slim.CHECKPOINT, slim.FROZEN, "InceptionResnetV2"),
        ),
        description="FaceNet-trained Inception-ResNet-V2 (davidsandberg train_softmax.py "
                    "--model_def models.inception_resnet_v2)",
        input_size=(160, 160),
        preprocessing="fixed_standardization",
        default_embedding_size=DEFAULT_EMBEDDING_SIZE,
        end_points=END_POINTS,
        logits_end_point=LOGITS_END_POINT,
        upstream_model_def="inception_resnet_v2",
        upstream_scope="InceptionResnetV2",
        embedding_key="last_linear.weight",
        classes_key="logits.weight",
    ),
)
