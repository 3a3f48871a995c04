"""Parity check: real upstream-graph checkpoints built by TF, converted, compared with TF.

The TF tests use the session fixtures of ``tests/tf_fixtures.py`` (checkpoints built with the
pinned upstream facenet code) and the real MTCNN det*.npy. Small batches keep them fast.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from facenet_convert.converter.parity import Figures, Gate, locate_divergence

pytestmark = []

# 4 inputs: fast, and enough for a steady noise ratio on this graph (about 1.6-1.9 here with
# TF's oneDNN kernels; fewer inputs scatter it more widely around that).
SMALL = {"batches": 2, "batch_size": 2}


# ---------------------------------------------------------------------- no TensorFlow needed


def _fig(name: str, l2: float, noise: float, max_abs: float = 1e-7) -> Figures:
    return Figures(name, name, f"{name}:0", l2=l2, noise_l2=noise, max_abs=max_abs)


def test_noise_ratio_and_gate_edge_cases() -> None:
    assert _fig("a", 2e-6, 1e-6).noise_ratio == pytest.approx(2.0)
    assert _fig("a", 0.0, 0.0).noise_ratio == 0.0
    assert math.isinf(_fig("a", 1e-9, 0.0).noise_ratio)
    assert Gate("g", 2.0, 2.0).passed and not Gate("g", 2.0001, 2.0).passed
    assert not Gate("g", float("nan"), 2.0).passed


def test_locate_divergence_names_the_first_jump_not_its_consequences() -> None:
    layers = [_fig("a", 1e-6, 1e-6), _fig("b", 3e-6, 1e-6), _fig("c", 5e-2, 1e-6),
              _fig("d", 9e-1, 1e-6), _fig("e", 2e1, 1e-6)]
    found = locate_divergence(layers)
    assert found is not None and found.label == "c"
    assert found.previous_ratio == pytest.approx(3.0)


def test_locate_divergence_quiet_on_noise_and_fallback_on_slow_growth() -> None:
    noise = [_fig(str(i), (1 + i % 3) * 1e-6, 1e-6) for i in range(10)]
    assert locate_divergence(noise) is None
    slow = [_fig("a", 1e-6, 1e-6), _fig("b", 2e-5, 1e-6), _fig("c", 1e-4, 1e-6)]
    assert locate_divergence(slow, failed=False) is None
    found = locate_divergence(slow, failed=True)
    assert found is not None and found.label == "b" and "largest increase" in found.reason


def test_missing_layers_are_skipped() -> None:
    layers = [_fig("a", 1e-6, 1e-6), Figures("b", "b", "b:0", missing=True),
              _fig("c", 1.0, 1e-6)]
    found = locate_divergence(layers)
    assert found is not None and found.label == "c"


# ------------------------------------------------------------------------------ helpers


def _convert(source: Path, out: Path) -> Path:
    from facenet_convert.converter.conversion import convert

    convert(source, output=out)
    return out


def _cli(*args: str, env: dict[str, str] | None = None):
    from facenet_convert.converter.cli import main

    return CliRunner().invoke(main, ["parity", *map(str, args)], env=env)


def _assert_clean_pass(report, *, logits: bool) -> None:
    assert report.passed, [(g.name, g.value) for g in report.failed_gates]
    emb = report.outputs[0]
    assert emb.name == "embeddings"
    assert emb.max_abs <= 1e-5
    assert emb.noise_ratio < 2
    assert emb.min_cosine is not None and emb.min_cosine > 1 - 1e-6
    assert 0 < emb.l2 < 1e-4
    assert (len(report.outputs) == 2) == logits
    if logits:
        assert report.outputs[1].name == "logits"
        assert report.outputs[1].rel_max_abs <= 1e-4  # the gate: 10 x tolerance, relative
        assert report.outputs[1].noise_ratio < 3


# ------------------------------------------------------------------- Inception-ResNet-V1


@pytest.mark.tf
def test_512d_with_logits_meta_graph_passes(upstream_ckpt_512, tmp_path: Path) -> None:
    from facenet_convert.converter.parity import run_parity

    weights = _convert(upstream_ckpt_512.directory, tmp_path / "irv1.pt")
    report = run_parity(upstream_ckpt_512.directory, weights, **SMALL)
    assert report.source_kind == "checkpoint"
    assert report.model == "inception_resnet_v1"
    _assert_clean_pass(report, logits=True)
    assert report.outputs[0].shape == (512,)
    assert report.outputs[1].shape == (upstream_ckpt_512.num_classes,)


@pytest.mark.tf
def test_128d_without_logits_passes_safetensors(upstream_ckpt_128, tmp_path: Path) -> None:
    from facenet_convert.converter.parity import run_parity

    weights = _convert(upstream_ckpt_128.prefix, tmp_path / "irv1.safetensors")
    report = run_parity(upstream_ckpt_128.prefix, weights, **SMALL)
    _assert_clean_pass(report, logits=False)
    assert report.outputs[0].shape == (128,)
    # the .meta itself names the graph; its checkpoint is found beside it
    by_meta = run_parity(upstream_ckpt_128.meta, weights, **SMALL)
    assert by_meta.source_kind == "checkpoint" and by_meta.passed


@pytest.mark.tf
def test_frozen_pb_passes(upstream_ckpt_128, tmp_path: Path) -> None:
    from facenet_convert.converter.parity import run_parity

    pb = upstream_ckpt_128.frozen_pb
    weights = _convert(pb, tmp_path / "frozen.pt")
    report = run_parity(pb, weights, **SMALL)
    assert report.source_kind == "frozen"
    _assert_clean_pass(report, logits=False)


@pytest.mark.tf
def test_checkpoint_without_meta_is_rebuilt(upstream_ckpt_512, tmp_path: Path) -> None:
    from facenet_convert.converter.parity import run_parity

    folder = tmp_path / "nometa"
    folder.mkdir()
    for path in (upstream_ckpt_512.index_file, upstream_ckpt_512.data_file):
        shutil.copy(path, folder / path.name)
    weights = _convert(folder, tmp_path / "irv1.pt")
    report = run_parity(folder, weights, **SMALL)
    assert report.source_kind == "checkpoint-rebuilt"
    assert any("rebuilt" in note for note in report.notes)
    _assert_clean_pass(report, logits=True)


@pytest.mark.tf
def test_ema_weights_compare_against_restored_shadows(upstream_ckpt_512, tmp_path: Path) -> None:
    from facenet_convert.converter.conversion import convert
    from facenet_convert.converter.parity import run_parity, weights_choice

    weights = tmp_path / "ema.safetensors"
    convert(upstream_ckpt_512.directory, output=weights, weights="ema")
    assert weights_choice("auto", weights) == "ema"
    assert weights_choice("auto", tmp_path / "other.pt") == "raw"
    report = run_parity(upstream_ckpt_512.directory, weights, tf_weights="ema", **SMALL)
    _assert_clean_pass(report, logits=True)
    assert any("ExponentialMovingAverage" in note for note in report.notes)
    raw = run_parity(upstream_ckpt_512.directory, weights, tf_weights="raw",
                     batches=1, batch_size=2)
    assert not raw.passed and raw.outputs[0].noise_ratio > 1000


@pytest.mark.tf
def test_cli_pass_writes_json_markdown_and_step_summary(upstream_ckpt_128,
                                                         tmp_path: Path) -> None:
    weights = _convert(upstream_ckpt_128.directory, tmp_path / "irv1.pt")
    summary = tmp_path / "summary.md"
    summary.write_text("# earlier step\n")
    result = _cli(upstream_ckpt_128.directory, weights, "--batches", 2, "--batch-size", 2,
                  "--seed", 7, "--per-layer", "--json", tmp_path / "r.json",
                  "--markdown", tmp_path / "r.md", env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert result.exit_code == 0, result.output
    assert result.output.startswith("parity PASS (inception_resnet_v1)")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["passed"] is True
    assert data["inputs"] == {"kind": "random-normal", "seed": 7, "batches": 2,
                              "batch_size": 2, "count": 4, "shape_nchw": [3, 160, 160]}
    assert data["gates_settings"] == {"tolerance": 1e-5, "max_noise_ratio": 2.0}
    assert [g["name"] for g in data["gates"]] == ["embeddings max abs", "embeddings noise ratio"]
    assert all(g["passed"] for g in data["gates"])
    emb = data["outputs"][0]
    assert emb["max_abs"] <= 1e-5 and emb["noise_ratio"] < 2 and emb["values"] == 4 * 128
    labels = [layer["name"] for layer in data["layers"]]
    assert labels[0] == "Conv2d_1a_3x3 (conv2d_1a)"
    assert "block17_4 (repeat_2.3)" in labels and labels[-1] == "embeddings (output)"
    assert not any(layer["missing"] for layer in data["layers"])
    assert max(layer["noise_ratio"] for layer in data["layers"]) < 20
    assert data["divergence"] is None
    markdown = (tmp_path / "r.md").read_text()
    assert "**PASS**" in markdown and "| embeddings | 128 |" in markdown
    assert "| embeddings noise ratio |" in markdown and "block17_4 (repeat_2.3)" in markdown
    appended = summary.read_text()
    assert appended.startswith("# earlier step\n") and appended.endswith(markdown)


@pytest.mark.tf
def test_corrupted_layer_fails_and_is_named(upstream_ckpt_512, tmp_path: Path) -> None:
    import torch

    weights = _convert(upstream_ckpt_512.directory, tmp_path / "irv1.pt")
    state = torch.load(weights, weights_only=True)
    key = "repeat_2.3.branch1.1.conv.weight"
    state[key] = state[key] * 1.5
    bad = tmp_path / "corrupt.pt"
    torch.save(state, bad)
    result = _cli(upstream_ckpt_512.directory, bad, "--batches", 1, "--batch-size", 2,
                  "--per-layer", "--json", tmp_path / "r.json", "--markdown", tmp_path / "r.md")
    assert result.exit_code == 1, result.output
    assert "parity FAIL" in result.output
    assert "first divergent layer: block17_4 (repeat_2.3)" in result.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["passed"] is False
    assert data["divergence"]["module"] == "repeat_2.3"
    assert data["divergence"]["tf_tensor"] == "InceptionResnetV1/Repeat_1/block17_4/Relu:0"
    layers = {layer["module"]: layer for layer in data["layers"]}
    assert layers["repeat_2.2"]["noise_ratio"] < 20
    assert layers["repeat_2.3"]["noise_ratio"] > 1000
    markdown = (tmp_path / "r.md").read_text()
    assert "**FAIL**" in markdown and "First divergent layer: block17_4 (repeat_2.3)" in markdown


@pytest.mark.tf
def test_errors_are_one_line_exit_2(upstream_ckpt_128, det_npy, tmp_path: Path) -> None:
    weights = _convert(upstream_ckpt_128.directory, tmp_path / "irv1.pt")
    result = _cli(det_npy["det1"], weights)
    assert result.exit_code == 2
    assert "pair a checkpoint or .pb with Inception-ResNet-V1 weights" in result.output
    assert result.output.count("\n") == 1
    missing = _cli(upstream_ckpt_128.directory, tmp_path / "nope.pt")
    assert missing.exit_code == 2 and "no such weights file" in missing.output
    wrong_model = _cli(upstream_ckpt_128.directory, weights, "--model", "pnet")
    assert wrong_model.exit_code == 2 and "the weights are for inception_resnet_v1" in \
        wrong_model.output


# --------------------------------------------------------------------------------- MTCNN


@pytest.mark.tf
@pytest.mark.parametrize("det, model, outputs, batch_size", [
    ("det1", "pnet", ["boxes", "probs"], 4),  # 75x75 maps per 160x160 input: many values
    ("det2", "rnet", ["boxes", "probs"], 16),
    ("det3", "onet", ["boxes", "landmarks", "probs"], 16),
])
def test_mtcnn_parity_on_real_npy(det_npy, tmp_path: Path, det: str, model: str,
                                  outputs: list[str], batch_size: int) -> None:
    from facenet_convert.converter.parity import run_parity

    weights = _convert(det_npy[det], tmp_path / f"{model}.pt")
    # RNet/ONet give 2-10 values per input: 32 inputs keep the noise ratio a steady statistic
    report = run_parity(det_npy[det], weights, per_layer=True, batches=2,
                        batch_size=batch_size)
    assert report.model == model and report.source_kind == "mtcnn"
    assert [fig.name for fig in report.outputs] == outputs
    assert report.passed, [(g.name, g.value) for g in report.failed_gates]
    assert report.gates[-1].name == f"noise ratio, {', '.join(outputs)} pooled"
    assert report.gates[-1].value < 2
    for fig in report.outputs:
        assert fig.max_abs <= 1e-5 and fig.noise_ratio < 3
    assert report.layers is not None and not any(layer.missing for layer in report.layers)
    assert report.divergence is None


@pytest.mark.tf
def test_mtcnn_published_weights_match_upstream(det_npy, published_mtcnn) -> None:
    from facenet_convert.converter.parity import run_parity

    report = run_parity(det_npy["det2"], published_mtcnn["rnet"], **SMALL)
    assert report.passed


@pytest.mark.tf
def test_images_folder_is_used(det_npy, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from facenet_convert.converter.parity import run_parity

    folder = tmp_path / "faces"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(3):
        pixels = rng.integers(0, 256, (30 + index, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"face{index}.png")
    (folder / "notes.txt").write_text("not an image")
    weights = _convert(det_npy["det3"], tmp_path / "onet.pt")
    report = run_parity(det_npy["det3"], weights, images=folder, batch_size=2)
    assert report.inputs == {"kind": "images", "folder": str(folder), "count": 3,
                             "batch_size": 2, "shape_nchw": [3, 48, 48]}
    assert report.outputs[0].values == 3 * 4
    assert all(fig.max_abs <= 1e-5 for fig in report.outputs)
