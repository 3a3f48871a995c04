"""Inception-ResNet-V2 from davidsandberg/facenet's TF-slim names -> our ``InceptionResNetV2``.

Upstream ``models/inception_resnet_v2.py`` under the ``InceptionResnetV2`` scope; shapes and
transforms as Inception-ResNet-V1's table (conv kernels HWIO -> OIHW, dense IO -> OI, BN
``scale=False``: ``bn.weight`` filled with ones). ``CHECKPOINT`` reads a training checkpoint
(slots, EMA shadows, ``centers``... are dropped), ``FROZEN`` a frozen ``.pb``.
"""

from __future__ import annotations

from facenet_convert.converter.mapping import Rule
from facenet_convert.converter.tables import (
    CONV_BIAS,
    CONV_BN,
    expand,
    slim_tables,
)

_R = "InceptionResnetV2"
_B35 = rf"{_R}/Repeat/block35_(?P<n>[1-9]|10)"
_B17 = rf"{_R}/Repeat_1/block17_(?P<n>[1-9]|1[0-9]|20)"
_B8 = rf"{_R}/Repeat_2/block8_(?P<n>[1-9])"

#: (source layer pattern, module template, param set)
LAYERS = (
    (rf"{_R}/Conv2d_(?P<id>1a|2a|2b|4a)_3x3", "conv2d_{id}", CONV_BN),
    (rf"{_R}/Conv2d_(?P<id>3b|7b)_1x1", "conv2d_{id}", CONV_BN),
    (rf"{_R}/Mixed_5b/Branch_0/Conv2d_1x1", "mixed_5b.branch0", CONV_BN),
    (rf"{_R}/Mixed_5b/Branch_1/Conv2d_0a_1x1", "mixed_5b.branch1.0", CONV_BN),
    (rf"{_R}/Mixed_5b/Branch_1/Conv2d_0b_5x5", "mixed_5b.branch1.1", CONV_BN),
    (rf"{_R}/Mixed_5b/Branch_2/Conv2d_0a_1x1", "mixed_5b.branch2.0", CONV_BN),
    (rf"{_R}/Mixed_5b/Branch_2/Conv2d_0b_3x3", "mixed_5b.branch2.1", CONV_BN),
    (rf"{_R}/Mixed_5b/Branch_2/Conv2d_0c_3x3", "mixed_5b.branch2.2", CONV_BN),
    (rf"{_R}/Mixed_5b/Branch_3/Conv2d_0b_1x1", "mixed_5b.branch3.1", CONV_BN),
    # 10 x block35 (TF counts from 1, torch Sequential from 0)
    (rf"{_B35}/Branch_0/Conv2d_1x1", "repeat_1.{n:minus1}.branch0", CONV_BN),
    (rf"{_B35}/Branch_1/Conv2d_0a_1x1", "repeat_1.{n:minus1}.branch1.0", CONV_BN),
    (rf"{_B35}/Branch_1/Conv2d_0b_3x3", "repeat_1.{n:minus1}.branch1.1", CONV_BN),
    (rf"{_B35}/Branch_2/Conv2d_0a_1x1", "repeat_1.{n:minus1}.branch2.0", CONV_BN),
    (rf"{_B35}/Branch_2/Conv2d_0b_3x3", "repeat_1.{n:minus1}.branch2.1", CONV_BN),
    (rf"{_B35}/Branch_2/Conv2d_0c_3x3", "repeat_1.{n:minus1}.branch2.2", CONV_BN),
    (rf"{_B35}/Conv2d_1x1", "repeat_1.{n:minus1}.conv2d", CONV_BIAS),
    # reduction A
    (rf"{_R}/Mixed_6a/Branch_0/Conv2d_1a_3x3", "mixed_6a.branch0", CONV_BN),
    (rf"{_R}/Mixed_6a/Branch_1/Conv2d_0a_1x1", "mixed_6a.branch1.0", CONV_BN),
    (rf"{_R}/Mixed_6a/Branch_1/Conv2d_0b_3x3", "mixed_6a.branch1.1", CONV_BN),
    (rf"{_R}/Mixed_6a/Branch_1/Conv2d_1a_3x3", "mixed_6a.branch1.2", CONV_BN),
    # 20 x block17
    (rf"{_B17}/Branch_0/Conv2d_1x1", "repeat_2.{n:minus1}.branch0", CONV_BN),
    (rf"{_B17}/Branch_1/Conv2d_0a_1x1", "repeat_2.{n:minus1}.branch1.0", CONV_BN),
    (rf"{_B17}/Branch_1/Conv2d_0b_1x7", "repeat_2.{n:minus1}.branch1.1", CONV_BN),
    (rf"{_B17}/Branch_1/Conv2d_0c_7x1", "repeat_2.{n:minus1}.branch1.2", CONV_BN),
    (rf"{_B17}/Conv2d_1x1", "repeat_2.{n:minus1}.conv2d", CONV_BIAS),
    # reduction B
    (rf"{_R}/Mixed_7a/Branch_0/Conv2d_0a_1x1", "mixed_7a.branch0.0", CONV_BN),
    (rf"{_R}/Mixed_7a/Branch_0/Conv2d_1a_3x3", "mixed_7a.branch0.1", CONV_BN),
    (rf"{_R}/Mixed_7a/Branch_1/Conv2d_0a_1x1", "mixed_7a.branch1.0", CONV_BN),
    (rf"{_R}/Mixed_7a/Branch_1/Conv2d_1a_3x3", "mixed_7a.branch1.1", CONV_BN),
    (rf"{_R}/Mixed_7a/Branch_2/Conv2d_0a_1x1", "mixed_7a.branch2.0", CONV_BN),
    (rf"{_R}/Mixed_7a/Branch_2/Conv2d_0b_3x3", "mixed_7a.branch2.1", CONV_BN),
    (rf"{_R}/Mixed_7a/Branch_2/Conv2d_1a_3x3", "mixed_7a.branch2.2", CONV_BN),
    # 9 x block8, then the last Block8 (no ReLU)
    (rf"{_B8}/Branch_0/Conv2d_1x1", "repeat_3.{n:minus1}.branch0", CONV_BN),
    (rf"{_B8}/Branch_1/Conv2d_0a_1x1", "repeat_3.{n:minus1}.branch1.0", CONV_BN),
    (rf"{_B8}/Branch_1/Conv2d_0b_1x3", "repeat_3.{n:minus1}.branch1.1", CONV_BN),
    (rf"{_B8}/Branch_1/Conv2d_0c_3x1", "repeat_3.{n:minus1}.branch1.2", CONV_BN),
    (rf"{_B8}/Conv2d_1x1", "repeat_3.{n:minus1}.conv2d", CONV_BIAS),
    (rf"{_R}/Block8/Branch_0/Conv2d_1x1", "block8.branch0", CONV_BN),
    (rf"{_R}/Block8/Branch_1/Conv2d_0a_1x1", "block8.branch1.0", CONV_BN),
    (rf"{_R}/Block8/Branch_1/Conv2d_0b_1x3", "block8.branch1.1", CONV_BN),
    (rf"{_R}/Block8/Branch_1/Conv2d_0c_3x1", "block8.branch1.2", CONV_BN),
    (rf"{_R}/Block8/Conv2d_1x1", "block8.conv2d", CONV_BIAS),
)

#: The embedding head and the classifier.
HEAD = (
    # [1536, E] -> [E, 1536]
    Rule(rf"{_R}/Bottleneck/weights", "last_linear.weight", "dense_io_to_oi"),
    Rule(rf"{_R}/Bottleneck/BatchNorm/gamma", "last_bn.weight"),  # scale=True variants only
    Rule(rf"{_R}/Bottleneck/BatchNorm/beta", "last_bn.bias"),
    Rule(rf"{_R}/Bottleneck/BatchNorm/moving_mean", "last_bn.running_mean"),
    Rule(rf"{_R}/Bottleneck/BatchNorm/moving_variance", "last_bn.running_var"),
    # [E, C] -> [C, E]; train_softmax.py builds it outside the network's scope
    Rule(r"Logits/weights", "logits.weight", "dense_io_to_oi"),
    Rule(r"Logits/biases", "logits.bias"),
)

NETWORK_RULES = expand(LAYERS) + HEAD

CHECKPOINT, FROZEN = slim_tables(
    "inception_resnet_v2", NETWORK_RULES,
    checkpoint_description="davidsandberg/facenet TF-slim checkpoint of models.inception_resnet_v2",
    frozen_description="davidsandberg/facenet frozen GraphDef of models.inception_resnet_v2")
