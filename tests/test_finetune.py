"""``facenet-convert finetune`` on real face crops (the shipped calibration mosaic: 8 crops of
each of two people), small and fast: SqueezeNet at 64 px, batch 4, two epochs.

The start weights are a seeded SqueezeNet whose BatchNorm statistics were measured on the
faces (random ones make every eval-mode embedding equal). Checked: a run end to end with
held-out figures before and after; a run stopped by SIGINT or SIGKILL after its first
checkpoint and resumed equals the uninterrupted run bit for bit; a NaN loss names the step and
the batch and keeps the last checkpoint; bad datasets give one line; the result embeds and
exports through the CLI; a TF training checkpoint resumes its training state (marker tf).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image

from facenet_convert.converter.cli import main
from facenet_convert.converter.core.hashing import sha256_file
from facenet_convert.models.weights import load_weights_file

MOSAIC = Path(__file__).resolve().parents[1] / "converter" / "data" / "calibration_faces.png"
ARGS = ["--batch-size", "4", "--image-size", "64", "--optimizer", "ADAM", "--learning-rate",
        "0.01", "--center-loss-factor", "0.01", "--seed", "7"]


def cli(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def crops() -> list[tuple[str, np.ndarray]]:
    """The mosaic's 16 real face crops (160 px): astronaut's eight, then camera's eight."""
    mosaic = np.asarray(Image.open(MOSAIC).convert("RGB"))
    return [("astronaut" if k < 8 else "camera",
             mosaic[(k // 4) * 160:(k // 4 + 1) * 160, (k % 4) * 160:(k % 4 + 1) * 160])
            for k in range(16)]


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faces")
    for k, (who, pixels) in enumerate(crops()):
        (root / who).mkdir(exist_ok=True)
        Image.fromarray(pixels).save(root / who / f"{who}_{k % 8:04d}.png")
    return root


@pytest.fixture(scope="module")
def start(faces: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeded SqueezeNet weights, BatchNorm statistics measured on the faces."""
    from facenet_convert.converter.writers import write_state
    from facenet_convert.models.squeezenet import SqueezeNet
    from facenet_convert.training.finetune import FinetuneSettings, load_batch

    torch.manual_seed(0)
    net = SqueezeNet(embedding_size=16)
    images = load_batch(sorted(faces.rglob("*.png")), FinetuneSettings(image_size=64),
                        "fixed_standardization")
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.momentum = None           # a cumulative average over the batch
                module.reset_running_stats()
        net.train()
        net.prelogits(images)
    path = tmp_path_factory.mktemp("start") / "squeezenet-start.safetensors"
    with path.open("wb") as handle:
        write_state({k: v.numpy() for k, v in net.state_dict().items()}, handle, "safetensors")
    return path


@pytest.fixture(scope="module")
def finished(faces: Path, start: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "finetuned"
    done = cli("finetune", faces, "--from", start, "-o", out, "--epochs", "2", *ARGS)
    assert done.exit_code == 0, done.output
    return out


def test_a_short_finetune_runs_end_to_end(finished: Path, start: Path):
    report = json.loads((finished / "finetune.json").read_text())
    assert report["global_step"] == 6 and report["epochs"] == 2      # 12 training images / 4
    assert report["train_images"] == 12 and report["held_out_images"] == 4
    for figures in (report["verification_before"], report["verification_after"]):
        assert figures["pairs"] == 6 and figures["folds"] == 2
        assert 0.0 <= figures["accuracy"] <= 1.0
    assert report["verification_before"] != report["verification_after"]   # it trained
    assert report["source_sha256"] == {start.name: sha256_file(start)}
    assert [p.name for p in finished.glob("checkpoint-*")] == ["checkpoint-2.safetensors"]
    from safetensors import safe_open

    with safe_open(str(finished / "model.safetensors"), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["spec"] == "finetune" and metadata["architecture"] == "squeezenet"
    assert json.loads(metadata["source_sha256"]) == {start.name: sha256_file(start)}
    state = load_weights_file(finished / "model.safetensors")
    assert state["logits.weight"].shape == (2, 16)
    before = load_weights_file(start)
    assert not torch.equal(state["last_linear.weight"], before["last_linear.weight"])


def test_the_result_embeds_and_exports(finished: Path, faces: Path, tmp_path: Path):
    done = cli("embed", faces / "camera", "--weights", finished / "model.safetensors",
               "-o", tmp_path / "e.npz")
    assert done.exit_code == 0, done.output
    assert np.load(tmp_path / "e.npz")["embeddings"].shape == (8, 16)
    done = cli("export", finished / "model.safetensors", "-o", tmp_path / "m.onnx")
    assert done.exit_code == 0, done.output


def _launch(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    code = "import sys; from facenet_convert.converter.cli import main; sys.exit(main())"
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_a_stopped_run_resumes_to_the_same_weights(signum: int, faces: Path, start: Path,
                                                   finished: Path, tmp_path: Path):
    out = tmp_path / "out"
    # three epochs asked: the signal surely comes before the end; resumed to two below
    process = _launch(["finetune", str(faces), "--from", str(start), "-o", str(out),
                       "--epochs", "3", *ARGS], tmp_path)
    deadline = time.monotonic() + 120
    while not list(out.glob("checkpoint-*.safetensors")) and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == (130 if signum == signal.SIGINT else -signal.SIGKILL), stderr
    if signum == signal.SIGINT:
        assert stderr.splitlines()[-1].endswith("finished parts kept, nothing half-written "
                                                "(rerun with --resume to complete)")
    assert not (out / "model.safetensors").exists()
    kept = sorted(out.glob("checkpoint-*.safetensors"))
    assert len(kept) == 1
    load_weights_file(kept[0])                 # complete
    done = cli("finetune", faces, "--from", start, "-o", out, "--epochs", "2", "--resume",
               *ARGS)
    assert done.exit_code == 0, done.output
    assert f"resumed from {kept[0].name}" in done.output
    ours = load_weights_file(out / "model.safetensors")
    theirs = load_weights_file(finished / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_resume_refuses_other_options(finished: Path, faces: Path, start: Path):
    args = [a if a != "0.01" else "0.02" for a in ARGS]
    done = cli("finetune", faces, "--from", start, "-o", finished, "--epochs", "2", "--resume",
               *args)
    assert done.exit_code == 2
    assert "learning_rate was 0.01 in the run this checkpoint continues" in done.output
    done = cli("finetune", faces, "--from", start, "-o", finished, *ARGS)
    assert done.exit_code == 2 and "pass --resume to continue it or --force" in done.output


def test_a_nan_loss_names_step_and_batch_and_keeps_the_checkpoint(faces: Path, start: Path,
                                                                  tmp_path: Path):
    schedule = tmp_path / "learning_rate_schedule.txt"
    schedule.write_text("1: 0.01\n2: 1e30\n10: -\n")      # epoch 2 blows the weights up
    out = tmp_path / "out"
    done = cli("finetune", faces, "--from", start, "-o", out, "--epochs", "2",
               "--lr-schedule", schedule, *ARGS)
    assert done.exit_code == 2
    errors = [line for line in done.output.splitlines() if ": error: " in line]
    assert len(errors) == 1, done.output
    assert "epoch 2, batch " in errors[0] and "step " in errors[0]
    assert "the total loss is nan" in errors[0] or "the total loss is inf" in errors[0]
    assert "checkpoint-1.safetensors is kept" in errors[0]
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-1.safetensors"]
    assert not (out / "model.safetensors").exists()
    state = load_weights_file(out / "checkpoint-1.safetensors")
    assert all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def test_bad_datasets_give_one_line(faces: Path, start: Path, tmp_path: Path):
    one = tmp_path / "one"
    (one / "astronaut").mkdir(parents=True)
    for image in (faces / "astronaut").iterdir():
        (one / "astronaut" / image.name).write_bytes(image.read_bytes())
    done = cli("finetune", one, "--from", start, "-o", tmp_path / "a", *ARGS)
    assert done.exit_code == 2
    assert done.output.strip().endswith("1 class (astronaut); softmax loss needs at least 2 "
                                        "classes (one sub-folder per person)")
    done = cli("finetune", faces, "--from", start, "-o", tmp_path / "b", "--loss", "triplet",
               "--batch-size", "30", "--image-size", "64")
    assert done.exit_code == 2
    assert "12 training images, fewer than one triplet batch (30)" in done.output
    assert len(done.output.strip().splitlines()) == 1
    assert not (tmp_path / "b" / "model.safetensors").exists()


def test_triplet_loss_trains(faces: Path, start: Path, tmp_path: Path):
    done = cli("finetune", faces, "--from", start, "-o", tmp_path / "t", "--loss", "triplet",
               "--batch-size", "6", "--image-size", "64", "--epochs", "1",
               "--people-per-batch", "2", "--images-per-person", "6", "--alpha", "1.0")
    assert done.exit_code == 0, done.output
    report = json.loads((tmp_path / "t" / "finetune.json").read_text())
    assert report["global_step"] > 0
    assert "logits.weight" not in load_weights_file(tmp_path / "t" / "model.safetensors")


@pytest.mark.tf
def test_a_tf_training_checkpoint_resumes_its_state(fixtures_dir: Path, tmp_path: Path):
    from facenet_convert.third_party.facenet.testing.build import build_checkpoint

    built = build_checkpoint(fixtures_dir / "train_squeezenet_adam", embedding_size=32,
                             num_classes=8, ema=True, optimizer="ADAM", centers=True, step=5,
                             seed=3, model_def="squeezenet")
    data = tmp_path / "eight"
    for k, (_, pixels) in enumerate(crops()):    # 8 classes of 2 crops (one of each person)
        folder = data / f"class{k % 8}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{k:02d}.png")
    out = tmp_path / "out"
    done = cli("finetune", data, "--from", built.prefix, "-o", out, "--epochs", "1",
               "--batch-size", "4", "--image-size", "64", "--learning-rate", "0.01",
               "--center-loss-factor", "0.01", "--held-out", "0")
    assert done.exit_code == 0, done.output
    assert ("resumed the TF training state (ADAM slots, beta powers, centers, EMA, loss "
            "averages, global_step 5)") in done.output
    report = json.loads((out / "finetune.json").read_text())
    assert report["global_step"] == 5 + 4 and report["optimizer"] == "ADAM"
    assert os.path.exists(out / "model.safetensors")


@pytest.mark.tf
def test_a_damaged_training_state_is_an_error_not_a_fresh_start(fixtures_dir: Path,
                                                                 tmp_path: Path):
    # one flipped byte in an Adam slot: TF's crc32c catches it; asked to resume, finetune must
    # not quietly start a fresh optimizer instead (--fresh-optimizer says so explicitly)
    import shutil

    from facenet_convert.converter.sources import open_source
    from facenet_convert.third_party.facenet.testing.build import build_checkpoint

    built = build_checkpoint(fixtures_dir / "train_squeezenet_adam", embedding_size=32,
                             num_classes=8, ema=True, optimizer="ADAM", centers=True, step=5,
                             seed=3, model_def="squeezenet")
    copy = tmp_path / "ckpt"
    shutil.copytree(built.directory, copy)
    prefix = copy / built.prefix.name
    reader = open_source(prefix)
    slot = next(name for name in reader.tensors() if name.endswith("/Adam"))
    entry = reader.entry(slot)
    reader.close()
    (data,) = copy.glob("*.data-*")
    raw = bytearray(data.read_bytes())
    raw[entry.offset] ^= 0xFF
    data.write_bytes(bytes(raw))
    faces = tmp_path / "eight"
    for k, (_, pixels) in enumerate(crops()):
        folder = faces / f"class{k % 8}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{k:02d}.png")
    args = ["finetune", faces, "--from", prefix, "--epochs", "1", "--batch-size", "4",
            "--image-size", "64", "--held-out", "0"]
    done = cli(*args, "-o", tmp_path / "resumed")
    assert done.exit_code != 0
    assert "cannot read its training state" in done.output and slot in done.output
    assert "--fresh-optimizer" in done.output and not (tmp_path / "resumed").exists()
    fresh = cli(*args, "-o", tmp_path / "fresh", "--fresh-optimizer")
    assert fresh.exit_code == 0, fresh.output


def _copy_run(finished: Path, to: Path) -> Path:
    import shutil

    return Path(shutil.copytree(finished, to))


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("inside", ["model.safetensors", "checkpoint-2.safetensors"])
def test_an_input_inside_the_output_is_refused_even_with_force(finished: Path, faces: Path,
                                                               inside: str, tmp_path: Path):
    run = _copy_run(finished, tmp_path / "run")
    before = _hashes(run)
    done = cli("finetune", faces, "--from", run / inside, "-o", run, "--force", *ARGS)
    assert done.exit_code != 0 and "is inside output --output" in done.output, done.output
    assert _hashes(run) == before


def test_a_hard_link_into_the_output_is_refused(finished: Path, faces: Path, tmp_path: Path):
    run = _copy_run(finished, tmp_path / "run")
    linked = tmp_path / "elsewhere.safetensors"
    os.link(run / "model.safetensors", linked)
    before = _hashes(run)
    done = cli("finetune", faces, "--from", linked, "-o", run, "--force", *ARGS)
    assert done.exit_code != 0 and "is inside output --output" in done.output, done.output
    assert _hashes(run) == before


def test_resume_never_starts_over_silently(finished: Path, faces: Path, start: Path,
                                           tmp_path: Path):
    """A lost, renamed or replaced checkpoint is one line and nothing is rewritten: starting
    over needs --force."""
    run = _copy_run(finished, tmp_path / "run")
    checkpoint = run / "checkpoint-2.safetensors"
    resume = ["finetune", faces, "--from", start, "-o", run, "--epochs", "3", "--resume", *ARGS]
    stashed = tmp_path / "checkpoint"
    checkpoint.rename(stashed)
    before = _hashes(run)
    for make, words in [
            (lambda: None, "no checkpoint to resume from"),
            (lambda: checkpoint.mkdir(), "not a regular file"),
            (lambda: os.symlink(stashed, checkpoint), "not a regular file"),
            (lambda: os.link(stashed, run / "checkpoint-00002.safetensors"),
             "not a checkpoint name"),
            (lambda: os.link(stashed, run / "checkpoint-7.safetensors"),
             "its name says epoch 7 but it holds epoch 2")]:
        make()
        done = cli(*resume)
        assert done.exit_code != 0 and words in done.output, (words, done.output)
        assert done.output.count("facenet-convert: error") == 1
        for path in run.iterdir():
            if path.name.startswith("checkpoint-"):
                if path.is_dir() and not path.is_symlink():
                    path.rmdir()
                else:
                    path.unlink()
        assert _hashes(run) == before


def test_a_failed_run_leaves_no_empty_output_folder(faces: Path, tmp_path: Path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not weights")
    out = tmp_path / "new"
    done = cli("finetune", faces, "--from", junk, "-o", out, *ARGS)
    assert done.exit_code != 0
    assert not out.exists()


def test_an_image_name_that_is_no_file_is_reported_and_left_out(faces: Path, start: Path,
                                                                 tmp_path: Path):
    import shutil

    data = Path(shutil.copytree(faces, tmp_path / "faces"))
    os.mkfifo(data / "camera" / "fifo.png")
    (data / "camera" / "folder.png").mkdir()
    done = cli("finetune", data, "--from", start, "-o", tmp_path / "out", "--epochs", "1",
               *ARGS)
    assert done.exit_code == 0, done.output
    for name in ("fifo.png", "folder.png"):
        assert any(line.startswith("facenet-convert: warning: ") and name in line
                   and line.endswith("; skipped") for line in done.output.splitlines()), name
    report = json.loads((tmp_path / "out" / "finetune.json").read_text())
    assert "fifo.png" not in json.dumps(report)


def test_an_image_size_the_network_cannot_take_names_the_smallest(faces: Path, weights: Path,
                                                                  tmp_path: Path):
    # Inception-ResNet-V1's valid convolutions and pools shrink 64 px to nothing; the option's
    # own bound (32) is the smallest any architecture takes
    out = tmp_path / "out"
    done = CliRunner().invoke(main, ["finetune", str(faces), "--from", str(weights), "-o",
                                     str(out), "--image-size", "64", "--batch-size", "4"])
    assert done.exit_code != 0
    lines = done.output.strip().splitlines()
    assert "too small for inception_resnet_v1" in lines[-1] and "at least 75" in lines[-1]
    assert "Traceback" not in done.output and not out.exists()


def test_a_flipped_bit_in_a_checkpoint_stops_the_resume(finished: Path, faces: Path,
                                                        start: Path, tmp_path: Path):
    # a flip deep in the tensor data still parses as safetensors: only the digest written
    # with the tensors can tell
    run = _copy_run(finished, tmp_path / "run")
    checkpoint = run / "checkpoint-2.safetensors"
    raw = bytearray(checkpoint.read_bytes())
    raw[-5] ^= 0x01
    checkpoint.write_bytes(bytes(raw))
    before = _hashes(run)
    done = cli("finetune", faces, "--from", start, "-o", run, "--epochs", "3", "--resume",
               *ARGS)
    assert done.exit_code != 0 and "do not match the digest" in done.output, done.output
    assert done.output.count("facenet-convert: error") == 1
    assert _hashes(run) == before


def test_a_forced_run_that_fails_keeps_the_earlier_run(finished: Path, faces: Path, start: Path,
                                                       tmp_path: Path):
    # --force starts over, but the earlier checkpoints go only once the new run has one
    from safetensors.torch import load_file, save_file

    run = _copy_run(finished, tmp_path / "run")
    broken = tmp_path / "nan.safetensors"
    state = load_file(str(start))
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key].view(-1)[0] = float("nan")
    save_file(state, str(broken))
    before = _hashes(run)
    done = cli("finetune", faces, "--from", broken, "-o", run, "--epochs", "1", "--force",
               *ARGS)
    assert done.exit_code != 0 and "NaN or Inf" in done.output, done.output
    assert _hashes(run) == before
    again = cli("finetune", faces, "--from", start, "-o", run, "--epochs", "1", "--force",
                *ARGS)
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-1.safetensors"]
