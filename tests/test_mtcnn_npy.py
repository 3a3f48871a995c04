"""MtcnnNpyReader on the real upstream det1/2/3.npy, and payloads that must never run."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from fuzzing import assert_only_typed_errors, fuzz_settings, mutate
from hypothesis import given
from hypothesis import strategies as st

from facenet_convert.converter.core.errors import (
    CorruptSourceError,
    MappingError,
    UnknownFormatError,
    UnsafeSourceError,
    UnsupportedSourceError,
)
from facenet_convert.converter.sources.mtcnn_npy import MAX_HEADER_BYTES, MtcnnNpyReader


def _trusted_load(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """numpy's own loader: allowed here only, on the pinned, sha256-checked upstream files."""
    return np.load(path, allow_pickle=True, encoding="latin1").item()


@pytest.mark.parametrize("stage", ["det1", "det2", "det3"])
def test_real_files_match_numpy(det_npy: dict[str, Path], stage: str) -> None:
    expected = {f"{layer}/{param}": value
                for layer, params in _trusted_load(det_npy[stage]).items()
                for param, value in params.items()}
    with MtcnnNpyReader(det_npy[stage]) as reader:
        assert reader.format == "mtcnn-npy"
        infos = reader.tensors()
        assert list(infos) == sorted(expected)
        for name, theirs in expected.items():
            ours = reader.read(name)
            assert type(ours) is np.ndarray
            assert infos[name].shape == ours.shape == theirs.shape
            assert infos[name].dtype == ours.dtype == theirs.dtype
            assert ours.tobytes() == theirs.tobytes()
            assert not ours.flags.writeable


def test_known_names(det_npy: dict[str, Path]) -> None:
    with MtcnnNpyReader(det_npy["det1"]) as reader:
        assert {"conv1/weights", "conv1/biases", "PReLU1/alpha", "conv4-1/weights"} <= set(
            reader.tensors())
        assert reader.read("conv1/weights").shape == (3, 3, 3, 10)
        with pytest.raises(MappingError, match="no tensor named 'conv9/weights'"):
            reader.read("conv9/weights")
    with MtcnnNpyReader(det_npy["det2"]) as reader:
        assert reader.read("prelu1/alpha").shape == (28,)


def test_resaved_by_modern_numpy_still_reads(det_npy: dict[str, Path], tmp_path: Path) -> None:
    """A user who re-saves det1 with numpy 2 gets protocol-3 ``numpy._core`` globals."""
    weights = _trusted_load(det_npy["det1"])
    path = tmp_path / "det1_py3.npy"
    np.save(path, np.array(weights, dtype=object), allow_pickle=True)
    with MtcnnNpyReader(path) as reader:
        for name in reader.tensors():
            layer, param = name.split("/")
            np.testing.assert_array_equal(reader.read(name), weights[layer][param])


# -- bad inputs (REFERENCE section 4, items 23 and 24) --------------------------------------

def _npy(payload: bytes, header: str | None = None, version: int = 1) -> bytes:
    text = header or "{'descr': '|O', 'fortran_order': False, 'shape': (), }"
    raw = text.encode("latin1")
    raw += b" " * (-(len(raw) + 11) % 64) + b"\n"
    size = len(raw).to_bytes(2 if version == 1 else 4, "little")
    return b"\x93NUMPY" + bytes([version, 0]) + size + raw + payload


class _Touch:
    """Unpickling this runs ``os.system('touch <marker>')``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Eval:
    def __reduce__(self):
        return eval, ("1 + 1",)


def test_code_execution_payload_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.npy"
    evil.write_bytes(_npy(pickle.dumps(np.array({"conv1": {"weights": _Touch(marker)}},
                                                dtype=object), protocol=3)))
    with pytest.raises(UnsafeSourceError, match=r"asks for posix\.system") as info:
        MtcnnNpyReader(evil)
    assert str(evil) in str(info.value)
    assert not marker.exists()
    # The payload is live: numpy's own loader does run it.
    np.load(evil, allow_pickle=True)
    assert marker.exists()


def test_other_globals_are_named(tmp_path: Path) -> None:
    for obj, protocol, name in (
            (_Eval(), 3, "builtins.eval"),
            (_Eval(), 2, "__builtin__.eval"),  # how Python 2 (and protocol 2) names it
            (np.array({"a": {"b": np.ma.masked_array([1.0])}}, dtype=object), 3,
             "numpy.ma.core")):
        path = tmp_path / "other.npy"
        path.write_bytes(_npy(pickle.dumps(obj, protocol=protocol)))
        with pytest.raises(UnsafeSourceError, match=name.replace(".", r"\.")):
            MtcnnNpyReader(path)


def test_allocation_tricks_are_corrupt(tmp_path: Path) -> None:
    reconstruct = np.ndarray((0,)).__reduce__()[0]

    class _Huge:
        def __init__(self, shape, dtype, data):
            self.state = (1, shape, np.dtype(dtype), False, data)

        def __reduce__(self):
            return reconstruct, (np.ndarray, (0,), b"b"), self.state

    class _Direct:
        def __reduce__(self):
            return np.ndarray, ((2**40,), "f1")

    for obj, match in ((_Huge((2**40,), "O", [1]), "object array"),
                       (_Huge((2**20, 2**20), "f4", b"\0" * 4), "needs 4398046511104 bytes"),
                       (_Direct(), "constructs an ndarray directly")):
        path = tmp_path / "huge.npy"
        path.write_bytes(_npy(pickle.dumps(obj, protocol=3)))
        with pytest.raises(CorruptSourceError, match=match):
            MtcnnNpyReader(path)


def test_wrong_magic_and_plain_arrays(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    path.write_bytes(b"PK\x03\x04 not numpy")
    with pytest.raises(UnknownFormatError, match="not a .npy file"):
        MtcnnNpyReader(path)
    np.save(path, np.zeros((2, 3), np.float32))
    with pytest.raises(UnsupportedSourceError, match="plain array"):
        MtcnnNpyReader(path)


@pytest.mark.parametrize("header, match", [
    ("{'descr': '|O', 'fortran_order': False, 'shape': (), 'x': __import__('os')}",
     "not a Python literal"),
    ("{'descr': '|O', 'fortran_order': False}", "keys descr, fortran_order, shape"),
    ("['descr', '|O']", "must be a dict"),
    ("{'descr': '|O', 'fortran_order': False, 'shape': (-1,)}", "non-negative"),
    ("{'descr': '|O', 'fortran_order': 'no', 'shape': ()}", "fortran_order"),
    ("(" * 5000 + ")" * 5000, "not a Python literal"),
])
def test_malformed_header(tmp_path: Path, header: str, match: str) -> None:
    path = tmp_path / "bad.npy"
    path.write_bytes(_npy(b"\x80\x02N.", header=header, version=2))
    with pytest.raises(CorruptSourceError, match=match):
        MtcnnNpyReader(path)


def test_oversized_header_and_versions(tmp_path: Path) -> None:
    path = tmp_path / "big.npy"
    path.write_bytes(b"\x93NUMPY\x02\x00" + (MAX_HEADER_BYTES + 1).to_bytes(4, "little")
                     + b" " * 100)
    with pytest.raises(CorruptSourceError, match="more than the 65536 allowed"):
        MtcnnNpyReader(path)
    path.write_bytes(b"\x93NUMPY\x02\x00" + (2**32 - 1).to_bytes(4, "little"))
    with pytest.raises(CorruptSourceError, match="more than"):
        MtcnnNpyReader(path)
    path.write_bytes(b"\x93NUMPY\x09\x00\x10\x00")
    with pytest.raises(UnsupportedSourceError, match="version 9.0"):
        MtcnnNpyReader(path)


def test_truncated_files(det_npy: dict[str, Path], tmp_path: Path) -> None:
    data = det_npy["det1"].read_bytes()
    for cut in (0, 3, 8, 9, 40, 80, 81, 200, len(data) // 2, len(data) - 1):
        path = tmp_path / f"cut{cut}.npy"
        path.write_bytes(data[:cut])
        expected = UnknownFormatError if cut < 6 else CorruptSourceError
        with pytest.raises(expected) as info:
            MtcnnNpyReader(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_wrong_payload_shapes(tmp_path: Path) -> None:
    for obj, match in ((np.array([1, 2], dtype=object), "expected a non-empty"),
                       (np.array({"conv1": [1.0]}, dtype=object), "expected str -> {param"),
                       (np.array({"conv1": {"w": 1.5}}, dtype=object), "expected str -> ndarray"),
                       (np.array({"conv1": {"w": np.array(["a"])}}, dtype=object),
                        "expected a numeric array")):
        path = tmp_path / "shape.npy"
        path.write_bytes(_npy(pickle.dumps(obj, protocol=3)))
        with pytest.raises(CorruptSourceError, match=match):
            MtcnnNpyReader(path)


# -- mutation fuzzing ------------------------------------------------------------------------

@fuzz_settings(150)
@given(data=st.data())
def test_mutated_npy_raises_only_typed_errors(det_npy: dict[str, Path],
                                              data: st.DataObject) -> None:
    original = det_npy["det1"].read_bytes()
    # Half the flips land in the header and pickle opcodes before the first array's bytes.
    position = st.one_of(st.integers(0, 400), st.integers(0, len(original) - 1))
    payload = mutate(data, original, positions=position)
    assert_only_typed_errors(MtcnnNpyReader, payload, "det1.npy")
