"""KerasH5Reader on files written by real Keras 3 (and tf-keras 2 when installed)."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
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
from facenet_convert.converter.sources.keras_h5 import KerasH5Reader, size_cap

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

#: Canonical names for the test model in both Keras 2 layouts, in Keras' load order.
KERAS2_NAMES = [
    "Conv2d_1a_3x3/kernel", "Conv2d_1a_3x3/bias",
    "bn/gamma", "bn/beta", "bn/moving_mean", "bn/moving_variance",
    "sub/inner_dense/kernel", "sub/inner_dense/bias",
    "logits/kernel", "logits/bias",
]


def _build(keras):
    """Conv + BN + a nested sub-model + Dense, with non-trivial BN statistics."""
    rng = np.random.default_rng(3)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="Conv2d_1a_3x3")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    sub_in = keras.Input((6, 6, 4))
    sub = keras.Model(sub_in, keras.layers.Dense(2, name="inner_dense")(sub_in), name="sub")
    x = keras.layers.Flatten()(sub(x))
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(x), name="outer")
    for layer in model.layers:
        layer.set_weights([rng.standard_normal(w.shape).astype(w.dtype) + 2
                           for w in layer.get_weights()])
    return model


def _expected_keras2(model) -> list[np.ndarray]:
    return [w for layer in model.layers for w in layer.get_weights()]


@pytest.fixture(scope="module")
def keras3_files(tmp_path_factory):
    keras = pytest.importorskip("keras")
    from keras.src.legacy.saving import legacy_h5_format

    folder = tmp_path_factory.mktemp("keras3")
    model = _build(keras)
    model.save(folder / "model.h5")
    model.save_weights(folder / "w.weights.h5")
    with h5py.File(folder / "legacy_weights.h5", "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)
    return model, folder


def _read_all(reader: KerasH5Reader) -> dict[str, np.ndarray]:
    return {name: reader.read(name) for name in reader.tensors()}


def _assert_arrays(ours: list[np.ndarray], theirs: list[np.ndarray]) -> None:
    assert len(ours) == len(theirs)
    for mine, keras_value in zip(ours, theirs, strict=True):
        assert mine.shape == keras_value.shape
        assert mine.dtype == keras_value.dtype
        np.testing.assert_array_equal(mine, keras_value)


@pytest.mark.tf
@pytest.mark.parametrize("filename, layout", [("model.h5", "keras2-model"),
                                              ("legacy_weights.h5", "keras2-weights")])
def test_keras3_legacy_h5_layouts(keras3_files, filename: str, layout: str) -> None:
    model, folder = keras3_files
    with KerasH5Reader(folder / filename) as reader:
        assert reader.format == "keras-h5"
        assert reader.layout == layout
        assert list(reader.tensors()) == KERAS2_NAMES
        arrays = _read_all(reader)
        assert reader.layer_name("sub/inner_dense/kernel") == "sub"
        assert reader.h5_path("bn/gamma").endswith("bn/bn/gamma")
        for name, info in reader.tensors().items():
            assert info.shape == arrays[name].shape and info.dtype == arrays[name].dtype
    _assert_arrays(list(arrays.values()), _expected_keras2(model))


@pytest.mark.tf
def test_keras3_weights_h5(keras3_files) -> None:
    model, folder = keras3_files
    layers = {layer.name: layer.get_weights() for layer in model.layers}
    inner = model.get_layer("sub").get_layer("inner_dense").get_weights()
    expected = {
        **{f"layers/batch_normalization/vars/{i}": w for i, w in enumerate(layers["bn"])},
        **{f"layers/conv2d/vars/{i}": w for i, w in enumerate(layers["Conv2d_1a_3x3"])},
        **{f"layers/dense/vars/{i}": w for i, w in enumerate(layers["logits"])},
        **{f"layers/functional/layers/dense/vars/{i}": w for i, w in enumerate(inner)},
    }
    with KerasH5Reader(folder / "w.weights.h5") as reader:
        assert reader.layout == "keras3-weights"
        assert list(reader.tensors()) == list(expected)
        arrays = _read_all(reader)
        assert reader.layer_name("layers/conv2d/vars/0") == "Conv2d_1a_3x3"
        assert reader.layer_name("layers/functional/layers/dense/vars/1") == "inner_dense"
    _assert_arrays(list(arrays.values()), list(expected.values()))


@pytest.mark.tf
@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
def test_tf_keras2_files_strip_the_output_index(tmp_path: Path) -> None:
    """Real Keras 2 (tf-keras) writes ``conv/kernel:0``; names match the Keras 3 legacy ones."""
    tf_keras = pytest.importorskip("tf_keras")
    model = _build(tf_keras)
    model.save(tmp_path / "k2.h5")
    model.save_weights(tmp_path / "k2_weights.h5")
    for filename, layout in (("k2.h5", "keras2-model"), ("k2_weights.h5", "keras2-weights")):
        with KerasH5Reader(tmp_path / filename) as reader:
            assert reader.layout == layout
            assert list(reader.tensors()) == KERAS2_NAMES
            assert reader.h5_path("logits/bias").endswith("logits/logits/bias:0")
            arrays = _read_all(reader)
        _assert_arrays(list(arrays.values()), _expected_keras2(model))


@pytest.mark.tf
def test_model_config_is_never_read(keras3_files, tmp_path: Path) -> None:
    _, folder = keras3_files
    path = tmp_path / "poisoned.h5"
    path.write_bytes((folder / "model.h5").read_bytes())
    with h5py.File(path, "a") as handle:
        handle.attrs["model_config"] = "not json: __import__('os').system('false')"
    with KerasH5Reader(path) as reader:
        assert list(reader.tensors()) == KERAS2_NAMES


@pytest.mark.tf
def test_contiguous_data_is_mapped_read_only(keras3_files, tmp_path: Path) -> None:
    _, folder = keras3_files
    with KerasH5Reader(folder / "w.weights.h5") as reader:
        kernel = reader.read("layers/conv2d/vars/0")
        assert not kernel.flags.writeable and not kernel.flags.owndata
    assert kernel.shape == (3, 3, 3, 4)
    # A user block shifts every offset: the map must still land on the data.
    with_block = tmp_path / "block.h5"
    values = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    with h5py.File(with_block, "w", userblock_size=4096) as handle:
        handle["layers/dense/vars/0"] = values
        handle.create_dataset("layers/dense/vars/1", data=values, compression="gzip")
    with KerasH5Reader(with_block) as reader:
        np.testing.assert_array_equal(reader.read("layers/dense/vars/0"), values)
        np.testing.assert_array_equal(reader.read("layers/dense/vars/1"), values)


def test_keras3_numeric_order(tmp_path: Path) -> None:
    path = tmp_path / "many.weights.h5"
    with h5py.File(path, "w") as handle:
        for index in range(12):
            handle[f"layers/cell/vars/{index}"] = np.full(2, index, np.float64)
        handle["vars/0"] = np.float32(1.0)
    with KerasH5Reader(path) as reader:
        names = list(reader.tensors())
        assert names == [f"layers/cell/vars/{i}" for i in range(12)] + ["vars/0"]
        assert reader.read("vars/0").shape == ()
        assert reader.read("layers/cell/vars/11").tolist() == [11.0, 11.0]


def test_hard_link_cycle_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "cycle.weights.h5"
    with h5py.File(path, "w") as handle:
        handle["layers/a/vars/0"] = np.zeros(2)
        handle["layers/a/vars/loop"] = handle["layers"]
    with pytest.raises(CorruptSourceError, match="linked into itself"):
        KerasH5Reader(path)


def test_chunked_attribute_names_and_big_endian(tmp_path: Path) -> None:
    """Keras splits attributes over 64 KiB into ``name0``, ``name1``; data may be big-endian."""
    path = tmp_path / "chunked.h5"
    with h5py.File(path, "w") as handle:
        handle.attrs["layer_names0"] = np.array([b"a"], dtype="S1")
        handle.attrs["layer_names1"] = np.array([b"b"], dtype="S1")
        for layer in "ab":
            handle[f"{layer}/{layer}/w:0"] = np.arange(3, dtype=">f4")
            handle[layer].attrs["weight_names"] = np.array([f"{layer}/w:0".encode()])
    with KerasH5Reader(path) as reader:
        assert list(reader.tensors()) == ["a/w", "b/w"]
        array = reader.read("b/w")
        assert array.dtype == np.dtype("float32") and array.tolist() == [0.0, 1.0, 2.0]


# -- bad inputs (REFERENCE section 4, item 25) ----------------------------------------------

def _keras2_file(path: Path, **extra) -> Path:
    with h5py.File(path, "w") as handle:
        handle.attrs["layer_names"] = ["dense"]
        handle["dense/dense/bias:0"] = np.zeros(2, np.float32)
        handle["dense"].attrs["weight_names"] = ["dense/kernel:0", "dense/bias:0"]
        if "kernel" in extra:
            extra["kernel"](handle)
        else:
            handle["dense/dense/kernel:0"] = np.ones((3, 2), np.float32)
    return path


def test_external_link_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.h5"
    with h5py.File(secret, "w") as handle:
        handle["data"] = np.arange(6, dtype=np.float32).reshape(3, 2)

    def link(handle):
        handle["dense/dense/kernel:0"] = h5py.ExternalLink(str(secret), "/data")
    path = _keras2_file(tmp_path / "elink.h5", kernel=link)
    with pytest.raises(UnsafeSourceError, match="external link"):
        KerasH5Reader(path)
    k3 = tmp_path / "elink.weights.h5"
    with h5py.File(k3, "w") as handle:
        handle["layers/a/vars/0"] = np.zeros(1)
        handle["layers/b"] = h5py.ExternalLink(str(secret), "/")
    with pytest.raises(UnsafeSourceError, match="'layers/b' is an external link"):
        KerasH5Reader(k3)


def test_soft_link_is_refused(tmp_path: Path) -> None:
    def link(handle):
        handle["elsewhere"] = np.ones((3, 2), np.float32)
        handle["dense/dense/kernel:0"] = h5py.SoftLink("/elsewhere")
    with pytest.raises(UnsafeSourceError, match="soft link to '/elsewhere'"):
        KerasH5Reader(_keras2_file(tmp_path / "slink.h5", kernel=link))


def test_external_storage_dataset_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(np.ones(6, np.float32).tobytes())

    def external(handle):
        handle.create_dataset("dense/dense/kernel:0", shape=(3, 2), dtype=np.float32,
                              external=[(str(outside), 0, h5py.h5f.UNLIMITED)])
    with pytest.raises(UnsafeSourceError, match="external file"):
        KerasH5Reader(_keras2_file(tmp_path / "external.h5", kernel=external))


def test_virtual_dataset_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "source.h5"
    with h5py.File(source, "w") as handle:
        handle["data"] = np.ones((3, 2), np.float32)

    def virtual(handle):
        layout = h5py.VirtualLayout(shape=(3, 2), dtype=np.float32)
        layout[:] = h5py.VirtualSource(str(source), "data", shape=(3, 2))
        handle.create_virtual_dataset("dense/dense/kernel:0", layout)
    with pytest.raises(UnsafeSourceError, match="virtual dataset"):
        KerasH5Reader(_keras2_file(tmp_path / "virtual.h5", kernel=virtual))


def test_plugin_filter_is_refused(tmp_path: Path) -> None:
    def plugin(handle):
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((3, 2))
        dcpl.set_filter(32001, h5py.h5z.FLAG_OPTIONAL)  # Blosc: not built in
        space = h5py.h5s.create_simple((3, 2))
        group = handle["dense/dense"]
        h5py.h5d.create(group.id, b"kernel:0", h5py.h5t.IEEE_F32LE, space, dcpl=dcpl)
    with pytest.raises(UnsupportedSourceError, match="filter 32001"):
        KerasH5Reader(_keras2_file(tmp_path / "plugin.h5", kernel=plugin))


def test_size_bombs_are_refused(tmp_path: Path) -> None:
    def unallocated(handle):  # no data written: HDF5 would return 4 GiB of fill value
        handle.create_dataset("dense/dense/kernel:0", shape=(2**30,), dtype=np.float32)
    path = _keras2_file(tmp_path / "fill.h5", kernel=unallocated)
    assert path.stat().st_size * 64 < 2**32
    with pytest.raises(UnsupportedSourceError, match="refusing more than"):
        KerasH5Reader(path)

    def zipped(handle):
        handle.create_dataset("dense/dense/kernel:0", data=np.zeros((1024, 8192), np.float32),
                              compression="gzip", compression_opts=9, chunks=(256, 8192))
    path = _keras2_file(tmp_path / "zip.h5", kernel=zipped)
    assert 1024 * 8192 * 4 > size_cap(path.stat().st_size)
    with pytest.raises(UnsupportedSourceError, match="declares shape"):
        KerasH5Reader(path)


def test_non_numeric_and_missing_datasets(tmp_path: Path) -> None:
    def strings(handle):
        handle["dense/dense/kernel:0"] = np.array([b"a", b"b"])
    with pytest.raises(UnsupportedSourceError, match="numeric"):
        KerasH5Reader(_keras2_file(tmp_path / "strings.h5", kernel=strings))
    with pytest.raises(CorruptSourceError, match="'dense/dense/kernel:0' does not exist"):
        KerasH5Reader(_keras2_file(tmp_path / "missing.h5", kernel=lambda handle: None))


def test_non_keras_hdf5_and_non_hdf5(tmp_path: Path) -> None:
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as handle:
        handle["images"] = np.zeros((2, 2))
    with pytest.raises(UnknownFormatError, match="not a Keras weights file.*'images'"):
        KerasH5Reader(plain)
    text = tmp_path / "text.h5"
    text.write_text("hello")
    with pytest.raises(UnknownFormatError, match="not an HDF5 file"):
        KerasH5Reader(text)


@pytest.mark.tf
def test_truncated_hdf5_is_corrupt(keras3_files, tmp_path: Path) -> None:
    _, folder = keras3_files
    data = (folder / "model.h5").read_bytes()
    for cut in (100, len(data) // 2, len(data) - 10):
        path = tmp_path / f"cut{cut}.h5"
        path.write_bytes(data[:cut])
        with pytest.raises(CorruptSourceError) as info, KerasH5Reader(path) as reader:
            for name in reader.tensors():
                reader.read(name)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_unknown_name_is_typed(tmp_path: Path) -> None:
    with KerasH5Reader(_keras2_file(tmp_path / "ok.h5")) as reader:
        assert list(reader.tensors()) == ["dense/kernel", "dense/bias"]
        with pytest.raises(MappingError, match="no tensor named 'x'"):
            reader.read("x")


# -- mutation fuzzing ------------------------------------------------------------------------

@pytest.mark.tf
@fuzz_settings(150)
@given(data=st.data())
def test_mutated_h5_raises_only_typed_errors(keras3_files, data: st.DataObject) -> None:
    _, folder = keras3_files
    name = data.draw(st.sampled_from(["model.h5", "w.weights.h5"]))
    payload = mutate(data, (folder / name).read_bytes())
    assert_only_typed_errors(KerasH5Reader, payload, name)
