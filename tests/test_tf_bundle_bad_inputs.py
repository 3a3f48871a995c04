"""REFERENCE §4 items 1-20 and 27 for the TF checkpoint reader: each bad file gives a typed,
one-line error naming the file (and key) and the problem, fast and without big allocations.

Bad files start from a TF-written checkpoint where TF is needed to make them, otherwise from
the small bundle writer below (valid output: TensorFlow reads it, see the tf-marked tests).
"""

from __future__ import annotations

import shutil
import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from bundle_writer import (
    entry_proto,
    first_block_trailer,
    header_proto,
    sstable,
    varint,
    with_trailer,
    write_bundle,
)
from fuzzing import fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from facenet_convert.converter.core.errors import (
    CorruptSourceError,
    SourceError,
    UnknownFormatError,
    UnsupportedSourceError,
)
from facenet_convert.converter.sources.sstable import crc32c_extend, mask_crc
from facenet_convert.converter.sources.tf_bundle import TFCheckpointReader

SMALL = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], np.int64),
         "c": np.array(1.5), "d": np.array([b"xy", b""], dtype=object)}


def expect(exc_type: type[Exception], call, *, path: Path | str, key: str | None = None,
           words: tuple[str, ...] = ()) -> SourceError:
    """Run ``call``; it must raise ``exc_type`` with a one-line message naming path, key, words."""
    with pytest.raises(exc_type) as info:
        call()
    error = info.value
    message = str(error)
    assert "\n" not in message
    assert error.path == str(path), message
    assert str(path) in message
    if key is not None:
        assert error.key == key and f"[{key}]" in message, message
    for word in words:
        assert word.lower() in message.lower(), (word, message)
    return error


def read_all(path: Path) -> None:
    with TFCheckpointReader(path) as reader:
        for name in reader.tensors():
            reader.read(name)


@pytest.fixture()
def small(tmp_path: Path) -> Path:
    prefix = write_bundle(tmp_path / "ck", SMALL)
    read_all(prefix)
    return prefix


def index_of(prefix: Path) -> Path:
    return Path(f"{prefix}.index")


def data_of(prefix: Path, shard: int = 0, count: int = 1) -> Path:
    return Path(f"{prefix}.data-{shard:05d}-of-{count:05d}")


# --------------------------------------------------------------------------- the checklist


def test_writer_output_reads_back(small: Path) -> None:
    with TFCheckpointReader(small) as reader:
        assert list(reader.tensors()) == ["a", "b", "c", "d"]
        for name, value in SMALL.items():
            assert reader.read(name).tolist() == value.tolist()


def test_01_truncated_data_shard(small: Path) -> None:
    data = data_of(small)
    data.write_bytes(data.read_bytes()[:-3])
    expect(CorruptSourceError, lambda: TFCheckpointReader(small), path=data, key="d",
           words=("past the shard", "truncated"))


def test_02_flipped_data_byte(small: Path) -> None:
    data = data_of(small)
    raw = bytearray(data.read_bytes())
    raw[5] ^= 0x10
    data.write_bytes(bytes(raw))
    with TFCheckpointReader(small) as reader:
        reader.read("b")
        expect(CorruptSourceError, lambda: reader.read("a"), path=data, key="a",
               words=("checksum",))


def test_03_flipped_string_length(tmp_path: Path) -> None:
    prefix = write_bundle(tmp_path / "ck", {"s": np.array([b"abc", b"de"], dtype=object)})
    data = data_of(prefix)
    raw = bytearray(data.read_bytes())
    raw[0] = 2  # 3 -> 2: the lengths no longer fill the entry
    data.write_bytes(bytes(raw))
    expect(CorruptSourceError, lambda: read_all(prefix), path=data, key="s", words=("length",))
    raw[0], raw[1] = 4, 1  # same total: only the length checksum catches it
    data.write_bytes(bytes(raw))
    expect(CorruptSourceError, lambda: read_all(prefix), path=data, key="s",
           words=("length checksum",))


@pytest.mark.parametrize("size", [0, 1, 47])
def test_04_index_empty_or_short(small: Path, size: int) -> None:
    index = index_of(small)
    index.write_bytes(index.read_bytes()[:size])
    expect(CorruptSourceError, lambda: TFCheckpointReader(small), path=index,
           words=(f"{size} bytes", "at least 48"))


def test_05_data_file_given_as_index(small: Path, tmp_path: Path) -> None:
    index = tmp_path / "other.index"
    index.write_bytes(data_of(small).read_bytes().ljust(64, b"\0"))
    shutil.copy(data_of(small), data_of(tmp_path / "other"))
    expect(CorruptSourceError, lambda: TFCheckpointReader(index), path=index, words=("magic",))


def test_06_bad_block_crc_and_type(small: Path) -> None:
    index = index_of(small)
    good = index.read_bytes()
    raw = bytearray(good)
    raw[3] ^= 1  # inside the first data block
    index.write_bytes(bytes(raw))
    expect(CorruptSourceError, lambda: TFCheckpointReader(small), path=index,
           words=("data block 0", "checksum"))
    position = first_block_trailer(good)
    for type_byte, error, word in ((1, UnsupportedSourceError, "snappy"),
                                   (7, CorruptSourceError, "block type 7")):
        raw = bytearray(good)
        raw[position] = type_byte
        # re-seal the trailer crc so only the type byte is wrong
        crc = crc32c_extend(0, bytes(raw[:position + 1]))
        raw[position + 1:position + 5] = struct.pack("<I", mask_crc(crc))
        index.write_bytes(bytes(raw))
        expect(error, lambda: TFCheckpointReader(small), path=index,
               words=(word,))


def _rewrite_footer(index: Path, meta: tuple[int, int] | None = None,
                    idx: tuple[int, int] | None = None) -> None:
    from facenet_convert.converter.core.protowire import read_varint

    raw = index.read_bytes()
    footer = raw[-48:]
    mo, pos = read_varint(footer, 0)
    ms, pos = read_varint(footer, pos)
    io, pos = read_varint(footer, pos)
    is_, pos = read_varint(footer, pos)
    mo, ms = meta or (mo, ms)
    io, is_ = idx or (io, is_)
    handles = (varint(mo) + varint(ms) + varint(io) + varint(is_)).ljust(40, b"\0")
    index.write_bytes(raw[:-48] + handles + raw[-8:])


@pytest.mark.parametrize("handle", [(10**6, 20), (0, 2**63), (2**64 - 1, 1), (5, 2**40)])
def test_07_block_handle_past_eof_or_huge(small: Path, handle: tuple[int, int]) -> None:
    _rewrite_footer(index_of(small), idx=handle)
    start = time.perf_counter()
    expect(CorruptSourceError, lambda: TFCheckpointReader(small), path=index_of(small),
           words=("handle", "past"))
    assert time.perf_counter() - start < 10  # a hang guard (a huge read would take minutes)


def test_08_bad_restart_count_and_varints(tmp_path: Path) -> None:
    prefix = tmp_path / "ck"
    write_bundle(prefix, SMALL)
    index = index_of(prefix)
    good = index.read_bytes()
    end = first_block_trailer(good)
    for count in (0, 10**6, 2**32 - 1):
        contents = bytearray(good[:end])
        contents[-4:] = struct.pack("<I", count)
        index.write_bytes(with_trailer(bytes(contents)) + good[end + 5:])
        expect(CorruptSourceError, lambda: TFCheckpointReader(prefix), path=index,
               words=(f"declares {count} restart points",))
    for offset in (5, 2**31):  # not the start of an entry
        contents = bytearray(good[:end])
        contents[-8:-4] = struct.pack("<I", offset)
        index.write_bytes(with_trailer(bytes(contents)) + good[end + 5:])
        expect(CorruptSourceError, lambda: TFCheckpointReader(prefix), path=index,
               words=(f"restart offset {offset}",))
    # a key-length varint that never ends (all continuation bits) inside block 0
    contents = bytearray(good[:end])
    contents[1:4] = b"\xff\xff\xff"
    index.write_bytes(with_trailer(bytes(contents)) + good[end + 5:])
    expect(CorruptSourceError, lambda: TFCheckpointReader(prefix), path=index)
    # footer handles that are not valid varints
    index.write_bytes(good[:-48] + b"\xff" * 40 + good[-8:])
    expect(CorruptSourceError, lambda: TFCheckpointReader(prefix), path=index,
           words=("handle",))


@pytest.mark.parametrize("per_block", [1, 3, 16])
def test_09_unsorted_or_duplicate_keys(tmp_path: Path, per_block: int) -> None:
    one = entry_proto(1, [], 0, 0, 4, crc32c_extend(0, b"\0" * 4))
    for keys in ([b"b", b"a"], [b"a", b"a"], [b"a", b"c", b"b"]):
        prefix = write_bundle(tmp_path / "ck", raw_entries=[(k, one) for k in keys],
                              data=b"\0" * 4, sort=False, per_block=per_block)
        expect(CorruptSourceError, lambda: TFCheckpointReader(prefix),  # noqa: B023
               path=index_of(prefix), words=("increasing",))


def test_10_missing_or_unparsable_header(tmp_path: Path) -> None:
    prefix = tmp_path / "ck"
    one = entry_proto(1, [], 0, 0, 4, crc32c_extend(0, b"\0" * 4))
    Path(f"{prefix}.index").write_bytes(sstable([(b"a", one)]))
    data_of(prefix).write_bytes(b"\0" * 4)
    expect(CorruptSourceError, lambda: TFCheckpointReader(prefix), path=index_of(prefix),
           words=("header",))
    for bad_header in (b"\x0a\x05ab", b"\xff", b"\x08"):
        write_bundle(prefix, SMALL, header=bad_header)
        expect(CorruptSourceError, lambda: TFCheckpointReader(prefix), path=index_of(prefix),
               words=("header",))
    Path(f"{prefix}.index").write_bytes(sstable([]))
    expect(CorruptSourceError, lambda: TFCheckpointReader(prefix), path=index_of(prefix),
           words=("header",))


@pytest.mark.parametrize(("header", "word"), [
    (header_proto(min_consumer=2), "consumer version >= 2"),
    (header_proto(producer=-1), "producer version -1"),
    (header_proto(bad_consumers=(3, 1)), "disallows consumer version 1"),
])
def test_11_version_bounds(tmp_path: Path, header: bytes, word: str) -> None:
    prefix = write_bundle(tmp_path / "ck", SMALL, header=header)
    expect(UnsupportedSourceError, lambda: TFCheckpointReader(prefix), path=index_of(prefix),
           words=(word,))


def test_11_versions_tf_accepts_are_accepted(tmp_path: Path) -> None:
    for header in (header_proto(producer=0, min_consumer=1), header_proto(bad_consumers=(0, 2))):
        read_all(write_bundle(tmp_path / "ck", SMALL, header=header))


BE_VALUES = {"f32": np.linspace(-2, 3, 12, dtype=np.float32).reshape(3, 4),
             "f64": np.array([np.pi, -0.0]), "i16": np.array([-2, 300], np.int16),
             "u64": np.array([2**63 + 5], np.uint64), "c64": np.array([1 + 2j], np.complex64),
             "c128": np.array([3 - 4j]), "u8": np.array([1, 255], np.uint8),
             "s": np.array([b"big", b"endian" * 30], dtype=object)}


def test_12_big_endian_bundle_is_byte_swapped(tmp_path: Path) -> None:
    prefix = write_bundle(tmp_path / "be", BE_VALUES, big_endian=True)
    with TFCheckpointReader(prefix) as reader:
        assert reader.big_endian
        for name, value in BE_VALUES.items():
            got = reader.read(name)
            assert got.dtype == value.dtype and got.dtype.isnative
            assert got.tolist() == value.tolist(), name


@pytest.mark.tf
def test_12_big_endian_bundle_matches_tensorflow(tmp_path: Path) -> None:
    """TF byte-swaps big-endian bundles too: ours must agree with it value for value."""
    import tensorflow as tf

    prefix = write_bundle(tmp_path / "be", BE_VALUES, big_endian=True)
    tf_reader = tf.train.load_checkpoint(str(prefix))
    with TFCheckpointReader(prefix) as reader:
        for name in BE_VALUES:
            theirs = np.asarray(tf_reader.get_tensor(name), dtype=reader.tensors()[name].dtype)
            assert reader.read(name).tolist() == theirs.tolist(), name


def test_12_unknown_endianness(tmp_path: Path) -> None:
    prefix = write_bundle(tmp_path / "ck", SMALL, header=header_proto(endianness=7))
    expect(CorruptSourceError, lambda: TFCheckpointReader(prefix), path=index_of(prefix),
           words=("endianness is 7",))


def test_13_missing_shard_file(tmp_path: Path) -> None:
    prefix = write_bundle(tmp_path / "ck", SMALL, num_shards=3)
    missing = data_of(prefix, 1, 3)
    missing.unlink()
    expect(CorruptSourceError, lambda: TFCheckpointReader(prefix), path=missing,
           words=("shard 1 of 3", "missing"))


def _one_entry(tmp_path: Path, entry: bytes, data: bytes = b"\0" * 16,
               num_shards: int = 1, name: bytes = b"t") -> Path:
    return write_bundle(tmp_path / "ck", raw_entries=[(name, entry)], data=data,
                        num_shards=num_shards)


def test_14_shard_id_out_of_range(tmp_path: Path) -> None:
    for shard in (1, -1, 2**31 - 1):
        prefix = _one_entry(tmp_path, entry_proto(1, [1], shard, 0, 4, 0))
        expect(CorruptSourceError, lambda: TFCheckpointReader(prefix),  # noqa: B023
               path=index_of(prefix), key="t", words=(f"shard {shard}", "expected 0 to 0"))


def test_14_num_shards_out_of_range(tmp_path: Path) -> None:
    for count in (-1, 2**31 - 1):
        prefix = write_bundle(tmp_path / "ck", SMALL, header=header_proto(num_shards=count))
        expect(CorruptSourceError, lambda: TFCheckpointReader(prefix),  # noqa: B023
               path=index_of(prefix), words=(f"{count} data shards",))


@pytest.mark.parametrize(("offset", "size"), [(12, 8), (17, 0), (2**62, 4), (-4, 4)])
def test_15_offset_plus_size_past_shard_end(tmp_path: Path, offset: int, size: int) -> None:
    prefix = _one_entry(tmp_path, entry_proto(1, [size // 4], 0, offset, size, 0))
    where = index_of(prefix) if offset < 0 else data_of(prefix)
    expect(CorruptSourceError, lambda: TFCheckpointReader(prefix), path=where, key="t",
           words=("offset",) if offset < 0 else ("past the shard",))


@pytest.mark.parametrize(("dims", "word"), [
    ([3, -1], "dimension 1 is -1"),
    ([1] * 255, "more than 254 dimensions"),
    ([2**62, 2**62], "2**63-1 elements"),
    ([2**31] * 3, "2**63-1 elements"),
])
def test_16_bad_shapes(tmp_path: Path, dims: list[int], word: str) -> None:
    prefix = _one_entry(tmp_path, entry_proto(1, dims, 0, 0, 4, 0))
    expect(CorruptSourceError, lambda: TFCheckpointReader(prefix), path=index_of(prefix),
           key="t", words=(word,))


def test_16_rank_254_is_valid_but_beyond_numpy(tmp_path: Path) -> None:
    ok = _one_entry(tmp_path, entry_proto(1, [1] * 30, 0, 0, 4, crc32c_extend(0, b"\0" * 4)))
    with TFCheckpointReader(ok) as reader:
        assert reader.read("t").shape == (1,) * 30
    prefix = _one_entry(tmp_path, entry_proto(1, [1] * 254, 0, 0, 4, 0))
    expect(UnsupportedSourceError, lambda: TFCheckpointReader(prefix), path=index_of(prefix),
           key="t", words=("rank 254", "numpy"))


@pytest.mark.parametrize("dtype", [1, 7])
def test_17_huge_shape_fails_fast_without_allocating(tmp_path: Path, dtype: int) -> None:
    count = 2**40
    size = count * 4 if dtype == 1 else count + 4
    prefix = _one_entry(tmp_path, entry_proto(dtype, [2**20, 2**20], 0, 0, size, 0),
                        data=b"\0" * 1000)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        expect(CorruptSourceError, lambda: TFCheckpointReader(prefix), path=data_of(prefix),
               key="t", words=("past the shard",))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 10  # a hang guard, not a speed test
    assert peak < 1 << 20


def test_17_string_lengths_larger_than_entry(tmp_path: Path) -> None:
    """A 1-element string entry whose length varint claims 2**60 bytes: refused, no alloc."""
    payload = varint(2**60) + b"\0" * 4 + b"abc"
    prefix = _one_entry(tmp_path, entry_proto(7, [1], 0, 0, len(payload), 0), data=payload)
    tracemalloc.start()
    try:
        expect(CorruptSourceError, lambda: read_all(prefix), path=data_of(prefix), key="t",
               words=("string lengths",))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


@pytest.mark.parametrize(("dtype", "dims", "size"), [(1, [2, 2], 12), (2, [3], 25), (10, [4], 0)])
def test_18_size_differs_from_elements_times_itemsize(tmp_path: Path, dtype: int,
                                                     dims: list[int], size: int) -> None:
    prefix = _one_entry(tmp_path, entry_proto(dtype, dims, 0, 0, size, 0), data=b"\0" * 64)
    expect(CorruptSourceError, lambda: TFCheckpointReader(prefix), path=index_of(prefix),
           key="t", words=(f"declares {size} bytes", "expected"))


@pytest.mark.parametrize(("dtype", "label"), [(21, "DT_VARIANT"), (20, "DT_RESOURCE"),
                                              (99, "unknown"), (0, "DT_INVALID")])
def test_19_variant_resource_unknown_dtype(tmp_path: Path, dtype: int, label: str) -> None:
    prefix = _one_entry(tmp_path, entry_proto(dtype, [1], 0, 0, 4, 0))
    expect(UnsupportedSourceError, lambda: TFCheckpointReader(prefix), path=index_of(prefix),
           key="t", words=(label,))
    with TFCheckpointReader(prefix, skip_unsupported=True) as reader:
        assert reader.tensors() == {} and "t" in reader.skipped
        expect(UnsupportedSourceError, lambda: reader.read("t"), path=index_of(prefix),
               key="t", words=(label,))


def test_20_sliced_entry(tmp_path: Path) -> None:
    prefix = _one_entry(tmp_path, entry_proto(1, [4], 0, 0, 16, 0, sliced=True))
    expect(UnsupportedSourceError, lambda: TFCheckpointReader(prefix), path=index_of(prefix),
           key="t", words=("sliced",))


def test_27_state_file_pointing_outside_its_directory(tmp_path: Path) -> None:
    outside = write_bundle(tmp_path / "secret", SMALL)
    folder = tmp_path / "model"
    folder.mkdir()
    write_bundle(folder / "model-x.ckpt-1", SMALL)
    state = folder / "checkpoint"
    for value in (str(outside), "../secret", "..", "/"):
        state.write_text(f'model_checkpoint_path: "{value}"\n')
        # only the basename is used, looked up inside the folder (where "secret" is not)
        expect(CorruptSourceError, lambda: TFCheckpointReader(folder), path=state,
               words=("basename", "model-x.ckpt-1"))
    assert index_of(outside).exists()
    state.write_text("garbage\n")
    expect(CorruptSourceError, lambda: TFCheckpointReader(folder), path=state,
           words=("model_checkpoint_path",))


def test_folder_with_several_non_upstream_prefixes(tmp_path: Path) -> None:
    write_bundle(tmp_path / "one", SMALL)
    write_bundle(tmp_path / "two", SMALL)
    expect(UnknownFormatError, lambda: TFCheckpointReader(tmp_path), path=tmp_path,
           words=("one, two", "pass the prefix"))
    empty = tmp_path / "empty"
    empty.mkdir()
    expect(UnknownFormatError, lambda: TFCheckpointReader(empty), path=empty,
           words=("no checkpoint",))
    expect(SourceError, lambda: TFCheckpointReader(tmp_path / "three"),
           path=tmp_path / "three", words=("three.index", "no such"))
    (tmp_path / "notes.txt").write_text("hello")
    expect(UnknownFormatError, lambda: TFCheckpointReader(tmp_path / "notes.txt"),
           path=tmp_path / "notes.txt", words=("not a TensorFlow V2 checkpoint",))


def test_unknown_name_is_a_typed_error(small: Path) -> None:
    from facenet_convert.converter.core.errors import MappingError

    with TFCheckpointReader(small) as reader:
        expect(MappingError, lambda: reader.read("nope"), path=index_of(small), key="nope")


# ------------------------------------------------------------- mutations of a real .index


@pytest.fixture(scope="module")
def tf_small(tmp_path_factory) -> Path:
    """A small checkpoint written by TensorFlow itself (SaveV2), strings included."""
    tf = pytest.importorskip("tensorflow")
    prefix = tmp_path_factory.mktemp("tfsmall") / "ck"
    names = ["w", "b", "s", "step"]
    values = [np.arange(12, dtype=np.float32).reshape(3, 4), np.ones(3, np.float16),
              np.array([b"x", b"yz"], dtype=object), np.array(5, np.int64)]
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * 4,
                      tensors=[tf.constant(v) for v in values])
    return prefix


@pytest.mark.tf
@fuzz_settings(200)
@given(data=st.data())
def test_mutated_index_only_raises_typed_errors(tf_small: Path, tmp_path: Path,
                                                data: st.DataObject) -> None:
    original = index_of(tf_small).read_bytes()
    raw = bytearray(original)
    kind = data.draw(st.sampled_from(["flip", "truncate", "set"]))
    if kind == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    else:
        for _ in range(data.draw(st.integers(1, 4))):
            pos = data.draw(st.integers(0, len(raw) - 1))
            raw[pos] = (raw[pos] ^ (1 << data.draw(st.integers(0, 7))) if kind == "flip"
                        else data.draw(st.integers(0, 255)))
    prefix = tmp_path / "mut"
    Path(f"{prefix}.index").write_bytes(bytes(raw))
    shutil.copy(data_of(tf_small), data_of(prefix))
    try:
        read_all(prefix)
    except SourceError as error:
        assert "\n" not in str(error) and error.path is not None


@pytest.mark.tf
@fuzz_settings(200)
@given(data=st.data())
def test_mutated_entries_resealed_only_raise_typed_errors(tf_small: Path, tmp_path: Path,
                                                          data: st.DataObject) -> None:
    """Block crcs hide most flips from the entry parser: mutate the entries, re-seal the table."""
    from facenet_convert.converter.sources.sstable import read_table

    pairs = [(key, bytearray(value)) for key, value in read_table(index_of(tf_small))]
    for _ in range(data.draw(st.integers(1, 3))):
        _key, value = pairs[data.draw(st.integers(0, len(pairs) - 1))]
        if value:
            pos = data.draw(st.integers(0, len(value) - 1))
            value[pos] = data.draw(st.integers(0, 255))
    prefix = tmp_path / "mut"
    Path(f"{prefix}.index").write_bytes(sstable([(k, bytes(v)) for k, v in pairs]))
    shutil.copy(data_of(tf_small), data_of(prefix))
    try:
        read_all(prefix)
    except SourceError as error:
        assert "\n" not in str(error) and error.path is not None
