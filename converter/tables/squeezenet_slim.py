"""SqueezeNet from davidsandberg/facenet's TF-slim names -> our ``SqueezeNet``.

Upstream ``models/squeezenet.py`` under the ``squeezenet`` scope: ``conv1`` and every
``fireN/{squeeze,expand/1x1,expand/3x3}`` are conv + BatchNorm (``scale=False``: ``bn.weight``
filled with ones), ``conv10`` a conv with bias, then the shared embedding head. Transforms as
Inception-ResNet-V1's table. ``CHECKPOINT`` reads a training checkpoint, ``FROZEN`` a frozen
``.pb``.
"""

from __future__ import annotations

from facenet_convert.converter.mapping import Rule
from facenet_convert.converter.tables import (
    CONV_BIAS,
    CONV_BN,
    expand,
    slim_tables,
)

_S = "squeezenet"
_FIRE = rf"{_S}/(?P<fire>fire[2-9])"

#: (source layer pattern, module template, param set)
LAYERS = (
    (rf"{_S}/conv1", "conv1", CONV_BN),
    (rf"{_FIRE}/squeeze", "{fire}.squeeze", CONV_BN),
    (rf"{_FIRE}/expand/1x1", "{fire}.expand1x1", CONV_BN),
    (rf"{_FIRE}/expand/3x3", "{fire}.expand3x3", CONV_BN),
    (rf"{_S}/conv10", "conv10", CONV_BIAS),
)

#: The embedding head and the classifier.
HEAD = (
    # [1000, E] -> [E, 1000]
    Rule(rf"{_S}/Bottleneck/weights", "last_linear.weight", "dense_io_to_oi"),
    Rule(rf"{_S}/Bottleneck/BatchNorm/gamma", "last_bn.weight"),  # scale=True variants only
    Rule(rf"{_S}/Bottleneck/BatchNorm/beta", "last_bn.bias"),
    Rule(rf"{_S}/Bottleneck/BatchNorm/moving_mean", "last_bn.running_mean"),
    Rule(rf"{_S}/Bottleneck/BatchNorm/moving_variance", "last_bn.running_var"),
    # [E, C] -> [C, E]; train_softmax.py builds it outside the network's scope
    Rule(r"Logits/weights", "logits.weight", "dense_io_to_oi"),
    Rule(r"Logits/biases", "logits.bias"),
)

NETWORK_RULES = expand(LAYERS) + HEAD

CHECKPOINT, FROZEN = slim_tables(
    "squeezenet", NETWORK_RULES,
    checkpoint_description="davidsandberg/facenet TF-slim checkpoint of models.squeezenet",
    frozen_description="davidsandberg/facenet frozen GraphDef of models.squeezenet")
