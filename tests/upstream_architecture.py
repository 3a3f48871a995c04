"""Shared checks for the upstream ``--model_def`` architectures, on files written by TF.

One architecture's test module (``tests/test_<name>.py``) builds a training-style checkpoint
with the upstream graph code (EMA shadows, optimizer slots; cached under ``cache_dir()``) and
its frozen ``.pb``, then calls these: ``inspect`` detects both, ``convert`` (``--model auto``)
picks the record and its output loads strictly into the model class, embeddings and logits
equal TensorFlow's, and ``parity`` passes at the gates V1 passes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from click.testing import CliRunner, Result

from facenet_convert.converter.registry import get_architecture
from facenet_convert.third_party.wheels import cache_dir

EMBEDDING_TOL = 1e-5
LOGITS_REL_TOL = 1e-4  # parity's logits gate: 10 x the tolerance, relative to their scale
#: 4 random inputs (parity's noise ratio is steady enough for a pass at that count)
SMALL = {"batches": 2, "batch_size": 2}


def build(model_def: str, folder: str, **options: Any) -> Any:
    """A cached upstream-graph checkpoint folder of ``model_def`` (built by TF on first use)."""
    from facenet_convert.third_party.facenet.testing.build import build_checkpoint

    return build_checkpoint(cache_dir() / "fixtures" / folder, model_def=model_def, **options)


def cli(*args: str | Path) -> Result:
    """Run the ``facenet-convert`` CLI in-process (imported on use, so collecting a module's
    tests without TensorFlow does not import every command)."""
    from facenet_convert.converter.cli import main

    return CliRunner().invoke(main, [str(arg) for arg in args])


def inspect_json(source: Path) -> dict[str, Any]:
    result = cli("inspect", source, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def check_inspect(ckpt: Any, architecture: str) -> None:
    """``inspect`` names the architecture, scheme, head sizes and training extras."""
    found = inspect_json(ckpt.directory)["detected"]
    assert (found["architecture"], found["scheme"]) == (architecture, "tf-slim")
    assert (found["embedding_size"], found["num_classes"]) == (ckpt.embedding_size,
                                                               ckpt.num_classes)
    assert found["ema"] == ckpt.ema and found["centers"] == ckpt.centers
    assert found["optimizer"] == ckpt.optimizer and found["optimizer_slots"] > 0
    frozen = inspect_json(ckpt.frozen_pb)
    found = frozen["detected"]
    assert frozen["format"] == "tf-graphdef"
    assert (found["architecture"], found["scheme"]) == (architecture, "tf-slim-frozen")
    assert (found["embedding_size"], found["num_classes"]) == (ckpt.embedding_size, None)


def torch_outputs(net: Any, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Embeddings (and logits when the net has them) of NHWC images."""
    import torch

    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        embeddings = net(x).numpy()
        logits = None
        if net.num_classes is not None:
            net.classify = True
            logits = net(x).numpy()
            net.classify = False
    return embeddings, logits


def assert_close_to_tf(net: Any, tf_embeddings: np.ndarray, tf_logits: np.ndarray | None,
                       images: np.ndarray) -> None:
    embeddings, logits = torch_outputs(net, images)
    assert np.abs(embeddings - tf_embeddings).max() <= EMBEDDING_TOL
    # seeded weights must give distinct embeddings, or the comparison proves little
    assert np.abs(embeddings[0] - embeddings[1]).max() > 0.05
    if tf_logits is not None:
        assert logits is not None
        scale = max(1.0, float(np.abs(tf_logits).max()))
        assert np.abs(logits - tf_logits).max() <= LOGITS_REL_TOL * scale


def convert_auto(ckpt: Any, architecture: str, out: Path, *, weights: str = "raw") -> Any:
    """CLI ``convert`` (``--model auto``) picks the record; ``Model(pretrained=file)`` loads
    the output strictly. Returns the loaded model (eval mode)."""
    report_path = out.with_suffix(".json")
    result = cli("convert", ckpt.directory, "-o", out, "--weights", weights,
                 "--report", report_path)
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert (report["architecture"], report["table"]) == (architecture, f"{architecture}.tf_slim")
    assert report["weights"] == weights and report["detection"]["optimizer"] == ckpt.optimizer
    reasons = {drop["source"]: drop["reason"] for drop in report["drops"]}
    assert any(r.startswith("optimizer slot") for r in reasons.values())
    if ckpt.ema:  # the shadows not selected are dropped; selected ones are read instead
        assert weights == "ema" or any(r.startswith("EMA shadow") for r in reasons.values())
    assert ("centers" in reasons) == ckpt.centers
    net = get_architecture(architecture).model_class()(pretrained=out).eval()  # strict
    assert (net.embedding_size, net.num_classes) == (ckpt.embedding_size, ckpt.num_classes)
    return net


def state_arrays(net: Any) -> dict[str, np.ndarray]:
    return {key: value.numpy() for key, value in net.state_dict().items()}


def check_checkpoint_outputs(ckpt: Any, net: Any, *, weights: str = "raw") -> None:
    """Embeddings and logits equal TF's on the checkpoint (its own metagraph, restored)."""
    from facenet_convert.third_party.facenet.testing.reference import (
        reference_images,
        run_checkpoint,
    )

    images = np.asarray(reference_images(0, 3), dtype=np.float32)
    fetch = ["embeddings:0"] + (["Logits/BiasAdd:0"] if ckpt.num_classes else [])
    tf_values = list(run_checkpoint(ckpt.prefix, ckpt.meta, images, fetch,
                                    use_ema=weights == "ema").values())
    assert_close_to_tf(net, tf_values[0], tf_values[1] if ckpt.num_classes else None, images)


def convert_frozen(ckpt: Any, architecture: str, out: Path,
                   checkpoint_state: dict[str, np.ndarray]) -> Any:
    """The frozen ``.pb`` converts (no variable dropped) to the checkpoint's raw weights;
    returns the model loaded from it."""
    from facenet_convert.converter.conversion import convert

    result = convert(ckpt.frozen_pb, output=out)
    assert result.table == f"{architecture}.tf_slim_frozen"
    assert result.num_classes is None and result.embedding_size == ckpt.embedding_size
    dropped = {d.source for d in result.plan.drops}
    assert dropped and not any(n.endswith(("/weights", "/biases", "/beta", "/moving_mean",
                                           "/moving_variance")) for n in dropped)
    for key, value in result.arrays.items():
        np.testing.assert_array_equal(value, checkpoint_state[key], err_msg=key)
    return get_architecture(architecture).model_class()(pretrained=out).eval()


def check_frozen_outputs(ckpt: Any, net: Any) -> None:
    """Embeddings equal TF's on the frozen graph."""
    from facenet_convert.third_party.facenet.testing.reference import (
        reference_images,
        run_frozen,
    )

    images = np.asarray(reference_images(1, 3), dtype=np.float32)
    assert_close_to_tf(net, run_frozen(ckpt.frozen_pb, images)["embeddings:0"], None, images)


def assert_parity_pass(report: Any, architecture: str, *, logits: bool) -> None:
    """V1's gates: embeddings max abs <= 1e-5, noise ratio < 2, logits relative <= 1e-4."""
    assert report.model == architecture
    assert report.passed, [(g.name, g.value) for g in report.failed_gates]
    emb = report.outputs[0]
    assert emb.name == "embeddings" and emb.max_abs <= EMBEDDING_TOL and emb.noise_ratio < 2
    assert emb.min_cosine is not None and emb.min_cosine > 1 - 1e-6
    assert 0 < emb.l2 < 1e-4
    assert (len(report.outputs) == 2) == logits
    if logits:
        assert report.outputs[1].name == "logits"
        assert report.outputs[1].rel_max_abs <= LOGITS_REL_TOL


def check_parity_per_layer(ckpt: Any, architecture: str, weights: Path) -> None:
    """``run_parity`` on the checkpoint passes, and compares every record end point."""
    from facenet_convert.converter.parity import run_parity

    report = run_parity(ckpt.directory, weights, per_layer=True, **SMALL)
    assert report.source_kind == "checkpoint"
    assert_parity_pass(report, architecture, logits=ckpt.num_classes is not None)
    record = get_architecture(architecture)
    assert report.layers is not None
    assert [layer.name for layer in report.layers][:len(record.end_points)] == [
        row.display for row in record.end_points]
    assert not any(layer.missing for layer in report.layers)
    assert report.divergence is None


def check_parity_cli(source: Path, weights: Path, architecture: str, tmp_path: Path) -> None:
    """``facenet-convert parity SOURCE WEIGHTS`` passes (model detected from the weights)."""
    result = cli("parity", source, weights, "--batches", "2", "--batch-size", "2",
                 "--json", tmp_path / "parity.json")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"parity PASS ({architecture})")
    data = json.loads((tmp_path / "parity.json").read_text())
    assert data["passed"] is True and data["outputs"][0]["max_abs"] <= EMBEDDING_TOL
