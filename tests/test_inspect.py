"""`facenet-convert inspect`: what users see about a source, with or without TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from facenet_convert.converter.cli import main

REPO = Path(__file__).resolve().parents[1]


def _inspect_json(source: Path) -> dict:
    result = CliRunner().invoke(main, ["inspect", str(source), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_mtcnn_npy_summary_and_table(det_npy: dict[str, Path]) -> None:
    info = _inspect_json(det_npy["det3"])
    assert info["format"] == "mtcnn-npy"
    assert info["detected"]["architecture"] == "onet"
    names = {t["name"]: t for t in info["tensors"]}
    assert names["conv1/weights"]["shape"] == [3, 3, 3, 32]
    assert info["tensor_count"] == len(info["tensors"])
    assert info["total_bytes"] == sum(t["bytes"] for t in info["tensors"])
    text = CliRunner().invoke(main, ["inspect", str(det_npy["det3"])]).output
    assert "architecture:  onet" in text
    assert "conv6-3/weights" in text


@pytest.mark.tf
def test_upstream_checkpoint_variant(upstream_ckpt_512) -> None:
    info = _inspect_json(upstream_ckpt_512.directory)
    found = info["detected"]
    assert info["format"] == "tf-checkpoint"
    assert "highest step" in info["resolution"]
    assert (found["architecture"], found["scheme"]) == ("inception_resnet_v1", "tf-slim")
    assert (found["embedding_size"], found["num_classes"]) == (512, 16)
    assert found["ema"] and found["centers"] and found["optimizer"] == "ADAM"
    assert found["optimizer_slots"] > 0


@pytest.mark.tf
def test_frozen_graph_variant(upstream_ckpt_128) -> None:
    info = _inspect_json(upstream_ckpt_128.frozen_pb)
    found = info["detected"]
    assert info["format"] == "tf-graphdef"
    assert (found["scheme"], found["embedding_size"], found["num_classes"]) == (
        "tf-slim-frozen", 128, None)
    assert not found["ema"] and found["optimizer"] is None


def test_works_with_tensorflow_unimportable(det_npy: dict[str, Path]) -> None:
    # sys.modules[name] = None makes every `import tensorflow` raise ImportError.
    code = ("import sys; sys.modules['tensorflow'] = None; "
            "from facenet_convert.converter.cli import main; "
            "main(['inspect', sys.argv[1], '--json'])")
    done = subprocess.run([sys.executable, "-c", code, str(det_npy["det1"])],
                          capture_output=True, text=True, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["detected"]["architecture"] == "pnet"


def test_bad_source_is_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.index"
    bad.write_bytes(b"\0" * 10)
    done = subprocess.run([sys.executable, "-m", "converter", "inspect", str(bad)],
                          capture_output=True, text=True, cwd=REPO, check=False)
    assert done.returncode != 0
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0]
    assert "Traceback" not in done.stderr


def test_verify_reads_every_tensor(det_npy: dict[str, Path]) -> None:
    result = CliRunner().invoke(main, ["inspect", str(det_npy["det2"]), "--verify", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["verified"] is True
    text = CliRunner().invoke(main, ["inspect", str(det_npy["det2"]), "--verify"]).output
    assert "every tensor read and checked" in text
