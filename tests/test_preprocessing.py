"""Preprocessing equals upstream facenet's own functions; the face dataset and loader; the fused
CPU embedder equals the plain model.

Upstream's ``prewhiten``, ``crop`` and ``to_rgb`` are taken from the pinned facenet wheel's
``facenet/src/facenet.py`` (compiled on their own: importing that module needs TF 1.x,
scipy.misc and sklearn), so the comparison is with the real code, not a copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from facenet_convert.converter.core.errors import ImageReadError, UnknownReleaseError
from facenet_convert.models.preprocessing import (
    Preprocess,
    fixed_image_standardization,
    guess_preprocessing,
    load_image,
    preprocessing_for,
    prewhiten,
    to_rgb_array,
)
from facenet_convert.models.releases import FIXED_STANDARDIZATION, PREWHITEN, RELEASES
from facenet_convert.third_party.facenet.testing.upstream_code import upstream_functions
from tests.synthetic_models import realistic_model

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def upstream() -> dict[str, Any]:
    return upstream_functions("facenet/src/facenet.py", ("prewhiten", "crop", "to_rgb"))


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    data = pytest.importorskip("skimage.data")
    return data.astronaut()


def test_fixed_standardization_values() -> None:
    x = torch.tensor([0, 127.5, 255], dtype=torch.float32)
    assert fixed_image_standardization(x).tolist() == [-127.5 / 128, 0.0, 127.5 / 128]
    pixels = torch.arange(256, dtype=torch.uint8)
    out = fixed_image_standardization(pixels)
    assert out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), (np.arange(256, dtype=np.float32) - 127.5) / 128)


def test_prewhiten_equals_upstream(upstream: dict[str, Any], photo: np.ndarray) -> None:
    crop = photo[100:260, 150:310]
    want = upstream["prewhiten"](crop)                        # HWC, float64
    got = prewhiten(torch.from_numpy(crop.transpose(2, 0, 1).copy()))
    np.testing.assert_allclose(got.numpy().transpose(1, 2, 0), want, rtol=0, atol=1e-6)
    batch = torch.from_numpy(np.stack([crop, photo[:160, :160]]).transpose(0, 3, 1, 2).copy())
    got_batch = prewhiten(batch).numpy()
    np.testing.assert_allclose(got_batch[1].transpose(1, 2, 0),
                               upstream["prewhiten"](photo[:160, :160]), atol=1e-6)


def test_prewhiten_flat_image_uses_std_floor(upstream: dict[str, Any]) -> None:
    flat = np.full((160, 160, 3), 7, dtype=np.uint8)           # std 0: floored at 1/sqrt(size)
    got = prewhiten(torch.from_numpy(flat.transpose(2, 0, 1).copy()))
    np.testing.assert_array_equal(got.numpy().transpose(1, 2, 0), upstream["prewhiten"](flat))


def test_preprocessing_for_every_release() -> None:
    for release in RELEASES:
        if release.architecture != "inception_resnet_v1":
            continue
        expected = PREWHITEN if release.name.startswith("2017") else FIXED_STANDARDIZATION
        assert preprocessing_for(release) == expected
        assert preprocessing_for(release.name) == expected
    assert preprocessing_for("vggface2") == FIXED_STANDARDIZATION
    with pytest.raises(UnknownReleaseError):
        preprocessing_for("no-such-release")
    with pytest.raises(UnknownReleaseError):
        preprocessing_for("pnet")                               # not a FaceNet release
    assert guess_preprocessing(128) == PREWHITEN
    assert guess_preprocessing(512) == FIXED_STANDARDIZATION


def _save(array: np.ndarray, path: Path, mode: str | None = None) -> Path:
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def test_load_image_modes(tmp_path: Path, upstream: dict[str, Any], photo: np.ndarray) -> None:
    gray = photo[:, :, 0]
    got = load_image(_save(gray, tmp_path / "gray.png"))
    np.testing.assert_array_equal(got, upstream["to_rgb"](gray))
    rgba = np.dstack([photo, np.full(photo.shape[:2], 9, dtype=np.uint8)])
    got = load_image(_save(rgba, tmp_path / "rgba.png"))
    np.testing.assert_array_equal(got, photo)                  # alpha dropped, not blended
    np.testing.assert_array_equal(load_image(_save(photo, tmp_path / "rgb.png")), photo)
    np.testing.assert_array_equal(to_rgb_array(rgba), photo)
    np.testing.assert_array_equal(to_rgb_array(gray), upstream["to_rgb"](gray))
    with pytest.raises(TypeError, match="uint8"):
        to_rgb_array(photo.astype(np.float32))


def test_load_image_errors_are_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg\n")
    with pytest.raises(ImageReadError) as caught:
        load_image(broken)
    assert str(broken) in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ImageReadError, match="cannot read image"):
        load_image(tmp_path / "missing.png")
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)).save(deep)
    assert load_image(deep).tolist() == np.full((4, 4, 3), 255, np.uint8).tolist()  # 16-bit


def test_preprocess_resize_is_pillow_bilinear(photo: np.ndarray) -> None:
    prep = Preprocess(FIXED_STANDARDIZATION)
    got = prep(photo)
    want = np.asarray(Image.fromarray(photo).resize((160, 160), Image.BILINEAR))
    np.testing.assert_array_equal(got.numpy(), ((want.astype(np.float32) - 127.5) / 128)
                                  .transpose(2, 0, 1))
    exact = photo[:160, :160]                                  # no resampling at 160x160
    np.testing.assert_array_equal(prep(exact).numpy(),
                                  ((exact.astype(np.float32) - 127.5) / 128).transpose(2, 0, 1))


def test_center_crop_prewhitens_whole_image_first(upstream: dict[str, Any],
                                                   photo: np.ndarray) -> None:
    aligned = photo[50:232, 120:302]                           # 182x182, upstream's align size
    want = upstream["crop"](upstream["prewhiten"](aligned), False, 160)   # load_data's order
    got = Preprocess(PREWHITEN, fit="center_crop")(aligned)
    np.testing.assert_allclose(got.numpy().transpose(1, 2, 0), want, atol=1e-6)
    with pytest.raises(ValueError, match="smaller"):
        Preprocess(PREWHITEN, fit="center_crop")(photo[:100, :100])
    with pytest.raises(ValueError, match="fit"):
        Preprocess(fit="stretch")


# --------------------------------------------------------------------------- dataset & loader

def _folder(tmp_path: Path, photo: np.ndarray) -> Path:
    root = tmp_path / "faces"
    for person, (top, left) in {"alice": (0, 0), "bob": (200, 200)}.items():
        (root / person).mkdir(parents=True)
        for k in range(2):
            crop = photo[top + 10 * k:top + 10 * k + 160, left:left + 160]
            _save(crop, root / person / f"{k}.png")
    (root / "bob" / "notes.txt").write_text("not an image")
    (root / "bob" / "zz_broken.jpg").write_bytes(b"garbage")
    return root


def test_face_folder_identities(tmp_path: Path, photo: np.ndarray) -> None:
    from facenet_convert.models.data import FaceFolder, face_loader

    dataset = FaceFolder(_folder(tmp_path, photo))
    assert dataset.classes == ["alice", "bob"]
    assert [p.name for p in dataset.paths] == ["0.png", "1.png", "0.png", "1.png",
                                               "zz_broken.jpg"]
    assert dataset.labels == [0, 0, 1, 1, 1]
    batches = list(face_loader(dataset, batch_size=3))
    assert [len(b) for b in batches] == [3, 1]
    assert batches[1].failures and batches[1].failures[0][0].endswith("zz_broken.jpg")
    assert "cannot read image" in batches[1].failures[0][1]
    assert torch.equal(torch.cat([b.labels for b in batches]), torch.tensor([0, 0, 1, 1]))
    first = batches[0].images[0]
    want = (np.asarray(Image.open(dataset.paths[0])).astype(np.float32) - 127.5) / 128
    np.testing.assert_array_equal(first.numpy(), want.transpose(2, 0, 1))


def test_face_folder_flat_and_workers(tmp_path: Path, photo: np.ndarray) -> None:
    from facenet_convert.converter.core.errors import DatasetError
    from facenet_convert.models.data import FaceFolder, face_loader

    root = _folder(tmp_path, photo) / "alice"
    dataset = FaceFolder(root, Preprocess(PREWHITEN))
    assert dataset.labels == [-1, -1] and dataset.classes == []
    loader = face_loader(dataset, batch_size=2, num_workers=1)
    assert loader.pin_memory is torch.cuda.is_available()
    (batch,) = list(loader)
    assert batch.images.shape == (2, 3, 160, 160) and not batch.failures
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no image files"):
        FaceFolder(empty)
    with pytest.raises(DatasetError, match="not a folder"):
        FaceFolder(tmp_path / "nope")


# --------------------------------------------------------------------------- fused embedder

def test_threaded_embedder_equals_plain_model(photo: np.ndarray) -> None:
    # the engines (ONNX Runtime, frozen torch, bf16) are tested in tests/test_engines.py
    from facenet_convert.models.inference import Embedder

    model = realistic_model()
    batch = torch.stack([Preprocess()(photo[k * 40:k * 40 + 200, k * 50:k * 50 + 200])
                         for k in range(5)])
    with torch.inference_mode():
        want = model(batch)
    plain = Embedder(model, threads=1)
    got = plain(batch)
    assert got.shape == (5, 512) and got.dtype == torch.float32 and torch.equal(got, want)
    assert plain(batch[:0]).shape == (0, 512)
    split = Embedder(model, threads=2)          # two slices, two threads
    assert float((split(batch) - want).abs().max()) <= 1e-5
    split.close()
