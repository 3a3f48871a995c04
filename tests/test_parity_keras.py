"""``parity model.h5 converted.pt``: the TF side is keras-facenet 0.3.2's model (pinned sdist)
built with tf-keras in float64, its weights from our h5 reader; full-model and weights-only
files written by tf-keras itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.tf

SCHEME = "inception_resnet_v1.keras_facenet"
EMBEDDING_SIZE = 128
CORRECT = 1e-12


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """keras-facenet's model with trained-looking random weights, saved by tf-keras."""
    pytest.importorskip("tf_keras")
    from facenet_convert.converter.parity_tf import quiet_tensorflow

    quiet_tensorflow()
    from facenet_convert.third_party.facenet.testing.keras import write_keras_h5

    folder = tmp_path_factory.mktemp("keras")
    return {"model": write_keras_h5(folder / "facenet_keras.h5"),
            "weights": write_keras_h5(folder / "facenet_weights.h5", weights_only=True)}


def _parity(*args: Any) -> Any:
    from facenet_convert.converter.cli import main

    return CliRunner().invoke(main, ["parity", *map(str, args)])


@pytest.mark.parametrize("kind", ["model", "weights"])
def test_keras_h5_parity_passes_in_float64(keras_files: dict[str, Path], tmp_path: Path,
                                           kind: str) -> None:
    from facenet_convert.converter.conversion import convert

    h5 = keras_files[kind]
    weights = tmp_path / "converted.pt"
    convert(h5, output=weights)
    result = _parity(h5, weights, "--batches", 1, "--batch-size", 2, "--json",
                     tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("parity PASS (inception_resnet_v1)")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["source"]["kind"] == "keras" and "keras-facenet 0.3.2" in \
        data["source"]["description"]
    emb = data["outputs"][0]
    assert emb["name"] == "embeddings" and emb["shape"] == [EMBEDDING_SIZE]
    assert 0 < emb["rel_max_abs64"] <= CORRECT and emb["max_abs"] <= 1e-5


def test_keras_float64_model_keeps_float32_constants() -> None:
    pytest.importorskip("tf_keras")
    from facenet_convert.third_party.facenet.keras_facenet import build_model

    model = build_model(SCHEME, EMBEDDING_SIZE, float64=True)
    assert model.weights[0].dtype == "float64"
    scales = {layer.arguments["scale"] for layer in model.layers
              if isinstance(getattr(layer, "arguments", None), dict)
              and "scale" in layer.arguments}
    assert scales == {float(np.float32(s)) for s in (0.17, 0.1, 0.2, 1.0)}
    assert {layer.epsilon for layer in model.layers if hasattr(layer, "epsilon")} == {
        float(np.float32(1e-3))}
