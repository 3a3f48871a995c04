"""Every optimizer of ``facenet_convert.training`` against TF1's own optimizer class, float64.

The squeezenet proof (``test_training_parity.py``) covers the optimizers upstream's
``facenet.train`` builds. This covers each update rule on its own, plain gradient descent and
Momentum without Nesterov included (upstream never builds them): a float64 variable, a
sequence of gradients, ``tf.compat.v1.train.<Optimizer>`` in a TF1 graph with upstream's
hyper-parameters against our class, dense gradients and sparse ones (``tf.gather``, repeated
rows included). After every step the variable and every slot agree to ``BOUND`` (relative).

Adam runs in float32 on both sides: TF1 keeps ``beta1_power``/``beta2_power`` in float32
whatever the variables' dtype (they start from a Python float), so a float64 TF1 Adam is a
float32-rounded one. Its float64 proof is the squeezenet one, on upstream's graph retyped to
float64. The float32 bound still leaves any other rule (e.g. the sparse path moving only the
gathered rows) far outside.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facenet_convert.training.optimizers import CLASSES, UPSTREAM

pytestmark = pytest.mark.tf

BOUND = {"float64": 1e-12, "float32": 1e-6}
STEPS = 4
SHAPE = (6, 5)
LEARNING_RATE = 0.01
ROWS = np.array([4, 1, 4, 0])          # repeated: TF sums duplicate indices first
#: (our name, hyper-parameter overrides): upstream's settings, and the variants it never used
CASES = [(name, {}) for name in UPSTREAM] + [("MOM", {"use_nesterov": False})]


def _dtype(name: str) -> str:
    return "float32" if name == "ADAM" else "float64"


def _gradients(sparse: bool) -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    rows = len(ROWS) if sparse else SHAPE[0]
    return [rng.standard_normal((rows, SHAPE[1])) * 10.0 ** (k - 2) for k in range(STEPS)]


def _tf_run(name: str, hyper: dict[str, object], sparse: bool) -> list[dict[str, np.ndarray]]:
    import tensorflow as tf

    v1 = tf.compat.v1
    upstream = UPSTREAM[name]
    settings = {**dict(upstream.hyper), **hyper}
    if name == "ADAGRAD":
        settings["initial_accumulator_value"] = settings.pop("initial_accumulator")
    dtype = getattr(tf, _dtype(name))
    start = np.random.default_rng(5).standard_normal(SHAPE)
    graph = tf.Graph()
    with graph.as_default():
        var = v1.get_variable("w", initializer=tf.constant(start, dtype), use_resource=True)
        feed = v1.placeholder(dtype, (len(ROWS) if sparse else SHAPE[0], SHAPE[1]))
        # the gradient of sum(x * feed) is feed: dense for x = var, IndexedSlices for a gather
        x = tf.gather(var, ROWS) if sparse else var
        loss = tf.reduce_sum(x * feed)
        optimizer = getattr(v1.train, upstream.tf_class)(LEARNING_RATE, **settings)
        train = optimizer.minimize(loss, var_list=[var])
        slots = {slot: optimizer.get_slot(var, slot) for slot in optimizer.get_slot_names()}
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            out = []
            for gradient in _gradients(sparse):
                session.run(train, {feed: gradient})
                state = session.run({"var": var, **slots})
                if name == "ADAM":
                    beta1, beta2 = optimizer._get_beta_accumulators()
                    state.update(session.run({"beta1_power": beta1, "beta2_power": beta2}))
                out.append(state)
    return out


def _our_run(name: str, hyper: dict[str, object], sparse: bool
             ) -> list[dict[str, np.ndarray]]:
    cls = CLASSES[name]
    dtype = getattr(torch, _dtype(name))
    var = torch.nn.Parameter(torch.tensor(np.random.default_rng(5).standard_normal(SHAPE),
                                          dtype=dtype))
    optimizer = cls([var], LEARNING_RATE, **{**dict(UPSTREAM[name].hyper), **hyper})
    rows = torch.tensor(ROWS)
    slot_names = dict(zip(cls.STATE_KEYS, UPSTREAM[name].slots, strict=True))
    tf_slot = {"Adam": "m", "Adam_1": "v", "RMSProp": "rms", "RMSProp_1": "momentum",
               "Adagrad": "accumulator", "Adadelta": "accum", "Adadelta_1": "accum_update",
               "Momentum": "momentum"}
    out = []
    for gradient in _gradients(sparse):
        values = torch.tensor(gradient, dtype=dtype)
        var.grad = (torch.zeros(SHAPE, dtype=dtype).index_add_(0, rows, values)
                    if sparse else values)
        optimizer.step(sparse_rows={var: rows} if sparse else None)
        state = {"var": var.detach().numpy().copy()}
        for key, suffix in slot_names.items():
            state[tf_slot[suffix]] = optimizer.state[var][key].numpy().copy()
        if name == "ADAM":
            group = optimizer.param_groups[0]
            state.update(beta1_power=group["beta1_power"].numpy().copy(),
                         beta2_power=group["beta2_power"].numpy().copy())
        out.append(state)
    return out


def _relative(ours: np.ndarray, theirs: np.ndarray) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    scale = max(float(np.max(np.abs(theirs))), np.finfo(np.float64).tiny)
    difference = float(np.max(np.abs(ours - theirs))) / scale
    return difference if np.isfinite(difference) else float("inf")


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize(("name", "hyper"), CASES,
                         ids=[f"{n}{'-plain' if h else ''}" for n, h in CASES])
def test_each_step_equals_tf1s_optimizer(name: str, hyper: dict[str, object],
                                                    sparse: bool) -> None:
    theirs = _tf_run(name, hyper, sparse)
    ours = _our_run(name, hyper, sparse)
    for step, (mine, tf_state) in enumerate(zip(ours, theirs, strict=True)):
        assert sorted(mine) == sorted(tf_state), (name, sorted(mine), sorted(tf_state))
        worst = {key: _relative(mine[key], tf_state[key]) for key in tf_state}
        assert max(worst.values()) <= BOUND[_dtype(name)], (name, step + 1, worst)
    moved = _relative(ours[-1]["var"], np.random.default_rng(5).standard_normal(SHAPE))
    assert moved > 1e-6, "the variable must move, or the comparison proves nothing"
