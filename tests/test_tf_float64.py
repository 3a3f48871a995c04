"""tf_float64: a real slim graph (cond on phase_train, fused BatchNorm with moving-average
updates, dropout, variables) rewritten to a pruned float32 / float64 inference graph."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from facenet_convert.converter.core.errors import ParityError

pytestmark = pytest.mark.tf

EPS = 1e-3
SCALE = 0.17


@pytest.fixture(scope="module")
def slim_graph() -> tuple[Any, dict[str, np.ndarray], np.ndarray]:
    """(GraphDef, variable values, float32 output of the graph run by TF as built)."""
    pytest.importorskip("tensorflow")
    return build_slim_graph()


def build_slim_graph() -> tuple[Any, dict[str, np.ndarray], np.ndarray]:
    import tensorflow as tf

    from facenet_convert.third_party.facenet.compat import load_upstream, upstream_mode

    up = load_upstream()
    v1, slim = up.tf, up.slim
    rng = np.random.default_rng(0)
    images = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
    with upstream_mode():
        graph = tf.Graph()
        with graph.as_default():
            x = v1.placeholder(tf.float32, (None, 6, 6, 3), name="input")
            phase = v1.placeholder_with_default(False, (), name="phase_train")
            y = slim.conv2d(x, 5, 3, activation_fn=None, biases_initializer=None,
                            normalizer_fn=slim.batch_norm, scope="conv",
                            normalizer_params={"is_training": phase, "epsilon": EPS,
                                               "scale": True, "decay": 0.995,
                                               "updates_collections": None})
            y = slim.dropout(tf.nn.relu(y), 0.8, is_training=phase)
            tf.identity(y * SCALE, name="out")
            variables = v1.global_variables()
            values = {}
            for var in variables:
                shape = tuple(var.shape.as_list())
                low = 0.5 if "variance" in var.op.name else -1.0
                values[var.op.name] = rng.uniform(low, 1.5, shape).astype(np.float32)
            with v1.Session(graph=graph) as session:
                for var in variables:
                    var.load(values[var.op.name], session)
                expected = session.run("out:0", {"input:0": images})
        return graph.as_graph_def(), values, expected


def _run(graph_def: Any, fetch: str, images: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        return session.run(fetch, {"input:0": images})


def _images() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, 6, 6, 3)).astype(np.float32)


def test_float32_graph_is_the_pruned_original(slim_graph) -> None:
    from facenet_convert.converter.tf_float64 import inference_graph

    graph_def, values, expected = slim_graph
    ops = {node.op for node in graph_def.node}
    assert {"Switch", "Merge", "FusedBatchNormV3", "VariableV2", "RandomUniform"} <= ops
    made = inference_graph(graph_def, outputs=["out:0"], input_name="input",
                           values=values.get, flags={"phase_train": False}, float64=False)
    kept = {node.op for node in made.graph_def.node}
    assert not kept & {"Switch", "Merge", "VariableV2", "Assign", "AssignSub", "RandomUniform"}
    assert made.folded == 5  # weights, gamma, beta, moving mean and variance
    got = _run(made.graph_def, made.fetch["out:0"], _images())
    # the same float32 ops; TF's graph optimiser may fuse them differently: rounding only
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_float64_graph_computes_the_float32_model_exactly(slim_graph) -> None:
    import tensorflow as tf

    from facenet_convert.converter.tf_float64 import inference_graph

    graph_def, values, expected = slim_graph
    made = inference_graph(graph_def, outputs=["out:0"], input_name="input",
                           values=values.get, flags={"phase_train": False}, float64=True)
    assert not any(node.op.startswith("FusedBatchNorm") for node in made.graph_def.node)
    f32 = tf.float32.as_datatype_enum
    for node in made.graph_def.node:
        assert all(attr.type != f32 for attr in node.attr.values()), node.name
    images = _images()
    got = _run(made.graph_def, made.fetch["out:0"], images.astype(np.float64))
    assert got.dtype == np.float64
    # the float32 model's arithmetic in float64, with its float32-rounded constants
    w = values["conv/weights"].astype(np.float64)
    conv = np.zeros((2, 6, 6, 5))
    padded = np.pad(images.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    for i in range(3):
        for j in range(3):
            conv += np.einsum("nhwc,co->nhwo", padded[:, i:i + 6, j:j + 6], w[i, j])
    bn = "conv/BatchNorm/"
    inv = 1 / np.sqrt(values[bn + "moving_variance"].astype(np.float64) + float(np.float32(EPS)))
    normed = ((conv - values[bn + "moving_mean"]) * inv * values[bn + "gamma"]
              + values[bn + "beta"])
    want = np.maximum(normed, 0) * float(np.float32(SCALE))
    assert np.abs(got - want).max() <= 1e-13 * np.abs(want).max()
    assert np.abs(got - expected).max() > 0  # float32 rounding is gone


def test_missing_value_and_unfixed_flag_are_errors(slim_graph) -> None:
    from facenet_convert.converter.tf_float64 import inference_graph

    graph_def, values, _ = slim_graph
    partial = {k: v for k, v in values.items() if not k.endswith("moving_mean")}
    with pytest.raises(ParityError, match="no value for 1 variables"):
        inference_graph(graph_def, outputs=["out:0"], input_name="input", values=partial.get,
                        flags={"phase_train": False}, float64=False)
    with pytest.raises(ParityError, match="phase_train|Switch|Merge|feeds"):
        inference_graph(graph_def, outputs=["out:0"], input_name="input", values=values.get,
                        flags={}, float64=False)
    with pytest.raises(ParityError, match="batch statistics"):
        inference_graph(graph_def, outputs=["out:0"], input_name="input", values=values.get,
                        flags={"phase_train": True}, float64=True)
