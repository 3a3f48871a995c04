"""One inference GraphDef from any TF form, in float32 or rewritten to float64.

Parity's TF reference runs on a GraphDef made by the same steps, whatever the source was (a
meta graph, a rebuilt upstream graph, a frozen ``.pb``, an MTCNN net):

1. **fold variables into constants**: every ``VariableV2`` / ``VarHandleOp`` becomes a ``Const``
   holding the value our own reader read from the checkpoint (or ``.npy``); ``Ref*`` ops and
   ``ReadVariableOp`` become their plain forms. Only the variables the pruned graph still
   needs are read (after step 2, which does not depend on values), so optimizer slots and
   EMA shadows nobody reads cost nothing;
2. **fix the training flags and prune**: ``phase_train`` (any bool node named in ``flags``)
   becomes a constant; every Switch on a constant predicate forwards its data input on its
   live output, every Merge its one live input; dead branches (dropout's training branch,
   batch-norm's batch statistics and moving-average updates) and every control dependency go,
   and only what the fetched tensors need is kept;
3. **retype float32 to float64** (``float64=True``): DT_FLOAT attrs become DT_DOUBLE and float32
   Const values are widened (exactly: every float32 is a float64), so the graph keeps the
   float32-rounded constants it was built with (REFERENCE §7);
4. **replace ops without a float64 kernel** by their exact primitive formula: FusedBatchNorm
   (inference) becomes ``(x - mean) * rsqrt(var + eps) * scale + offset`` with ``eps`` the
   float32 attribute's value.

What TF 2.21 CPU runs in float64 afterwards: Conv2D, MatMul, MaxPool, AvgPool, Relu, ConcatV2,
BiasAdd, Softmax, Mul, AddV2, Reshape and the l2-normalize ops. TensorFlow is imported inside
functions only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facenet_convert.converter.core.errors import ParityError

VARIABLE_OPS = frozenset({"VariableV2", "Variable", "VarHandleOp"})
#: Ops whose ref / resource form is replaced by the plain one once variables are constants.
PLAIN_FORM = {"RefSwitch": "Switch", "RefMerge": "Merge", "RefIdentity": "Identity",
              "ReadVariableOp": "Identity"}
FUSED_BATCH_NORM = frozenset({"FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"})

#: ``values(variable_name) -> array or None`` (None: the source has no value for it).
ValueLookup = Callable[[str], "np.ndarray | None"]


@dataclass
class InferenceGraph:
    """A pruned, variable-free GraphDef ready to import, and how to feed it."""

    graph_def: Any
    input_node: str
    float64: bool
    fetch: dict[str, str]       # requested tensor name -> the tensor computing it here
    folded: int = 0
    notes: list[str] = field(default_factory=list)


def _split(ref: str) -> tuple[str, int, bool]:
    """``"^name"`` / ``"name:1"`` / ``"name"`` -> (node, output index, is control input)."""
    if ref.startswith("^"):
        return ref[1:], -1, True
    name, sep, index = ref.rpartition(":")
    if sep and index.isdigit():
        return name, int(index), False
    return ref, 0, False


def _topological(nodes: Sequence[Any]) -> list[Any]:
    """Nodes in an order where every input comes first (GraphDefs need not be sorted)."""
    by_name = {node.name: node for node in nodes}
    pending = {node.name: {_split(i)[0] for i in node.input if _split(i)[0] in by_name}
               for node in nodes}
    users: dict[str, list[str]] = {}
    for name, deps in pending.items():
        for dep in deps:
            users.setdefault(dep, []).append(name)
    ready = [name for name, deps in pending.items() if not deps]
    ordered = []
    while ready:
        name = ready.pop()
        ordered.append(by_name[name])
        for user in users.get(name, ()):
            deps = pending[user]
            deps.discard(name)
            if not deps:
                ready.append(user)
    if len(ordered) != len(nodes):
        raise ParityError("the TF graph has a cycle (a while loop?) among the ops the outputs "
                          "need; parity runs feed-forward inference graphs only")
    return ordered


def _const_node(tf: Any, name: str, value: np.ndarray) -> Any:
    node = tf.compat.v1.NodeDef(name=name, op="Const")
    node.attr["dtype"].type = tf.dtypes.as_dtype(value.dtype).as_datatype_enum
    node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
    return node


def fold_variables(graph_def: Any, values: ValueLookup) -> tuple[Any, int]:
    """Step 1: variables -> constants holding ``values(name)`` (left as they are when None)."""
    import tensorflow as tf

    out = tf.compat.v1.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    folded = 0
    for node in graph_def.node:
        if node.op in VARIABLE_OPS:
            value = values(node.name)
            if value is not None:
                dtype = node.attr["dtype"].type
                want = tf.dtypes.as_dtype(dtype).as_numpy_dtype
                shape = tf.TensorShape(node.attr["shape"].shape)
                array = np.asarray(value)
                if shape.rank is not None and tuple(array.shape) != tuple(shape.as_list()):
                    raise ParityError(f"variable {node.name} has shape {tuple(shape.as_list())} "
                                      f"in the graph but {tuple(array.shape)} in the weights; "
                                      "the weights do not belong to this graph", key=node.name)
                out.node.append(_const_node(tf, node.name, array.astype(want, copy=False)))
                folded += 1
                continue
        copy = out.node.add()
        copy.CopyFrom(node)
        plain = PLAIN_FORM.get(node.op)
        if plain is not None:
            copy.op = plain
            if node.op == "ReadVariableOp":
                copy.attr["T"].type = node.attr["dtype"].type
                del copy.attr["dtype"]
    return out, folded


def feed_placeholder(graph_def: Any, name: str) -> None:
    """Make node ``name`` a float32 Placeholder of any shape (what the input pipeline fed)."""
    import tensorflow as tf

    for node in graph_def.node:
        if node.name == name:
            if node.op == "Placeholder":
                return
            dtype = node.attr["T"].type or node.attr["dtype"].type or tf.float32.as_datatype_enum
            node.Clear()
            node.name, node.op = name, "Placeholder"
            node.attr["dtype"].type = dtype
            return
    raise ParityError(f"the TF graph has no input node {name!r}")


def fix_flags(graph_def: Any, flags: Mapping[str, bool]) -> list[str]:
    """Step 2a: each bool node named in ``flags`` becomes a constant; return those fixed."""
    import tensorflow as tf

    fixed = []
    for index, node in enumerate(graph_def.node):
        if node.name in flags:
            graph_def.node[index].CopyFrom(
                _const_node(tf, node.name, np.array(bool(flags[node.name]))))
            fixed.append(node.name)
    return fixed


def _key(ref: str) -> str:
    node, index, _ = _split(ref)
    return f"{node}:{index}"


def _plain(key: str) -> str:
    """``name:0`` -> ``name`` (how GraphDef inputs spell output 0)."""
    return key.removesuffix(":0")


def resolve_control_flow(nodes: Sequence[Any]) -> tuple[dict[str, str], set[str]]:
    """Step 2b: with constant predicates, the live source of every Switch / Merge output.

    Returns (``{"node:i": "live node:j", or "" when dead}``, dead node names). A Switch on a
    constant forwards its data input on its live output (the other is dead); a Merge forwards
    its one live input; a node with a dead input (data or control) is dead.
    """
    import tensorflow as tf

    known: dict[str, bool] = {}
    forward: dict[str, str] = {}
    dead: set[str] = set()

    def live(ref: str) -> str:
        key = _key(ref)
        return forward.get(key, key)

    def is_dead(ref: str) -> bool:
        node, _index, control = _split(ref)
        return node in dead or (not control and forward.get(_key(ref)) == "")

    for node in _topological(nodes):
        op = PLAIN_FORM.get(node.op, node.op)  # RefSwitch / RefMerge behave alike
        if op == "Merge":
            alive = [ref for ref in node.input if not ref.startswith("^") and not is_dead(ref)]
            if not alive:
                dead.add(node.name)
            elif len(alive) == 1:  # more: not decided by the flags (an error if it is needed)
                forward[f"{node.name}:0"] = live(alive[0])
                forward[f"{node.name}:1"] = ""  # value_index: inference never reads it
            continue
        if any(is_dead(ref) for ref in node.input):
            dead.add(node.name)
            continue
        if node.op == "Const" and node.attr["dtype"].type == tf.bool.as_datatype_enum:
            value = tf.make_ndarray(node.attr["value"].tensor)
            if value.shape == ():
                known[node.name] = bool(value)
        elif op == "Identity":
            source = live(node.input[0]).rpartition(":")[0]
            if source in known:
                known[node.name] = known[source]
        elif op == "Switch":
            pred = live(node.input[1]).rpartition(":")[0]
            if pred in known:
                taken = 1 if known[pred] else 0
                forward[f"{node.name}:{taken}"] = live(node.input[0])
                forward[f"{node.name}:{1 - taken}"] = ""
    return forward, dead


def prune(graph_def: Any, outputs: Sequence[str]) -> tuple[Any, dict[str, str]]:
    """Steps 2b-2c: resolve Switch / Merge, keep only what the ``outputs`` (tensor names)
    need, drop every control input (training-time updates, cond pivots).

    Returns the pruned GraphDef and ``{output: the tensor that computes it there}``.
    """
    import tensorflow as tf

    nodes = list(graph_def.node)
    forward, dead = resolve_control_flow(nodes)

    def rewrite(ref: str) -> str:
        key = _key(ref)
        for _ in range(len(nodes) + 1):
            target = forward.get(key)
            if target is None:
                return key
            if target == "":
                raise ParityError(f"the outputs read {_plain(key)}, a dead branch once the "
                                  "training flags are fixed")
            key = target
        raise ParityError("cannot resolve the graph's Switch / Merge chain")

    by_name = {node.name: node for node in nodes}
    fetch = {}
    for name in outputs:
        target = rewrite(name)
        if target.rpartition(":")[0] not in by_name:
            raise ParityError(f"the TF graph has no tensor {name}")
        fetch[name] = target
    needed: set[str] = set()
    stack = [target.rpartition(":")[0] for target in fetch.values()]
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        if name in dead:
            raise ParityError(f"op {name} is in a dead branch once the training flags are fixed")
        needed.add(name)
        stack.extend(rewrite(ref).rpartition(":")[0] for ref in by_name[name].input
                     if not ref.startswith("^"))
    out = tf.compat.v1.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    for node in nodes:
        if node.name not in needed:
            continue
        if PLAIN_FORM.get(node.op, node.op) in ("Switch", "Merge"):
            raise ParityError(f"{node.op} {node.name} remains: its predicate is not fixed by the "
                              "training flags")
        copy = out.node.add()
        copy.CopyFrom(node)
        del copy.input[:]
        copy.input.extend(_plain(rewrite(ref)) for ref in node.input if not ref.startswith("^"))
        copy.device = ""
    return out, fetch


def retype_float64(graph_def: Any) -> None:
    """Step 3: DT_FLOAT -> DT_DOUBLE in every attr and float32 Const (values widened exactly)."""
    import tensorflow as tf

    f32, f64 = tf.float32.as_datatype_enum, tf.float64.as_datatype_enum
    for node in graph_def.node:
        if node.op == "Const" and node.attr["dtype"].type == f32:
            value = tf.make_ndarray(node.attr["value"].tensor).astype(np.float64)
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
        for attr in node.attr.values():
            if attr.type == f32:
                attr.type = f64
            if attr.HasField("list") and f32 in attr.list.type:
                types = [f64 if t == f32 else t for t in attr.list.type]
                del attr.list.type[:]
                attr.list.type.extend(types)


def _add(graph_def: Any, name: str, op: str, inputs: Sequence[str], dtype: int) -> str:
    node = graph_def.node.add()
    node.name, node.op = name, op
    node.input.extend(inputs)
    node.attr["T"].type = dtype
    return name


def _expand_one(tf: Any, graph_def: Any, node: Any) -> None:
    """One inference FusedBatchNorm as primitive float64 ops; the result keeps its name."""
    name, dtype = node.name, node.attr["T"].type
    x, scale, offset, mean, var = list(node.input)[:5]
    fmt = node.attr["data_format"].s.decode() if "data_format" in node.attr else "NHWC"
    if fmt.startswith("NC"):  # per-channel vectors broadcast over (C, 1, 1)
        shape = f"{name}/f64_channel_shape"
        graph_def.node.append(_const_node(tf, shape, np.array([-1, 1, 1], np.int32)))
        reshaped = []
        for ref, suffix in ((scale, "scale"), (offset, "offset"), (mean, "mean"), (var, "var")):
            new = _add(graph_def, f"{name}/f64_{suffix}", "Reshape", [ref, shape], dtype)
            graph_def.node[-1].attr["Tshape"].type = tf.int32.as_datatype_enum
            reshaped.append(new)
        scale, offset, mean, var = reshaped
    elif fmt != "NHWC":
        raise ParityError(f"{name}: unsupported data_format {fmt!r}")
    # epsilon is a float32 attr: its float32 value, widened, is what the float32 graph adds
    eps = np.array(node.attr["epsilon"].f, tf.dtypes.as_dtype(dtype).as_numpy_dtype)
    eps_name = f"{name}/f64_epsilon"
    graph_def.node.append(_const_node(tf, eps_name, eps))
    centred = _add(graph_def, f"{name}/f64_centred", "Sub", [x, mean], dtype)
    var_eps = _add(graph_def, f"{name}/f64_var_eps", "AddV2", [var, eps_name], dtype)
    inv = _add(graph_def, f"{name}/f64_inv_std", "Rsqrt", [var_eps], dtype)
    normalised = _add(graph_def, f"{name}/f64_normalised", "Mul", [centred, inv], dtype)
    scaled = _add(graph_def, f"{name}/f64_scaled", "Mul", [normalised, scale], dtype)
    _add(graph_def, name, "AddV2", [scaled, offset], dtype)


def expand_fused_batch_norm(graph_def: Any) -> int:
    """Step 4: inference FusedBatchNorm -> ``(x - mean) * rsqrt(var + eps) * scale + offset``.

    The final AddV2 keeps the node's name, so every reader of ``name:0`` reads the result; a
    reader of its batch statistics (outputs 1-5) would make it a training graph.
    """
    import tensorflow as tf

    stats_readers = {_split(ref)[0] for node in graph_def.node for ref in node.input
                     if _split(ref)[1] > 0}
    nodes = list(graph_def.node)
    del graph_def.node[:]
    expanded = 0
    for node in nodes:
        if node.op not in FUSED_BATCH_NORM:
            graph_def.node.append(node)
            continue
        if node.attr["is_training"].b:
            raise ParityError(f"{node.name} normalises with batch statistics (is_training): "
                              "the training flag of the graph is not fixed")
        if node.name in stats_readers:
            raise ParityError(f"{node.name}'s batch statistics are read by the inference graph")
        _expand_one(tf, graph_def, node)
        expanded += 1
    return expanded


def input_node(graph_def: Any, preferred: Sequence[str] = ("input",)) -> str:
    """The node parity feeds: the first of ``preferred`` present, else the one float32
    Placeholder."""
    import tensorflow as tf

    names = {node.name for node in graph_def.node}
    for name in preferred:
        if name in names:
            return name
    f32 = tf.float32.as_datatype_enum
    found = [node.name for node in graph_def.node
             if node.op == "Placeholder" and node.attr["dtype"].type == f32]
    if len(found) != 1:
        raise ParityError(f"cannot tell the TF graph's input: no node named "
                          f"{' or '.join(preferred)} and {len(found)} float32 placeholders")
    return found[0]


def inference_graph(graph_def: Any, *, outputs: Iterable[str], input_name: str,
                    values: ValueLookup | None = None, flags: Mapping[str, bool] | None = None,
                    float64: bool) -> InferenceGraph:
    """Steps 1-4 on a copy of ``graph_def``: a graph that computes ``outputs`` (tensor names)
    from ``input_name`` only, in float32 (``float64=False``) or float64."""
    import tensorflow as tf

    work = tf.compat.v1.GraphDef()
    work.CopyFrom(graph_def)
    feed_placeholder(work, input_name)
    fixed = fix_flags(work, flags or {})
    pruned, fetch = prune(work, list(outputs))
    folded = 0
    if values is not None:  # only the variables the outputs need (not optimizer slots)
        pruned, folded = fold_variables(pruned, values)
    leftover = sorted(node.name for node in pruned.node if node.op in VARIABLE_OPS)
    if leftover:
        raise ParityError(f"the weights hold no value for {len(leftover)} variables the outputs "
                          f"need ({', '.join(leftover[:3])}); the weights do not belong to this "
                          "graph", key=leftover[0])
    feeds = sorted(node.name for node in pruned.node
                   if node.op.startswith("Placeholder") and node.name != input_name)
    if feeds:
        raise ParityError(f"the TF graph needs feeds parity cannot give: {', '.join(feeds)}")
    notes = []
    if fixed:
        notes.append(f"fixed {', '.join(f'{name}={flags[name]}' for name in fixed)} and pruned "
                     "the training branches")
    if float64:
        retype_float64(pruned)
        expanded = expand_fused_batch_norm(pruned)
        if expanded:
            notes.append(f"float64: {expanded} FusedBatchNorm ops (no float64 kernel) expanded "
                         "to (x - mean) * rsqrt(var + eps) * scale + offset")
    return InferenceGraph(pruned, input_name, float64, fetch, folded, notes)
