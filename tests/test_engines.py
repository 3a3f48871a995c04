"""Inference engines: ONNX Runtime (cached by weights sha256), torch frozen for inference, bf16;
each checked against the plain model, falling back when it cannot be built; bf16 refused on
CPUs without bf16 instructions and leaving verification decisions unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from facenet_convert.converter.cli import main
from facenet_convert.converter.engines import (
    CHECK_TOLERANCE,
    REDUCED_TOLERANCE,
    EngineError,
    bf16_supported,
    engine_cache_path,
    make_engine,
    require_bf16,
)
from tests.synthetic_models import realistic_model

torch = pytest.importorskip("torch")

TOL = 1e-5


@pytest.fixture(scope="module")
def model() -> Any:
    return realistic_model()


@pytest.fixture(scope="module")
def faces() -> Any:
    """Standardized 160x160 crops of real photographs (scikit-image), 8 of them."""
    data = pytest.importorskip("skimage.data")
    from facenet_convert.models.preprocessing import Preprocess

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    crops = [photo[k * 30:k * 30 + 200, k * 40:k * 40 + 200]
             for photo in photos for k in range(2)]
    return torch.stack([Preprocess()(crop) for crop in crops])


@pytest.fixture(scope="module")
def engine_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One engine cache for this module: the CLI test reuses the ONNX export of the first."""
    return tmp_path_factory.mktemp("cache")


def test_onnxruntime_engine_is_checked_and_cached(model, faces, engine_cache: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("FACENET_CONVERT_CACHE", str(engine_cache))
    engine = make_engine(model, "onnxruntime")
    assert engine.backend == "onnxruntime" and engine.note is None
    assert engine.check_max_abs <= CHECK_TOLERANCE
    cached = engine_cache_path(model, "InceptionResNetV1")
    assert cached.is_file() and cached.parent == engine_cache / "engines"
    with torch.inference_mode():
        want = model(faces)
    got = engine(faces)
    assert got.dtype == torch.float32 and float((got - want).abs().max()) <= TOL
    assert engine(faces[:0]).shape == (0, 512)
    inode = cached.stat().st_ino                    # a new export would be a new file
    again = make_engine(model, "auto")               # the default takes ONNX Runtime, cached
    assert again.backend == "onnxruntime" and cached.stat().st_ino == inode
    assert torch.equal(again(faces), got)


def test_torch_engine_frozen_for_inference(model, faces) -> None:
    engine = make_engine(model, "torch")
    assert engine.backend == "torch" and engine.check_max_abs <= CHECK_TOLERANCE
    with torch.inference_mode():
        want = model(faces)
    assert float((engine(faces) - want).abs().max()) <= TOL


class _Unscriptable(torch.nn.Module):
    """Python-side control flow torch.jit.script cannot compile."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x: Any) -> Any:
        return self.conv(x).mean(dim=(2, 3)) * len({1: x})       # one row per image


def test_an_engine_that_cannot_be_built_falls_back_with_a_note() -> None:
    net = _Unscriptable().eval()
    engine = make_engine(net, "torch", input_size=(8, 8))
    assert engine.backend == "eager" and "torch failed to build" in (engine.note or "")
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        assert float((engine(x) - net(x)).abs().max()) <= TOL


def test_bad_choices_are_one_line() -> None:
    net = _Unscriptable()
    for kwargs, text in (({"backend": "tvm"}, "unknown backend"),
                         ({"precision": "fp8"}, "unknown precision"),
                         ({"backend": "onnxruntime", "precision": "bf16"}, "torch backend")):
        with pytest.raises(EngineError, match=text) as caught:
            make_engine(net, input_size=(8, 8), **kwargs)
        assert "\n" not in str(caught.value)


def test_bf16_is_refused_without_bf16_instructions() -> None:
    with pytest.raises(EngineError, match="AVX512_BF16 or AMX") as caught:
        require_bf16({"sse4_2", "avx2", "avx512f"})
    assert "\n" not in str(caught.value)
    require_bf16({"avx512f", "avx512_bf16"})
    require_bf16({"amx_bf16", "amx_tile"})


class _Amplifier(torch.nn.Module):
    """Scales a pooled 1x1 conv by 1000: bf16's rounding shows far past the guard."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1)

    def forward(self, x: Any) -> Any:
        return self.conv(x).mean(dim=(2, 3)) * 1000.0


@pytest.mark.skipif(not bf16_supported(), reason="this CPU has no AVX512_BF16 / AMX")
def test_bf16_engine_and_its_guard(model, faces) -> None:
    """bf16 within the guard on the model; on a model where bf16 drifts past the guard the
    engine refuses bf16 and runs fp32. (Random weights cannot show what trained weights'
    verification decisions do: scripts/bench_embed.py reports decision counts.)"""
    engine = make_engine(model, precision="bf16")
    assert engine.precision == "bf16" and engine.check_max_abs <= REDUCED_TOLERANCE
    assert "differ from fp32" in (engine.note or "")
    with torch.inference_mode():
        fp32 = model(faces).numpy()
    bf16 = engine(faces).numpy()
    assert bf16.dtype == np.float32 and float(np.abs(bf16 - fp32).max()) <= REDUCED_TOLERANCE

    sensitive = _Amplifier().eval()
    guarded = make_engine(sensitive, precision="bf16", input_size=(8, 8))
    assert guarded.precision == "fp32" and "running fp32 instead" in (guarded.note or "")
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    with torch.inference_mode():
        assert float((guarded(x) - sensitive(x)).abs().max()) <= 1e-3


def test_embed_cli_takes_backend_and_precision(model, engine_cache: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    image = pytest.importorskip("PIL.Image")
    data = pytest.importorskip("skimage.data")
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("FACENET_CONVERT_CACHE", str(engine_cache))
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    face = tmp_path / "face.png"
    image.fromarray(data.astronaut()[40:200, 170:330]).save(face)
    out = tmp_path / "e.npz"
    result = CliRunner().invoke(main, ["embed", str(face), "--weights", str(weights), "-o",
                                       str(out), "--backend", "onnxruntime"])
    assert result.exit_code == 0, result.output
    with torch.inference_mode():
        from facenet_convert.models.preprocessing import Preprocess, load_image

        want = model(Preprocess()(load_image(face))[None]).numpy()
    assert float(np.abs(np.load(out)["embeddings"] - want).max()) <= TOL
    bad = CliRunner().invoke(main, ["embed", str(face), "--weights", str(weights), "-o",
                                    str(tmp_path / "f.npz"), "--backend", "onnxruntime",
                                    "--precision", "bf16"])
    assert bad.exit_code != 0
    assert "torch backend" in bad.stderr.strip().splitlines()[-1]      # one line, after notes


def test_tampered_engine_cache_entry_is_rebuilt_not_used(model, faces, engine_cache: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    """An entry whose bytes no longer match the sha256 recorded when it was written is
    removed with one line and exported again; the embeddings stay the model's."""
    pytest.importorskip("onnxruntime")
    import onnx
    from onnx import numpy_helper

    monkeypatch.setenv("FACENET_CONVERT_CACHE", str(engine_cache))
    make_engine(model, "onnxruntime")
    cached = engine_cache_path(model, "InceptionResNetV1")
    proto = onnx.load(str(cached))
    biggest = max(proto.graph.initializer, key=lambda t: len(t.raw_data) or 0)
    values = numpy_helper.to_array(biggest).copy()
    values *= 1.5                                    # a valid model, other weights
    biggest.CopyFrom(numpy_helper.from_array(values, biggest.name))
    cached.write_bytes(proto.SerializeToString())
    capsys.readouterr()
    engine = make_engine(model, "onnxruntime")
    assert "does not match its recorded sha256" in capsys.readouterr().err
    with torch.inference_mode():
        want = model(faces)
    assert float((engine(faces) - want).abs().max()) <= TOL
