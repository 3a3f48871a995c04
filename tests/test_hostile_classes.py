"""Issue 12's classes of attack, several cases each, through the CLI in fresh processes.

Every case runs with an address-space limit (RLIMIT_AS) and a wall-clock limit so that a
regression fails instead of hanging CI, and checks the promises: non-zero exit, exactly one
stderr line naming the file and the problem, no traceback, no output or temp file left, the
inputs untouched and no pickle payload run.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import random
import resource
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MEMORY_LIMIT = 3 << 30  # torch + h5py import fits; a GB allocation from a KB file does not


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "converter", *args], capture_output=True,
                          text=True, cwd=cwd, check=False, timeout=timeout,
                          preexec_fn=_limits,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def one_line(done: subprocess.CompletedProcess[str], *words: str) -> str:
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].isprintable(), lines[0]
    for word in words:
        assert word.lower() in lines[0].lower(), (word, lines[0])
    return lines[0]


def check_failure(tmp: Path, source: Path, *words: str, command: str = "convert",
                  env: dict[str, str] | None = None, name: str | None = None) -> str:
    inputs = tmp / "in"
    before = digest(inputs)
    out = tmp / "out"
    out.mkdir(exist_ok=True)
    args = ([command, str(source), "-o", str(out / "model.pt")] if command == "convert"
            else ["inspect", "--verify", str(source)] if command == "verify"
            else [command, str(source)])
    done = run_cli(*args, cwd=tmp, env=env)
    line = one_line(done, *words)
    assert (name or source.name) in line or repr(name or source.name)[1:-1] in line, line
    assert list(out.iterdir()) == []
    assert digest(inputs) == before
    assert not (tmp / "pwned").exists()
    return line


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    return folder


def keras3(path: Path, build) -> Path:
    with h5py.File(path, "w") as handle:
        build(handle)
    return path


# ------------------------------------------------------------------ 1. bounded decoded work

def _raw_chunked(handle: h5py.File, name: str, shape: tuple[int, ...], payload: bytes,
                 filters: list[int]) -> None:
    """A chunked float32 dataset with ``filters`` whose one chunk holds ``payload`` raw."""
    space = h5py.h5s.create_simple(shape)
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_chunk(shape)
    for code in filters:
        dcpl.set_filter(code, h5py.h5z.FLAG_OPTIONAL, (6,) if code == 1 else ())
    dsid = h5py.h5d.create(handle.id, name.encode(), h5py.h5t.IEEE_F32LE, space, dcpl=dcpl)
    dsid.write_direct_chunk((0,) * len(shape), payload)


def bomb_stacked_deflate(path: Path) -> Path:
    inner = zlib.compress(b"\0" * (64 << 20), 9)  # 64 MiB of zeros
    return keras3(path, lambda h: (h.create_group("layers/d/vars"),
                                   _raw_chunked(h, "layers/d/vars/0", (16,),
                                                zlib.compress(inner, 9), [1, 1])))


def bomb_one_deflate(path: Path) -> Path:
    payload = zlib.compress(b"\0" * (128 << 20), 9)  # a 256 KiB chunk inflating to 128 MiB
    return keras3(path, lambda h: (h.create_group("layers/d/vars"),
                                   _raw_chunked(h, "layers/d/vars/0", (256, 256), payload,
                                                [1])))


def bomb_short_chunk(path: Path) -> Path:
    payload = zlib.compress(b"\0" * 8)  # decodes to less than its declared chunk
    return keras3(path, lambda h: (h.create_group("layers/d/vars"),
                                   _raw_chunked(h, "layers/d/vars/0", (64,), payload, [1])))


def bomb_lzf(path: Path) -> Path:
    return keras3(path, lambda h: h.create_dataset("layers/d/vars/0", data=np.zeros(64, "f4"),
                                                   compression="lzf"))


def huge_chunks(path: Path) -> Path:
    return keras3(path, lambda h: h.create_dataset("layers/d/vars/0", shape=(4,), dtype="f4",
                                                   maxshape=(None,), chunks=(1 << 28,)))


def dag_groups(path: Path) -> Path:
    def build(handle: h5py.File) -> None:
        level = handle.create_group("layers/l0")
        level.create_dataset("vars/0", data=np.zeros(2, "f4"))
        for depth in range(1, 40):  # 2**40 paths if walked naively
            upper = handle.create_group(f"layers/l{depth}")
            upper["a"] = level
            upper["b"] = level
            level = upper
    return keras3(path, build)


def total_fill_values(path: Path) -> Path:
    def build(handle: h5py.File) -> None:
        for i in range(64):  # each within the per-dataset cap, together far above it
            handle.create_dataset(f"layers/d{i}/vars/0", shape=(1 << 18,), dtype="f4")
    return keras3(path, build)


@pytest.mark.parametrize("build, words", [
    (bomb_stacked_deflate, ("deflate", "twice")),
    (bomb_one_deflate, ("inflates past",)),
    (bomb_short_chunk, ("decodes to",)),
    (bomb_lzf, ("filter 32000",)),
    (dag_groups, ("hard-linked twice",)),
    (huge_chunks, ("byte chunks",)),
    (total_fill_values, ("in all",)),
], ids=lambda v: getattr(v, "__name__", ""))
def test_1_decoded_work_is_bounded(tmp_path: Path, inputs: Path, build, words) -> None:
    source = build(inputs / "w.weights.h5")
    check_failure(tmp_path, source, *words, command="verify")


def test_1_bombs_refused_by_verify_read(tmp_path: Path, inputs: Path) -> None:
    source = bomb_one_deflate(inputs / "w.weights.h5")
    done = run_cli("inspect", "--verify", str(source), cwd=tmp_path)
    one_line(done, "inflates past", source.name)


def test_1_watchdog_ends_a_stalled_read(tmp_path: Path, inputs: Path) -> None:
    """A libhdf5 call past its time ends the run with one line (here: a tiny time limit)."""
    source = keras3(inputs / "w.weights.h5",
                    lambda h: h.create_dataset("layers/d/vars/0", data=np.ones((512, 512), "f4"),
                                               compression="gzip"))
    line = check_failure(tmp_path, source, "no progress", "FACENET_CONVERT_H5_TIMEOUT",
                         command="verify", env={"FACENET_CONVERT_H5_TIMEOUT": "0.000001"})
    assert line.startswith("facenet-convert: error:")


def test_1_hdf5_metadata_fuzz_stays_bounded(tmp_path: Path, inputs: Path) -> None:
    """Random byte flips in HDF5 metadata: one line or success, within the watchdog."""
    good = keras3(inputs / "good.weights.h5",
                  lambda h: [h.create_dataset(f"layers/d{i}/vars/0", data=np.ones((8, 8), "f4"),
                                              compression="gzip", chunks=(4, 8))
                             for i in range(3)])
    raw = good.read_bytes()
    rng = random.Random(12)
    for case in range(6):
        mutated = bytearray(raw)
        for _ in range(8):
            mutated[rng.randrange(0, 2048)] = rng.randrange(256)
        path = inputs / f"fuzz{case}.weights.h5"
        path.write_bytes(bytes(mutated))
        done = run_cli("inspect", "--verify", str(path), cwd=tmp_path,
                       env={"FACENET_CONVERT_H5_TIMEOUT": "10"}, timeout=60)
        assert "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) <= 1, done.stderr


# ------------------------------------------------------------------ 2. non-regular files

def make_fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("name", ["model.h5", "det1.npy", "frozen.pb"])
def test_2_fifo_source_refused_without_blocking(tmp_path: Path, inputs: Path, name: str) -> None:
    fifo = make_fifo(inputs / name)
    check_failure(tmp_path, fifo, "FIFO")


def test_2_device_and_forced_format_refused(tmp_path: Path, inputs: Path) -> None:
    link = inputs / "zero.h5"
    link.symlink_to("/dev/zero")
    check_failure(tmp_path, link, "character device")
    from facenet_convert.converter.core.errors import SourceError
    from facenet_convert.converter.sources import open_source

    with pytest.raises(SourceError, match="FIFO"):
        open_source(make_fifo(inputs / "forced.h5"), format="keras-h5")


def test_2_fifo_checkpoint_parts_refused(tmp_path: Path, inputs: Path, det_npy) -> None:
    from bundle_writer import data_file, pnet_bundle

    prefix = pnet_bundle(inputs, det_npy)
    shard = data_file(prefix)
    shard.unlink()
    make_fifo(shard)
    check_failure(tmp_path, prefix, "FIFO", name=shard.name)
    state = inputs / "checkpoint"
    make_fifo(state)
    check_failure(tmp_path, inputs, "FIFO", name="checkpoint")
    state.unlink()
    state.write_text('model_checkpoint_path: "other.ckpt-2"\n')
    make_fifo(inputs / "other.ckpt-2.index")  # the state file's target
    check_failure(tmp_path, inputs, "other.ckpt-2", name="checkpoint")


def test_2_fifo_weights_and_images_refused(tmp_path: Path, inputs: Path) -> None:
    from PIL import Image

    fifo = make_fifo(inputs / "w.pt")
    image = inputs / "face.png"
    Image.fromarray(np.zeros((160, 160, 3), np.uint8)).save(image)
    done = run_cli("embed", str(image), "--weights", str(fifo), "-o",
                   str(tmp_path / "e.npz"), cwd=tmp_path)
    one_line(done, "FIFO", "w.pt")
    from facenet_convert.converter.core.errors import ImageReadError
    from facenet_convert.models.data import scan_folder
    from facenet_convert.models.preprocessing import load_image

    make_fifo(inputs / "pipe.jpg")
    assert inputs / "pipe.jpg" in scan_folder(inputs)[0]  # listed, so it is reported
    with pytest.raises(ImageReadError, match="FIFO"):
        load_image(inputs / "pipe.jpg")
    with pytest.raises(ImageReadError, match="directory"):
        load_image(inputs)


# ------------------------------------------------------------------ 3. the same limits

def test_3_rank_and_empty_huge_dims(tmp_path: Path, inputs: Path, det_npy) -> None:
    from bundle_writer import entry_proto, one_entry

    huge = one_entry(inputs, entry_proto(1, [0, 1 << 40, 1 << 40], 0, 0, 0, 0), b"")
    check_failure(tmp_path, huge, "zero dimensions", name="model.ckpt-1.index")


def _graph(dims: list[int]) -> bytes:
    """A frozen GraphDef with one float Const of shape ``dims`` and no values."""
    from bundle_writer import field_bytes, varint

    def number(field: int, value: int) -> bytes:
        return varint(field << 3) + varint(value)

    shape = b"".join(field_bytes(2, number(1, dim)) for dim in dims)
    value = field_bytes(8, number(1, 1) + field_bytes(2, shape))
    node = (field_bytes(1, b"c") + field_bytes(2, b"Const")
            + field_bytes(5, field_bytes(1, b"dtype") + field_bytes(2, number(6, 1)))
            + field_bytes(5, field_bytes(1, b"value") + field_bytes(2, value)))
    return field_bytes(1, node)


@pytest.mark.parametrize("dims, words", [([0, 1 << 40, 1 << 40], ("zero dimensions",)),
                                         ([1] * 300, ("rank", "254"))])
def test_3_graphdef_limits(tmp_path: Path, inputs: Path, dims, words) -> None:
    source = inputs / "frozen.pb"
    source.write_bytes(_graph(dims))
    check_failure(tmp_path, source, *words, command="verify")


def test_3_checkpoint_rank(tmp_path: Path, inputs: Path) -> None:
    from bundle_writer import entry_proto, one_entry

    deep = one_entry(inputs, entry_proto(1, [1] * 300, 0, 0, 4, 0), b"\0" * 4)
    check_failure(tmp_path, deep, "254", name="model.ckpt-1.index")


class _DeepArray:
    def __reduce__(self):
        reconstruct = np.ndarray((0,)).__reduce__()[0]
        return (reconstruct, (np.ndarray, (0,), b"b"),
                (1, (1,) * 300, np.dtype("f4"), False, b"\0" * 4))


def test_3_npy_rank(tmp_path: Path, inputs: Path) -> None:
    source = inputs / "det1.npy"
    source.write_bytes(_npy(pickle.dumps({"conv1": {"weights": _DeepArray()}}, protocol=3)))
    check_failure(tmp_path, source, "254")


def test_3_h5_empty_dataset_huge_dims(tmp_path: Path, inputs: Path) -> None:
    source = keras3(inputs / "e.weights.h5",
                    lambda h: h.create_dataset("layers/d/vars/0", shape=(0, 1 << 40, 1 << 40),
                                               dtype="f4"))
    check_failure(tmp_path, source, "zero dimensions", command="inspect")


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def _npy(payload: bytes) -> bytes:
    header = b"{'descr': '|O', 'fortran_order': False, 'shape': (), }".ljust(118) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + payload


class _OddDtype:
    def __init__(self, state: tuple) -> None:
        self.state = state

    def __reduce__(self):
        return (np.dtype, ("f4", False, True), self.state)


class _FakeArray:
    def __init__(self, state: tuple) -> None:
        self.state = state

    def __reduce__(self):
        reconstruct = np.ndarray((0,)).__reduce__()[0]
        return (reconstruct, (np.ndarray, (0,), b"b"),
                (1, (2,), _OddDtype(self.state), False, b"\0" * 8))


@pytest.mark.parametrize("state", [
    (3, "<", None, ("a",), {"a": (np.dtype("O"), 0)}, 4, 1, 63),
    (3, "|", None, ("a", "b"), {"a": (np.dtype("f4"), 0), "b": (np.dtype("f4"), 2)}, 4, 1, 16),
    (3, "|", (np.dtype("f4"), (2,)), None, None, 8, 4, 0),
], ids=["object-field", "overlapping-fields", "subarray"])
def test_3_odd_numpy_dtypes_in_npy(tmp_path: Path, inputs: Path, state) -> None:
    source = inputs / "det1.npy"
    payload = pickle.dumps({"conv1": {"weights": _FakeArray(state)}}, protocol=3)
    source.write_bytes(_npy(payload))
    check_failure(tmp_path, source, "not a plain numeric dtype")


# ------------------------------------------------------------------ 4. the state file

@pytest.mark.parametrize("value, words", [
    (b"model.ckpt-1\\x", ("escape",)),
    (b"model.ckpt-1\\u12", ("escape",)),
    (b"model.ckpt-1\\N{GREEK SMALL LETTER ALPHA}", ("escape",)),
    (b"model.ckpt-1\\N{nope}", ("escape",)),
    (b"model.ckpt-1\\xff", ("not utf-8",)),
    (b"model.ckpt-\xff1", ("not utf-8",)),
])
def test_4_state_file_escapes(tmp_path: Path, inputs: Path, det_npy, value, words) -> None:
    from bundle_writer import pnet_bundle

    pnet_bundle(inputs, det_npy)
    (inputs / "checkpoint").write_bytes(b'model_checkpoint_path: "' + value + b'"\n')
    check_failure(tmp_path, inputs, *words, name="checkpoint")


def test_4_state_file_escapes_decode_like_tf(tmp_path: Path, inputs: Path, det_npy) -> None:
    from bundle_writer import pnet_bundle

    pnet_bundle(inputs, det_npy)
    (inputs / "checkpoint").write_bytes(b'model_checkpoint_path: "/x/model.ck\\x70t-\\061"\n')
    done = run_cli("inspect", str(inputs), cwd=tmp_path)
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------ 5. paths

def test_5_hard_link_and_dotdot_aliases(tmp_path: Path, inputs: Path, det_npy) -> None:
    source = inputs / "det1.npy"
    source.write_bytes(det_npy["det1"].read_bytes())
    alias = tmp_path / "alias.pt"
    os.link(source, alias)
    done = run_cli("convert", str(source), "-o", str(alias), "--force", cwd=tmp_path)
    one_line(done, "same file as input")
    assert source.read_bytes() == det_npy["det1"].read_bytes()
    sub = tmp_path / "sub"
    sub.mkdir()
    done = run_cli("convert", str(source), "-o", f"{sub}/../in/det1.npy", "--force",
                   "--format", "pt", cwd=tmp_path)
    one_line(done, "same file as input")
    done = run_cli("convert", str(source), "-o", str(tmp_path / "m.pt"), "--report",
                   f"{sub}/../m.pt", cwd=tmp_path)
    one_line(done, "twice")
    assert not (tmp_path / "m.pt").exists()


def test_5_symlinked_directory_alias(tmp_path: Path, inputs: Path, det_npy) -> None:
    source = inputs / "det2.npy"
    source.write_bytes(det_npy["det2"].read_bytes())
    (tmp_path / "view").symlink_to(inputs, target_is_directory=True)
    done = run_cli("convert", str(source), "-o", str(tmp_path / "view" / "det2.npy"),
                   "--force", "--format", "pt", cwd=tmp_path)
    one_line(done, "same file as input")
    assert source.read_bytes() == det_npy["det2"].read_bytes()


def test_5_state_file_is_an_input(tmp_path: Path, inputs: Path, det_npy) -> None:
    from bundle_writer import pnet_bundle

    pnet_bundle(inputs, det_npy)
    state = inputs / "checkpoint"
    state.write_text('model_checkpoint_path: "model.ckpt-1"\n')
    before = state.read_bytes()
    done = run_cli("convert", str(inputs), "-o", str(state), "--force", "--format", "pt",
                   cwd=tmp_path)
    one_line(done, "same file as input")
    assert state.read_bytes() == before


def test_5_name_too_long(tmp_path: Path, inputs: Path, det_npy) -> None:
    long_out = tmp_path / ("x" * 300 + ".pt")
    done = run_cli("convert", str(det_npy["det1"]), "-o", str(long_out), cwd=tmp_path)
    one_line(done, "too long")
    done = run_cli("inspect", str(tmp_path / ("y" * 300 + ".npy")), cwd=tmp_path)
    one_line(done, "too long")


# ------------------------------------------------------------------ 6. concurrency

def test_6_exclusive_commit_one_winner(tmp_path: Path) -> None:
    from facenet_convert.converter.core.atomic import atomic_output, staged_outputs
    from facenet_convert.converter.core.errors import OutputError

    out = tmp_path / "model.pt"
    with pytest.raises(OutputError, match="another process"), atomic_output(out) as handle:
        handle.write(b"loser")
        out.write_bytes(b"winner")  # the other process commits first
    assert out.read_bytes() == b"winner"
    outs = [tmp_path / "a.pt", tmp_path / "b.pt"]
    with pytest.raises(OutputError), staged_outputs(outs) as handles:
        for handle in handles.values():
            handle.write(b"mine")
        outs[1].write_bytes(b"theirs")  # a path changes while committing: all or nothing
    assert not outs[0].exists() and outs[1].read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.pt", "model.pt"]


def test_6_directory_swapped_during_write(tmp_path: Path) -> None:
    """The commit goes where the checks were made, never through a symlink swapped in."""
    from facenet_convert.converter.core.atomic import staged_outputs

    chosen, elsewhere = tmp_path / "chosen", tmp_path / "elsewhere"
    chosen.mkdir()
    elsewhere.mkdir()
    outs = [chosen / "a.pt", chosen / "b.pt"]
    with staged_outputs(outs) as handles:
        for handle in handles.values():
            handle.write(b"data")
        chosen.rename(tmp_path / "moved")
        chosen.symlink_to(elsewhere, target_is_directory=True)
    assert list(elsewhere.iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "moved").iterdir()) == ["a.pt", "b.pt"]


def test_6_two_processes_exactly_one_wins(tmp_path: Path, det_npy) -> None:
    out = tmp_path / "onet.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-m", "converter", "convert",
                               str(det_npy["det3"]), "-o", str(out)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [proc.communicate(timeout=120) for proc in procs]
    codes = sorted(proc.returncode for proc in procs)
    assert codes[0] == 0 and codes[1] != 0, results
    loser = next(err for proc, (_, err) in zip(procs, results, strict=True) if proc.returncode)
    assert "exists" in loser and len(loser.strip().splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["onet.pt"]


# ------------------------------------------------------------------ 7. signals

@pytest.mark.parametrize("signum, delay", [(signal.SIGTERM, 0.3), (signal.SIGINT, 1.5),
                                           (signal.SIGTERM, 1.5), (signal.SIGTERM, 3.0)])
def test_7_signal_leaves_nothing(tmp_path: Path, det_npy, signum: int, delay: float) -> None:
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "converter", "convert",
                             str(det_npy["det3"]), "-o", str(out / "onet.pt"), "--report",
                             str(out / "r.json")], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    files = sorted(p.name for p in out.iterdir())
    if proc.returncode == 0:  # finished before the signal: complete outputs, nothing else
        assert files == ["onet.pt", "r.json"]
        return
    assert proc.returncode == 128 + signum, err
    assert err.strip() == "facenet-convert: interrupted; nothing written", err
    assert files == []


_COMMIT_SCRIPT = """
import os, signal, sys
from pathlib import Path
from facenet_convert.converter.core import atomic
atomic.install_interrupt_handlers()
real = atomic._link_exclusive
def link_then_signal(item):
    real(item)
    os.kill(os.getpid(), signal.SIGTERM)  # arrives between the two commits
atomic._link_exclusive = link_then_signal
outs = [Path(sys.argv[1]) / "a.pt", Path(sys.argv[1]) / "b.pt"]
try:
    with atomic.staged_outputs(outs) as handles:
        for handle in handles.values():
            handle.write(b"data")
except atomic.Interrupted as error:
    print("interrupted", error.signum)
"""


def test_7_signal_during_commit_rolls_back(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", _COMMIT_SCRIPT, str(tmp_path)],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=_limits)
    assert done.stdout.strip() == f"interrupted {int(signal.SIGTERM)}", done.stderr
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ 8. untrusted --weights

def test_8_legacy_storage_bomb(tmp_path: Path, inputs: Path) -> None:
    """A legacy torch file whose storage declares 2**30 floats in a few hundred bytes."""
    import torch

    bomb = inputs / "legacy.pt"
    torch.save({"last_linear.weight": torch.zeros(4)}, bomb,
               _use_new_zipfile_serialization=False)
    raw = bomb.read_bytes()
    at = raw.index(b"cpu")
    numel = raw.index(b"K\x04", at)
    bomb.write_bytes(raw[:numel] + b"J" + (1 << 30).to_bytes(4, "little") + raw[numel + 2:])
    image = inputs / "face.png"
    from PIL import Image

    Image.fromarray(np.zeros((160, 160, 3), np.uint8)).save(image)
    before = digest(inputs)
    done = run_cli("embed", str(image), "--weights", str(bomb), "-o", str(tmp_path / "e.npz"),
                   cwd=tmp_path)
    one_line(done, "legacy.pt", "storages declare")
    assert digest(inputs) == before and not (tmp_path / "e.npz").exists()


@pytest.mark.parametrize("command", ["embed", "verify"])
def test_8_weights_bombs_refused(tmp_path: Path, inputs: Path, command: str) -> None:
    from PIL import Image

    bomb = inputs / "bomb.pt"
    import torch

    storage = torch.zeros(4).untyped_storage()
    wide = torch.empty(0).set_(storage, 0, (1 << 30, 1792), (0, 0))
    torch.save({"last_linear.weight": wide}, bomb)
    image = inputs / "face.png"
    Image.fromarray(np.zeros((160, 160, 3), np.uint8)).save(image)
    before = digest(inputs)
    args = (["embed", str(image), "--weights", str(bomb), "-o", str(tmp_path / "e.npz")]
            if command == "embed" else ["verify", str(image), str(image), "--weights", str(bomb)])
    done = run_cli(*args, cwd=tmp_path)
    one_line(done, "bomb.pt")
    assert digest(inputs) == before and not (tmp_path / "e.npz").exists()


def test_8_compressed_zip_record_refused(tmp_path: Path, inputs: Path) -> None:
    import zipfile

    import torch

    from facenet_convert.converter.core.errors import SourceError
    from facenet_convert.models.weights import load_weights_file

    plain = inputs / "plain.pt"
    torch.save({"a": torch.zeros(1 << 16)}, plain)
    deflated = inputs / "deflated.pt"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(deflated, "w",
                                                        zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    with pytest.raises(SourceError, match="compressed"):
        load_weights_file(deflated)
    assert load_weights_file(plain)["a"].shape == (1 << 16,)


# ------------------------------------------------------------------ 9. images

def test_9_pixel_cap_from_header(tmp_path: Path) -> None:
    from PIL import Image

    from facenet_convert.converter.core.errors import ImageReadError
    from facenet_convert.models.preprocessing import load_image

    big = tmp_path / "big.png"
    Image.new("L", (10000, 6000)).save(big, optimize=False)  # 60 Mpx, a small file
    with pytest.raises(ImageReadError, match="FACENET_CONVERT_MAX_PIXELS"):
        load_image(big)
    script = ("import sys; from facenet_convert.models.preprocessing import load_image; "
              "print(load_image(sys.argv[1]).shape)")
    done = subprocess.run([sys.executable, "-c", script, str(big)], capture_output=True,
                          text=True, timeout=60,
                          env={**os.environ, "FACENET_CONVERT_MAX_PIXELS": "70000000"},
                          preexec_fn=_limits, check=False)
    assert done.returncode == 0 and "(6000, 10000, 3)" in done.stdout, done.stderr
    small = tmp_path / "small.png"
    Image.new("RGB", (40, 30)).save(small)
    os.environ["FACENET_CONVERT_MAX_PIXELS"] = "1000"
    try:
        with pytest.raises(ImageReadError, match="1200 pixels"):
            load_image(small)
    finally:
        del os.environ["FACENET_CONVERT_MAX_PIXELS"]


def test_9_modes_as_a_photo_viewer(tmp_path: Path) -> None:
    from PIL import Image

    from facenet_convert.models.preprocessing import load_image

    rgb = np.random.default_rng(0).integers(0, 256, (6, 4, 3), dtype=np.uint8)
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: a viewer turns it 90 degrees clockwise
    Image.fromarray(rgb).save(rotated, exif=exif, quality=100)
    assert load_image(rotated).shape == (4, 6, 3)
    palette = tmp_path / "palette.png"
    Image.fromarray(rgb).convert("P").save(palette, transparency=0)
    assert load_image(palette).shape == (6, 4, 3)
    masked = tmp_path / "masked.png"
    Image.fromarray(rgb).convert("P").save(masked, transparency=bytes(range(256)))
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = load_image(masked)  # Pillow warns converting it directly; nothing reaches us
    viewer = np.asarray(Image.open(masked).convert("RGBA").convert("RGB"))
    assert caught == [] and (got == viewer).all()
    cmyk = tmp_path / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(cmyk)
    assert load_image(cmyk).shape == (6, 4, 3)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 257 * 128, 65535]], np.uint16)).save(deep)
    assert load_image(deep)[0, :, 0].tolist() == [0, 128, 255]


def test_9_image_errors_are_one_printable_line(tmp_path: Path) -> None:
    from PIL import Image

    from facenet_convert.models.data import FaceFolder

    Image.new("L", (3000, 2000)).save(tmp_path / "big\x1b[2J.png")
    (tmp_path / "cut\r.png").write_bytes((tmp_path / "big\x1b[2J.png").read_bytes()[:60])
    os.environ["FACENET_CONVERT_MAX_PIXELS"] = "1000000"
    try:
        items = [FaceFolder(tmp_path)[i] for i in range(2)]
    finally:
        del os.environ["FACENET_CONVERT_MAX_PIXELS"]
    errors = sorted(item.error or "" for item in items)
    assert "6000000 pixels" in errors[0] and "cannot read image" in errors[1], errors
    assert all(e.isprintable() and "\\x1b" in e or "\\r" in e for e in errors), errors


# ------------------------------------------------------------------ 10. messages

@pytest.mark.parametrize("name", ["evil\rname.npy", "esc\x1b[31m.npy", "c1\x9b2J.npy",
                                  "nl\nline.npy"])
def test_10_control_characters_escaped(tmp_path: Path, inputs: Path, name: str) -> None:
    source = inputs / name
    source.write_bytes(b"\x93NUMPY\x01\x00\xff\xffnot a dict")
    done = run_cli("convert", str(source), "-o", str(tmp_path / "x.pt"), cwd=tmp_path)
    line = one_line(done, "header")
    assert "\x1b" not in line and "\r" not in line and "\x9b" not in line


def test_10_permission_error_names_the_file(tmp_path: Path, det_npy) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores permissions")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    done = run_cli("convert", str(det_npy["det1"]), "-o", str(locked / "x.pt"), cwd=tmp_path)
    one_line(done, "permission denied", "locked")
