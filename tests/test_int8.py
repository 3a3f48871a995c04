"""int8 on every CPU class: 7-bit weights that the AVX2 kernels cannot saturate, shown on an
emulated AVX2 CPU (qemu-user, ``-cpu Haswell-v4``: ONNX Runtime picks its AVX2 kernels there
whatever the host is); calibration on real faces, ``--calibration DIR``."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from facenet_convert.converter.calibration import (
    HELD_OUT,
    calibration_sets,
    default_faces,
    folder_faces,
)
from facenet_convert.converter.cli import main
from facenet_convert.converter.core.errors import EngineError
from facenet_convert.converter.engines import REDUCED_TOLERANCE, make_engine
from tests.synthetic_models import realistic_model

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

QEMU = shutil.which("qemu-x86_64")
AVX2_CPU = "Haswell-v4"          # AVX2 + FMA, no AVX-512, no VNNI
ROOT = Path(__file__).resolve().parents[1]

RUN_ONNX = """
import sys, numpy as np, onnxruntime as ort
options = ort.SessionOptions(); options.intra_op_num_threads = 1
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
batch = np.load(sys.argv[2])
np.save(sys.argv[3], session.run(None, {session.get_inputs()[0].name: batch})[0])
"""


@pytest.fixture(scope="module")
def model() -> Any:
    return realistic_model()


@pytest.fixture(scope="module")
def int8_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("int8-cache")


@pytest.fixture(scope="module")
def int8_engine(model: Any, int8_cache: Path) -> Any:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FACENET_CONVERT_CACHE", str(int8_cache))
        return make_engine(model, precision="int8")


def _int8_file(cache: Path) -> Path:
    found = sorted((cache / "engines").glob("*-int8-*.onnx"))
    assert len(found) == 1, found
    return found[0]


def _run(onnx_path: Path, batch: np.ndarray, folder: Path, *, emulate: str | None) -> np.ndarray:
    inputs, outputs = folder / "in.npy", folder / f"out-{emulate}.npy"
    np.save(inputs, batch)
    command = [sys.executable, "-c", RUN_ONNX, str(onnx_path), str(inputs), str(outputs)]
    if emulate:
        command = [QEMU, "-cpu", emulate, *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return np.load(outputs)


def test_int8_calibrates_on_real_faces_and_checks_on_held_out_ones(model, int8_engine) -> None:
    faces = default_faces()
    assert faces.shape == (16, 160, 160, 3) and faces.dtype == np.uint8
    calibration, check = calibration_sets("fixed_standardization")
    assert calibration.shape[0] == 16 - HELD_OUT and check.shape[0] == HELD_OUT
    # held out: none of the self-check faces is among those calibrated on
    assert not any(np.array_equal(c, k) for c in calibration for k in check)
    assert int8_engine.precision == "int8" and int8_engine.backend == "onnxruntime"
    assert 0 < int8_engine.check_max_abs <= REDUCED_TOLERANCE
    with torch.inference_mode():
        want = model(torch.from_numpy(check))
    assert float((int8_engine(torch.from_numpy(check)) - want).abs().max()) <= REDUCED_TOLERANCE


def test_int8_weights_fit_in_seven_bits(int8_engine, int8_cache: Path) -> None:
    """The machine-independent half of the AVX2 guarantee: a uint8 activation pair times an
    int8 weight pair stays within int16 (2 * 255 * 64 = 32640) for every weight."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(_int8_file(int8_cache))).graph
    weights = [numpy_helper.to_array(t) for t in graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and t.dims and len(t.dims) >= 2]
    assert len(weights) > 100                       # every convolution and the bottleneck
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= 64


@pytest.mark.skipif(QEMU is None, reason="qemu-user (qemu-x86_64) is not installed")
def test_int8_gives_the_same_embeddings_on_an_emulated_avx2_cpu(model, int8_engine,
                                                                 int8_cache: Path,
                                                                 tmp_path: Path) -> None:
    """ONNX Runtime's default 8-bit weights give other embeddings on AVX2 than on this host
    (the pair sums saturate; that is what made int8 fall back on Zen 3); the 7-bit weights give
    the same bits on both."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    _, check = calibration_sets("fixed_standardization")
    ours = _int8_file(int8_cache)
    native = _run(ours, check, tmp_path, emulate=None)
    assert np.array_equal(native, int8_engine(torch.from_numpy(check)).numpy())
    assert np.array_equal(_run(ours, check, tmp_path, emulate=AVX2_CPU), native)

    # the control: 8-bit weights (ONNX Runtime's default) on the same export and faces
    calibration, _ = calibration_sets("fixed_standardization")
    fp32 = sorted((int8_cache / "engines").glob("*.onnx"))
    source = next(p for p in fp32 if "-int8-" not in p.name)
    name = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]
                                ).get_inputs()[0].name
    batches = iter(np.array_split(calibration, 3))

    class Reader(CalibrationDataReader):
        def get_next(self) -> dict[str, Any] | None:
            batch = next(batches, None)
            return None if batch is None else {name: batch}

    eight_bit = tmp_path / "eight-bit.onnx"
    quantize_static(str(source), str(eight_bit), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    host = _run(eight_bit, check, tmp_path, emulate=None)
    avx2 = _run(eight_bit, check, tmp_path, emulate=AVX2_CPU)
    assert not np.array_equal(host, avx2)       # the emulation reaches other kernels


def test_calibration_folder_cli(model, int8_engine, int8_cache: Path, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    monkeypatch.setenv("FACENET_CONVERT_CACHE", str(int8_cache))    # the fp32 export reused
    faces = default_faces()
    crops = tmp_path / "crops"
    (crops / "a").mkdir(parents=True)
    for i, face in enumerate(faces[:6]):
        Image.fromarray(face).save(crops / "a" / f"{i}.png")
    assert folder_faces(crops).shape == (6, 160, 160, 3)
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    probe = tmp_path / "probe.png"
    Image.fromarray(faces[-1]).save(probe)
    out = tmp_path / "e.npz"
    result = CliRunner().invoke(main, ["embed", str(probe), "--weights", str(weights), "-o",
                                       str(out), "--precision", "int8", "--calibration",
                                       str(crops)])
    assert result.exit_code == 0, result.output
    assert "int8" in result.stderr
    few = tmp_path / "few"
    few.mkdir()
    Image.fromarray(faces[0]).save(few / "0.png")
    with pytest.raises(EngineError, match="at least 4"):
        folder_faces(few)
    bad = CliRunner().invoke(main, ["embed", str(probe), "--weights", str(weights), "-o",
                                    str(tmp_path / "f.npz"), "--precision", "int8",
                                    "--calibration", str(few)])
    assert bad.exit_code != 0 and not (tmp_path / "f.npz").exists()
    line = bad.stderr.strip().splitlines()[-1]
    assert "at least 4" in line and str(few) in line
