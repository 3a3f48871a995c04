"""The bad-input checklist (shared/REFERENCE.md section 4) through the CLI, as a user hits it.

Every case runs ``facenet-convert convert BAD -o OUT`` in a fresh process and checks what a
user relies on: a non-zero exit, exactly one line on stderr that names the file and the
problem, no traceback, no output (nor temp file) left behind, and the input untouched.
The readers' own tests check the error types and messages in more depth.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from bundle_writer import (
    data_file,
    entry_proto,
    first_block_trailer,
    header_proto,
    index_file,
    one_entry,
    pnet_arrays,
    pnet_bundle,
    sstable,
    with_trailer,
    write_bundle,
)

from facenet_convert.converter.sources.tf_bundle import TFCheckpointReader

ROOT = Path(__file__).resolve().parents[1]


def flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


# Each case: build(folder, det_npy) -> (path given to the CLI, words the message must hold).
Case = Callable[[Path, dict[str, Path]], tuple[Path, tuple[str, ...]]]


def c01_truncated_shard(folder, det):
    prefix = pnet_bundle(folder, det)
    shard = data_file(prefix)
    shard.write_bytes(shard.read_bytes()[:-100])
    return prefix, ("truncated",)


def c02_flipped_data_byte(folder, det):
    prefix = pnet_bundle(folder, det)
    flip(data_file(prefix), 10)
    return prefix, ("checksum",)


def c03_flipped_string_length(folder, det):
    arrays = {**pnet_arrays(det), "note": np.array([b"abc", b"de"], dtype=object)}
    prefix = write_bundle(folder / "model.ckpt-1", arrays)
    with TFCheckpointReader(prefix) as reader:
        offset = reader.entry("note").offset
    raw = bytearray(data_file(prefix).read_bytes())
    raw[offset], raw[offset + 1] = 4, 1  # same total: only the length checksum catches it
    data_file(prefix).write_bytes(bytes(raw))
    return prefix, ("length checksum",)


def c04_short_index(folder, det):
    prefix = pnet_bundle(folder, det)
    index_file(prefix).write_bytes(b"\0" * 20)
    return index_file(prefix), ("48",)


def c05_data_file_as_index(folder, det):
    prefix = pnet_bundle(folder, det)
    fake = folder / "other.ckpt-1.index"
    fake.write_bytes(data_file(prefix).read_bytes())
    return fake, ("magic",)


def c06_bad_block_crc(folder, det):
    prefix = pnet_bundle(folder, det)
    flip(index_file(prefix), 5)
    return prefix, ("crc",)


def c07_handle_past_eof(folder, det):
    prefix = pnet_bundle(folder, det)
    raw = bytearray(index_file(prefix).read_bytes())
    footer = len(raw) - 48
    raw[footer:footer + 40] = (b"\xff\xff\xff\x0f\x10" * 2).ljust(40, b"\0")
    index_file(prefix).write_bytes(bytes(raw))
    return prefix, ("handle",)


def c08_bad_restart_count(folder, det):
    prefix = pnet_bundle(folder, det)
    good = index_file(prefix).read_bytes()
    end = first_block_trailer(good)
    contents = bytearray(good[:end])
    contents[-4:] = (10**6).to_bytes(4, "little")
    index_file(prefix).write_bytes(with_trailer(bytes(contents)) + good[end + 5:])
    return prefix, ("restart points",)


def c09_unsorted_keys(folder, det):
    arrays = dict(reversed(list(pnet_arrays(det).items())))
    prefix = write_bundle(folder / "model.ckpt-1", arrays, sort=False, per_block=2)
    return prefix, ("strictly increasing",)


def c10_missing_header(folder, det):
    prefix = folder / "model.ckpt-1"
    index_file(prefix).write_bytes(sstable([(b"a", b"")]))
    data_file(prefix).write_bytes(b"")
    return prefix, ("header",)


def c11_version_bounds(folder, det):
    return pnet_bundle(folder, det, header=header_proto(min_consumer=99)), ("consumer",)


def c12_unknown_endianness(folder, det):
    return pnet_bundle(folder, det, header=header_proto(endianness=7)), ("endian",)


def c13_missing_shard(folder, det):
    prefix = pnet_bundle(folder, det)
    data_file(prefix).unlink()
    return prefix, ("data-00000-of-00001",)


def c14_shard_out_of_range(folder, det):
    return one_entry(folder, entry_proto(1, [2, 2], 3, 0, 16, 0)), ("shard",)


def c15_offset_past_end(folder, det):
    return one_entry(folder, entry_proto(1, [2, 2], 0, 12, 16, 0)), ("past the shard",)


def c16_negative_dim(folder, det):
    return one_entry(folder, entry_proto(1, [2, -2], 0, 0, 16, 0)), ("-2", "expected >= 0")


def c17_huge_shape(folder, det):
    entry = entry_proto(1, [1 << 20, 1 << 20], 0, 0, 16, 0)
    return one_entry(folder, entry), ("1099511627776 elements",)


def c18_size_mismatch(folder, det):
    return one_entry(folder, entry_proto(1, [2, 2], 0, 0, 12, 0)), ("declares 12 bytes",)


def c19_variant_dtype(folder, det):
    return one_entry(folder, entry_proto(21, [1], 0, 0, 16, 0)), ("VARIANT",)


def c20_sliced_entry(folder, det):
    return one_entry(folder, entry_proto(1, [2, 2], 0, 0, 16, 0, sliced=True)), ("slice",)


def c21_nan_weights_strict(folder, det):
    arrays = pnet_arrays(det)
    arrays["conv2/weights"] = arrays["conv2/weights"].copy()
    arrays["conv2/weights"][0, 0, 0, 0] = np.nan
    return write_bundle(folder / "model.ckpt-1", arrays), ("conv2/weights", "NaN")


def c22_wrong_architecture(folder, det):
    arrays = {"resnet/conv0/kernel": np.zeros((3, 3, 3, 8), np.float32)}
    return write_bundle(folder / "model.ckpt-1", arrays), ("which model", "--model")


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-npy",))


def c23_pickle_payload(folder, det):
    path = folder / "det1.npy"
    array = np.empty((), dtype=object)
    array[()] = {"conv1": {"weights": _Payload()}}
    header = b"{'descr': '|O', 'fortran_order': False, 'shape': (), }"
    header = header.ljust(118) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header
                     + pickle.dumps(array, protocol=4))
    return path, ("system",)


def c24_malformed_npy_header(folder, det):
    path = folder / "det1.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00\xff\xffnot a dict")
    return path, ("header",)


def c25_h5_external_link(folder, det):
    path = folder / "model.h5"
    with h5py.File(path, "w") as handle:
        handle.attrs["layer_names"] = [b"conv"]
        group = handle.create_group("conv")
        group.attrs["weight_names"] = [b"conv/kernel:0"]
        group["conv/kernel:0"] = h5py.ExternalLink("/etc/passwd", "/x")
    return path, ("external",)


def c26_truncated_graphdef(folder, det):
    path = folder / "frozen.pb"
    node = b"\x0a\x05Const\x12\x05Const"
    path.write_bytes(b"\x0a" + bytes([len(node) + 20]) + node)
    return path, ("truncated",)


def c27_state_file_outside(folder, det):
    inner = folder / "release"
    inner.mkdir()
    pnet_bundle(folder, det)  # a valid checkpoint one level up, which must not be used
    (inner / "checkpoint").write_text(f'model_checkpoint_path: "{folder / "model.ckpt-1"}"\n')
    return inner, ("model.ckpt-1",)


CASES: list[Case] = [
    c01_truncated_shard, c02_flipped_data_byte, c03_flipped_string_length, c04_short_index,
    c05_data_file_as_index, c06_bad_block_crc, c07_handle_past_eof, c08_bad_restart_count,
    c09_unsorted_keys, c10_missing_header,
    c11_version_bounds, c12_unknown_endianness, c13_missing_shard, c14_shard_out_of_range,
    c15_offset_past_end, c16_negative_dim, c17_huge_shape, c18_size_mismatch,
    c19_variant_dtype, c20_sliced_entry, c21_nan_weights_strict, c22_wrong_architecture,
    c23_pickle_payload, c24_malformed_npy_header, c25_h5_external_link,
    c26_truncated_graphdef, c27_state_file_outside,
]


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "converter", *args], capture_output=True,
                          text=True, cwd=cwd, check=False, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def assert_one_line_failure(done: subprocess.CompletedProcess[str], *words: str) -> str:
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for word in words:
        assert word.lower() in lines[0].lower(), (word, lines[0])
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.__name__)
def test_bad_source_through_cli(case: Case, tmp_path: Path, det_npy: dict[str, Path]) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    source, words = case(inputs, det_npy)
    before = _digest(inputs)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    # convert reads what the model needs; a string tensor (item 3) is dropped unread, so
    # `inspect --verify`, which reads everything, is where a user meets that damage.
    command = (["inspect", "--verify", str(source)] if case is c03_flipped_string_length
               else ["convert", str(source), "-o", str(out_dir / "model.pt"), "--strict"])
    done = run_cli(*command, cwd=tmp_path)
    line = assert_one_line_failure(done, *words)
    assert source.name in line
    assert list(out_dir.iterdir()) == []
    assert _digest(inputs) == before
    assert not (tmp_path / "pwned-by-npy").exists()


def test_nan_without_strict_is_reported_not_fatal(tmp_path: Path, det_npy) -> None:
    prefix = c21_nan_weights_strict(tmp_path, det_npy)[0]
    done = run_cli("convert", str(prefix), "-o", str(tmp_path / "pnet.pt"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "conv2/weights" in done.stdout + done.stderr
    assert (tmp_path / "pnet.pt").is_file()


@pytest.fixture
def converted(tmp_path: Path, det_npy: dict[str, Path]) -> tuple[Path, Path]:
    prefix = pnet_bundle(tmp_path, det_npy)
    out = tmp_path / "pnet.pt"
    assert run_cli("convert", str(prefix), "-o", str(out), cwd=tmp_path).returncode == 0
    return prefix, out


def test_28_existing_output_needs_force(converted: tuple[Path, Path], tmp_path: Path) -> None:
    prefix, out = converted
    before = out.read_bytes()
    done = run_cli("convert", str(prefix), "-o", str(out), cwd=tmp_path)
    assert_one_line_failure(done, "exists", "--force")
    assert out.read_bytes() == before


def test_28_symlink_output_refused(converted: tuple[Path, Path], tmp_path: Path) -> None:
    prefix, out = converted
    link = tmp_path / "link.pt"
    link.symlink_to(out)
    before = out.read_bytes()
    done = run_cli("convert", str(prefix), "-o", str(link), "--force", cwd=tmp_path)
    assert_one_line_failure(done, "symlink")
    assert out.read_bytes() == before and link.is_symlink()


def test_28_output_equal_to_input_refused(converted: tuple[Path, Path], tmp_path: Path) -> None:
    prefix, _ = converted
    shard = data_file(prefix)
    before = shard.read_bytes()
    done = run_cli("convert", str(prefix), "-o", str(shard), "--force", cwd=tmp_path)
    assert_one_line_failure(done, "input")
    assert shard.read_bytes() == before


def test_29_disk_full_leaves_nothing(tmp_path: Path, det_npy: dict[str, Path]) -> None:
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(tiny)],
                      capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        done = run_cli("convert", str(det_npy["det2"]), "-o", str(tiny / "rnet.pt"),
                       cwd=tmp_path)
        assert_one_line_failure(done, "no space left")
        assert list(tiny.iterdir()) == []
    finally:
        subprocess.run(["umount", str(tiny)], check=False)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_30_outputs_round_trip_safely(tmp_path: Path, det_npy, suffix: str) -> None:
    import torch
    from safetensors.torch import load_file

    out = tmp_path / f"onet{suffix}"
    assert run_cli("convert", str(det_npy["det3"]), "-o", str(out), cwd=tmp_path).returncode == 0
    state = (torch.load(out, map_location="cpu", weights_only=True) if suffix == ".pt"
             else load_file(out))
    from facenet_convert.models import ONet

    ONet().load_state_dict(state, strict=True)
