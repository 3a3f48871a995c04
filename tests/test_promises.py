"""Issue 25's classes, one test each, on the surfaces the generic contract test cannot reach:
signals swallowed by a library, resumable folders after a kill, collisions and settings of
align, non-finite embeddings, NaN weights in export, repeated list entries, defaults that
chain. Each fails when its fix is removed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.no_spawn import NO_SPAWN
from tests.synthetic_models import realistic_model

CLI = [sys.executable, "-m", "facenet_convert.converter"]


def cli(*args: object, cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *(str(a) for a in args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=timeout,
                          check=False)


def one_error_line(done: subprocess.CompletedProcess[str], *words: str) -> str:
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, done.stderr
    for word in words:
        assert word in errors[0], (word, errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real photos in class folders: 24 copies of the astronaut in 2 classes."""
    from skimage import data

    root = tmp_path_factory.mktemp("photos")
    astronaut = data.astronaut()
    for cls in ("a", "b"):
        (root / cls).mkdir()
        for k in range(12):
            shift = 4 * k
            Image.fromarray(np.ascontiguousarray(astronaut[shift:, shift:])).save(
                root / cls / f"p{k:02d}.png")
    return root


def _started(process: subprocess.Popen[str], marker: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run never reached the point to interrupt"
        time.sleep(0.05)


# --------------------------------------------------------------------------- signals

@pytest.mark.parametrize("moment", ["during the export", "after the engine is cached"])
def test_sigterm_interrupts_embed(moment: str, photos: Path, weights: Path,
                                  tmp_path: Path) -> None:
    """embed builds its ONNX engine (a cache write) before any image: neither the exporter nor
    that cache commit may swallow a signal; the run stops, says so and writes nothing."""
    pytest.importorskip("onnxruntime")
    cache = tmp_path / "cache"
    out = tmp_path / "e.npz"
    process = subprocess.Popen([*CLI, "embed", str(photos), "--detect", "--weights",
                                str(weights), "-o", str(out)], cwd=tmp_path, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "FACENET_CONVERT_CACHE": str(cache)})
    if moment == "during the export":
        _started(process, cache / "engines")      # created just before the export starts
        time.sleep(1.0)
    else:
        deadline = time.monotonic() + 180
        while not list((cache / "engines").glob("*.onnx")):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1].endswith("interrupted; nothing written"), stderr
    assert "Traceback" not in stderr
    assert not out.exists()


def test_align_killed_then_resumed_lists_every_photo(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "aligned"
    process = subprocess.Popen([*CLI, "align", str(photos), str(out)], cwd=tmp_path, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _started(process, out / "a" / "p03.png")
    process.kill()                                 # SIGKILL: no handler runs
    process.communicate()
    (out / "a" / ".p20.png.0123abcd.part").write_bytes(b"half a crop")   # as a kill leaves
    done = cli("align", photos, out, "--resume", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["aligned"] + summary["skipped_existing"] == 24
    assert summary["skipped_existing"] >= 4
    lines = Path(summary["bounding_boxes"]).read_text().splitlines()
    assert sorted(line.split()[0] for line in lines) == sorted(
        str(out / cls / f"p{k:02d}.png") for cls in "ab" for k in range(12))
    assert all(len(line.split()) == 5 for line in lines)
    assert not list(out.rglob("*.part")) and not list(out.glob(".*.journal"))


def test_align_resume_redoes_a_finished_photo_whose_line_was_lost(photos: Path,
                                                                   tmp_path: Path) -> None:
    """A crop without its bounding_boxes line (a kill between the two, or a lost file) is
    not taken as finished: --resume aligns it again and lists it."""
    out = tmp_path / "aligned"
    first = cli("align", photos, out, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    boxes = Path(json.loads(first.stdout)["bounding_boxes"])
    lost = str(out / "a" / "p03.png")
    boxes.write_text("".join(line for line in boxes.read_text().splitlines(keepends=True)
                             if not line.startswith(lost + " ")))
    done = cli("align", photos, out, "--resume", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["aligned"], summary["skipped_existing"]) == (1, 23)
    lines = Path(summary["bounding_boxes"]).read_text().splitlines()
    assert sorted(line.split()[0] for line in lines) == sorted(
        str(out / cls / f"p{k:02d}.png") for cls in "ab" for k in range(12))


def test_align_sigterm_keeps_finished_crops_and_says_so(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "aligned"
    process = subprocess.Popen([*CLI, "align", str(photos), str(out)], cwd=tmp_path, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _started(process, out / "a" / "p02.png")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert "finished parts kept" in stderr.splitlines()[-1] and "--resume" in stderr
    assert not list(out.rglob("*.part"))


# ------------------------------------------------------------------------------ align

def test_two_aligns_into_one_folder(photos: Path, tmp_path: Path) -> None:
    many = tmp_path / "many"
    (many / "a").mkdir(parents=True)
    for k in range(200):                           # a first run that outlasts the second
        os.link(photos / "a" / f"p{k % 12:02d}.png", many / "a" / f"q{k:03d}.png")
    out = tmp_path / "aligned"
    first = subprocess.Popen([*CLI, "align", str(many), str(out)], cwd=tmp_path, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _started(first, out / "a" / "q000.png")
    second = cli("align", many, out, "--margin", "44", "--resume", cwd=tmp_path)
    assert first.poll() is None, "the first run ended before the second reached the lock"
    one_error_line(second, "another facenet-convert run is writing into")
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
    mixed = cli("align", many, out, "--margin", "44", "--resume", cwd=tmp_path)
    one_error_line(mixed, "other settings", "margin")


def test_align_reports_fifos_links_and_crop_collisions(photos: Path, tmp_path: Path) -> None:
    source = tmp_path / "in"
    (source / "c").mkdir(parents=True)
    shutil.copy(photos / "a" / "p00.png", source / "c" / "x.png")
    shutil.copy(photos / "a" / "p00.png", source / "c" / "x.jpg")       # same crop name
    os.mkfifo(source / "c" / "pipe.png")
    (source / "c" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    done = cli("align", source, tmp_path / "out", cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    failed = {Path(item["path"]).name: item["reason"]
              for item in json.loads(done.stdout)["failed"]}
    assert "same crop" in failed["x.png"] or "same crop" in failed["x.jpg"]
    assert "FIFO" in failed["pipe.png"] and "dangling" in failed["gone.png"]


# ---------------------------------------------------------------------- embeddings

@pytest.mark.parametrize("bad", ["nan", "inf", "zero", "strings", "no width"])
def test_evaluate_refuses_embeddings_no_figure_can_trust(bad: str, tmp_path: Path) -> None:
    root = tmp_path / "lfw"
    names = []
    for person in ("a", "b"):
        (root / person).mkdir(parents=True)
        for number in (1, 2):
            name = f"{person}/{person}_{number:04d}.png"
            Image.new("RGB", (8, 8)).save(root / name)
            names.append(name)
    (tmp_path / "pairs.txt").write_text("1\t2\na\t1\t2\na\t1\tb\t1\n")
    rows = np.eye(4, 8, dtype=np.float32)
    if bad == "nan":
        rows[1, 3] = np.nan
    elif bad == "inf":
        rows[2, 0] = np.inf
    elif bad == "zero":
        rows[0] = 0
    elif bad == "no width":
        rows = rows[:, :0]
    values: np.ndarray = rows.astype(str) if bad == "strings" else rows
    np.savez(tmp_path / "e.npz", names=np.array(names), embeddings=values)
    done = cli("evaluate", tmp_path / "pairs.txt", root, "--embeddings", tmp_path / "e.npz",
               "--folds", "2", "--json", tmp_path / "r.json", cwd=tmp_path)
    one_error_line(done, {"nan": "NaN or Inf", "inf": "NaN or Inf", "zero": "all zero",
                          "strings": "not numbers", "no width": "hold no values"}[bad])
    assert not (tmp_path / "r.json").exists()


def test_compare_refuses_nan_weights(photos: Path, tmp_path: Path) -> None:
    model = realistic_model()
    state = model.state_dict()
    state["last_linear.weight"][0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    done = cli("compare", photos / "a" / "p00.png", photos / "a" / "p01.png", "--weights",
               tmp_path / "nan.pt", "--backend", "torch", cwd=tmp_path)
    one_error_line(done, "NaN or Inf")


def test_export_of_nan_weights_is_refused_and_json_stays_valid(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from facenet_convert.converter.core.checks import dumps, max_abs_difference, within

    model = realistic_model()
    state = model.state_dict()
    state["last_linear.weight"][:, :] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    done = cli("export", tmp_path / "nan.pt", "-o", tmp_path / "m.onnx", cwd=tmp_path)
    one_error_line(done, "NaN or Inf")
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "m.onnx.json").exists()
    assert max_abs_difference(np.array([np.nan]), np.array([0.0])) == float("inf")
    assert not within(float("nan"), 1.0)
    assert json.loads(dumps({"a": float("nan"), "b": [float("inf")]})) == {"a": None,
                                                                             "b": [None]}


def test_a_file_named_twice_is_embedded_once(photos: Path, weights: Path,
                                             tmp_path: Path) -> None:
    link = tmp_path / "link.png"
    link.symlink_to(photos / "a" / "p00.png")
    listing = tmp_path / "list.txt"
    again = photos / "a" / ".." / "a" / "p00.png"
    listing.write_text(f"{photos / 'a' / 'p00.png'}\n{link}\n{again}\n")
    done = cli("embed", "--input-list", listing, "--weights", weights, "--backend", "torch",
               "-o", tmp_path / "e.npz", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with np.load(tmp_path / "e.npz") as saved:
        assert len(saved["names"]) == 1
    assert done.stderr.count("the same file as") == 2


# --------------------------------------------------------------------- chaining

@pytest.mark.tf
def test_export_default_chains_into_parity(det_npy: dict[str, Path], tmp_path: Path) -> None:
    """The default export takes any batch, so parity's default batches run on it; a fixed
    batch export is run by parity in slices of its batch."""
    pytest.importorskip("onnxruntime")
    assert cli("convert", det_npy["det3"], "-o", tmp_path / "onet.pt", cwd=tmp_path
               ).returncode == 0
    for flags in ([], ["--fixed-batch"]):
        out = tmp_path / f"onet{len(flags)}.onnx"
        made = cli("export", tmp_path / "onet.pt", "-o", out, *flags, cwd=tmp_path)
        assert made.returncode == 0, made.stderr
        done = cli("parity", det_npy["det3"], out, "--batches", "1", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "parity PASS" in done.stdout


def test_sigterm_while_export_traces_is_one_interrupted_line(weights: Path,
                                                             tmp_path: Path) -> None:
    """torch.export turns the signal's exception into its own multi-line error: the CLI
    still reports the run as interrupted, in one line, and writes nothing."""
    pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    process = subprocess.Popen([*CLI, "export", str(weights), "-o", str(out)], cwd=tmp_path,
                               text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(5.0)                      # imports and loading done; tracing takes longer
    assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert stderr.strip().splitlines() == ["facenet-convert: interrupted; nothing written"]
    assert not out.exists() and not list(tmp_path.glob(".*"))


def test_a_run_ended_at_once_leaves_no_folder_it_created(weights: Path, tmp_path: Path) -> None:
    """Stuck in torch.export's tracer, the signal ends the process at once (no finally runs):
    the --hub-folder the runner created for the run goes too, as on any failure."""
    pytest.importorskip("onnxruntime")
    process = subprocess.Popen([*CLI, "export", str(weights), "-o", str(tmp_path / "m.onnx"),
                                "--hub-folder", str(tmp_path / "hub")], cwd=tmp_path,
                               text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(5.0)
    assert process.poll() is None, process.communicate()
    assert (tmp_path / "hub").is_dir()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert stderr.strip().splitlines() == ["facenet-convert: interrupted; nothing written"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_offline_forbids_fetching_upstream_packages(tmp_path: Path) -> None:
    from facenet_convert.converter.core.errors import FetchError
    from facenet_convert.third_party.wheels import FACENET, fetch_wheel

    env = {"FACENET_CONVERT_CACHE": str(tmp_path / "cache"), "FACENET_CONVERT_OFFLINE": "1"}
    code = NO_SPAWN + ("from facenet_convert.third_party.wheels import FACENET, fetch_wheel\n"
                       "fetch_wheel(FACENET)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120, check=False)
    assert done.returncode != 0 and "SPAWNED" not in done.stderr + done.stdout
    assert FetchError.__name__ in done.stderr and FACENET.filename in done.stderr
    assert "FACENET_CONVERT_OFFLINE" in done.stderr and fetch_wheel


@pytest.mark.parametrize(("key", "value", "words"), [
    ("embedding_size", "1000000000000", "whole number from 1 to"),
    ("embedding_size", "128", "output is 512 wide"),
    ("architecture", "../../etc", "architecture metadata is"),
])
def test_export_metadata_that_lies_is_refused(key: str, value: str, words: str, weights: Path,
                                              tmp_path: Path) -> None:
    """``parity SOURCE OUT.onnx`` builds its stand-in from the export's metadata: a huge or
    false embedding size, or an unknown architecture, is one error, never an allocation."""
    onnx = pytest.importorskip("onnx")
    from facenet_convert.converter.core.errors import EngineError
    from facenet_convert.converter.engines import OnnxModel, match_onnx, onnx_embedding_size

    out = tmp_path / "m.onnx"
    assert cli("export", weights, "-o", out, cwd=tmp_path).returncode == 0
    proto = onnx.load(str(out))
    for prop in proto.metadata_props:
        if prop.key == f"facenet_convert.{key}":
            prop.value = value
    onnx.save(proto, str(out))
    model = OnnxModel(out)
    with pytest.raises(EngineError, match=words):
        match_onnx(model)
        onnx_embedding_size(model)
