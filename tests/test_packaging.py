"""The wheel installs one import package, ``facenet_convert``, and nothing named models.

Builds the wheel with ``pip wheel --no-deps`` (no build isolation: setuptools of the venv),
then imports from the unpacked wheel in a fresh process run outside the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # build from a copy: setuptools writes build/ and *.egg-info beside the sources
    source = tmp_path_factory.mktemp("source") / "facenet-convert"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis",
        "demo-out", "bench-out"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "--disable-pip-version-check", "-q",
                           "-w", str(out), str(source)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    (built,) = out.glob("facenet_convert-*.whl")
    return built


def test_wheel_has_one_top_level_name(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(
            (".dist-info", ".data"))}
        top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
        declared = archive.read(top_level).decode().split()
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt")))
    assert top == {"facenet_convert"}
    assert declared == ["facenet_convert"]
    assert "facenet-convert = facenet_convert.converter.cli:main" in entry_points.decode()
    # test-only builders and the tests stay out of the wheel
    assert not [n for n in names if "/testing/" in n or n.startswith("tests/")]
    packages = {"facenet_convert/" + str(init.parent.relative_to(ROOT))
                for folder in ("converter", "models", "third_party")
                for init in (ROOT / folder).rglob("__init__.py") if "testing" not in init.parts}
    missing = sorted(p for p in packages if f"{p}/__init__.py" not in names)
    assert missing == [], "list these packages in setup.cfg [options] packages"


def test_installed_wheel_exports_the_api_and_no_models(wheel: Path, tmp_path: Path):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    code = (
        "import sys, facenet_convert\n"
        "assert facenet_convert.__file__.startswith(sys.argv[1]), facenet_convert.__file__\n"
        "from facenet_convert import (MTCNN, InceptionResNetV1, ONet, PNet, RNet, convert,\n"
        "                             open_source)\n"
        "for name in ('models', 'converter', 'third_party'):\n"
        "    try:\n"
        "        __import__(name)\n"
        "    except ImportError:\n"
        "        pass\n"
        "    else:\n"
        "        raise SystemExit(f'{name} is importable')\n"
        "print(facenet_convert.__version__)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-c", code, str(site)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == facenet_version()


def facenet_version() -> str:
    from facenet_convert import __version__

    return __version__


def test_wheel_ships_the_mtcnn_weights_types_marker_and_license(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for name in ("pnet", "rnet", "onet"):
        assert f"facenet_convert/models/pretrained/{name}.safetensors" in names
    assert "facenet_convert/models/pretrained/MANIFEST.json" in names
    assert "facenet_convert/py.typed" in names
    assert any(n.endswith((".dist-info/licenses/LICENSE", ".dist-info/LICENSE")) for n in names)
