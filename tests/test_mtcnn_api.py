"""facenet-pytorch's MTCNN API on our detector, and the weights shipped in the package."""

from __future__ import annotations

import ast
import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facenet_convert.models.mtcnn import RNet
from facenet_convert.models.mtcnn.detector import MTCNN
from facenet_convert.third_party.facenet.testing.photos import PHOTOS, resized
from facenet_convert.third_party.wheels import FACENET_PYTORCH, fetch_wheel, wheel_member
from tests.no_spawn import NO_SPAWN

pytest.importorskip("cv2", reason="opencv-python-headless runs MTCNN's pyramid")


@pytest.fixture(scope="module")
def nets(published_mtcnn: dict[str, Path]) -> dict[str, Path]:
    return published_mtcnn


@pytest.fixture(scope="module")
def t1() -> np.ndarray:
    return resized(PHOTOS["t1"](), 640, 443)                     # six faces, quicker


def test_constructor_signature_is_facenet_pytorchs() -> None:
    """Same parameter names, order and defaults as facenet-pytorch 2.6.0's MTCNN.__init__."""
    fetch_wheel(FACENET_PYTORCH)
    source = wheel_member(FACENET_PYTORCH, "facenet_pytorch/models/mtcnn.py").read_text()
    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MTCNN")
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    names = [a.arg for a in init.args.args[1:]]
    defaults = [ast.literal_eval(d) for d in init.args.defaults]
    ours = [p for p in inspect.signature(MTCNN.__init__).parameters.values()
            if p.kind is p.POSITIONAL_OR_KEYWORD][1:]
    assert [p.name for p in ours] == names
    assert [p.default if not isinstance(p.default, tuple) else list(p.default)
            for p in ours] == defaults


def test_detect_returns_numpy_or_none(nets: dict[str, Path], t1: np.ndarray) -> None:
    mtcnn = MTCNN(**nets)
    boxes, probs = mtcnn.detect(t1)
    assert isinstance(boxes, np.ndarray) and boxes.shape == (6, 4)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert list(areas) == sorted(areas, reverse=True)          # select_largest: largest first
    boxes, probs, points = mtcnn.detect(Image.fromarray(t1), landmarks=True)
    assert probs.shape == (6,) and points.shape == (6, 5, 2)
    by_prob = MTCNN(select_largest=False, **nets).detect(t1)[1]
    assert list(by_prob) == sorted(by_prob, reverse=True)
    assert mtcnn.detect(PHOTOS["coffee"](), landmarks=True) == (None, None, None)


def test_batches_of_different_sizes_and_inputs(nets: dict[str, Path], t1: np.ndarray) -> None:
    mtcnn = MTCNN(keep_all=True, **nets)
    astronaut, coffee = PHOTOS["astronaut"](), PHOTOS["coffee"]()
    boxes, probs = mtcnn.detect([t1, Image.fromarray(astronaut), torch.from_numpy(coffee)])
    assert boxes.shape == (3,) and boxes[0].shape == (6, 4) and boxes[1].shape == (1, 4)
    assert boxes[2] is None and probs[2] is None
    alone = mtcnn.detect(astronaut)[0]
    np.testing.assert_allclose(boxes[1], alone, rtol=0, atol=1e-4)   # float32 noise only
    stacked = np.stack([astronaut, astronaut[:, ::-1]])           # a 4-d array is a batch
    assert mtcnn.detect(stacked)[0].shape == (2,)
    floats = torch.from_numpy(astronaut).to(torch.float32)        # 0..255 floats
    np.testing.assert_allclose(mtcnn.detect(floats)[0], alone, rtol=0, atol=1e-4)
    faces = mtcnn([t1, coffee])
    assert faces[0].shape == (6, 3, 160, 160) and faces[1] is None


def test_forward_crops_probs_and_save_path(nets: dict[str, Path], t1: np.ndarray,
                                           tmp_path: Path) -> None:
    mtcnn = MTCNN(margin=32, **nets)
    face, prob = mtcnn(t1, save_path=str(tmp_path / "face.png"), return_prob=True)
    assert face.shape == (3, 160, 160) and face.dtype == torch.float32
    assert float(face.min()) >= -1.0 and float(face.max()) <= 1.0     # (x - 127.5) / 128
    assert isinstance(prob, float) and prob > 0.9
    saved = np.asarray(Image.open(tmp_path / "face.png"))
    np.testing.assert_array_equal((saved.astype(np.float32) - 127.5) / 128,
                                  face.permute(1, 2, 0).numpy())
    raw = MTCNN(margin=32, post_process=False, **nets)(t1)
    np.testing.assert_array_equal(raw.permute(1, 2, 0).numpy(), saved.astype(np.float32))
    everyone = MTCNN(keep_all=True, **nets)
    faces, probs = everyone(t1, save_path=str(tmp_path / "all.png"), return_prob=True)
    assert faces.shape == (6, 3, 160, 160) and probs.shape == (6,)
    assert sorted(p.name for p in tmp_path.glob("all*.png")) == \
        ["all.png", *(f"all_{k}.png" for k in range(2, 7))]
    assert mtcnn(PHOTOS["coffee"]()) is None
    assert mtcnn(PHOTOS["coffee"](), return_prob=True) == (None, None)


def test_selection_methods(nets: dict[str, Path], t1: np.ndarray) -> None:
    mtcnn = MTCNN(keep_all=True, **nets)
    single = MTCNN(**nets)
    boxes, probs, points = mtcnn.detect(t1, landmarks=True)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    height, width = t1.shape[:2]
    offsets = np.vstack([(boxes[:, 0] + boxes[:, 2]) / 2 - width / 2,
                         (boxes[:, 1] + boxes[:, 3]) / 2 - height / 2])
    centred = area - np.sum(offsets ** 2, 0) * 2.0              # align_dataset_mtcnn's rule
    want = {"largest": int(np.argmax(area)), "probability": int(np.argmax(probs)),
            "center_weighted_size": int(np.argmax(centred)), "upstream": int(np.argmax(centred)),
            "largest_over_threshold": int(np.argmax(np.where(probs > 0.9, area, -1)))}
    for method, index in want.items():
        box, _, _ = mtcnn.select_boxes(boxes, probs, points, t1, method=method)
        np.testing.assert_array_equal(box, boxes[[index]], err_msg=method)
        single.selection_method = method
        face = single(t1)
        np.testing.assert_array_equal(face, MTCNN(**nets).extract(t1, box)[0]
                                      .to(torch.float32).sub(127.5).div(128))
    assert mtcnn.select_boxes(boxes, probs * 0, points, t1,
                              method="largest_over_threshold") == (None, None, None)
    with pytest.raises(ValueError, match="selection_method"):
        MTCNN(selection_method="biggest", **nets)


def test_fresh_machine_detects_with_shipped_weights_and_spawns_nothing(tmp_path: Path) -> None:
    """Empty caches, no network: MTCNN() loads the weights shipped in the package, finds the
    face, starts no process (no pip) and writes nothing to the torch or facenet-convert caches."""
    script = NO_SPAWN + (
        "from facenet_convert.models.mtcnn.detector import MTCNN\n"
        "from skimage import data\n"
        "print(len(MTCNN().detect_faces(data.astronaut())[0]))\n")
    caches = {name: tmp_path / name for name in ("torch", "facenet", "xdg")}
    env = {**os.environ, "TORCH_HOME": str(caches["torch"]),
           "FACENET_CONVERT_CACHE": str(caches["facenet"]), "XDG_CACHE_HOME": str(caches["xdg"]),
           "FACENET_CONVERT_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
    assert not caches["torch"].exists() and not caches["facenet"].exists()


def test_shipped_mtcnn_weights_are_what_regenerate_writes(
        tmp_path: Path, det_npy: dict[str, Path], published_mtcnn: dict[str, Path]) -> None:
    """The shipped files are regenerate's output from the pinned det*.npy, byte for byte (run
    scripts/ship_mtcnn_weights.sh after a change that alters them, a version bump included),
    and hold facenet-pytorch 2.6.0's tensors."""
    from safetensors.torch import load_file

    from facenet_convert.converter.regenerate import regenerate
    from facenet_convert.models.shipped import SHIPPED_DIR, shipped_weights

    empty = tmp_path / "releases"
    empty.mkdir()
    regenerate(empty, tmp_path / "out", format="safetensors", parity=False)
    for name in ("pnet", "rnet", "onet"):
        fresh = (tmp_path / "out" / f"{name}.safetensors").read_bytes()
        assert shipped_weights(name).read_bytes() == fresh, (
            f"{name}.safetensors drifted: run scripts/ship_mtcnn_weights.sh")
        ours = load_file(SHIPPED_DIR / f"{name}.safetensors")
        theirs = torch.load(published_mtcnn[name], weights_only=True)
        assert list(ours) == list(theirs)
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    manifest = json.loads((SHIPPED_DIR / "MANIFEST.json").read_text())
    written = json.loads((tmp_path / "out" / "MANIFEST.json").read_text())
    assert manifest["outputs"] == written["outputs"]


def test_damaged_shipped_weights_are_refused(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from facenet_convert.converter.core.errors import ChecksumMismatchError
    from facenet_convert.models import shipped

    copy = tmp_path / "pretrained"
    shutil.copytree(shipped.SHIPPED_DIR, copy)
    data = bytearray((copy / "rnet.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "rnet.safetensors").write_bytes(bytes(data))
    monkeypatch.setattr(shipped, "SHIPPED_DIR", copy)
    with pytest.raises(ChecksumMismatchError, match="reinstall facenet-convert"):
        RNet(pretrained=True)


@pytest.mark.parametrize("kind", ["numpy", "tensor", "pil"])
def test_pixel_cap_holds_for_images_in_memory(kind: str, nets: dict[str, Path],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A huge in-memory image is refused from its shape, before any conversion allocates."""
    from facenet_convert.converter.core.errors import DetectionInputError

    monkeypatch.setenv("FACENET_CONVERT_MAX_PIXELS", "10000")
    mtcnn = MTCNN(pnet=nets["pnet"], rnet=nets["rnet"], onet=nets["onet"])
    pixels = np.zeros((101, 100, 3), dtype=np.float32)            # float: would be converted
    image = {"numpy": pixels, "tensor": torch.from_numpy(pixels),
             "pil": Image.new("RGB", (100, 101))}[kind]
    with pytest.raises(DetectionInputError, match="10,100 pixels is over the 10,000"):
        mtcnn.detect(image)
    assert mtcnn.detect(np.zeros((100, 100, 3), dtype=np.uint8))[0] is None
