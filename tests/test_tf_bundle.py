"""TFCheckpointReader against real TensorFlow-written checkpoints, tensor by tensor, bit for bit."""

from __future__ import annotations

import shutil
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from facenet_convert.converter.core.errors import UnsupportedSourceError
from facenet_convert.converter.sources.tf_bundle import TFCheckpointReader

pytestmark = pytest.mark.tf


def _nan(dtype: str, bits: int) -> np.ndarray:
    return np.array([bits], dtype=dtype)


def _dtype_values() -> dict[str, np.ndarray]:
    """One tensor per supported dtype, with edge values (NaN payloads, -0.0, min/max ints)."""
    rng = np.random.default_rng(0)
    out: dict[str, np.ndarray] = {}
    nan_bits = {"float16": ("<u2", [0x7E01, 0xFC03]), "float32": ("<u4", [0x7FC00001, 0xFFBADBAD]),
                "float64": ("<u8", [0x7FF8000000000123, 0xFFF0000000000001])}
    for name, (ubits, payloads) in nan_bits.items():
        base = rng.standard_normal((3, 5)).astype(name)
        flat = base.reshape(-1)
        flat[:4] = [np.inf, -np.inf, -0.0, 0.0]
        flat.view(ubits)[4:6] = payloads
        out[name] = base
    bf = rng.standard_normal((2, 3, 4)).astype(ml_dtypes.bfloat16)
    bf.reshape(-1).view(np.uint16)[:2] = [0x7FC1, 0xFF81]  # NaN payloads
    out["bfloat16"] = bf
    for name in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"):
        info = np.iinfo(name)
        values = np.array([info.min, info.max, 0, 1, info.max // 3], dtype=name)
        out[name] = np.concatenate([values, rng.integers(info.min, info.max, 7, dtype=name,
                                                         endpoint=True)]).reshape(3, 4)
    out["bool"] = np.array([[True, False, True], [False, False, True]])
    out["complex64"] = (rng.standard_normal(4) + 1j * rng.standard_normal(4)).astype(np.complex64)
    out["complex128"] = np.array([1 + 2j, complex(np.nan, -0.0), complex(np.inf, 1e-300)])
    out["string"] = np.array([[b"", b"a", b"\x00\xff binary"], [b"x" * 200, b"y" * 20000, b"z"]],
                             dtype=object)
    out["string_scalar"] = np.array(b"hello", dtype=object)
    out["string_empty"] = np.zeros((0, 2), dtype=object)
    out["scalar_f32"] = np.array(1.5, dtype=np.float32)
    out["scalar_i64"] = np.array(-(2**62), dtype=np.int64)
    out["scalar_bool"] = np.array(True)
    out["empty_f32"] = np.zeros((0,), dtype=np.float32)
    out["empty_3d_i32"] = np.zeros((2, 0, 3), dtype=np.int32)
    return out


def assert_same_as_tf(reader: TFCheckpointReader) -> int:
    """Every tensor equal to tf.train.load_checkpoint's: names, dtypes, shapes and bytes."""
    import tensorflow as tf

    tf_reader = tf.train.load_checkpoint(str(reader.prefix))
    shapes = tf_reader.get_variable_to_shape_map()
    dtypes = tf_reader.get_variable_to_dtype_map()
    infos = reader.tensors()
    assert list(infos) == sorted(shapes, key=lambda s: s.encode())
    for name, info in infos.items():
        assert list(info.shape) == shapes[name], name
        tf_dtype = dtypes[name]
        expected = np.dtype(object) if tf_dtype == tf.string else np.dtype(tf_dtype.as_numpy_dtype)
        assert info.dtype == expected, name
        ours = reader.read(name)
        theirs = np.asarray(tf_reader.get_tensor(name), dtype=expected)
        assert ours.dtype == info.dtype and ours.shape == info.shape == theirs.shape, name
        assert not ours.flags.writeable, name
        if expected == np.dtype(object):
            assert all(isinstance(v, bytes) for v in ours.reshape(-1)), name
            assert ours.reshape(-1).tolist() == theirs.reshape(-1).tolist(), name
        else:
            assert ours.tobytes() == np.ascontiguousarray(theirs).tobytes(), name  # bitwise
            if expected.kind in "iub":
                assert np.array_equal(ours, theirs), name
    return len(infos)


@pytest.fixture(scope="module")
def tf():
    import tensorflow as tf

    return tf


@pytest.fixture(scope="module")
def all_dtypes_prefix(tf, tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """Written by TF's own SaveV2 kernel: every dtype, strings, scalars, empty tensors."""
    values = _dtype_values()
    prefix = tmp_path_factory.mktemp("dtypes") / "all"
    names = sorted(values)
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(values[n]) for n in names])
    return prefix, values


def test_every_dtype_matches_tensorflow(all_dtypes_prefix) -> None:
    prefix, values = all_dtypes_prefix
    with TFCheckpointReader(prefix) as reader:
        assert reader.format == "tf-checkpoint"
        assert assert_same_as_tf(reader) == len(values)
        for name, value in values.items():  # and equal to what was written, bit for bit
            ours = reader.read(name)
            if value.dtype == object:
                assert ours.tolist() == value.tolist()
            else:
                assert ours.dtype == value.dtype and ours.tobytes() == value.tobytes(), name


def test_read_many_equals_read(all_dtypes_prefix) -> None:
    prefix, values = all_dtypes_prefix
    with TFCheckpointReader(prefix) as reader:
        got = dict(reader.read_many())
        assert sorted(got) == sorted(values)
        for name, array in got.items():
            assert array.dtype == reader.read(name).dtype
            assert array.tobytes() == reader.read(name).tobytes() or array.dtype == object


def test_numeric_reads_are_zero_copy_views(all_dtypes_prefix) -> None:
    prefix, _ = all_dtypes_prefix
    with TFCheckpointReader(prefix) as reader:
        array = reader.read("float32")
        assert array.base is not None and not array.flags.owndata


@pytest.fixture(scope="module")
def object_ckpt(tf, tmp_path_factory) -> Path:
    """A TF2 object checkpoint: .ATTRIBUTES/VARIABLE_VALUE keys, the object graph, optimizer."""
    root = tmp_path_factory.mktemp("object")
    dense = tf.keras.layers.Dense(3)
    dense.build((None, 4))
    opt = tf.keras.optimizers.Adam()
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(dense(tf.ones((2, 4))))
    opt.apply_gradients(zip(tape.gradient(loss, dense.trainable_variables),
                            dense.trainable_variables, strict=True))
    ckpt = tf.train.Checkpoint(model=dense, optimizer=opt, step=tf.Variable(7, dtype=tf.int64),
                               name=tf.Variable("run-1"))
    return Path(ckpt.save(str(root / "ckpt")))


def test_tf2_object_checkpoint(object_ckpt: Path) -> None:
    with TFCheckpointReader(object_ckpt) as reader:
        names = list(reader.tensors())
        assert "_CHECKPOINTABLE_OBJECT_GRAPH" in names
        assert any(n.endswith("/.ATTRIBUTES/VARIABLE_VALUE") for n in names)
        graph = reader.read("_CHECKPOINTABLE_OBJECT_GRAPH")
        assert graph.shape == () and isinstance(graph.item(), bytes)
        assert assert_same_as_tf(reader) == len(names)


def test_tf2_checkpoint_with_several_shards(tf, tmp_path: Path) -> None:
    """MaxShardSizePolicy with a limit equal to each variable's size: one shard per variable."""
    ckpt = tf.train.Checkpoint(a=tf.Variable(np.arange(1000, dtype=np.float32)),
                               b=tf.Variable(np.arange(500, dtype=np.float64)),
                               c=tf.Variable(np.arange(500, dtype=np.int64)))
    policy = tf.train.experimental.MaxShardSizePolicy(max_shard_size=4000)
    prefix = ckpt.write(str(tmp_path / "ck"),
                        options=tf.train.CheckpointOptions(experimental_sharding_callback=policy))
    with TFCheckpointReader(prefix) as reader:
        assert reader.num_shards == 3
        assert len(reader.files()) == 4 and all(f.is_file() for f in reader.files())
        assert {reader.entry(n).shard_id for n in reader.tensors()} == {0, 1, 2}
        assert assert_same_as_tf(reader) == 4


def test_tf_sliced_checkpoint_is_refused(tf, tmp_path: Path) -> None:
    """A tensor larger than the shard limit is written as slices: refused, naming the key."""
    ckpt = tf.train.Checkpoint(big=tf.Variable(np.arange(3000, dtype=np.float32)))
    policy = tf.train.experimental.MaxShardSizePolicy(max_shard_size=2000)
    prefix = ckpt.write(str(tmp_path / "ck"),
                        options=tf.train.CheckpointOptions(experimental_sharding_callback=policy))
    with pytest.raises(UnsupportedSourceError, match="sliced") as info:
        TFCheckpointReader(prefix)
    assert info.value.key == "big/.ATTRIBUTES/VARIABLE_VALUE"
    assert info.value.path == f"{prefix}.index"


@pytest.fixture(scope="module")
def v1_sharded(tf, tmp_path_factory) -> Path:
    """tf.compat.v1 Saver (V2 format) with sharded=True over three devices, saved at two steps.

    Soft placement runs the per-device save ops on the one CPU; the Saver still writes one
    shard per requested device and merges the indexes, exactly as on a multi-device machine.
    """
    folder = tmp_path_factory.mktemp("v1")
    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        for i, device in enumerate(("/device:CPU:0", "/device:CPU:1", "/device:CPU:2")):
            with tf.device(device), tf1.variable_scope(f"tower{i}"):
                tf1.get_variable("weights", initializer=np.full((5, 3), i, np.float32))
                tf1.get_variable("steps", initializer=np.int64(i), trainable=False)
        saver = tf1.train.Saver(sharded=True, write_version=tf1.train.SaverDef.V2)
        config = tf1.ConfigProto(allow_soft_placement=True)
        with tf1.Session(graph=graph, config=config) as sess:
            sess.run(tf1.global_variables_initializer())
            saver.save(sess, str(folder / "model-20180402-114759.ckpt"), global_step=7)
            saver.save(sess, str(folder / "model-20180402-114759.ckpt"), global_step=12)
    return folder


def test_v1_sharded_saver(v1_sharded: Path) -> None:
    with TFCheckpointReader(v1_sharded / "model-20180402-114759.ckpt-12") as reader:
        assert reader.num_shards == 3
        assert {reader.entry(n).shard_id for n in reader.tensors()} == {0, 1, 2}
        assert assert_same_as_tf(reader) == 6
        np.testing.assert_array_equal(reader.read("tower2/weights"), np.full((5, 3), 2))


def _copy_bundle(src_prefix: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for f in src_prefix.parent.glob(src_prefix.name + ".*"):
        shutil.copy(f, dest / f.name)


def test_path_forms(v1_sharded: Path, tmp_path: Path) -> None:
    name = "model-20180402-114759.ckpt-12"
    prefix = v1_sharded / name
    forms = {
        "prefix": prefix,
        "index": Path(f"{prefix}.index"),
        "data": Path(f"{prefix}.data-00001-of-00003"),
        "meta": Path(f"{prefix}.meta"),
        "dir with TF's state file": v1_sharded,
    }
    for label, path in forms.items():
        with TFCheckpointReader(path) as reader:
            assert reader.prefix == prefix, label
            assert "\n" not in reader.resolution and str(prefix) in reader.resolution, label
            assert reader.files() == [Path(f"{prefix}.index")] + [
                Path(f"{prefix}.data-{i:05d}-of-00003") for i in range(3)]


def test_dir_state_file_with_foreign_absolute_path(v1_sharded: Path, tmp_path: Path) -> None:
    for step in (7, 12):
        _copy_bundle(v1_sharded / f"model-20180402-114759.ckpt-{step}", tmp_path)
    for foreign in ("/home/trainer/models/20180402-114759/model-20180402-114759.ckpt-7",
                    "C:\\\\Users\\\\trainer\\\\model-20180402-114759.ckpt-7"):
        (tmp_path / "checkpoint").write_text(
            f'model_checkpoint_path: "{foreign}"\n'
            'all_model_checkpoint_paths: "/elsewhere/model-20180402-114759.ckpt-12"\n')
        with TFCheckpointReader(tmp_path) as reader:
            assert reader.prefix == tmp_path / "model-20180402-114759.ckpt-7"
            assert "model_checkpoint_path" in reader.resolution
            assert assert_same_as_tf(reader) == 6


def test_dir_without_state_file_takes_highest_step(v1_sharded: Path, tmp_path: Path) -> None:
    for step in (7, 12):
        _copy_bundle(v1_sharded / f"model-20180402-114759.ckpt-{step}", tmp_path)
    # a step that sorts first as text but is highest as a number, and a non-upstream prefix
    for f in tmp_path.glob("model-20180402-114759.ckpt-7.*"):
        f.rename(tmp_path / f.name.replace("ckpt-7.", "ckpt-100."))
    _copy_bundle(v1_sharded / "model-20180402-114759.ckpt-12", tmp_path / "x")
    for f in (tmp_path / "x").iterdir():
        f.rename(tmp_path / f.name.replace("model-20180402-114759.ckpt-12", "other"))
    assert not (tmp_path / "checkpoint").exists()
    with TFCheckpointReader(tmp_path) as reader:
        assert reader.prefix == tmp_path / "model-20180402-114759.ckpt-100"
        assert "highest step 100" in reader.resolution
        assert assert_same_as_tf(reader) == 6


@pytest.mark.slow
def test_upstream_facenet_checkpoint(upstream_ckpt_512) -> None:
    """The upstream InceptionResnetV1 graph's checkpoint (teammate fixture): all equal to TF."""
    with TFCheckpointReader(upstream_ckpt_512.prefix) as reader:
        count = assert_same_as_tf(reader)
    assert count > 400
