"""Inception-ResNet-V1 from the Keras facenet ports (keras-facenet / deepface naming).

The Keras ports flatten the TF-slim scope path with ``_`` and number every residual block
(``Block35_1`` .. ``Block35_5``, ``Block17_1`` .. ``Block17_10``, ``Block8_1`` .. ``Block8_5``
and ``Block8_6`` for the last, ReLU-less block). Weights are read as ``<layer>/<weight>``:
conv ``kernel`` ``[kh, kw, in, out] -> [out, in, kh, kw]``; the residual up-projections
``<Block>_Conv2d_1x1`` carry a ``bias``; BatchNorm layers ``<conv>_BatchNorm`` hold ``beta``,
``moving_mean``, ``moving_variance`` (``scale=False``: gamma filled with ones);
``Bottleneck/kernel`` ``[1792, E] -> last_linear.weight [E, 1792]``.
"""

from __future__ import annotations

from facenet_convert.converter.mapping import Rule, Table
from facenet_convert.converter.tables import BN_FILLS, Param, expand

CONV_BN: tuple[Param, ...] = (
    ("/kernel", ".conv.weight", "conv_hwio_to_oihw"),
    ("_BatchNorm/gamma", ".bn.weight", "identity"),  # only in scale=True variants
    ("_BatchNorm/beta", ".bn.bias", "identity"),
    ("_BatchNorm/moving_mean", ".bn.running_mean", "identity"),
    ("_BatchNorm/moving_variance", ".bn.running_var", "identity"),
)
CONV_BIAS: tuple[Param, ...] = (
    ("/kernel", ".weight", "conv_hwio_to_oihw"),
    ("/bias", ".bias", "identity"),
)

_B35 = r"Block35_(?P<n>[1-5])"
_B17 = r"Block17_(?P<n>[1-9]|10)"
_B8 = r"Block8_(?P<n>[1-5])"

LAYERS = (
    (r"Conv2d_(?P<id>1a|2a|2b|4a|4b)_3x3", "conv2d_{id}", CONV_BN),
    (r"Conv2d_(?P<id>3b)_1x1", "conv2d_{id}", CONV_BN),
    (rf"{_B35}_Branch_0_Conv2d_1x1", "repeat_1.{n:minus1}.branch0", CONV_BN),
    (rf"{_B35}_Branch_1_Conv2d_0a_1x1", "repeat_1.{n:minus1}.branch1.0", CONV_BN),
    (rf"{_B35}_Branch_1_Conv2d_0b_3x3", "repeat_1.{n:minus1}.branch1.1", CONV_BN),
    (rf"{_B35}_Branch_2_Conv2d_0a_1x1", "repeat_1.{n:minus1}.branch2.0", CONV_BN),
    (rf"{_B35}_Branch_2_Conv2d_0b_3x3", "repeat_1.{n:minus1}.branch2.1", CONV_BN),
    (rf"{_B35}_Branch_2_Conv2d_0c_3x3", "repeat_1.{n:minus1}.branch2.2", CONV_BN),
    (rf"{_B35}_Conv2d_1x1", "repeat_1.{n:minus1}.conv2d", CONV_BIAS),
    (r"Mixed_6a_Branch_0_Conv2d_1a_3x3", "mixed_6a.branch0", CONV_BN),
    (r"Mixed_6a_Branch_1_Conv2d_0a_1x1", "mixed_6a.branch1.0", CONV_BN),
    (r"Mixed_6a_Branch_1_Conv2d_0b_3x3", "mixed_6a.branch1.1", CONV_BN),
    (r"Mixed_6a_Branch_1_Conv2d_1a_3x3", "mixed_6a.branch1.2", CONV_BN),
    (rf"{_B17}_Branch_0_Conv2d_1x1", "repeat_2.{n:minus1}.branch0", CONV_BN),
    (rf"{_B17}_Branch_1_Conv2d_0a_1x1", "repeat_2.{n:minus1}.branch1.0", CONV_BN),
    (rf"{_B17}_Branch_1_Conv2d_0b_1x7", "repeat_2.{n:minus1}.branch1.1", CONV_BN),
    (rf"{_B17}_Branch_1_Conv2d_0c_7x1", "repeat_2.{n:minus1}.branch1.2", CONV_BN),
    (rf"{_B17}_Conv2d_1x1", "repeat_2.{n:minus1}.conv2d", CONV_BIAS),
    (r"Mixed_7a_Branch_0_Conv2d_0a_1x1", "mixed_7a.branch0.0", CONV_BN),
    (r"Mixed_7a_Branch_0_Conv2d_1a_3x3", "mixed_7a.branch0.1", CONV_BN),
    (r"Mixed_7a_Branch_1_Conv2d_0a_1x1", "mixed_7a.branch1.0", CONV_BN),
    (r"Mixed_7a_Branch_1_Conv2d_1a_3x3", "mixed_7a.branch1.1", CONV_BN),
    (r"Mixed_7a_Branch_2_Conv2d_0a_1x1", "mixed_7a.branch2.0", CONV_BN),
    (r"Mixed_7a_Branch_2_Conv2d_0b_3x3", "mixed_7a.branch2.1", CONV_BN),
    (r"Mixed_7a_Branch_2_Conv2d_1a_3x3", "mixed_7a.branch2.2", CONV_BN),
    (rf"{_B8}_Branch_0_Conv2d_1x1", "repeat_3.{n:minus1}.branch0", CONV_BN),
    (rf"{_B8}_Branch_1_Conv2d_0a_1x1", "repeat_3.{n:minus1}.branch1.0", CONV_BN),
    (rf"{_B8}_Branch_1_Conv2d_0b_1x3", "repeat_3.{n:minus1}.branch1.1", CONV_BN),
    (rf"{_B8}_Branch_1_Conv2d_0c_3x1", "repeat_3.{n:minus1}.branch1.2", CONV_BN),
    (rf"{_B8}_Conv2d_1x1", "repeat_3.{n:minus1}.conv2d", CONV_BIAS),
    # the sixth Block8 is the last, ReLU-less block (TF-slim ``Block8``)
    (r"Block8_6_Branch_0_Conv2d_1x1", "block8.branch0", CONV_BN),
    (r"Block8_6_Branch_1_Conv2d_0a_1x1", "block8.branch1.0", CONV_BN),
    (r"Block8_6_Branch_1_Conv2d_0b_1x3", "block8.branch1.1", CONV_BN),
    (r"Block8_6_Branch_1_Conv2d_0c_3x1", "block8.branch1.2", CONV_BN),
    (r"Block8_6_Conv2d_1x1", "block8.conv2d", CONV_BIAS),
)

HEAD = (
    Rule(r"Bottleneck/kernel", "last_linear.weight", "dense_io_to_oi"),  # [1792, E] -> [E, 1792]
    Rule(r"Bottleneck_BatchNorm/gamma", "last_bn.weight"),  # scale=True variants only
    Rule(r"Bottleneck_BatchNorm/beta", "last_bn.bias"),
    Rule(r"Bottleneck_BatchNorm/moving_mean", "last_bn.running_mean"),
    Rule(r"Bottleneck_BatchNorm/moving_variance", "last_bn.running_var"),
)

TABLE = Table(
    name="inception_resnet_v1.keras_facenet",
    architecture="inception_resnet_v1",
    scheme="keras-facenet",
    rules=expand(LAYERS) + HEAD,
    fills=BN_FILLS,
    ema_pattern=None,
    description="Keras ports of davidsandberg's Inception-ResNet-V1 (keras-facenet, deepface)",
)
