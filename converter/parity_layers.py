"""Which upstream TF tensor each of our modules reproduces, in network order (data only).

The parity check's per-layer localisation fetches these tensors from the user's TF graph and
captures the matching module outputs of our model with forward hooks. Rows are in the order
the network computes them, so "the first layer whose difference jumps" is well defined.

Tensor names are those of davidsandberg's graph (``facenet/src/models/inception_resnet_v1.py``
built by ``train_softmax.py``): the upstream ``end_points`` (``Conv2d_1a_3x3`` ... ``Mixed_8b``)
plus the output of every repeated block (``Repeat/block35_N``, ``Repeat_1/block17_N``,
``Repeat_2/block8_N``), the bottleneck before and after its BatchNorm, the embeddings and the
logits. A row may list several candidate names: the first one present in the graph is used
(``phase_train`` as a placeholder and as a Python bool build slightly different graphs).

``layout`` says how to bring the TF tensor to our layout: ``nhwc`` (to NCHW), ``nc`` (as is),
``nhwc-swapped`` (MTCNN: the TF nets see W/H-swapped images, so NHWC -> N,C,W,H -> NCHW).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LayerRow:
    """One comparable point of the network."""

    label: str                   # upstream name shown in reports (end point or block scope)
    tf_tensors: tuple[str, ...]  # candidate tensor names in the TF graph, first present wins
    module: str                  # our module path (``model.get_submodule``); "" = model output
    layout: str                  # "nhwc" | "nc" | "nhwc-swapped"

    @property
    def display(self) -> str:
        """``block17_4 (repeat_2.3)``: both names, as the report shows them."""
        return f"{self.label} ({self.module or 'output'})"


_P = "InceptionResnetV1/"


def _conv(label: str, module: str) -> LayerRow:
    return LayerRow(label, (f"{_P}{label}/Relu:0",), module, "nhwc")


def _block(scope: str, block: str, index: int, module: str) -> LayerRow:
    return LayerRow(f"{block}_{index}", (f"{_P}{scope}/{block}_{index}/Relu:0",),
                    f"{module}.{index - 1}", "nhwc")


INCEPTION_RESNET_V1: tuple[LayerRow, ...] = (
    _conv("Conv2d_1a_3x3", "conv2d_1a"),
    _conv("Conv2d_2a_3x3", "conv2d_2a"),
    _conv("Conv2d_2b_3x3", "conv2d_2b"),
    LayerRow("MaxPool_3a_3x3", (f"{_P}MaxPool_3a_3x3/MaxPool:0",), "maxpool_3a", "nhwc"),
    _conv("Conv2d_3b_1x1", "conv2d_3b"),
    _conv("Conv2d_4a_3x3", "conv2d_4a"),
    _conv("Conv2d_4b_3x3", "conv2d_4b"),
    # 5 x Inception-ResNet-A; the last one's output is the end point Mixed_5a
    *(_block("Repeat", "block35", i, "repeat_1") for i in range(1, 6)),
    LayerRow("Mixed_6a", (f"{_P}Mixed_6a/concat:0",), "mixed_6a", "nhwc"),
    # 10 x Inception-ResNet-B; the last one's output is the end point Mixed_6b
    *(_block("Repeat_1", "block17", i, "repeat_2") for i in range(1, 11)),
    LayerRow("Mixed_7a", (f"{_P}Mixed_7a/concat:0",), "mixed_7a", "nhwc"),
    # 5 x Inception-ResNet-C; the last one's output is the end point Mixed_8a
    *(_block("Repeat_2", "block8", i, "repeat_3") for i in range(1, 6)),
    LayerRow("Block8", (f"{_P}Block8/add:0",), "block8", "nhwc"),  # end point Mixed_8b
    LayerRow("AvgPool_1a_8x8", (f"{_P}Logits/AvgPool_1a_8x8/AvgPool:0",), "avgpool_1a", "nhwc"),
    LayerRow("Bottleneck", (f"{_P}Bottleneck/MatMul:0",), "last_linear", "nc"),
    # slim runs the 2-d BatchNorm as a fused 4-d one between two reshapes (newer tf_slim), or
    # unfused (older); either way this is the (N, E) prelogits tensor.
    LayerRow("Bottleneck/BatchNorm", (f"{_P}Bottleneck/BatchNorm/Reshape_1:0",
                                      f"{_P}Bottleneck/BatchNorm/batchnorm/add_1:0"),
             "last_bn", "nc"),
    LayerRow("embeddings", ("embeddings:0",), "", "nc"),
)
"""Inception-ResNet-V1 (embeddings path). The logits row is added when both sides have one."""

INCEPTION_RESNET_V1_LOGITS = LayerRow("Logits", ("Logits/BiasAdd:0",), "logits", "nc")



def _mtcnn(net: str, rows: tuple[tuple[str, str, str, str], ...]) -> tuple[LayerRow, ...]:
    return tuple(LayerRow(label, (f"{net}/{tensor}",), module, layout)
                 for label, tensor, module, layout in rows)


_SW = "nhwc-swapped"

MTCNN_LAYERS: dict[str, tuple[LayerRow, ...]] = {
    # upstream detect_face layer names; dense layers are called conv4/conv5/conv6-N there.
    "pnet": _mtcnn("pnet", (
        ("PReLU1", "PReLU1/add:0", "prelu1", _SW),
        ("pool1", "pool1:0", "pool1", _SW),
        ("PReLU2", "PReLU2/add:0", "prelu2", _SW),
        ("PReLU3", "PReLU3/add:0", "prelu3", _SW),
        ("conv4-1", "conv4-1/BiasAdd:0", "conv4_1", _SW),
        ("prob1", "prob1:0", "softmax4_1", _SW),
        ("conv4-2", "conv4-2/BiasAdd:0", "conv4_2", _SW),
    )),
    "rnet": _mtcnn("rnet", (
        ("prelu1", "prelu1/add:0", "prelu1", _SW),
        ("pool1", "pool1:0", "pool1", _SW),
        ("prelu2", "prelu2/add:0", "prelu2", _SW),
        ("pool2", "pool2:0", "pool2", _SW),
        ("prelu3", "prelu3/add:0", "prelu3", _SW),
        ("conv4", "conv4/conv4:0", "dense4", "nc"),
        ("prelu4", "prelu4/add:0", "prelu4", "nc"),
        ("conv5-1", "conv5-1/conv5-1:0", "dense5_1", "nc"),
        ("prob1", "prob1:0", "softmax5_1", "nc"),
        ("conv5-2", "conv5-2/conv5-2:0", "dense5_2", "nc"),
    )),
    "onet": _mtcnn("onet", (
        ("prelu1", "prelu1/add:0", "prelu1", _SW),
        ("pool1", "pool1:0", "pool1", _SW),
        ("prelu2", "prelu2/add:0", "prelu2", _SW),
        ("pool2", "pool2:0", "pool2", _SW),
        ("prelu3", "prelu3/add:0", "prelu3", _SW),
        ("pool3", "pool3:0", "pool3", _SW),
        ("prelu4", "prelu4/add:0", "prelu4", _SW),
        ("conv5", "conv5/conv5:0", "dense5", "nc"),
        ("prelu5", "prelu5/add:0", "prelu5", "nc"),
        ("conv6-1", "conv6-1/conv6-1:0", "dense6_1", "nc"),
        ("prob1", "prob1:0", "softmax6_1", "nc"),
        ("conv6-2", "conv6-2/conv6-2:0", "dense6_2", "nc"),
        ("conv6-3", "conv6-3/conv6-3:0", "dense6_3", "nc"),
    )),
}
"""MTCNN nets: every layer output, in network order (module names as facenet-pytorch's)."""

TABLES: dict[str, tuple[LayerRow, ...]] = {"inception_resnet_v1": INCEPTION_RESNET_V1,
                                          **MTCNN_LAYERS}
"""Every model's table, by the model names of ``--model``."""
