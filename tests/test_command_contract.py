"""The contract every command keeps, tested on every command of the group without naming any.

The test enumerates ``facenet-convert``'s commands and reads what each declares
(:mod:`facenet_convert.converter.commands.declare`): its inputs, by kind, and its outputs,
with their sidecars and example names. From that alone it builds a run of each command and
the generic attacks on it:

* an output that is an input, a sidecar that is an input, one path given as two outputs, an
  output inside an input folder the command reads file by file;
* NaN and Inf in every model input (weights files, MTCNN nets);
* a FIFO, a socket, a dangling link and a directory as each input;
* an output whose folder cannot exist (under a regular file: refused even for root);
* control characters and 255-byte names in input names;
* SIGINT and SIGTERM mid-run; two runs at once into the same outputs.

Each run is a fresh process under an address-space limit and a time limit. Every run must
end with its promises kept: no traceback, every stderr line printable, an error as one line
with a non-zero exit, inputs byte for byte unchanged, no temp file left behind, and after a
signal the exit status 128+signal with nothing half-written.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import pytest

from facenet_convert.converter.cli import main
from facenet_convert.converter.commands.declare import (
    INPUT_KINDS,
    SCANNED_KINDS,
    DeclaredCommand,
    Input,
    Output,
)

MEMORY_LIMIT = 6 << 30
COMMANDS = sorted(main.commands)


# the CLI in a fresh interpreter whose address space is limited before anything is imported
LAUNCH = [sys.executable, "-c",
          ("import resource, runpy, sys\n"
          f"resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT}, {MEMORY_LIMIT}))\n"
          "sys.argv[0] = 'facenet-convert'\n"
          "runpy.run_module('facenet_convert.converter', run_name='__main__')\n")]


@dataclass
class Param:
    name: str
    flag: str | None           # None: a positional argument
    kind: Input | Output
    required: bool
    nargs: int


def declared_params(command: click.Command) -> list[Param]:
    found = []
    for param in command.params:
        if isinstance(param.type, (Input, Output)) and param.name is not None:
            flag = max(param.opts, key=len) if isinstance(param, click.Option) else None
            found.append(Param(param.name, flag, param.type, bool(param.required),
                               param.nargs))
    return found


# ----------------------------------------------------------------------------- samples


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory, det_npy: dict[str, Path],
            weights: Path) -> dict[str, Path]:
    """One valid input of each declared kind (real files: upstream's det1.npy, a seeded
    model, real photos)."""
    from PIL import Image
    from skimage import data

    from facenet_convert.models.shipped import SHIPPED_DIR

    root = tmp_path_factory.mktemp("samples")
    photos = {"astronaut": data.astronaut(), "camera": np.stack([data.camera()] * 3, -1)}
    lfw = root / "lfw"
    for name, pixels in photos.items():
        (lfw / name).mkdir(parents=True)
        Image.fromarray(pixels).save(lfw / name / f"{name}_0001.png")
        Image.fromarray(pixels[:, ::-1].copy()).save(lfw / name / f"{name}_0002.png")
    (root / "pairs.txt").write_text("1\t2\nastronaut\t1\t2\nastronaut\t1\tcamera\t1\n")
    (root / "list.txt").write_text(f"{lfw / 'astronaut' / 'astronaut_0001.png'}\n")
    source = root / "det1.npy"
    shutil.copy(det_npy["det1"], source)
    mtcnn = root / "mtcnn"
    mtcnn.mkdir()
    for name in ("pnet", "rnet", "onet"):
        shutil.copy(SHIPPED_DIR / f"{name}.safetensors", mtcnn)
    vectors = np.random.default_rng(0).normal(size=(4, 512)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    names = [str(p.relative_to(lfw)) for p in sorted(lfw.rglob("*.png"))]
    np.savez(root / "embeddings.npz", names=np.array(names), embeddings=vectors)
    releases = root / "releases"
    releases.mkdir()
    shutil.copy(weights, root / "weights.pt")
    (root / "schedule.txt").write_text("# upstream's learning-rate schedule format\n0: 0.01\n")
    chosen = {"source": source, "weights": root / "weights.pt",
              "image": lfw / "astronaut" / "astronaut_0001.png", "images": lfw,
              "pairs": root / "pairs.txt", "embeddings": root / "embeddings.npz",
              "list": root / "list.txt", "folder": lfw, "mtcnn": mtcnn, "releases": releases,
              "schedule": root / "schedule.txt"}
    assert set(chosen) == set(INPUT_KINDS), "a new input kind needs its sample here"
    return chosen


@dataclass
class Invocation:
    """A run of one command: its arguments and the paths they name."""

    args: list[str]
    inputs: dict[str, Path]            # param name -> path given
    outputs: dict[str, Path]           # param name -> path given


def invocation(name: str, samples: dict[str, Path], out_dir: Path,
               override: dict[str, Path] | None = None) -> Invocation:
    """Every required parameter, every declared output (its example name in ``out_dir``)
    and every optional input whose kind is a model (``weights``: the commands that embed need
    one); ``override`` replaces the path of a parameter."""
    override = override or {}
    args: list[str] = []
    inputs: dict[str, Path] = {}
    outputs: dict[str, Path] = {}
    for param in declared_params(main.commands[name]):
        if isinstance(param.kind, Output):
            path = override.get(param.name, out_dir / param.kind.example)
            outputs[param.name] = path
        elif param.required or param.kind.kind == "weights" or param.name in override:
            path = override.get(param.name, samples[param.kind.kind])
            inputs[param.name] = path
        else:
            continue
        args += [str(path)] if param.flag is None else [param.flag, str(path)]
    return Invocation([name, *args], inputs, outputs)


def run(args: list[str], cwd: Path, *, timeout: float = 180,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LAUNCH, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, check=False, env={**os.environ, **(env or {})},
                          errors="backslashreplace")


def digest(paths: list[Path]) -> dict[str, str]:
    found = {}
    for path in paths:
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for item in files:
            if item.is_file() and not item.is_symlink():
                found[str(item)] = hashlib.sha256(item.read_bytes()).hexdigest()
    return found


def temp_files(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.name.startswith(".")
                  and (p.name.endswith((".part", ".old")) or ".tmp" in p.name))


def check_promises(done: subprocess.CompletedProcess[str], *, expect_error: bool = False,
                   words: tuple[str, ...] = ()) -> None:
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = done.stderr.splitlines()
    assert all(line.isprintable() for line in lines), done.stderr
    if expect_error:
        assert done.returncode != 0, (done.stdout[-500:], done.stderr)
        errors = [line for line in lines if ": error: " in line]
        assert len(errors) == 1, done.stderr
        for word in words:
            assert word in errors[0], (word, errors[0])
    if done.returncode != 0 and done.returncode not in (130, 143):
        assert lines and ": error: " in lines[-1], done.stderr


def sidecars_of(name: str, out: Output, first: Path) -> tuple[list[str], list[str]]:
    """The sidecars of ``first`` by default, else with the one flag that brings them (the
    flags come from the command itself, e.g. ``--split``)."""
    if out.sidecars is None:
        return [], []
    found = out.sidecars(str(first), {})
    if found:
        return found, []
    for param in main.commands[name].params:
        if isinstance(param, click.Option) and param.is_flag and param.name:
            found = out.sidecars(str(first), {param.name: True})
            if found:
                return found, [max(param.opts, key=len)]
    return [], []


MODEL_KINDS = ("weights", "mtcnn")
"""Inputs whose tensors a command computes with: NaN or Inf in them must stop the run."""


def poisoned_copy(sample: Path, target: Path, value: float) -> None:
    """``sample`` (a weights file, or a folder of the MTCNN nets) with one value set to
    ``value`` in its last net."""
    import torch
    from safetensors.torch import load_file, save_file

    if sample.is_dir():
        shutil.copytree(sample, target)
        path = target / "onet.safetensors"
        state = load_file(str(path))
        state["conv1.weight"][0, 0, 0, 0] = value
        save_file(state, str(path))
    else:
        state = torch.load(sample, weights_only=True)
        key = next(k for k, v in state.items() if v.is_floating_point() and v.ndim > 1)
        state[key].view(-1)[0] = value
        torch.save(state, target)


def cases() -> Iterator[tuple[str, str, str]]:
    """(command, parameter, attack) for every declared parameter of every command."""
    for name in COMMANDS:
        params = declared_params(main.commands[name])
        outputs = [p for p in params if isinstance(p.kind, Output)]
        inputs = [p for p in params if isinstance(p.kind, Input)]
        for out in outputs:
            for item in inputs:
                yield name, f"{out.name}={item.name}", "output is input"
            if out.kind.sidecars is not None:
                yield name, out.name, "sidecar is input"
            if not out.kind.is_folder({}):
                yield name, out.name, "output folder impossible"
        if len(outputs) > 1:
            yield name, "+".join(p.name for p in outputs), "one path twice"
        for item in inputs:
            for attack in ("fifo", "socket", "dangling link", "directory"):
                yield name, item.name, attack
            if item.kind.kind in MODEL_KINDS:
                for attack in ("nan values", "inf values"):
                    yield name, item.name, attack
            if item.kind.kind in SCANNED_KINDS:
                for out in outputs:
                    yield name, f"{out.name}={item.name}", "output inside input folder"


def test_every_command_is_declared() -> None:
    for name in COMMANDS:
        command = main.commands[name]
        assert isinstance(command, DeclaredCommand), name
        for param in command.params:
            if isinstance(param.type, click.Path):
                assert isinstance(param.type, (Input, Output)), (name, param.name)


NUMBER_OPTIONS = [(name, param.opts[-1]) for name in COMMANDS
                  for param in main.commands[name].params
                  if isinstance(param.type, click.types.FloatParamType)]


@pytest.mark.parametrize("value", ["nan", "inf"])
@pytest.mark.parametrize(("name", "flag"), NUMBER_OPTIONS,
                         ids=[f"{n}{f}" for n, f in NUMBER_OPTIONS])
def test_a_number_option_that_is_not_finite_is_one_line(name: str, flag: str, value: str,
                                                          samples: dict[str, Path],
                                                          tmp_path: Path) -> None:
    """Every float option of every command, found here without being listed: NaN and
    infinity stop the run before any work (click's ranges let NaN through)."""
    from click.testing import CliRunner

    spec = invocation(name, samples, tmp_path)
    done = CliRunner().invoke(main, [*spec.args, flag, value])
    assert done.exit_code != 0, done.output
    lines = done.output.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0], lines
    assert "not a finite number" in lines[0] or "not in the range" in lines[0], lines
    assert not any(path.exists() for path in spec.outputs.values())


CASES = list(cases())


@pytest.mark.parametrize(("name", "target", "attack"), CASES,
                         ids=[f"{n}-{t}-{a}" for n, t, a in CASES])
def test_generic_attack(name: str, target: str, attack: str, samples: dict[str, Path],
                        tmp_path: Path) -> None:
    params = {p.name: p for p in declared_params(main.commands[name])}
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    override: dict[str, Path] = {}
    extra_flags: list[str] = []
    words: tuple[str, ...] = ()
    if attack == "output is input":
        out_name, in_name = target.split("=")
        sample = samples[params[in_name].kind.kind]
        victim = tmp_path / "victim" / sample.name
        if sample.is_dir():
            shutil.copytree(sample, victim)
        else:
            victim.parent.mkdir()
            shutil.copy(sample, victim)
        override = {in_name: victim, out_name: victim}
    elif attack == "sidecar is input":
        out = params[target].kind
        first = out_dir / out.example
        sidecars, extra_flags = sidecars_of(name, out, first)
        if not sidecars:
            pytest.skip(f"{name} {target}: no sidecar for {out.example}")
        # a file input of the command placed where the sidecar will be written
        file_input = next((p for p in params.values() if isinstance(p.kind, Input)
                           and not samples[p.kind.kind].is_dir()), None)
        if file_input is None:
            pytest.skip(f"{name} has no file input")
        victim = Path(sidecars[0])
        shutil.copy(samples[file_input.kind.kind], victim)
        override = {file_input.name: victim, target: first}
        words = ("same file as input",)
    elif attack == "output folder impossible":
        blocker = tmp_path / "a-file"
        blocker.write_text("x")
        override = {target: blocker / params[target].kind.example}
    elif attack == "one path twice":
        shared = out_dir / "shared.json"
        override = {name_: shared for name_ in target.split("+")}
        words = ("given twice",)
    elif attack in ("nan values", "inf values"):
        sample = samples[params[target].kind.kind]
        victim = tmp_path / "poisoned" / sample.name
        victim.parent.mkdir()
        poisoned_copy(sample, victim, float(attack.split()[0]))
        override = {target: victim}
        for param in params.values():          # something to compute on (embed's IMAGES)
            if isinstance(param.kind, Input) and param.kind.kind == "images":
                override.setdefault(param.name, samples["images"])
        if params[target].kind.kind == "mtcnn":        # the detector runs only with --detect
            extra_flags = [flag for param in main.commands[name].params
                           if isinstance(param, click.Option) and param.is_flag
                           for flag in param.opts if flag == "--detect"]
        words = ("NaN or Inf",)
    elif attack == "output inside input folder":
        out_name, in_name = target.split("=")
        victim = tmp_path / "victim"
        shutil.copytree(samples[params[in_name].kind.kind], victim)
        override = {in_name: victim, out_name: victim / params[out_name].kind.example}
        words = ("inside input",)
    else:
        kind = params[target].kind
        if attack == "directory" and isinstance(kind, Input) and kind.folder:
            pytest.skip("a folder is a valid value here")
        bad = tmp_path / "bad-input"
        if attack == "fifo":
            os.mkfifo(bad)
        elif attack == "socket":
            server = socket.socket(socket.AF_UNIX)
            server.bind(str(bad))
        elif attack == "dangling link":
            bad.symlink_to(tmp_path / "nowhere")
        else:
            bad.mkdir()
        override = {target: bad}
    run_spec = invocation(name, samples, out_dir, override)
    run_spec.args += extra_flags
    watched = [p for p in run_spec.inputs.values() if p.exists() and not p.is_fifo()
               and not p.is_socket()]
    before = digest(watched)
    done = run(run_spec.args, tmp_path, timeout=120)
    assert digest(watched) == before, "an input was modified"
    assert temp_files(tmp_path) == []
    if attack in ("output is input", "sidecar is input", "one path twice",
                  "output folder impossible", "nan values", "inf values",
                  "output inside input folder"):
        check_promises(done, expect_error=True, words=words)
    elif params[target].kind.batch if isinstance(params[target].kind, Input) else False:
        check_promises(done)
        assert str(override[target]) in done.stderr       # reported, never silently dropped
    else:
        check_promises(done, expect_error=True, words=(str(override[target]),))


@pytest.mark.parametrize("name", COMMANDS)
def test_names_with_control_characters_and_255_bytes(name: str, samples: dict[str, Path],
                                                     tmp_path: Path) -> None:
    params = declared_params(main.commands[name])
    file_inputs = [p for p in params if isinstance(p.kind, Input)
                   and not samples[p.kind.kind].is_dir() and (p.required
                                                              or p.kind.kind == "weights")]
    if not file_inputs:
        pytest.skip(f"{name} takes no file input")
    hostile = {}
    for number, param in enumerate(file_inputs):
        original = samples[param.kind.kind]
        stem = "\x1b[2J\x07\u202e" if number % 2 == 0 else "n" * (255 - len(original.suffix))
        path = tmp_path / f"{stem}{original.suffix}"
        shutil.copy(original, path)
        hostile[param.name] = path
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    spec = invocation(name, samples, out_dir, hostile)
    before = digest(list(hostile.values()))
    done = run(spec.args, tmp_path)
    check_promises(done)
    assert digest(list(hostile.values())) == before
    assert temp_files(tmp_path) == []


SCANNED = [(name, param.name) for name in COMMANDS
           for param in declared_params(main.commands[name])
           if isinstance(param.kind, Input) and param.kind.kind in SCANNED_KINDS
           and (param.required or param.kind.kind == "images")]


@pytest.mark.parametrize(("name", "target"), SCANNED, ids=[f"{n}-{t}" for n, t in SCANNED])
def test_hostile_entries_inside_input_folders_are_printable_lines(name: str, target: str,
                                                                   samples: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    """A folder read file by file holds a FIFO and a broken photo whose names carry control
    characters: the run neither hangs nor prints them raw, whatever it says of them."""
    folder = tmp_path / "scanned"
    shutil.copytree(samples[params_kind(name, target)], folder)
    first_class = min(p for p in folder.iterdir() if p.is_dir())
    os.mkfifo(first_class / "fifo\x1b[2J\x07.png")
    (first_class / "broken\x1b]0;title\x07.png").write_bytes(b"\x89PNG not really")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    spec = invocation(name, samples, out_dir, {target: folder})
    done = run(spec.args, tmp_path, timeout=180)
    check_promises(done)
    assert "\x1b" not in done.stderr + done.stdout
    assert temp_files(tmp_path) == []


def params_kind(name: str, target: str) -> str:
    return next(p.kind.kind for p in declared_params(main.commands[name]) if p.name == target)


@pytest.mark.parametrize("name", COMMANDS)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_run(name: str, signum: int, samples: dict[str, Path],
                        tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    spec = invocation(name, samples, out_dir)
    before = digest(list(spec.inputs.values()))
    process = subprocess.Popen([*LAUNCH, *spec.args], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, errors="backslashreplace")
    time.sleep(2.5)
    process.send_signal(signum)
    try:
        stdout, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"{name} did not stop within 60 s of the signal")
    done = subprocess.CompletedProcess(spec.args, process.returncode, stdout, stderr)
    check_promises(done)
    assert digest(list(spec.inputs.values())) == before
    assert temp_files(tmp_path) == []
    if done.returncode == 128 + signum:
        assert "interrupted" in stderr.splitlines()[-1]
        kinds = {p.name: p.kind for p in declared_params(main.commands[name])}
        for param_name, path in spec.outputs.items():
            if not kinds[param_name].is_folder({}):       # folders keep finished parts
                assert not path.exists(), f"{path} written after the signal"
    else:  # finished (or failed) before the signal came: the promises still hold
        assert done.returncode in (0, 1, 2), done.stderr


FOLDER_OUTPUTS = [(name, param.name) for name in COMMANDS
                  for param in declared_params(main.commands[name])
                  if isinstance(param.kind, Output) and param.kind.folder is True]


@pytest.mark.parametrize(("name", "target"), FOLDER_OUTPUTS,
                         ids=[f"{n}-{t}" for n, t in FOLDER_OUTPUTS])
def test_a_folder_output_in_use_is_refused_before_any_write(name: str, target: str,
                                                            samples: dict[str, Path],
                                                            tmp_path: Path) -> None:
    """A folder a run fills step by step cannot be committed at once: while another run holds
    it (here this test, through the runner's own lock), every command that writes one stops
    at once in one line and writes nothing there."""
    from facenet_convert.converter.core.locks import exclusive_folder

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    spec = invocation(name, samples, out_dir)
    folder = spec.outputs[target]
    with exclusive_folder(folder, "the test's folder"):
        done = run(spec.args, tmp_path, timeout=120)
    check_promises(done, expect_error=True, words=("is writing into",))
    assert not folder.exists() or not any(folder.iterdir())
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("name", [n for n in COMMANDS
                                  if any(isinstance(p.kind, Output)
                                         for p in declared_params(main.commands[n]))])
def test_two_runs_at_once_into_the_same_outputs(name: str, samples: dict[str, Path],
                                                tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    spec = invocation(name, samples, out_dir)
    runs = [subprocess.Popen([*LAUNCH, *spec.args], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, errors="backslashreplace")
            for _ in range(2)]
    results = []
    for process in runs:
        stdout, stderr = process.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(spec.args, process.returncode, stdout,
                                                   stderr))
    for done in results:
        check_promises(done)
    outputs = [p for p in declared_params(main.commands[name]) if isinstance(p.kind, Output)]
    if not all(p.kind.replaces for p in outputs):  # reports replaced on every run may both win
        assert sum(done.returncode == 0 for done in results) <= 1, [d.stderr for d in results]
    assert temp_files(tmp_path) == []
