"""Checks run by scripts/check_install.sh inside a fresh venv holding only the built wheel and
its core dependencies (no pip, no extras), from a folder outside the repository, on empty
caches. Exits non-zero naming the first check that failed.

usage: installed_check.py REPO DET_DIR PHOTO CHECKPOINT_DIR
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

failures: list[str] = []
passed: list[str] = []


def check(label: str, ok: bool, detail: str = "") -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {label}{f': {detail}' if detail and not ok else ''}")
    (passed if ok else failures).append(label)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("facenet-convert")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=600,
                          check=False)


def one_line_error(done: subprocess.CompletedProcess[str], words: str) -> bool:
    lines = done.stderr.strip().splitlines()
    return (done.returncode != 0 and len(lines) == 1 and "Traceback" not in done.stderr
            and words in lines[0])


def documented_names(repo: Path) -> set[str]:
    """Every dotted ``facenet_convert.…`` name the README and docs/ mention."""
    texts = [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]
    found: set[str] = set()
    for path in texts:
        found |= set(re.findall(r"facenet_convert(?:\.[A-Za-z_][A-Za-z0-9_]*)+",
                                path.read_text(encoding="utf-8")))
    return found


def resolve(name: str) -> None:
    """Import ``name`` as a module, else as an attribute of its longest importable prefix."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError as error:
            if error.name is not None and not ".".join(parts[:cut]).startswith(error.name):
                raise
            continue
        for attr in parts[cut:]:
            value = getattr(value, attr)
        return
    raise ImportError(name)


def main() -> int:
    repo, det_dir, photo, checkpoint = (Path(arg) for arg in sys.argv[1:5])
    here = Path.cwd()
    check("runs outside the repository", repo.resolve() not in [here, *here.parents])
    check("pip is absent", importlib.util.find_spec("pip") is None)

    import facenet_convert

    check("facenet_convert is the installed one",
          "site-packages" in (facenet_convert.__file__ or ""), str(facenet_convert.__file__))
    packages = ["facenet_convert", "facenet_convert.models", "facenet_convert.converter",
                "facenet_convert.converter.core", "facenet_convert.converter.sources"]
    for package in packages:
        module = importlib.import_module(package)
        for name in getattr(module, "__all__", []):
            try:
                getattr(module, name)
                ok, detail = True, ""
            except Exception as error:  # noqa: BLE001 - report every broken name
                ok, detail = False, f"{type(error).__name__}: {error}"
            check(f"{package}.{name}", ok, detail)
    from facenet_convert.models import PNet as models_pnet
    from facenet_convert.models.mtcnn import PNet

    check("facenet_convert.models.PNet is facenet_convert.models.mtcnn.PNet", models_pnet is PNet)
    for name in sorted(documented_names(repo)):
        try:
            resolve(name)
            ok, detail = True, ""
        except Exception as error:  # noqa: BLE001
            ok, detail = False, f"{type(error).__name__}: {error}"
        check(f"documented name {name}", ok, detail)

    done = cli("--help")
    check("facenet-convert --help", done.returncode == 0 and "convert" in done.stdout,
          done.stderr)
    out = here / "out"
    out.mkdir()
    done = cli("convert", str(det_dir / "det1.npy"), "-o", str(out / "pnet.pt"))
    check("convert det1.npy", done.returncode == 0 and (out / "pnet.pt").is_file(), done.stderr)
    done = cli("inspect", str(checkpoint))
    check("inspect a TF checkpoint", done.returncode == 0 and "inception_resnet_v1" in done.stdout,
          done.stderr)
    weights = out / "facenet.pt"
    done = cli("convert", str(checkpoint), "-o", str(weights))
    check("convert a TF checkpoint", done.returncode == 0 and weights.is_file(), done.stderr)

    import numpy as np
    import torch
    from PIL import Image

    from facenet_convert import MTCNN, InceptionResNetV1

    image = Image.open(photo).convert("RGB")
    mtcnn = MTCNN()
    boxes, probs = mtcnn.detect(image)
    check("MTCNN() finds the face on a real photo", boxes is not None and len(boxes) == 1
          and float(probs[0]) > 0.99, f"{boxes}, {probs}")
    face = mtcnn(image)
    model = InceptionResNetV1(pretrained=str(weights)).eval()
    with torch.inference_mode():
        embedding = model(face.unsqueeze(0))
    norm = float(embedding.norm())
    check("InceptionResNetV1(pretrained=<converted file>) embeds",
          embedding.shape == (1, 512) and abs(norm - 1) < 1e-5, f"{embedding.shape} {norm}")

    done = cli("embed", str(photo), "--detect", "--weights", str(weights), "-o",
               str(out / "faces.npz"))
    notes = done.stderr.strip().splitlines()
    check("embed --detect without the onnx extra falls back to torch in one line",
          done.returncode == 0 and (out / "faces.npz").is_file()
          and sum("facenet-convert[onnx]" in line for line in notes) == 1, done.stderr)
    if (out / "faces.npz").is_file():
        with np.load(out / "faces.npz") as saved:
            check("embed --detect found one face", saved["embeddings"].shape == (1, 512))
    done = cli("parity", str(det_dir / "det1.npy"), str(out / "pnet.pt"))
    check("parity without the tf extra: one line naming it",
          one_line_error(done, "pip install 'facenet-convert[tf]'"), done.stderr)
    done = cli("export", str(weights), "-o", str(out / "model.onnx"))
    check("export without the onnx extra: one line naming it",
          one_line_error(done, "pip install 'facenet-convert[onnx]'"), done.stderr)
    crops = out / "crops"
    faces = here / "photos" / "someone"
    faces.mkdir(parents=True)
    shutil.copy(photo, faces / photo.name)
    done = cli("align", str(here / "photos"), str(crops), "--engine", "ray")
    check("align --engine ray without the ray extra: one line naming it",
          one_line_error(done, "pip install 'facenet-convert[ray]'"), done.stderr)
    done = cli("align", str(here / "photos"), str(crops))
    check("align (local) detects and writes the crop", done.returncode == 0
          and len(list(crops.rglob("*.png"))) == 1, done.stderr)
    for variable in ("TORCH_HOME", "FACENET_CONVERT_CACHE"):
        folder = Path(os.environ[variable])
        left = sorted(str(p) for p in folder.rglob("*")) if folder.exists() else []
        check(f"nothing written under ${variable}", left == [], ", ".join(left[:5]))
    print(f"installed: {len(passed)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
