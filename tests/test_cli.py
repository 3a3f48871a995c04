"""CLI smoke tests: --help/--version three ways, and no TensorFlow on plain imports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from facenet_convert.converter.cli import main
from facenet_convert.converter.core.version import __version__

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a command from the repository root with the project importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(list(args), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def console_script() -> str | None:
    """The installed ``facenet-convert`` next to this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "facenet-convert"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("facenet-convert")


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_in_process(flag: str) -> None:
    result = CliRunner().invoke(main, [flag])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert "Convert TensorFlow FaceNet weights" in result.output


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_in_process(flag: str) -> None:
    result = CliRunner().invoke(main, [flag])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"facenet-convert, version {__version__}"


def test_unknown_command_fails_cleanly() -> None:
    result = CliRunner().invoke(main, ["no-such-command"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_python_dash_m_converter() -> None:
    helped = run(sys.executable, "-m", "converter", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "Usage:" in helped.stdout
    versioned = run(sys.executable, "-m", "converter", "--version")
    assert versioned.returncode == 0, versioned.stderr
    assert versioned.stdout.strip() == f"facenet-convert, version {__version__}"


def test_console_script() -> None:
    script = console_script()
    if script is None:
        pytest.skip("facenet-convert console script not installed (pip install -e .)")
    helped = run(script, "--help")
    assert helped.returncode == 0, helped.stderr
    assert "Usage: facenet-convert" in helped.stdout
    versioned = run(script, "--version")
    assert versioned.returncode == 0, versioned.stderr
    assert __version__ in versioned.stdout


def test_plain_imports_do_not_import_tensorflow() -> None:
    code = (
        "import sys\n"
        "import facenet_convert.converter.cli, facenet_convert.models.releases\n"
        "from facenet_convert import MTCNN, InceptionResNetV1, ONet, PNet, RNet, convert\n"
        "heavy = sorted(m for m in sys.modules\n"
        "               if m.split('.')[0] in {'tensorflow', 'tf_keras', 'keras', 'tf_slim'})\n"
        "print(','.join(heavy) or 'none')\n"
    )
    result = run(sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "none"


def test_help_does_not_import_torch_or_tensorflow() -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from facenet_convert.converter.cli import main\n"
        "assert CliRunner().invoke(main, ['--help']).exit_code == 0\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'tensorflow'}))\n"
    )
    result = run(sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_max_pixels_option_raises_or_lowers_the_image_cap(tmp_path, monkeypatch) -> None:
    """``--max-pixels`` reaches the image reader: a 40x30 image fails under a 1000 px cap and
    loads under a 2000 px one."""
    from PIL import Image

    from facenet_convert.converter.core.errors import ImageReadError
    from facenet_convert.models.preprocessing import MAX_PIXELS_ENV, load_image

    # the CLI sets the variable for its process: restore it, and Pillow's global limit that
    # load_image derives from it, after this test
    monkeypatch.setenv(MAX_PIXELS_ENV, "1")
    monkeypatch.delenv(MAX_PIXELS_ENV)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    image = tmp_path / "face.png"
    Image.new("RGB", (40, 30)).save(image)
    CliRunner().invoke(main, ["--max-pixels", "1000", "inspect", str(image)])
    with pytest.raises(ImageReadError, match="1000"):
        load_image(image)
    CliRunner().invoke(main, ["--max-pixels", "2000", "inspect", str(image)])
    assert load_image(image).shape == (30, 40, 3)


def test_max_pixels_test_leaves_the_default_cap() -> None:
    """Runs after the test above: the cap it set through the CLI is gone again."""
    from facenet_convert.models.preprocessing import MAX_PIXELS, max_pixels

    assert max_pixels() == MAX_PIXELS
