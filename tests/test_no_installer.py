"""The run-time commands never start a process: no pip, no installer, no fetch.

Each command runs in a fresh interpreter whose audit hook refuses every process start
(``subprocess``, ``os.system``, ``exec*``, ``posix_spawn``, ``fork``), on empty caches with
``FACENET_CONVERT_OFFLINE`` unset, so a fetch would be attempted if any code path tried one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.no_spawn import NO_SPAWN

RUNNER = NO_SPAWN + """
from facenet_convert.converter.cli import main
main(sys.argv[1:], prog_name="facenet-convert")
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from PIL import Image
    from skimage import data

    folder = tmp_path_factory.mktemp("inputs")
    photos = folder / "photos" / "astronaut"
    photos.mkdir(parents=True)
    Image.fromarray(data.astronaut()).save(photos / "a.png")
    Image.fromarray(data.astronaut()[:, ::-1].copy()).save(photos / "b.png")
    (folder / "pairs.txt").write_text("1 1\nastronaut 1 2\n")
    return {"photos": folder / "photos", "a": photos / "a.png", "b": photos / "b.png",
            "pairs": folder / "pairs.txt"}


def _commands(det: Path, weights: Path, inputs: dict[str, Path], out: Path) -> dict[str, list]:
    w = ["--weights", str(weights)]
    return {
        "inspect": ["inspect", str(det)],
        "convert": ["convert", str(det), "-o", str(out / "pnet.pt")],
        "embed --detect": ["embed", str(inputs["a"]), "--detect", *w, "-o", str(out / "e.npz")],
        "verify": ["verify", str(inputs["a"]), str(inputs["b"]), *w],
        "compare": ["compare", str(inputs["a"]), str(inputs["b"]), *w],
        "align": ["align", str(inputs["photos"]), str(out / "aligned")],
        "export": ["export", str(weights), "-o", str(out / "model.onnx")],
    }


@pytest.mark.parametrize("name", ["inspect", "convert", "embed --detect", "verify", "compare",
                                  "align", "export"])
def test_runtime_command_starts_no_process(name: str, det_npy: dict[str, Path], weights: Path,
                                           inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    args = _commands(det_npy["det1"], weights, inputs, out)[name]
    env = {key: value for key, value in os.environ.items()
           if key not in ("FACENET_CONVERT_OFFLINE", "PYTHONPATH")}
    env.update(FACENET_CONVERT_CACHE=str(tmp_path / "cache"), TORCH_HOME=str(tmp_path / "torch"))
    done = subprocess.run([sys.executable, "-c", RUNNER, *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, check=False)
    assert "SPAWNED" not in done.stderr + done.stdout, done.stderr
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "torch").exists()


def test_unwritable_cache_is_one_line_naming_the_variable(
        tmp_path: Path, weights: Path, inputs: dict[str, Path]) -> None:
    """A cache that cannot be created (here: under a regular file, which stops root too, as a
    HOME that does not exist stops a user) names the variable to set, in one line."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {key: value for key, value in os.environ.items() if key != "FACENET_CONVERT_CACHE"}
    env["HOME"] = str(blocker / "home")
    out = tmp_path / "e.npz"
    done = subprocess.run([sys.executable, "-m", "facenet_convert.converter", "embed",
                           str(inputs["a"]), "--weights", str(weights), "-o", str(out)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0 and out.is_file(), done.stderr
    notes = [line for line in done.stderr.splitlines() if "$FACENET_CONVERT_CACHE" in line]
    assert len(notes) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "running torch" in notes[0]

    from facenet_convert.converter.core.errors import CacheError

    code = ("from facenet_convert.third_party.wheels import FACENET, wheel_member\n"
            "wheel_member(FACENET, 'facenet/src/align/det1.npy')\n")
    env["FACENET_CONVERT_CACHE"] = str(blocker / "cache")
    env.pop("FACENET_CONVERT_OFFLINE", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode != 0 and "set $FACENET_CONVERT_CACHE" in done.stderr
    assert CacheError.__name__ in done.stderr


def test_tampered_extracted_member_is_replaced(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from facenet_convert.third_party import wheels

    cache = tmp_path / "cache"
    (cache / "wheels").mkdir(parents=True)
    original = wheels.fetch_wheel(wheels.FACENET)
    (cache / "wheels" / original.name).write_bytes(original.read_bytes())
    monkeypatch.setenv("FACENET_CONVERT_CACHE", str(cache))
    member = "facenet/src/align/det1.npy"
    path = wheels.wheel_member(wheels.FACENET, member)
    good = path.read_bytes()
    path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    again = wheels.wheel_member(wheels.FACENET, member)
    assert again == path and path.read_bytes() == good
    assert "does not match" in capsys.readouterr().err
