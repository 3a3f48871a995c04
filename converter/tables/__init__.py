"""Mapping tables: data, one module per naming scheme, applied by ``converter.mapping``.

Each architecture record (``converter/architectures/``) names its tables; the registry
looks them up by name.

A table module lists layers as ``(source layer pattern, target module template, param
set)`` and, where a rule does not fit that shape, whole :class:`Rule` records. ``expand``
crosses layers with their param set into plain ordered rules, so the final table is a flat,
printable list of ``pattern -> template + transform`` records.
"""

from __future__ import annotations

from collections.abc import Iterable

from facenet_convert.converter.mapping import Fill, Rule, Table

#: (source suffix appended to the layer pattern, target suffix appended to the module
#: template, transform name).
Param = tuple[str, str, str]


def expand(layers: Iterable[tuple[str, str, tuple[Param, ...]]]) -> tuple[Rule, ...]:
    """One rule per (layer, param): ``layer + suffix`` -> ``module + suffix``."""
    return tuple(Rule(layer + source, module + target, transform)
                 for layer, module, params in layers
                 for source, target, transform in params)


#: Sources every TF training checkpoint may carry that are never weights of the network.
TF_TRAINING_DROPS: tuple[Rule, ...] = (
    Rule(r"(?P<var>.+)/(?:Adam|Adam_1|RMSProp|RMSProp_1|Momentum|Adagrad|Adadelta|Adadelta_1"
         r"|Ftrl|Ftrl_1)", None,
         reason="optimizer slot (training state, not a weight)"),
    Rule(r"beta1_power|beta2_power", None, reason="Adam's bias-correction accumulators"),
    Rule(r"global_step", None, reason="training step counter"),
    Rule(r"(?P<loss>\w+)/avg", None,
         reason="moving average of a training loss (facenet.train's loss_averages)"),
    Rule(r"centers", None, reason="center-loss class centers (training only)"),
    Rule(r"(?:.+/)?AuxLogits/.+", None, reason="auxiliary classifier head (training only)"),
    Rule(r"(?P<var>.+)/ExponentialMovingAverage", None,
         reason="EMA shadow, not selected (weights=raw)"),
    Rule(r"_CHECKPOINTABLE_OBJECT_GRAPH", None, reason="TF2 object graph metadata, not a "
                                                       "tensor of the network"),
)

#: Group ``var`` names the variable an EMA shadow belongs to.
EMA_PATTERN = r"(?P<var>.+)/ExponentialMovingAverage"

#: facenet-pytorch's BatchNorm buffers the TF graphs do not have.
BN_FILLS: tuple[Fill, ...] = (
    Fill(r"(?:.+\.)?(?:bn|last_bn)\.weight", "ones",
         "davidsandberg BN has scale=False (no gamma): gamma = 1"),
    Fill(r"(?:.+\.)?(?:bn|last_bn)\.num_batches_tracked", "zeros",
         "torch-only BatchNorm counter (int64 scalar); TF keeps no such count"),
)

#: TF-slim conv + BatchNorm (slim.conv2d with normalizer_fn=batch_norm: no conv bias).
CONV_BN: tuple[Param, ...] = (
    ("/weights", ".conv.weight", "conv_hwio_to_oihw"),
    ("/BatchNorm/gamma", ".bn.weight", "identity"),  # only in scale=True variants
    ("/BatchNorm/beta", ".bn.bias", "identity"),
    ("/BatchNorm/moving_mean", ".bn.running_mean", "identity"),
    ("/BatchNorm/moving_variance", ".bn.running_var", "identity"),
)
#: A plain TF-slim conv with bias (residual up-projections, SqueezeNet's convs).
CONV_BIAS: tuple[Param, ...] = (
    ("/weights", ".weight", "conv_hwio_to_oihw"),
    ("/biases", ".bias", "identity"),
)

#: Variable leaves: a Const node named like one of these is a frozen variable, never dropped.
_VARIABLE_LEAF = r"weights|biases|beta|gamma|moving_mean|moving_variance"

#: A frozen GraphDef's non-variable constants. freeze_graph.py turns each variable into a Const
#: of the same name; every other Const belongs to an op: BN's implicit gamma of ones
#: (``BatchNorm/Const``), residual scales (``mul/x``), reshape/concat/pool shapes,
#: ``phase_train``'s default, dropout's keep probability... A Const whose last path element is
#: a variable leaf is never dropped here: unknown ones stay errors.
FROZEN_GRAPH_DROPS: tuple[Rule, ...] = (
    Rule(rf"(?!(?:.*/)?(?:{_VARIABLE_LEAF})$).+", None,
         reason="graph constant of an op (shape, scale, switch default), not a variable"),
)


def slim_tables(architecture: str, network_rules: tuple[Rule, ...], checkpoint_description: str,
                frozen_description: str) -> tuple[Table, Table]:
    """The two tables of a TF-slim network: its training checkpoints and its frozen graphs.

    Both map the same network variables; the checkpoint table also drops training state
    (first: it matches most names of a training checkpoint and can never match a network
    variable, whole-name match, so the order only saves time) and may select EMA shadows; the
    frozen table drops the graph's op constants.
    """
    checkpoint = Table(name=f"{architecture}.tf_slim", architecture=architecture,
                       scheme="tf-slim", rules=TF_TRAINING_DROPS + network_rules,
                       fills=BN_FILLS, ema_pattern=EMA_PATTERN,
                       description=checkpoint_description)
    frozen = Table(name=f"{architecture}.tf_slim_frozen", architecture=architecture,
                   scheme="tf-slim-frozen", rules=network_rules + FROZEN_GRAPH_DROPS,
                   fills=BN_FILLS, ema_pattern=None, description=frozen_description)
    return checkpoint, frozen
