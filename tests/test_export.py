"""``facenet-convert export``: ONNX and torch.export outputs of every registry architecture,
verified before they are written, with metadata; TorchScript; parity of TF vs the ONNX model.

Exports run ONNX Runtime / the reloaded exported program against our model here again (not
only inside the exporter), so a wrong verification would show.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from facenet_convert.converter.cli import main
from facenet_convert.converter.core.hashing import sha256_file
from facenet_convert.converter.core.version import __version__
from facenet_convert.converter.registry import architectures
from tests.synthetic_models import seed_batchnorm

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

TOL = 1e-5


def _run(*args: object) -> Any:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def tf_onnx(upstream_ckpt_128, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A TF-built upstream checkpoint converted, then exported by the CLI: (weights, onnx)."""
    from facenet_convert.converter.conversion import convert

    folder = tmp_path_factory.mktemp("tf-onnx")
    weights = folder / "irv1.pt"
    convert(upstream_ckpt_128.prefix, output=weights)
    out = folder / "irv1.onnx"
    result = _run("export", weights, "-o", out, "--dynamic-batch")
    assert result.exit_code == 0, result.output
    return weights, out


@pytest.mark.tf
def test_onnx_export_is_verified_carries_metadata_and_runs(tf_onnx, tmp_path: Path) -> None:
    from facenet_convert.converter.engines import OnnxModel, match_onnx
    from facenet_convert.models.inception_resnet_v1 import InceptionResNetV1

    weights, out = tf_onnx
    report = json.loads(out.with_name(out.name + ".json").read_text())
    assert report["passed"] and report["architecture"] == "inception_resnet_v1"
    assert [c["shape"][0] for c in report["checks"]] == [2, 3]     # dynamic batch checked
    assert all(c["max_abs"] <= TOL for c in report["checks"])

    onnx_model = OnnxModel(out)
    meta = onnx_model.metadata
    assert meta["source_sha256"] == sha256_file(weights)
    assert meta["preprocessing"] == "prewhiten"     # a 128-d file of no release, as embed
    assert meta["embedding_size"] == "128" and meta["converter_version"] == __version__
    assert match_onnx(onnx_model).name == "inception_resnet_v1"
    model = InceptionResNetV1(pretrained=str(weights)).eval()
    batch = torch.randn(5, 3, 160, 160, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        want = model(batch)
    got = onnx_model(batch)
    assert got.dtype == torch.float32 and got.shape == (5, 128)
    assert float((got - want).abs().max()) <= TOL

    before = out.read_bytes()
    again = _run("export", weights, "-o", out)
    assert again.exit_code != 0 and "--force" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1 and out.read_bytes() == before


def _random_state(record: Any) -> tuple[Any, Any]:
    cls = record.model_class()
    net = cls(embedding_size=128) if record.task == "embedding" else cls()
    seed_batchnorm(net, 3, affine=False)
    return net, net.state_dict()


@pytest.mark.parametrize("record", [r for r in architectures()
                                    if r.name != "inception_resnet_v1"], ids=lambda r: r.name)
def test_every_registry_architecture_exports(record: Any, tmp_path: Path) -> None:
    """Detection nets to ONNX (PNet at any H x W), embedding nets to .pt2 with preprocessing
    (Inception-ResNet-V1, to ONNX, in the tests around this one)."""
    from facenet_convert.converter.engines import OnnxModel
    from facenet_convert.models.preprocessing import standardization

    net, state = _random_state(record)
    weights = tmp_path / f"{record.name}.pt"
    torch.save(state, weights)
    generator = torch.Generator().manual_seed(11)
    if record.task == "detection":
        out = tmp_path / f"{record.name}.onnx"
        assert _run("export", weights, "-o", out, "--dynamic-batch").exit_code == 0
        runner = OnnxModel(out)
        assert runner.metadata["architecture"] == record.name
        height, width = record.input_size or (23, 40)   # PNet: a size not exported with
        batch = torch.randn(3, 3, height, width, generator=generator)
        with torch.inference_mode():
            want = net(batch)
    else:
        out = tmp_path / f"{record.name}.pt2"
        assert _run("export", weights, "-o", out, "--with-preprocessing").exit_code == 0
        extra = {"facenet_convert.json": ""}
        runner = torch.export.load(out, extra_files=extra).module()
        meta = json.loads(extra["facenet_convert.json"])
        assert meta["architecture"] == record.name and meta["embedding_size"] == "128"
        assert meta["source_sha256"] == sha256_file(weights)
        batch = torch.rand(2, 3, *record.input_size, generator=generator) * 255
        with torch.inference_mode():
            want = net(standardization(meta["preprocessing"])(batch))
    with torch.inference_mode():
        got = runner(batch)
    pairs = zip(got, want, strict=True) if isinstance(want, tuple) else [(got, want)]
    for one, other in pairs:
        assert float((one - other).abs().max()) <= TOL


def test_unknown_architecture_and_bad_suffix_are_one_line(tmp_path: Path) -> None:
    weights = tmp_path / "odd.pt"
    torch.save({"encoder.weight": torch.zeros(4, 4)}, weights)
    result = _run("export", weights, "-o", tmp_path / "odd.onnx")
    assert result.exit_code != 0 and "unknown architecture" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "odd.onnx").exists() and not (tmp_path / "odd.onnx.json").exists()
    suffix = _run("export", weights, "-o", tmp_path / "odd.tflite")
    assert suffix.exit_code != 0 and ".onnx or .pt2" in suffix.stderr


def test_models_script_with_torch_jit() -> None:
    from facenet_convert.models.inception_resnet_v1 import InceptionResNetV1
    from facenet_convert.models.mtcnn import ONet, PNet, RNet

    generator = torch.Generator().manual_seed(5)
    model = InceptionResNetV1(num_classes=7, classify=True).eval()   # no logits: test_engines
    faces = torch.randn(2, 3, 160, 160, generator=generator)
    with torch.inference_mode():
        assert torch.allclose(torch.jit.script(model)(faces), model(faces), atol=TOL)
    for net, size in ((PNet(), 30), (RNet(), 24), (ONet(), 48)):
        crops = torch.randn(2, 3, size, size, generator=generator)
        with torch.inference_mode():
            for one, other in zip(torch.jit.script(net.eval())(crops), net(crops),
                                  strict=True):
                assert torch.allclose(one, other, atol=TOL)


@pytest.mark.tf
def test_parity_runs_tf_against_the_onnx_model(upstream_ckpt_128, tf_onnx,
                                               tmp_path: Path) -> None:
    _, onnx = tf_onnx
    out = tmp_path / "parity.json"
    result = _run("parity", upstream_ckpt_128.prefix, onnx, "--batches", "2", "--batch-size",
                  "4", "--json", out)
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads(out.read_text())
    assert report["weights"] == str(onnx)
    assert any("ONNX" in note for note in report["notes"])


@pytest.mark.tf
def test_parity_runs_tf_against_an_onnx_pnet(det_npy: dict[str, Path], tmp_path: Path) -> None:
    """Upstream's det1.npy (the real MTCNN weights) -> pnet.pt -> pnet.onnx (any H x W) ->
    parity against upstream's TF PNet."""
    from facenet_convert.converter.conversion import convert

    weights = tmp_path / "pnet.pt"
    convert(det_npy["det1"], output=weights)
    onnx = tmp_path / "pnet.onnx"
    assert _run("export", weights, "-o", onnx, "--dynamic-batch").exit_code == 0
    out = tmp_path / "parity.json"
    result = _run("parity", det_npy["det1"], onnx, "--batches", "1", "--batch-size", "2",
                  "--json", out)
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads(out.read_text())
    assert report["model"] == "pnet" and len(report["outputs"]) == 2 and report["passed"]
