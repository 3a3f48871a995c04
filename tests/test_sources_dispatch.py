"""open_source picks the reader by content, not by name, and names what it cannot read."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from facenet_convert.converter.core.errors import SourceError, UnknownFormatError
from facenet_convert.converter.sources import detect_format, open_source


def test_mtcnn_npy_found_by_magic_even_renamed(det_npy: dict[str, Path], tmp_path: Path) -> None:
    renamed = tmp_path / "weights.bin"
    shutil.copy(det_npy["det1"], renamed)
    assert detect_format(renamed) == "mtcnn-npy"


def test_hdf5_found_by_magic_even_with_user_block(tmp_path: Path) -> None:
    plain = tmp_path / "a.weights"
    with h5py.File(plain, "w") as handle:
        handle["x"] = np.zeros(3)
    assert detect_format(plain) == "keras-h5"
    with_block = tmp_path / "b.h5"
    with h5py.File(with_block, "w", userblock_size=1024) as handle:
        handle["x"] = np.zeros(3)
    assert detect_format(with_block) == "keras-h5"


def test_checkpoint_forms(tmp_path: Path) -> None:
    (tmp_path / "model.ckpt-5.data-00000-of-00001").write_bytes(b"")
    (tmp_path / "model.ckpt-5.index").write_bytes(b"\0" * 40 + bytes.fromhex("57fb808b247547db"))
    assert detect_format(tmp_path) == "tf-checkpoint"
    assert detect_format(tmp_path / "model.ckpt-5") == "tf-checkpoint"
    assert detect_format(tmp_path / "model.ckpt-5.index") == "tf-checkpoint"
    assert detect_format(tmp_path / "model.ckpt-5.data-00000-of-00001") == "tf-checkpoint"


def test_meta_and_torch_files_get_a_hint(tmp_path: Path) -> None:
    meta = tmp_path / "model.meta"
    meta.write_bytes(b"\x0a\x00")
    with pytest.raises(UnknownFormatError, match="holds the graph, not the weights"):
        detect_format(meta)
    zipped = tmp_path / "model.pt"
    zipped.write_bytes(b"PK\x03\x04rest")
    with pytest.raises(UnknownFormatError, match="already converted"):
        detect_format(zipped)


def test_unknown_and_missing(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(UnknownFormatError, match="not a format this tool reads"):
        detect_format(text)
    with pytest.raises(SourceError, match="no such file"):
        detect_format(tmp_path / "missing")


@pytest.mark.tf
@pytest.mark.parametrize("kind", ["checkpoint", "frozen", "keras", "npy", "memory"])
def test_every_reader_reports_a_missing_tensor_the_same_way(kind, request, tmp_path):
    """One error kind and one message shape, with the nearest name, whatever the format."""
    import h5py

    from facenet_convert.converter.core.errors import MissingTensorError
    from facenet_convert.converter.sources.memory import ArraySource

    if kind in ("checkpoint", "frozen"):
        built = request.getfixturevalue("upstream_ckpt_512")
        source, present = (built.prefix if kind == "checkpoint" else built.frozen_pb,
                           "InceptionResnetV1/Bottleneck/weights")
    elif kind == "keras":
        source, present = tmp_path / "k.h5", "dense/kernel"
        with h5py.File(source, "w") as handle:
            handle.attrs["layer_names"] = ["dense"]
            handle["dense/dense/kernel:0"] = np.ones((3, 2), np.float32)
            handle["dense"].attrs["weight_names"] = ["dense/kernel:0"]
    elif kind == "npy":
        source, present = request.getfixturevalue("det_npy")["det1"], "conv4-1/weights"
    else:
        source, present = {"dense/kernel": np.ones((3, 2), np.float32)}, "dense/kernel"
    reader = ArraySource(source) if kind == "memory" else open_source(source)
    with reader, pytest.raises(MissingTensorError) as caught:
        reader.read(present + "X")
    message = str(caught.value)
    assert f"no tensor named '{present}X'" in message
    assert f"nearest: '{present}'" in message
    assert "\n" not in message
