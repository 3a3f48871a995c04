"""Parity check: real upstream-graph checkpoints built by TF, converted, compared with TF.

The verdict is float64 on both sides (gate 1e-10 of the output's scale; a correct conversion
measures about 1e-14); the float32 figures are reported beside it. The TF tests use the
session fixtures of ``tests/tf_fixtures.py`` (checkpoints built with the pinned upstream
facenet code) and the real MTCNN det*.npy. Small batches keep them fast.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from facenet_convert.converter.parity import Figures, Gate, locate_divergence

# 2 inputs: float32 and float64
SMALL = {"batches": 1, "batch_size": 2}
GATE = 1e-10
#: a correct conversion measures about 1e-14; well under the gate, with room for other CPUs
CORRECT = 1e-12


# ---------------------------------------------------------------------- no TensorFlow needed


def _fig(name: str, rel64: float, *, values64: int = 10) -> Figures:
    return Figures(name, name, f"{name}:0", values64=values64, max_abs64=rel64,
                   ref_max_abs64=1.0)


def test_noise_ratio_is_against_both_sides_expected_noise() -> None:
    fig = Figures("a", "a", "a:0", l2_on64=5e-6, noise_tf_l2=3e-6, noise_pt_l2=4e-6)
    assert fig.expected_noise_l2 == pytest.approx(5e-6)
    assert fig.noise_ratio == pytest.approx(1.0)
    assert Figures("a", "a", "a:0").noise_ratio == 0.0
    assert math.isinf(Figures("a", "a", "a:0", l2_on64=1e-9).noise_ratio)
    assert Figures("a", "a", "a:0", max_abs64=2e-12, ref_max_abs64=4.0).rel_max_abs64 == 5e-13
    assert Gate("g", 1e-10, 1e-10).passed and not Gate("g", 1.0001e-10, 1e-10).passed
    assert not Gate("g", float("nan"), 1e-10).passed


def test_locate_divergence_names_the_first_layer_above_the_gate() -> None:
    layers = [_fig("a", 1e-15), _fig("b", 3e-14), _fig("c", 4e-9), _fig("d", 8e-8),
              _fig("e", 2e-6)]
    found = locate_divergence(layers, GATE)
    assert found is not None and found.label == "c"
    assert found.rel_max_abs64 == pytest.approx(4e-9)
    assert locate_divergence(layers[:2], GATE) is None


def test_missing_and_uncompared_layers_are_skipped() -> None:
    layers = [_fig("a", 1e-15), Figures("b", "b", "b:0", missing=True),
              _fig("x", 1.0, values64=0), _fig("c", 1e-3)]
    found = locate_divergence(layers, GATE)
    assert found is not None and found.label == "c"


# ------------------------------------------------------------------------------ helpers


def _convert(source: Path, out: Path) -> Path:
    from facenet_convert.converter.conversion import convert

    convert(source, output=out)
    return out


def _cli(*args: object, env: dict[str, str] | None = None):
    from facenet_convert.converter.cli import main

    return CliRunner().invoke(main, ["parity", *map(str, args)], env=env)


def _assert_exact(report, *, logits: bool) -> None:
    """Passes the float64 gate with a correct conversion's figures; float32 ones beside."""
    assert report.passed, [(g.name, g.value) for g in report.failed_gates]
    emb = report.outputs[0]
    assert emb.name == "embeddings"
    assert report.gates[0].name == "embeddings float64 max abs / scale"
    assert 0 < emb.rel_max_abs64 <= CORRECT and emb.values64 > 0
    # float32, for information: small, and the noise ratio sits near 1
    assert emb.max_abs <= 1e-5 and 0 < emb.l2 < 1e-4
    assert 0.2 < emb.noise_ratio < 3
    assert emb.min_cosine is not None and emb.min_cosine > 1 - 1e-6
    assert (len(report.outputs) == 2) == logits
    if logits:
        assert report.outputs[1].name == "logits"
        assert 0 < report.outputs[1].rel_max_abs64 <= CORRECT
        assert report.outputs[1].rel_max_abs <= 1e-4


# ------------------------------------------------------------------- Inception-ResNet-V1


@pytest.mark.tf
def test_512d_with_logits_meta_graph_passes(upstream_ckpt_512, tmp_path: Path) -> None:
    from facenet_convert.converter.parity import run_parity

    weights = _convert(upstream_ckpt_512.directory, tmp_path / "irv1.pt")
    report = run_parity(upstream_ckpt_512.directory, weights, **SMALL)
    assert report.source_kind == "checkpoint"
    assert report.model == "inception_resnet_v1"
    _assert_exact(report, logits=True)
    assert report.outputs[0].shape == (512,)
    assert report.outputs[1].shape == (upstream_ckpt_512.num_classes,)
    assert any("FusedBatchNorm ops" in note for note in report.notes)


@pytest.mark.tf
def test_128d_without_logits_passes_safetensors(upstream_ckpt_128, tmp_path: Path) -> None:
    from facenet_convert.converter.parity import run_parity

    weights = _convert(upstream_ckpt_128.prefix, tmp_path / "irv1.safetensors")
    # the .meta itself names the graph; its checkpoint is found beside it
    report = run_parity(upstream_ckpt_128.meta, weights, batches=2, batch_size=2,
                        float64_inputs=3)
    assert report.source_kind == "checkpoint"
    _assert_exact(report, logits=False)
    emb = report.outputs[0]
    assert emb.shape == (128,) and emb.values == 4 * 128 and emb.values64 == 3 * 128
    assert report.inputs["float64_count"] == 3


@pytest.mark.tf
def test_frozen_pb_passes(upstream_ckpt_128, tmp_path: Path) -> None:
    from facenet_convert.converter.parity import run_parity

    pb = upstream_ckpt_128.frozen_pb
    weights = _convert(pb, tmp_path / "frozen.pt")
    report = run_parity(pb, weights, **SMALL)
    assert report.source_kind == "frozen"
    _assert_exact(report, logits=False)


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
    assert any("rebuilt the upstream inception_resnet_v1" in note for note in report.notes)
    _assert_exact(report, logits=True)


@pytest.mark.tf
def test_ema_weights_compare_against_the_shadows(upstream_ckpt_512, tmp_path: Path) -> None:
    from facenet_convert.converter.conversion import convert
    from facenet_convert.converter.parity import run_parity, weights_choice

    weights = tmp_path / "ema.safetensors"
    convert(upstream_ckpt_512.directory, output=weights, weights="ema")
    assert weights_choice("auto", weights) == "ema"
    assert weights_choice("auto", tmp_path / "other.pt") == "raw"
    report = run_parity(upstream_ckpt_512.directory, weights, tf_weights="ema", **SMALL)
    _assert_exact(report, logits=True)
    assert any("ExponentialMovingAverage" in note for note in report.notes)
    raw = run_parity(upstream_ckpt_512.directory, weights, tf_weights="raw",
                     batches=1, batch_size=1)
    assert not raw.passed and raw.outputs[0].rel_max_abs64 > 1e-4


@pytest.mark.tf
def test_cli_pass_writes_json_markdown_and_step_summary(upstream_ckpt_128,
                                                         tmp_path: Path) -> None:
    weights = _convert(upstream_ckpt_128.directory, tmp_path / "irv1.pt")
    summary = tmp_path / "summary.md"
    summary.write_text("# earlier step\n")
    result = _cli(upstream_ckpt_128.directory, weights, "--batches", 2, "--batch-size", 2,
                  "--float64-inputs", 2, "--seed", 7, "--per-layer", "--json",
                  tmp_path / "r.json", "--markdown", tmp_path / "r.md",
                  env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert result.exit_code == 0, result.output
    assert result.output.startswith("parity PASS (inception_resnet_v1)")
    assert "float64 max abs / scale" in result.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["passed"] is True and data["verdict"] == "float64"
    assert data["inputs"] == {"kind": "random-normal", "seed": 7, "batches": 2,
                              "batch_size": 2, "count": 4, "float64_count": 2,
                              "shape_nchw": [3, 160, 160]}
    assert data["gates_settings"] == {"float64_rel_tolerance": GATE}
    assert [g["name"] for g in data["gates"]] == ["embeddings float64 max abs / scale"]
    assert all(g["passed"] for g in data["gates"])
    emb = data["outputs"][0]
    assert emb["rel_max_abs64"] <= CORRECT and emb["values64"] == 2 * 128
    assert emb["max_abs"] <= 1e-5 and emb["values"] == 4 * 128
    assert emb["expected_noise_l2"] > 0 and 0.2 < emb["noise_ratio"] < 3
    labels = [layer["name"] for layer in data["layers"]]
    assert labels[0] == "Conv2d_1a_3x3 (conv2d_1a)"
    assert "block17_4 (repeat_2.3)" in labels and labels[-1] == "embeddings (output)"
    assert not any(layer["missing"] for layer in data["layers"])
    assert max(layer["rel_max_abs64"] for layer in data["layers"]) <= CORRECT
    assert data["divergence"] is None
    markdown = (tmp_path / "r.md").read_text()
    assert "**PASS**" in markdown and "| embeddings | 128 |" in markdown
    assert "| embeddings float64 max abs / scale |" in markdown
    assert "block17_4 (repeat_2.3)" in markdown and "noise ratio" in markdown
    appended = summary.read_text()
    assert appended.startswith("# earlier step\n") and appended.endswith(markdown)


@pytest.mark.tf
def test_one_weight_off_by_1e6_is_caught_and_named(upstream_ckpt_512, tmp_path: Path) -> None:
    """One conv weight scaled by (1 + 1e-6): float32 figures cannot see it, float64 names it."""
    import torch

    weights = _convert(upstream_ckpt_512.directory, tmp_path / "irv1.pt")
    state = torch.load(weights, weights_only=True)
    key = "repeat_2.3.branch1.1.conv.weight"
    state[key] = (state[key].double() * (1 + 1e-6)).float()
    assert not torch.equal(state[key], torch.load(weights, weights_only=True)[key])
    bad = tmp_path / "perturbed.pt"
    torch.save(state, bad)
    result = _cli(upstream_ckpt_512.directory, bad, "--batches", 1, "--batch-size", 1,
                  "--per-layer", "--json", tmp_path / "r.json", "--markdown", tmp_path / "r.md")
    assert result.exit_code == 1, result.output
    assert "parity FAIL" in result.output
    assert "first divergent layer: block17_4" in result.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["passed"] is False
    assert data["divergence"]["module"] == "repeat_2.3"
    assert data["divergence"]["tf_tensor"] == "InceptionResnetV1/Repeat_1/block17_4/Relu:0"
    emb = data["outputs"][0]
    assert emb["rel_max_abs64"] > 100 * GATE
    assert emb["max_abs"] <= 1e-5  # the old float32 gate would have passed it
    layers = {layer["module"]: layer for layer in data["layers"]}
    assert layers["repeat_2.2"]["rel_max_abs64"] <= CORRECT
    assert layers["repeat_2.3"]["rel_max_abs64"] > GATE
    markdown = (tmp_path / "r.md").read_text()
    assert "**FAIL**" in markdown and "First divergent layer: block17_4 (repeat_2.3)" in markdown


@pytest.mark.tf
def test_errors_are_one_line_exit_2(upstream_ckpt_128, det_npy, tmp_path: Path) -> None:
    weights = _convert(upstream_ckpt_128.directory, tmp_path / "irv1.pt")
    result = _cli(det_npy["det1"], weights)
    assert result.exit_code == 2
    assert "pair a checkpoint, .pb or .h5 with embedding-model weights" in result.output
    assert result.output.count("\n") == 1
    missing = _cli(upstream_ckpt_128.directory, tmp_path / "nope.pt")
    assert missing.exit_code == 2 and "no such weights file" in missing.output
    wrong_model = _cli(upstream_ckpt_128.directory, weights, "--model", "pnet")
    assert wrong_model.exit_code == 2 and "the weights are for inception_resnet_v1" in \
        wrong_model.output


# --------------------------------------------------------------------------------- MTCNN


@pytest.mark.tf
@pytest.mark.parametrize("det, model, outputs, batch_size", [
    ("det1", "pnet", ["conv4_2", "softmax4_1"], 2),  # 75x75 maps per 160x160 input
    ("det2", "rnet", ["dense5_2", "softmax5_1"], 8),
    ("det3", "onet", ["dense6_2", "dense6_3", "softmax6_1"], 8),
])
def test_mtcnn_parity_on_real_npy(det_npy, tmp_path: Path, det: str, model: str,
                                  outputs: list[str], batch_size: int) -> None:
    from facenet_convert.converter.parity import run_parity

    weights = _convert(det_npy[det], tmp_path / f"{model}.pt")
    report = run_parity(det_npy[det], weights, per_layer=True, batches=1,
                        batch_size=batch_size)
    assert report.model == model and report.source_kind == "mtcnn"
    assert [fig.name for fig in report.outputs] == outputs  # the order our nets return
    assert report.passed, [(g.name, g.value) for g in report.failed_gates]
    for fig in report.outputs:
        assert 0 < fig.rel_max_abs64 <= CORRECT and fig.max_abs <= 1e-5
    assert report.layers is not None and not any(layer.missing for layer in report.layers)
    assert max(layer.rel_max_abs64 for layer in report.layers) <= CORRECT
    assert report.divergence is None


@pytest.mark.tf
def test_mtcnn_published_weights_match_upstream(det_npy, published_mtcnn) -> None:
    from facenet_convert.converter.parity import run_parity

    report = run_parity(det_npy["det2"], published_mtcnn["rnet"], **SMALL)
    assert report.passed and report.outputs[0].rel_max_abs64 <= CORRECT


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
    report = run_parity(det_npy["det3"], weights, images=folder, batch_size=2,
                        float64_inputs=2)
    assert report.inputs == {"kind": "images", "folder": str(folder), "count": 3,
                             "batch_size": 2, "float64_count": 2, "shape_nchw": [3, 48, 48]}
    assert report.outputs[0].values == 3 * 4 and report.outputs[0].values64 == 2 * 4
    assert report.passed


@pytest.mark.tf
def test_tensorflow_log_lines_stay_off_the_terminal(det_npy, tmp_path: Path) -> None:
    """A fresh process (TF imported by parity itself): no C++ start-up lines on stderr."""
    weights = _convert(det_npy["det2"], tmp_path / "rnet.pt")
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("TF_CPP", "ABSL"))}
    command = [sys.executable, "-m", "facenet_convert.converter", "parity",
               str(det_npy["det2"]), str(weights), "--batches", "1", "--batch-size", "2"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("parity PASS (rnet)")
    for marker in ("I0000", "oneDNN", "absl::InitializeLog", "W0000", "E0000"):
        assert marker not in result.stderr, result.stderr
