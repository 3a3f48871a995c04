"""Inception-ResNet-V1: davidsandberg/facenet's ``models/inception_resnet_v1.py``.

Target: facenet-pytorch's ``InceptionResnetV1`` state_dict, key for key. Parity end points are
the upstream ``end_points`` (``Conv2d_1a_3x3`` ... ``Mixed_8b``) plus the output of every
repeated block (``Repeat/block35_N``, ``Repeat_1/block17_N``, ``Repeat_2/block8_N``), the
bottleneck before and after its BatchNorm, the embeddings and the logits. A row may list
several candidate names: the first one present in the graph is used (``phase_train`` as a
placeholder and as a Python bool build slightly different graphs).
"""

from __future__ import annotations

from facenet_convert.converter.architecture import (
    LOGITS_END_POINT,
    Architecture,
    LayerRow,
    Scheme,
    conv,
    conv_bn,
    embedding_head,
    head_end_points,
    slim_schemes,
)
from facenet_convert.converter.mapping import TargetEntry
from facenet_convert.converter.tables import inception_resnet_v1_keras as keras
from facenet_convert.converter.tables import inception_resnet_v1_slim as slim


def _block35(p: str) -> list[TargetEntry]:
    return [*conv_bn(f"{p}.branch0", 256, 32, 1),
            *conv_bn(f"{p}.branch1.0", 256, 32, 1), *conv_bn(f"{p}.branch1.1", 32, 32, 3),
            *conv_bn(f"{p}.branch2.0", 256, 32, 1), *conv_bn(f"{p}.branch2.1", 32, 32, 3),
            *conv_bn(f"{p}.branch2.2", 32, 32, 3), *conv(f"{p}.conv2d", 96, 256, 1)]


def _block17(p: str) -> list[TargetEntry]:
    return [*conv_bn(f"{p}.branch0", 896, 128, 1),
            *conv_bn(f"{p}.branch1.0", 896, 128, 1), *conv_bn(f"{p}.branch1.1", 128, 128, 1, 7),
            *conv_bn(f"{p}.branch1.2", 128, 128, 7, 1), *conv(f"{p}.conv2d", 256, 896, 1)]


def _block8(p: str) -> list[TargetEntry]:
    return [*conv_bn(f"{p}.branch0", 1792, 192, 1),
            *conv_bn(f"{p}.branch1.0", 1792, 192, 1), *conv_bn(f"{p}.branch1.1", 192, 192, 1, 3),
            *conv_bn(f"{p}.branch1.2", 192, 192, 3, 1), *conv(f"{p}.conv2d", 384, 1792, 1)]


def layout(embedding_size: int | None = None, num_classes: int | None = None
           ) -> list[TargetEntry]:
    """facenet-pytorch ``InceptionResnetV1`` state_dict layout, logits only with classes."""
    entries = [*conv_bn("conv2d_1a", 3, 32, 3), *conv_bn("conv2d_2a", 32, 32, 3),
               *conv_bn("conv2d_2b", 32, 64, 3), *conv_bn("conv2d_3b", 64, 80, 1),
               *conv_bn("conv2d_4a", 80, 192, 3), *conv_bn("conv2d_4b", 192, 256, 3)]
    for index in range(5):
        entries += _block35(f"repeat_1.{index}")
    entries += [*conv_bn("mixed_6a.branch0", 256, 384, 3),
                *conv_bn("mixed_6a.branch1.0", 256, 192, 1),
                *conv_bn("mixed_6a.branch1.1", 192, 192, 3),
                *conv_bn("mixed_6a.branch1.2", 192, 256, 3)]
    for index in range(10):
        entries += _block17(f"repeat_2.{index}")
    entries += [*conv_bn("mixed_7a.branch0.0", 896, 256, 1),
                *conv_bn("mixed_7a.branch0.1", 256, 384, 3),
                *conv_bn("mixed_7a.branch1.0", 896, 256, 1),
                *conv_bn("mixed_7a.branch1.1", 256, 256, 3),
                *conv_bn("mixed_7a.branch2.0", 896, 256, 1),
                *conv_bn("mixed_7a.branch2.1", 256, 256, 3),
                *conv_bn("mixed_7a.branch2.2", 256, 256, 3)]
    for index in range(5):
        entries += _block8(f"repeat_3.{index}")
    entries += _block8("block8")
    return entries + embedding_head(1792, 512 if embedding_size is None else embedding_size,
                                    num_classes)


_P = "InceptionResnetV1/"


def _conv_row(label: str, module: str) -> LayerRow:
    return LayerRow(label, (f"{_P}{label}/Relu:0",), module, "nhwc")


def _block_row(scope: str, block: str, index: int, module: str) -> LayerRow:
    return LayerRow(f"{block}_{index}", (f"{_P}{scope}/{block}_{index}/Relu:0",),
                    f"{module}.{index - 1}", "nhwc")


END_POINTS: tuple[LayerRow, ...] = (
    _conv_row("Conv2d_1a_3x3", "conv2d_1a"),
    _conv_row("Conv2d_2a_3x3", "conv2d_2a"),
    _conv_row("Conv2d_2b_3x3", "conv2d_2b"),
    LayerRow("MaxPool_3a_3x3", (f"{_P}MaxPool_3a_3x3/MaxPool:0",), "maxpool_3a", "nhwc"),
    _conv_row("Conv2d_3b_1x1", "conv2d_3b"),
    _conv_row("Conv2d_4a_3x3", "conv2d_4a"),
    _conv_row("Conv2d_4b_3x3", "conv2d_4b"),
    # 5 x Inception-ResNet-A; the last one's output is the end point Mixed_5a
    *(_block_row("Repeat", "block35", i, "repeat_1") for i in range(1, 6)),
    LayerRow("Mixed_6a", (f"{_P}Mixed_6a/concat:0",), "mixed_6a", "nhwc"),
    # 10 x Inception-ResNet-B; the last one's output is the end point Mixed_6b
    *(_block_row("Repeat_1", "block17", i, "repeat_2") for i in range(1, 11)),
    LayerRow("Mixed_7a", (f"{_P}Mixed_7a/concat:0",), "mixed_7a", "nhwc"),
    # 5 x Inception-ResNet-C; the last one's output is the end point Mixed_8a
    *(_block_row("Repeat_2", "block8", i, "repeat_3") for i in range(1, 6)),
    LayerRow("Block8", (f"{_P}Block8/add:0",), "block8", "nhwc"),  # end point Mixed_8b
    LayerRow("AvgPool_1a_8x8", (f"{_P}Logits/AvgPool_1a_8x8/AvgPool:0",), "avgpool_1a", "nhwc"),
    *head_end_points("InceptionResnetV1"),
)

RECORDS = (
    Architecture(
        name="inception_resnet_v1",
        task="embedding",
        model="facenet_convert.models.inception_resnet_v1:InceptionResNetV1",
        layout=layout,
        schemes=(
            *slim_schemes(slim.CHECKPOINT, slim.FROZEN, "InceptionResnetV1"),
            Scheme(keras.TABLE, "Bottleneck/kernel", embedding_tensor="Bottleneck/kernel"),
        ),
        description="FaceNet Inception-ResNet-V1 (davidsandberg releases, keras-facenet)",
        input_size=(160, 160),
        preprocessing="fixed_standardization",
        default_embedding_size=512,
        end_points=END_POINTS,
        logits_end_point=LOGITS_END_POINT,
        upstream_model_def="inception_resnet_v1",
        upstream_scope="InceptionResnetV1",
        embedding_key="last_linear.weight",
        classes_key="logits.weight",
    ),
)
