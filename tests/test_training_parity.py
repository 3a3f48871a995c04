"""The float64 proof: our PyTorch training step equals upstream's TF training graph.

Checkpoints are written by the upstream graph (``third_party.facenet.testing.build``, the
``squeezenet`` ``--model_def`` at a small input so the whole file stays fast), one per
optimizer of ``facenet.train``, with EMA shadows, center-loss centers and slots. The TF side is
upstream's own ``facenet.train`` / ``center_loss`` (compiled from the pinned wheel) rewritten
to float64 (``third_party.facenet.testing.training``). Both sides take the same batches, keep
probability 1; after one step and after ``STEPS`` steps every variable of the checkpoint
(weights, BN statistics, slots, beta powers, centers, EMA shadows, loss averages,
global_step) must agree to a relative difference of ``BOUND``. The float32 figures (TF's real
fused kernels, our float32 step) are printed beside them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_writer import write_bundle

from facenet_convert.training.optimizers import Adam
from facenet_convert.training.resume import ResumeError, resume_from, tf_variables
from facenet_convert.training.step import LossSettings

pytestmark = pytest.mark.tf

OPTIMIZERS = ("ADAM", "RMSPROP", "ADAGRAD", "ADADELTA", "MOM")
BOUND = 1e-10
STEPS = 3
SIZE = 64             # squeezenet's smallest comfortable input: the proof does not need 160
LEARNING_RATE = 0.01
# repeated labels: scatter_sub adds up. Batches of 8, not 4: BatchNorm's backward pass over
# a batch of 4 cancels so much that float64 summation order alone (1 vs 2 threads) moved a
# variable by 1.2e-10 after three steps
LABELS = ([0, 2, 2, 5, 3, 1, 7, 4], [1, 1, 3, 7, 6, 0, 2, 5], [4, 0, 6, 6, 2, 3, 5, 1])
SETTINGS = LossSettings(weight_decay=5e-4, center_loss_factor=0.01, center_loss_alfa=0.95,
                        prelogits_norm_loss_factor=5e-4, prelogits_norm_p=1.0,
                        keep_probability=1.0)


def _batches() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(2024)
    return [(rng.standard_normal((len(labels), SIZE, SIZE, 3)), np.array(labels))
            for labels in LABELS]


@pytest.fixture(scope="session")
def checkpoint(fixtures_dir: Path):
    """``checkpoint(optimizer)``: an upstream-written squeezenet training checkpoint."""
    from facenet_convert.third_party.facenet.testing.build import build_checkpoint

    def build(optimizer: str):
        return build_checkpoint(fixtures_dir / f"train_squeezenet_{optimizer.lower()}",
                                embedding_size=32, num_classes=8, ema=True,
                                optimizer=optimizer, centers=True, step=5, seed=3,
                                model_def="squeezenet")
    return build


@pytest.fixture(scope="session")
def upstream_run(checkpoint):
    """``upstream_run(optimizer, float64)``: TF's variables after each of the batches."""
    from facenet_convert.third_party.facenet.testing.training import (
        UpstreamSettings,
        run_upstream_training,
    )

    runs: dict[tuple[str, bool], list[dict[str, np.ndarray]]] = {}

    def run(optimizer: str, float64: bool = True) -> list[dict[str, np.ndarray]]:
        if (optimizer, float64) not in runs:
            settings = UpstreamSettings(
                optimizer=optimizer, learning_rate=LEARNING_RATE,
                weight_decay=SETTINGS.weight_decay,
                center_loss_factor=SETTINGS.center_loss_factor,
                center_loss_alfa=SETTINGS.center_loss_alfa,
                prelogits_norm_loss_factor=SETTINGS.prelogits_norm_loss_factor,
                prelogits_norm_p=SETTINGS.prelogits_norm_p,
                keep_probability=SETTINGS.keep_probability)
            runs[optimizer, float64] = run_upstream_training(
                checkpoint(optimizer), _batches(), settings, float64=float64)
        return runs[optimizer, float64]
    return run


def _ours(prefix: Path, dtype: torch.dtype, adam: type[Adam] | None = None
          ) -> list[dict[str, np.ndarray]]:
    state = resume_from(prefix)
    trainer = state.trainer(settings=SETTINGS, learning_rate=LEARNING_RATE, dtype=dtype)
    if adam is not None:   # the same state under another Adam class
        replaced = adam(trainer.optimizer.param_groups[0]["params"], LEARNING_RATE)
        replaced.load_state_dict(trainer.optimizer.state_dict())
        trainer.optimizer = replaced
    out = []
    for images, labels in _batches():
        trainer.step(torch.tensor(images.transpose(0, 3, 1, 2), dtype=dtype),
                     torch.tensor(labels), LEARNING_RATE)
        out.append(tf_variables(state, trainer))
    return out


def _differences(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray]
                 ) -> dict[str, float]:
    """Relative difference per variable: max |ours - TF| / max |TF| (NaN fails)."""
    assert sorted(ours) == sorted(ref), (sorted(set(ref) - set(ours))[:5],
                                         sorted(set(ours) - set(ref))[:5])
    out = {}
    for name, want in ref.items():
        got = ours[name]
        assert got.shape == want.shape, name
        scale = max(float(np.max(np.abs(want))), np.finfo(np.float64).tiny)
        diff = float(np.max(np.abs(got.astype(np.float64) - want))) / scale
        out[name] = diff if np.isfinite(diff) else float("inf")
    return out


def _failing(differences: dict[str, float], bound: float) -> list[str]:
    return sorted((name for name, value in differences.items() if not value <= bound),
                  key=lambda name: -differences[name])


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_one_and_n_steps_equal_upstream_in_float64(optimizer: str, checkpoint, upstream_run):
    reference = upstream_run(optimizer)
    ours = _ours(checkpoint(optimizer).prefix, torch.float64)
    for step in (0, STEPS - 1):
        differences = _differences(ours[step], reference[step])
        worst = max(differences, key=differences.__getitem__)
        print(f"{optimizer} float64 after {step + 1} step(s): {len(differences)} variables, "
              f"worst {differences[worst]:.2e} ({worst})")
        assert _failing(differences, BOUND) == []
        assert int(ours[step]["global_step"]) == 5 + step + 1
    # the checkpoint's own state is in the comparison: slots, EMA, centers, loss averages
    names = set(reference[0])
    assert {"centers", "global_step", "total_loss/avg", "cross_entropy/avg"} <= names
    assert any(n.endswith("/ExponentialMovingAverage") for n in names)
    assert any(n.endswith("moving_variance") for n in names)


def _network(differences: dict[str, float]) -> dict[str, float]:
    return {n: d for n, d in differences.items()
            if n.endswith(("weights", "biases", "beta", "moving_mean", "moving_variance"))}


def test_float32_figures_beside(checkpoint, upstream_run):
    """Our float32 step is as close to the exact (float64) answer as TF's own float32 graph
    (its real fused BatchNorm kernels) is: float32 rounding, amplified where a gradient is
    mostly cancellation, not a different rule."""
    exact = upstream_run("ADAM")
    tf32 = upstream_run("ADAM", float64=False)
    ours = _ours(checkpoint("ADAM").prefix, torch.float32)
    wrong = _ours(checkpoint("ADAM").prefix, torch.float32, adam=TorchStyleAdam)
    for step in (0, STEPS - 1):
        figures = {}
        for label, run in (("TF float32", tf32), ("ours float32", ours),
                           ("torch-style Adam float32", wrong)):
            differences = _differences(run[step], exact[step])
            network = _network(differences)
            figures[label] = max(network.values())
            print(f"ADAM after {step + 1} step(s), {label} vs float64: every variable "
                  f"{max(differences.values()):.2e}, the network's {figures[label]:.2e}")
        # Float32 rounding is amplified chaotically (the figures move with the thread
        # count), hence an envelope; a different rule lands far outside it after one step.
        envelope = 10 * figures["TF float32"] + 1e-3
        assert figures["ours float32"] <= envelope
        if step == 0:
            assert figures["torch-style Adam float32"] > envelope


class TorchStyleAdam(Adam):
    """torch.optim.Adam's placement: epsilon added to the bias-corrected sqrt(v)."""

    def _dense(self, group, var, grad, state, lr):
        beta1, beta2 = self._constant(group, "beta1"), self._constant(group, "beta2")
        eps = self._constant(group, "epsilon")
        b1p, b2p = group["beta1_power"], group["beta2_power"]
        m, v = state["m"], state["v"]
        m.add_((grad - m) * (1 - beta1))
        v.add_((grad.square() - v) * (1 - beta2))
        var.sub_(lr * (m / (1 - b1p)) / ((v / (1 - b2p)).sqrt() + eps))


def test_torch_style_adam_epsilon_fails_the_check_and_is_named(checkpoint, upstream_run):
    reference = upstream_run("ADAM")
    ours = _ours(checkpoint("ADAM").prefix, torch.float64, adam=TorchStyleAdam)
    failing = _failing(_differences(ours[0], reference[0]), BOUND)
    print(f"torch-style Adam epsilon: {len(failing)} variables off, first {failing[:3]}")
    assert "squeezenet/conv1/weights" in failing
    assert "squeezenet/conv1/weights/Adam" not in failing    # the moments are the same


def test_resume_accounts_for_every_tensor_both_ways(checkpoint):
    from facenet_convert.converter.sources import open_source

    built = checkpoint("ADAM")
    state = resume_from(built.prefix)
    with open_source(built.prefix) as reader:
        names = set(reader.tensors())
    sources = [a.source for a in state.accounting]
    assert sorted(sources) == sorted(names)           # each tensor exactly once
    targets = {a.target for a in state.accounting}
    model_keys = set(state.model.state_dict())
    assert model_keys == {key for key, _ in state.variables.values()} | set(state.fills)
    assert all(f"ema.{key}" in targets for key, _ in state.variables.values())
    trainer = state.trainer(settings=SETTINGS, learning_rate=LEARNING_RATE)
    slots = sum(len(s) for s in trainer.optimizer.state.values())
    assert slots == sum(1 for a in state.accounting if a.role == "slot")
    assert state.optimizer == "ADAM" and state.global_step == 5
    assert state.centers is not None and state.centers.shape == (8, 32)


def test_resume_the_release_sized_fixtures(upstream_ckpt_512, upstream_ckpt_128):
    """The shared Inception-ResNet-V1 fixtures: ADAM + centers + EMA, RMSPROP without."""
    adam = resume_from(upstream_ckpt_512.prefix)
    assert (adam.optimizer, adam.global_step, adam.centers.shape) == ("ADAM", 1, (16, 512))
    assert len(adam.ema) == len(adam.variables)
    assert set(adam.beta_powers) == {"beta1_power", "beta2_power"}
    rms = resume_from(upstream_ckpt_128.prefix)
    assert (rms.optimizer, rms.centers, rms.ema) == ("RMSPROP", None, {})
    trainer = rms.trainer(settings=LossSettings(), learning_rate=1e-3)
    images = torch.randn(2, 3, 80, 80, generator=torch.Generator().manual_seed(0))
    result = trainer.step(images, torch.tensor([0, 1]), 1e-3)
    assert np.isfinite(result.total_loss) and result.cross_entropy is None


@pytest.fixture(scope="module")
def adam_arrays(checkpoint) -> dict[str, np.ndarray]:
    from facenet_convert.converter.sources import open_source

    with open_source(checkpoint("ADAM").prefix) as reader:
        return {name: np.array(reader.read(name)) for name in reader.tensors()}


@pytest.mark.parametrize("change, expected", [
    ("drop", "slot squeezenet/conv1/weights/Adam_1 is missing"),
    ("shape", "squeezenet/conv1/weights/Adam has shape"),
    ("ftrl", "FtrlOptimizer"),
    ("unknown", "unknown optimizer"),
])
def test_bad_training_checkpoints_give_one_line(adam_arrays, tmp_path: Path, change: str,
                                                expected: str):
    arrays = dict(adam_arrays)
    if change == "drop":
        del arrays["squeezenet/conv1/weights/Adam_1"]
    elif change == "shape":
        arrays["squeezenet/conv1/weights/Adam"] = arrays["squeezenet/conv1/weights/Adam"][..., :3]
    else:
        suffix = {"ftrl": ("Ftrl", "Ftrl_1"), "unknown": ("Lion", "Lion_1")}[change]
        arrays = {name.replace("/Adam_1", f"/{suffix[1]}").replace("/Adam", f"/{suffix[0]}"):
                  value for name, value in arrays.items()}
    prefix = write_bundle(tmp_path / "model.ckpt-5", arrays)
    with pytest.raises(ResumeError) as caught:
        resume_from(prefix)
    message = str(caught.value)
    assert expected in message and "\n" not in message
