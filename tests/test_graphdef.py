"""GraphDefReader against graphs frozen by real TensorFlow, with TF's own parser as the oracle."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from bundle_writer import field_bytes, varint
from fuzzing import assert_only_typed_errors, fuzz_settings, mutate
from hypothesis import given
from hypothesis import strategies as st

from facenet_convert.converter.core.errors import (
    CorruptSourceError,
    MappingError,
    UnsupportedSourceError,
)
from facenet_convert.converter.sources.graphdef import GraphDefReader, expansion_cap

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")


def _tf_consts(tf, path: Path) -> dict[str, np.ndarray]:
    """Every Const of a .pb as TF's own parser and make_ndarray see it."""
    graph_def = tf.compat.v1.GraphDef.FromString(path.read_bytes())
    return {node.name: tf.make_ndarray(node.attr["value"].tensor)
            for node in graph_def.node if node.op == "Const"}


def _assert_same(ours: np.ndarray, theirs: np.ndarray, name: str) -> None:
    assert ours.shape == theirs.shape, name
    assert ours.dtype == theirs.dtype, name
    if ours.dtype == np.dtype(object):
        assert ours.tolist() == theirs.tolist(), name
    else:
        # Bit patterns, so NaN payloads and -0.0 count too.
        assert ours.tobytes() == theirs.tobytes(), name


def _write_graph(tf, graph_def, folder: Path, name: str) -> Path:
    tf.io.write_graph(graph_def, str(folder), name, as_text=False)
    return folder / name


@pytest.fixture(scope="module")
def frozen_pb(tf, tmp_path_factory) -> Path:
    """A v1 graph with variables of many dtypes, frozen with convert_variables_to_constants."""
    tf1 = tf.compat.v1
    rng = np.random.default_rng(7)
    graph = tf.Graph()
    with graph.as_default():
        inputs = tf1.placeholder(tf.float32, [None, 4], name="input")
        kernel = tf1.get_variable("dense/kernel", initializer=rng.standard_normal(
            (4, 3)).astype(np.float32))
        bias = tf1.get_variable("dense/bias", initializer=np.float32([0.5, -1, 2]))
        outputs = [tf.matmul(inputs, kernel) + bias]
        for dtype, value in [
            (tf.float64, rng.standard_normal((2, 3))),
            (tf.float16, rng.standard_normal((5,)).astype(np.float16)),
            (tf.bfloat16, rng.standard_normal((3,)).astype(ml_dtypes.bfloat16)),
            (tf.int32, np.int32([[1, -2], [3, 2**31 - 1]])),
            (tf.int64, np.int64([-(2**62), 5])),
            (tf.uint8, np.uint8([0, 255, 7])),
            (tf.int8, np.int8([-128, 127])),
            (tf.int16, np.int16([-300, 300])),
            (tf.bool, np.array([True, False, True])),
            (tf.complex64, np.complex64([1 + 2j, -3j])),
        ]:
            var = tf1.get_variable(f"vars/{dtype.name}", initializer=value, dtype=dtype)
            outputs.append(tf.identity(var, name=f"read_{dtype.name}"))
        tf.constant(1.0, shape=[3, 3], name="consts/broadcast_float")
        tf.constant(7, shape=[2, 5], dtype=tf.int64, name="consts/broadcast_int64")
        tf.constant(True, shape=[4], name="consts/broadcast_bool")
        tf.constant(np.float16(1.5), shape=[2, 2], name="consts/broadcast_half")
        tf.constant(b"a", shape=[2, 2], name="consts/broadcast_string")
        tf.constant(b"hello", name="consts/scalar_string")
        tf.constant([b"x", b"", b"\xff\x00"], name="consts/strings")
        tf.constant(3.25, name="consts/scalar_float")
        tf.constant(np.zeros((0, 3), np.float32), name="consts/empty")
        tf.constant(np.zeros((2, 0), np.int32), name="consts/empty_int")
        tf.constant(np.uint16([1, 65535]), name="consts/uint16")
        tf.constant(np.uint32([1, 2**32 - 1]), name="consts/uint32")
        tf.constant(np.uint64([1, 2**64 - 1]), name="consts/uint64")
        tf.constant(np.complex128([1 - 1j]), shape=[3], name="consts/broadcast_complex128")
        tf.constant(np.float64([np.nan, -0.0, np.inf]), name="consts/specials")
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            frozen = tf1.graph_util.convert_variables_to_constants(
                session, graph.as_graph_def(),
                [o.op.name for o in outputs] + [n.name for n in graph.as_graph_def().node
                                                 if n.name.startswith("consts/")])
    return _write_graph(tf, frozen, tmp_path_factory.mktemp("graphdef"), "frozen.pb")


@pytest.mark.tf
def test_every_const_matches_tf(tf, frozen_pb: Path) -> None:
    expected = _tf_consts(tf, frozen_pb)
    graph_def = tf.compat.v1.GraphDef.FromString(frozen_pb.read_bytes())
    with GraphDefReader(frozen_pb) as reader:
        assert reader.format == "tf-graphdef"
        infos = reader.tensors()
        assert list(infos) == sorted(expected)
        assert reader.node_names() == [node.name for node in graph_def.node]
        assert reader.ops() == {node.name: node.op for node in graph_def.node}
        for name, theirs in expected.items():
            assert infos[name].shape == theirs.shape
            assert infos[name].dtype == theirs.dtype
            _assert_same(reader.read(name), theirs, name)
        assert "dense/kernel" in infos and "input" not in infos
        assert reader.files() == [frozen_pb]


@pytest.mark.tf
def test_content_is_zero_copy_and_read_only(frozen_pb: Path) -> None:
    with GraphDefReader(frozen_pb) as reader:
        kernel = reader.read("dense/kernel")
        assert not kernel.flags.writeable
        assert not kernel.flags.owndata
        broadcast = reader.read("consts/broadcast_float")
        assert broadcast.tolist() == [[1.0] * 3] * 3
    assert kernel.shape == (4, 3)  # still valid after close: the map lives while views do


def _tensor_proto(**fields):
    from tensorflow.core.framework import tensor_pb2

    return tensor_pb2.TensorProto(**fields)


def _const_graph(tf, tensor_proto, name: str = "c"):
    graph_def = tf.compat.v1.GraphDef()
    node = graph_def.node.add(name=name, op="Const")
    node.attr["value"].tensor.CopyFrom(tensor_proto)
    node.attr["dtype"].type = tensor_proto.dtype
    return graph_def


@pytest.mark.tf
@pytest.mark.parametrize("dtype_name, field, values", [
    ("float32", "float_val", [1.5, -2.0]),
    ("float64", "double_val", [1e300, 3.0]),
    ("int32", "int_val", [-5, 2**31 - 1]),
    ("uint8", "int_val", [3, 250]),
    ("int8", "int_val", [-1, 100]),
    ("int16", "int_val", [-32768, 9]),
    ("uint16", "int_val", [65535, 1]),
    ("int64", "int64_val", [-(2**63), 2**63 - 1]),
    ("uint32", "uint32_val", [2**32 - 1, 0]),
    ("uint64", "uint64_val", [2**64 - 1, 3]),
    ("bool", "bool_val", [False, True]),
    ("float16", "half_val", [0x3C00, 0xFBFF]),
    ("bfloat16", "half_val", [0x3F80, 0xC000]),
    ("complex64", "scomplex_val", [1.0, 2.0, -3.0, 0.5]),
    ("complex128", "dcomplex_val", [1.0, 2.0, -3.0, 0.5]),
    ("string", "string_val", [b"first", b"last"]),
])
@pytest.mark.parametrize("shape", [[5], [2, 3], [2], [1], [0], []])
def test_val_lists_follow_tf_runtime(tf, tmp_path: Path, dtype_name: str, field: str,
                                     values: list, shape: list[int]) -> None:
    """Short lists repeat the last value, long ones are cut, as TF's C++ runtime does."""
    dtype = tf.as_dtype(dtype_name)
    proto = _tensor_proto(dtype=dtype.as_datatype_enum)
    getattr(proto, field).extend(values)
    proto.tensor_shape.CopyFrom(tf.TensorShape(shape).as_proto())
    path = _write_graph(tf, _const_graph(tf, proto), tmp_path, "vals.pb")
    # tf.io.parse_tensor runs the C++ Tensor::FromProto, the semantics a graph runs with.
    theirs = tf.io.parse_tensor(proto.SerializeToString(), out_type=dtype).numpy()
    theirs = np.asarray(theirs, dtype=object if dtype == tf.string else None)
    with GraphDefReader(path) as reader:
        ours = reader.read("c")
        assert reader.tensors()["c"].shape == tuple(shape)
    _assert_same(ours, theirs, f"{dtype_name}{shape}")


@pytest.mark.tf
def test_val_list_with_no_values_is_zeros(tf, tmp_path: Path) -> None:
    proto = _tensor_proto(dtype=tf.float32.as_datatype_enum)
    proto.tensor_shape.CopyFrom(tf.TensorShape([2, 2]).as_proto())
    path = _write_graph(tf, _const_graph(tf, proto), tmp_path, "zeros.pb")
    with GraphDefReader(path) as reader:
        _assert_same(reader.read("c"), tf.make_ndarray(proto), "zeros")


@pytest.mark.tf
def test_unpacked_repeated_fields_are_accepted(tf, tmp_path: Path) -> None:
    """Protobuf parsers must accept unpacked repeated scalars; TF's does, so must we."""
    shape = field_bytes(2, field_bytes(2, varint(1 << 3) + varint(4)))
    tensor = (varint(1 << 3) + varint(1) + shape
              + varint(5 << 3 | 5) + struct.pack("<f", 1.25)
              + field_bytes(5, struct.pack("<2f", 2.5, -1.0))
              + varint(5 << 3 | 5) + struct.pack("<f", 9.0))
    ints = (varint(1 << 3) + varint(3) + shape + varint(7 << 3) + varint(-7)
            + field_bytes(7, varint(2**31 - 1)))
    graph = b""
    for name, body in (("f", tensor), ("i", ints)):
        attr = field_bytes(1, b"value") + field_bytes(2, field_bytes(8, body))
        node = field_bytes(1, name.encode()) + field_bytes(2, b"Const") + field_bytes(5, attr)
        graph += field_bytes(1, node)
    path = tmp_path / "unpacked.pb"
    path.write_bytes(graph)
    expected = _tf_consts(tf, path)
    with GraphDefReader(path) as reader:
        for name, theirs in expected.items():
            _assert_same(reader.read(name), theirs, name)
    assert expected["f"].tolist() == [1.25, 2.5, -1.0, 9.0]


@pytest.mark.tf
@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["upstream_ckpt_128", "upstream_ckpt_512"])
def test_real_upstream_frozen_graph(tf, request: pytest.FixtureRequest, fixture: str) -> None:
    """The frozen graph upstream's freeze_graph.py makes from the real facenet graph."""
    try:
        built = request.getfixturevalue(fixture)
    except pytest.FixtureLookupError:
        pytest.skip(f"fixture {fixture} (tests/tf_fixtures.py) is not registered")
    if built.frozen_pb is None:
        pytest.skip(f"{fixture} was built without a frozen graph")
    expected = _tf_consts(tf, built.frozen_pb)
    with GraphDefReader(built.frozen_pb) as reader:
        assert list(reader.tensors()) == sorted(expected)
        names = reader.node_names()
        assert "phase_train" in names and "embeddings" in names
        for name, theirs in expected.items():
            _assert_same(reader.read(name), theirs, name)


# -- bad inputs (REFERENCE section 4, item 26) ----------------------------------------------

@pytest.mark.tf
def test_truncated_file_names_file_and_byte(frozen_pb: Path, tmp_path: Path) -> None:
    data = frozen_pb.read_bytes()
    for cut in (1, 7, len(data) // 2, len(data) - 1):
        path = tmp_path / f"cut{cut}.pb"
        path.write_bytes(data[:cut])
        with pytest.raises(CorruptSourceError, match=r"byte \d+") as info:
            GraphDefReader(path)
        assert str(path) in str(info.value)
        assert "\n" not in str(info.value)


def test_random_garbage_and_empty(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for index in range(20):
        path = tmp_path / f"garbage{index}.pb"
        path.write_bytes(rng.bytes(int(rng.integers(1, 5000))))
        with pytest.raises(CorruptSourceError, match=str(path)):
            GraphDefReader(path)
    empty = tmp_path / "empty.pb"
    empty.write_bytes(b"")
    with pytest.raises(CorruptSourceError, match="empty"):
        GraphDefReader(empty)


@pytest.mark.tf
def test_shape_bomb_is_refused_before_allocating(tf, tmp_path: Path) -> None:
    proto = tf.compat.v1.make_tensor_proto(1.0, dtype=tf.float32, shape=[1])
    proto.tensor_shape.CopyFrom(tf.TensorShape([2**40]).as_proto())
    assert len(proto.float_val) == 1
    path = _write_graph(tf, _const_graph(tf, proto, "bomb"), tmp_path, "bomb.pb")
    with pytest.raises(UnsupportedSourceError, match="shape bomb") as info:
        GraphDefReader(path)
    assert "[bomb]" in str(info.value)
    # Strings count at least a pointer per element.
    proto = tf.compat.v1.make_tensor_proto(b"s", shape=[1])
    proto.tensor_shape.CopyFrom(tf.TensorShape([2**30, 2**30]).as_proto())
    path = _write_graph(tf, _const_graph(tf, proto, "sbomb"), tmp_path, "sbomb.pb")
    with pytest.raises(UnsupportedSourceError, match="shape bomb"):
        GraphDefReader(path)
    # Just under the cap still reads.
    size_guess = 200
    proto = tf.compat.v1.make_tensor_proto(2.0, dtype=tf.float32, shape=[1])
    proto.tensor_shape.CopyFrom(tf.TensorShape([expansion_cap(size_guess) // 8]).as_proto())
    path = _write_graph(tf, _const_graph(tf, proto, "ok"), tmp_path, "ok.pb")
    with GraphDefReader(path) as reader:
        assert reader.read("ok").sum() == 2.0 * (expansion_cap(size_guess) // 8)


@pytest.mark.tf
def test_element_count_overflow_is_corrupt(tf, tmp_path: Path) -> None:
    proto = tf.compat.v1.make_tensor_proto(1.0, dtype=tf.float32, shape=[1])
    proto.tensor_shape.CopyFrom(tf.TensorShape([2**62, 2**62]).as_proto())
    path = _write_graph(tf, _const_graph(tf, proto), tmp_path, "overflow.pb")
    with pytest.raises(CorruptSourceError, match="int64"):
        GraphDefReader(path)


@pytest.mark.tf
def test_negative_dim_and_huge_rank(tf, tmp_path: Path) -> None:
    proto = tf.compat.v1.make_tensor_proto(1.0, dtype=tf.float32, shape=[1])
    proto.tensor_shape.dim[0].size = -1
    path = _write_graph(tf, _const_graph(tf, proto), tmp_path, "neg.pb")
    with pytest.raises(CorruptSourceError, match="dimension 0 is -1"):
        GraphDefReader(path)
    proto.tensor_shape.ClearField("dim")
    for _ in range(255):
        proto.tensor_shape.dim.add(size=1)
    path = _write_graph(tf, _const_graph(tf, proto), tmp_path, "rank.pb")
    with pytest.raises(CorruptSourceError, match="rank exceeds"):
        GraphDefReader(path)
    proto.tensor_shape.ClearField("dim")
    proto.tensor_shape.unknown_rank = True
    path = _write_graph(tf, _const_graph(tf, proto), tmp_path, "unknown.pb")
    with pytest.raises(CorruptSourceError, match="unknown rank"):
        GraphDefReader(path)


@pytest.mark.tf
@pytest.mark.parametrize("code, label", [(99, "unknown"), (21, "VARIANT"), (20, "RESOURCE"),
                                         (0, "INVALID"), (11, "QINT8")])
def test_unknown_or_unsupported_dtype(tf, tmp_path: Path, code: int, label: str) -> None:
    proto = _tensor_proto(dtype=code)
    graph_def = tf.compat.v1.GraphDef()
    graph_def.node.add(name="weird", op="Const").attr["value"].tensor.CopyFrom(proto)
    path = _write_graph(tf, graph_def, tmp_path, "dtype.pb")
    with pytest.raises(UnsupportedSourceError, match=f"DT_{label} \\({code}\\)"):
        GraphDefReader(path)


@pytest.mark.tf
def test_content_size_mismatch_and_wrong_val_field(tf, tmp_path: Path) -> None:
    proto = tf.compat.v1.make_tensor_proto(np.zeros((2, 3), np.float32))
    proto.tensor_content = proto.tensor_content[:-4]
    path = _write_graph(tf, _const_graph(tf, proto), tmp_path, "short.pb")
    with pytest.raises(CorruptSourceError, match="has 20 bytes, expected 24"):
        GraphDefReader(path)
    proto = tf.compat.v1.make_tensor_proto(1, dtype=tf.int32, shape=[2])
    proto.float_val.append(1.0)
    path = _write_graph(tf, _const_graph(tf, proto), tmp_path, "field.pb")
    with pytest.raises(CorruptSourceError, match="float_val does not belong"):
        GraphDefReader(path)


def test_const_without_value_and_duplicate_names(tmp_path: Path) -> None:
    node = field_bytes(1, b"n") + field_bytes(2, b"Const")
    path = tmp_path / "novalue.pb"
    path.write_bytes(field_bytes(1, node))
    with pytest.raises(CorruptSourceError, match="no 'value' tensor"):
        GraphDefReader(path)
    plain = field_bytes(1, b"n") + field_bytes(2, b"Placeholder")
    path.write_bytes(field_bytes(1, plain) + field_bytes(1, plain))
    with pytest.raises(CorruptSourceError, match="duplicate node name"):
        GraphDefReader(path)


def test_unknown_name_is_a_typed_error(tmp_path: Path) -> None:
    path = tmp_path / "one.pb"
    path.write_bytes(field_bytes(1, field_bytes(1, b"x") + field_bytes(2, b"Placeholder")))
    with GraphDefReader(path) as reader:
        assert reader.tensors() == {}
        assert reader.node_names() == ["x"]
        with pytest.raises(MappingError, match="no tensor named 'nope'"):
            reader.read("nope")


def test_reader_imports_neither_tensorflow_nor_torch() -> None:
    code = ("import sys, facenet_convert.converter.sources.graphdef, "
            "facenet_convert.converter.sources.keras_h5, "
            "facenet_convert.converter.sources.mtcnn_npy; "
            "bad = [m for m in ('tensorflow', 'torch', 'keras') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=Path(__file__).resolve().parents[1])


# -- mutation fuzzing: damaged real files only ever raise our typed errors ------------------

@pytest.mark.tf
@fuzz_settings(150)
@given(data=st.data())
def test_mutated_graph_raises_only_typed_errors(frozen_pb: Path, data: st.DataObject) -> None:
    payload = mutate(data, frozen_pb.read_bytes(), max_flips=8)
    assert_only_typed_errors(GraphDefReader, payload, "mutated.pb")
