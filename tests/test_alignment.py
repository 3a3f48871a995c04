"""Similarity alignment from MTCNN's five landmarks (models/face_alignment.py): the transform
equals scikit-image's and insightface's own code (pinned, read here only), the stored facenet
template equals a fresh derivation, bad landmarks are one-line errors and are skipped in
batches (MTCNN, align, embed --detect), and a turned face comes out upright."""

from __future__ import annotations

import importlib.util
import json
import tarfile
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from facenet_convert.converter.cli import main
from facenet_convert.converter.core.errors import LandmarkError
from facenet_convert.models.face_alignment import (
    ARCFACE_TEMPLATE,
    FACENET_TEMPLATE,
    AlignmentWarning,
    align_face,
    estimate_alignment,
    similarity_transform,
    template,
)
from facenet_convert.models.mtcnn.detector import MTCNN
from facenet_convert.third_party.facenet.testing.photos import (
    INSIGHTFACE,
    PHOTOS,
    resized,
    rotated,
)
from facenet_convert.third_party.wheels import fetch_wheel

ROOT = Path(__file__).resolve().parents[1]
NETS = ("pnet", "rnet", "onet")


def _run(*args: object) -> Any:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def insightface() -> types.ModuleType:
    """insightface 0.7.3's ``insightface/utils/face_align.py``, read out of the pinned sdist and
    run as it is (it needs only numpy, cv2 and scikit-image); never installed."""
    member = "insightface-0.7.3/insightface/utils/face_align.py"
    with tarfile.open(fetch_wheel(INSIGHTFACE)) as tar:
        handle = tar.extractfile(member)
        assert handle is not None
        source = handle.read().decode("utf-8")
    module = types.ModuleType("insightface_face_align")
    exec(compile(source, member, "exec"), module.__dict__)       # noqa: S102 - pinned upstream
    return module


@pytest.fixture(scope="module")
def faces() -> list[tuple[np.ndarray, np.ndarray]]:
    """(photo, landmarks (5, 2)) of every face MTCNN finds in the astronaut and t1.jpg."""
    detector = MTCNN()
    out = []
    for name in ("astronaut", "t1"):
        photo = PHOTOS[name]()
        out += [(photo, points) for points in detector.detect_faces(photo)[0].landmarks.numpy()]
    assert len(out) == 7
    return out


def _skimage(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    from skimage.transform import SimilarityTransform

    if hasattr(SimilarityTransform, "from_estimate"):
        return SimilarityTransform.from_estimate(src, dst).params[:2]
    transform = SimilarityTransform()
    assert transform.estimate(src, dst)
    return transform.params[:2]


def _random_landmarks(count: int) -> list[np.ndarray]:
    """Templates moved by random similarities plus noise, mirrored ones (a reflection is never
    fitted) and points strewn at random."""
    rng = np.random.default_rng(7)
    base = np.array(FACENET_TEMPLATE)
    out = []
    for k in range(count):
        angle, scale = rng.uniform(-np.pi, np.pi), rng.uniform(0.2, 5.0)
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        points = base @ rotation.T * scale + rng.uniform(-300, 900, 2)
        points += rng.normal(0, 4.0, points.shape)
        if k % 4 == 1:
            points[:, 0] *= -1
        if k % 4 == 2:
            points = rng.uniform(0, 500, (5, 2))
        out.append(points)
    return out


def test_transform_equals_scikit_image(faces: list[tuple[np.ndarray, np.ndarray]]) -> None:
    landmarks = [points for _, points in faces] + _random_landmarks(200)
    for name, size in (("facenet", 160), ("facenet", 182), ("arcface", 112), ("arcface", 160)):
        dst = template(name, size)
        for points in landmarks:
            ours = similarity_transform(points, dst, max_scale=np.inf)
            np.testing.assert_allclose(ours, _skimage(points, dst), rtol=0, atol=1e-9)


def test_arcface_equals_insightface_estimate_norm_and_norm_crop(
        insightface: types.ModuleType, faces: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """insightface keeps ``arcface_dst`` as float32 and so takes its mean in float32, which
    moves its transform by ~1e-6; with the same decimals in float64 its own code gives ours to
    1e-9 and the same pixels."""
    their_template = insightface.arcface_dst
    np.testing.assert_array_equal(their_template, np.float32(ARCFACE_TEMPLATE))
    landmarks = [points for _, points in faces] + _random_landmarks(40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)      # skimage 0.26: estimate()
        for size in (112, 128, 224, 256):
            for points in landmarks:
                theirs32 = insightface.estimate_norm(points, size)
                ours = estimate_alignment(points, size, "arcface", max_scale=np.inf)
                np.testing.assert_allclose(ours, theirs32, rtol=1e-6, atol=1e-4)
        insightface.arcface_dst = np.array(ARCFACE_TEMPLATE, dtype=np.float64)
        try:
            for size in (112, 128, 224, 256):
                for points in landmarks:
                    theirs = insightface.estimate_norm(points, size)
                    ours = estimate_alignment(points, size, "arcface", max_scale=np.inf)
                    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)
                for photo, points in faces:
                    np.testing.assert_array_equal(align_face(photo, points, size, "arcface"),
                                                  insightface.norm_crop(photo, points, size))
        finally:
            insightface.arcface_dst = their_template


def test_stored_template_equals_a_recomputation() -> None:
    """scripts/derive_alignment_template.py derives FACENET_TEMPLATE again from the photos."""
    spec = importlib.util.spec_from_file_location(
        "derive_alignment_template", ROOT / "scripts" / "derive_alignment_template.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    derived, found = script.derive()
    used = [face for face in found if face["used"]]
    assert len(used) >= 8 and not any(face["photo"] == "hanks" for face in used)
    np.testing.assert_allclose(derived, np.array(FACENET_TEMPLATE), rtol=0, atol=0.01)
    # every face counts with its mirror twin: the eyes and the mouth corners come out level
    stored = np.array(FACENET_TEMPLATE)
    assert abs(stored[0, 1] - stored[1, 1]) < 1 and abs(stored[3, 1] - stored[4, 1]) < 1


def test_templates_scale_with_the_crop_size() -> None:
    np.testing.assert_array_equal(template("facenet", 160), np.array(FACENET_TEMPLATE))
    np.testing.assert_allclose(template("facenet", 320),
                               (np.array(FACENET_TEMPLATE) + 0.5) * 2 - 0.5)
    np.testing.assert_allclose(template("arcface", 224), np.array(ARCFACE_TEMPLATE) * 2)
    at_160 = np.array(ARCFACE_TEMPLATE) * 1.25 + [10.0, 0.0]       # insightface's 128 rule
    np.testing.assert_allclose(template("arcface", 160), at_160)
    for bad in ("vggface", "FACENET"):
        with pytest.raises(LandmarkError, match="unknown alignment template"):
            template(bad, 160)
    with pytest.raises(LandmarkError, match="positive integer"):
        template("facenet", 0)


_GOOD = np.array(FACENET_TEMPLATE) * 0.8 + 40


@pytest.mark.parametrize(("points", "message"), [
    (np.where(np.eye(5, 2, dtype=bool), np.nan, _GOOD), "NaN or infinite"),
    (np.where(np.eye(5, 2, dtype=bool), np.inf, _GOOD), "NaN or infinite"),
    (np.full((5, 2), 120.0), "landmarks coincide"),
    (np.stack([np.arange(5.0) * 10, np.arange(5.0) * 7 + 3], axis=1), "collinear"),
    (_GOOD, None),
    ((_GOOD - _GOOD.mean(0)) * 1e-3 + 200, "would scale the photo"),
    (_GOOD[:4], r"expected 5 landmarks .* found shape \(4, 2\)"),
    (_GOOD[:, :1], r"found shape \(5, 1\)"),
    ([["a", "b"]] * 5, "must be numbers"),
], ids=["nan", "inf", "coincident", "collinear", "good", "huge-scale", "four-points",
        "one-column", "strings"])
def test_bad_landmarks_are_one_line_errors(points: Any, message: str | None) -> None:
    if message is None:
        assert estimate_alignment(points).shape == (2, 3)
        return
    with pytest.raises(LandmarkError, match=message) as caught:
        estimate_alignment(points)
    assert "\n" not in str(caught.value) and str(caught.value).isprintable()
    with pytest.raises(LandmarkError):
        align_face(np.zeros((300, 300, 3), np.uint8), points)


def test_turned_face_comes_out_upright(weights: Path) -> None:
    """The astronaut turned 30 degrees: its similarity crop is far closer to the upright
    one than the box crop is, in pixels and in embedding distance (the tests' seeded net)."""
    from facenet_convert.models.inception_resnet_v1 import InceptionResNetV1
    from facenet_convert.models.preprocessing import fixed_image_standardization

    model = InceptionResNetV1(pretrained=str(weights)).eval()
    detectors = {mode: MTCNN(margin=32, alignment=mode) for mode in ("box", "similarity")}
    photo = PHOTOS["astronaut"]()
    images = [photo, *(rotated(photo, angle)[0] for angle in (30, -30))]
    found = [detectors["box"].detect_faces(image)[0] for image in images]
    assert [len(faces) for faces in found] == [1, 1, 1]
    crops = {mode: torch.cat([detector.extract(image, faces)
                              for image, faces in zip(images, found, strict=True)])
             for mode, detector in detectors.items()}
    with torch.inference_mode():
        vectors = {mode: model(fixed_image_standardization(c)) for mode, c in crops.items()}
    for turned in (1, 2):
        pixels = {mode: (c[0].float() - c[turned].float()).abs().mean().item()
                  for mode, c in crops.items()}
        distances = {mode: (v[0] - v[turned]).norm().item() for mode, v in vectors.items()}
        assert pixels["similarity"] < 0.3 * pixels["box"], (turned, pixels)
        assert distances["similarity"] < 0.5 * distances["box"], (turned, distances)


def test_mtcnn_options_and_explicit_landmarks(faces: list[tuple[np.ndarray, np.ndarray]]
                                              ) -> None:
    with pytest.raises(ValueError, match="alignment must be one of box, similarity"):
        MTCNN(alignment="affine")
    with pytest.raises(ValueError, match="template must be one of facenet, arcface"):
        MTCNN(template="vgg")
    detector = MTCNN(alignment="similarity", image_size=112, template="arcface")
    photo, points = faces[0]
    boxes = np.array([[0.0, 0.0, 10.0, 10.0]] * 2)
    with pytest.raises(ValueError, match="needs each face's landmarks"):
        detector.extract(photo, boxes)
    bad = np.full((5, 2), 3.0)
    crops = detector.face_crops(photo, boxes, np.stack([points, bad]))
    np.testing.assert_array_equal(crops[0], align_face(photo, points, 112, "arcface"))
    assert isinstance(crops[1], LandmarkError) and "coincide" in str(crops[1])
    with pytest.raises(LandmarkError, match="coincide"):
        detector.extract(photo, boxes, np.stack([points, bad]))


# --------------------------------------------------------------------------- batches

def _landmark_onet(folder: Path, published_mtcnn: dict[str, Path], spread: float) -> Path:
    """MTCNN weights whose ONet puts the five landmarks at fixed places of the box, ``spread``
    of its width around its centre (0: all at one point): the cascade and the boxes are the
    real ones, only the landmark layer is replaced."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("pnet", "rnet"):
        (folder / f"{name}.pt").write_bytes(published_mtcnn[name].read_bytes())
    state = torch.load(published_mtcnn["onet"], weights_only=True)
    d = spread
    state["dense6_3.weight"].zero_()
    state["dense6_3.bias"].copy_(torch.tensor([0.5 - d, 0.5 + d, 0.5, 0.5 - d, 0.5 + d,
                                               0.5 - d, 0.5 - d, 0.5, 0.5 + d, 0.5 + d]))
    torch.save(state, folder / "onet.pt")
    return folder


@pytest.fixture(scope="module")
def tiny_landmarks(tmp_path_factory: pytest.TempPathFactory,
                   published_mtcnn: dict[str, Path]) -> Path:
    """Landmarks 0.4 % of the box apart: aligning a 44 px face would magnify it ~115 times
    (over MAX_SCALE: skipped), a 132 px one ~40 times (aligned)."""
    return _landmark_onet(tmp_path_factory.mktemp("tiny"), published_mtcnn, 0.004)


@pytest.fixture(scope="module")
def sizes_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One class: the astronaut at half size (a 44 px face) and at 1.5 times (132 px)."""
    root = tmp_path_factory.mktemp("sizes") / "in"
    (root / "astronaut").mkdir(parents=True)
    photo = PHOTOS["astronaut"]()
    Image.fromarray(resized(photo, 256, 256)).save(root / "astronaut" / "half.png")
    Image.fromarray(resized(photo, 768, 768)).save(root / "astronaut" / "large.png")
    return root


def _nets(folder: Path) -> dict[str, Path]:
    return {name: folder / f"{name}.pt" for name in NETS}


def test_mtcnn_batch_reports_and_skips_a_face(tiny_landmarks: Path, sizes_folder: Path,
                                              tmp_path: Path,
                                              published_mtcnn: dict[str, Path]) -> None:
    half, large = (np.asarray(Image.open(sizes_folder / "astronaut" / f"{n}.png"))
                   for n in ("half", "large"))
    detector = MTCNN(margin=32, alignment="similarity", **_nets(tiny_landmarks))
    with pytest.warns(AlignmentWarning, match="image 0, face 0 left out: .*would scale"):
        out = detector([half, large])
    assert out[0] is None and out[1].shape == (3, 160, 160)
    with pytest.raises(LandmarkError, match="would scale the photo"):
        detector(half)                                  # one face asked for: one line
    assert detector(large).shape == (3, 160, 160)
    coincide = MTCNN(alignment="similarity", keep_all=True,
                     **_nets(_landmark_onet(tmp_path / "zero", published_mtcnn, 0.0)))
    with pytest.warns(AlignmentWarning, match="landmarks coincide"):
        assert coincide(large) is None
    box = MTCNN(margin=32, **_nets(tiny_landmarks))       # box crops never need landmarks
    assert box([half, large])[0].shape == (3, 160, 160)


def test_align_similarity_over_a_folder(sizes_folder: Path, tiny_landmarks: Path,
                                        tmp_path: Path,
                                        published_mtcnn: dict[str, Path]) -> None:
    out = tmp_path / "aligned"
    real = published_mtcnn["pnet"].parent
    result = _run("align", sizes_folder, out, "--mtcnn", real, "--alignment", "similarity")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["aligned"] == 2 and summary["failed"] == []
    half = np.asarray(Image.open(out / "astronaut" / "half.png"))
    large = np.asarray(Image.open(out / "astronaut" / "large.png"))
    assert half.shape == large.shape == (160, 160, 3)
    assert np.abs(half.astype(float) - large).mean() < 12     # same face, same place
    settings = json.loads((out / ".facenet-convert-align.json").read_text())
    assert settings["alignment"] == "similarity" and settings["template"] == "facenet"
    again = _run("align", sizes_folder, out, "--mtcnn", real, "--resume")
    assert again.exit_code != 0
    assert "other settings (alignment differ)" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1

    skipped = tmp_path / "skipped"
    result = _run("align", sizes_folder, skipped, "--mtcnn", tiny_landmarks,
                  "--alignment", "similarity")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["aligned"] == 1 and summary["faces"] == 1
    (failure,) = summary["failed"]
    assert failure["path"].endswith("half.png") and "would scale the photo" in failure["reason"]
    assert "face 0 not aligned" in result.stderr
    assert (skipped / "astronaut" / "large.png").is_file()
    assert not (skipped / "astronaut" / "half.png").exists()
    lines = next(skipped.glob("bounding_boxes_*.txt")).read_text().splitlines()
    assert len(lines) == 2 and lines[0] == str(skipped / "astronaut" / "half.png")


def test_embed_detect_similarity_skips_a_face(sizes_folder: Path, tiny_landmarks: Path,
                                              weights: Path, tmp_path: Path) -> None:
    photos = sizes_folder / "astronaut"
    out = tmp_path / "e.npz"
    result = _run("embed", photos, "--detect", "--alignment", "similarity", "--mtcnn",
                  tiny_landmarks, "--weights", weights, "--backend", "torch", "-o", out)
    assert result.exit_code == 0, result.output
    assert f"{photos / 'half.png'}#0: face not aligned" in result.stderr
    saved = np.load(out)
    assert saved["names"].tolist() == [f"{photos / 'large.png'}#0"]
    assert saved["embeddings"].shape == (1, 512) and saved["landmarks"].shape == (1, 5, 2)
    refused = _run("embed", photos, "--alignment", "similarity", "--weights", weights,
                   "-o", tmp_path / "x.npz")
    assert refused.exit_code != 0 and "--alignment similarity needs --detect" in refused.stderr
