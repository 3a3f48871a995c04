"""MTCNN detection: same faces as upstream TF ``detect_face.detect_face`` on real photographs.

Photographs ship in PyPI packages: scikit-image's ``astronaut`` (one face), ``camera``
(grayscale, one face), ``coffee`` and ``chelsea`` (no human face), and insightface 0.7.3's
``t1.jpg`` (six people; fetched with ``pip download --no-deps`` and sha256-checked, never
installed) and ``Tom_Hanks_54745.png`` (a tight 112x112 crop whose box leaves the image).
The upstream side is davidsandberg's own detect_face with the real det1/2/3.npy on TF, which
resizes with OpenCV (``opencv-python-headless``, a test-only dependency).
"""

from __future__ import annotations

import ast
import itertools
import tarfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from facenet_convert.models.detection import MTCNN, area_resize, batched_nms
from facenet_convert.third_party.wheels import (
    FACENET,
    PinnedWheel,
    cache_dir,
    fetch_wheel,
    wheel_member,
)

skdata = pytest.importorskip("skimage.data")

INSIGHTFACE = PinnedWheel(  # an sdist: only two sample photographs are read from it
    project="insightface", version="0.7.3", filename="insightface-0.7.3.tar.gz",
    sha256="f191f719612ebb37018f41936814500544cd0f86e6fcd676c023f354c668ddf7", license="MIT")
IOU_MIN = 0.95


def insightface_image(name: str) -> np.ndarray:
    """A sample image of the pinned insightface sdist as uint8 RGB."""
    member = f"insightface-0.7.3/insightface/data/images/{name}"
    dest = cache_dir() / "insightface-0.7.3" / name
    if not dest.is_file():
        archive = fetch_wheel(INSIGHTFACE)
        with tarfile.open(archive) as tar:
            source = tar.extractfile(member)
            assert source is not None
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_suffix(dest.suffix + ".part")
            tmp.write_bytes(source.read())
            tmp.replace(dest)
    with Image.open(dest) as image:
        return np.asarray(image.convert("RGB"))


def _gray_to_rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image


PHOTOS = {
    "astronaut": lambda: skdata.astronaut(),
    "camera": lambda: _gray_to_rgb(skdata.camera()),
    "coffee": lambda: skdata.coffee(),
    "chelsea": lambda: skdata.chelsea(),
    "t1": lambda: insightface_image("t1.jpg"),
    "hanks": lambda: insightface_image("Tom_Hanks_54745.png"),
}
EXPECTED_FACES = {"astronaut": 1, "camera": 1, "coffee": 0, "chelsea": 0, "t1": 6, "hanks": 1}


@pytest.fixture(scope="module")
def detector(published_mtcnn: dict[str, Path]) -> MTCNN:
    return MTCNN(published_mtcnn["pnet"], published_mtcnn["rnet"], published_mtcnn["onet"])


def _upstream_nms() -> Any:
    """Upstream's numpy ``nms`` compiled from the pinned wheel (no TF or cv2 needed)."""
    member = "facenet/src/align/detect_face.py"
    tree = ast.parse(Path(wheel_member(FACENET, member)).read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "nms")
    namespace: dict[str, Any] = {"np": np}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)         # upstream's `method is 'Min'`
        code = compile(ast.Module(body=[node], type_ignores=[]), member, "exec")
    exec(code, namespace)  # noqa: S102 - upstream nms from the pinned wheel, tests only
    return namespace["nms"]


def test_batched_nms_equals_upstream_per_group() -> None:
    nms = _upstream_nms()
    rng = np.random.default_rng(3)
    for mode, upstream_mode in (("union", "Union"), ("min", "Min")):
        for threshold in (0.3, 0.5, 0.7):
            count = 300
            xy = rng.uniform(0, 200, (count, 2))
            size = rng.uniform(5, 60, (count, 2))
            boxes = np.hstack([xy, xy + size])
            scores = rng.permutation(count) / count + 0.001      # distinct: no tie ambiguity
            groups = rng.integers(0, 4, count)
            got = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                              torch.from_numpy(groups), threshold, mode).numpy()
            want = []
            for group in range(4):
                index = np.flatnonzero(groups == group)
                picked = nms(np.hstack([boxes[index], scores[index, None]]), threshold,
                             upstream_mode)
                want.extend(index[picked].tolist())
            assert got.tolist() == want, (mode, threshold)
    empty = batched_nms(torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0, dtype=torch.long),
                        0.5)
    assert empty.numel() == 0


def test_area_resize_equals_opencv_inter_area() -> None:
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is a test dependency")
    photo = skdata.astronaut()
    rng = np.random.default_rng(0)
    # shrink (area weights), grow and mixed (OpenCV's area-linear weights), as MTCNN uses them
    for height, width, out_h, out_w in [(512, 512, 307, 307), (512, 512, 218, 218),
                                        (300, 451, 180, 271), (31, 30, 24, 24),
                                        (20, 20, 24, 24), (23, 25, 24, 24), (100, 80, 48, 48),
                                        (13, 40, 24, 24), (60, 17, 48, 48)]:
        top, left = rng.integers(0, 512 - height + 1), rng.integers(0, 512 - width + 1)
        source = photo[top:top + height, left:left + width].astype(np.float64)
        want = cv2.resize(source, (out_w, out_h), interpolation=cv2.INTER_AREA)
        got = area_resize(torch.from_numpy(source.transpose(2, 0, 1).copy()).float(),
                          out_h, out_w).numpy().transpose(1, 2, 0)
        np.testing.assert_allclose(got, want, atol=1e-4, err_msg=f"{height}x{width}")


def test_scales_follow_upstream(detector: MTCNN) -> None:
    scales = detector.scales(512, 512)
    assert scales[0] == pytest.approx(0.6) and len(scales) == 10
    assert all(b == pytest.approx(a * 0.709) for a, b in itertools.pairwise(scales))
    assert detector.scales(19, 400) == []                      # shorter side * 0.6 < 12


def test_detect_real_photographs_without_tf(detector: MTCNN) -> None:
    images = [PHOTOS[name]() for name in PHOTOS]
    results = detector.detect(images)                          # one batched call
    for name, found in zip(PHOTOS, results, strict=True):
        assert len(found) == EXPECTED_FACES[name], name
        assert found.boxes.dtype == torch.float64 and found.landmarks.shape == (len(found), 5, 2)
        assert bool((found.probs > 0.7).all())
    one = detector.detect(PHOTOS["astronaut"]())[0]
    assert torch.equal(one.boxes, results[0].boxes)


def test_extract_crops_as_align_dataset_mtcnn(detector: MTCNN) -> None:
    photo = PHOTOS["t1"]()
    found = detector.detect(photo)[0]
    crops = detector.extract(photo, found)
    assert crops.shape == (6, 3, 160, 160) and crops.dtype == torch.uint8
    from facenet_convert.third_party.facenet.testing.reference import align_crop

    for crop, det in zip(crops, found.boxes.numpy(), strict=True):
        scaled = align_crop(photo, det)                          # upstream's own arithmetic
        np.testing.assert_array_equal(crop.numpy().transpose(1, 2, 0), scaled)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


@pytest.fixture(scope="module")
def upstream_detect() -> Iterator[Any]:
    """davidsandberg's detect_face with det1/2/3.npy on TF, as align_dataset_mtcnn sets it up."""
    pytest.importorskip("cv2", reason="upstream detect_face resizes with OpenCV")
    from facenet_convert.third_party.facenet.testing.reference import UpstreamDetector

    with UpstreamDetector() as detector:
        if not detector.uses_real_cv2:
            pytest.skip("upstream detect_face was loaded with the cv2 stub")
        yield detector.detect


@pytest.mark.tf
@pytest.mark.parametrize("name", list(PHOTOS))
def test_same_faces_as_upstream_tf(name: str, detector: MTCNN, upstream_detect: Any) -> None:
    photo = PHOTOS[name]()
    want_boxes, want_points = upstream_detect(photo)
    found = detector.detect(photo)[0]
    assert len(found) == want_boxes.shape[0] == EXPECTED_FACES[name]
    boxes = found.boxes.numpy()
    for k, want in enumerate(want_boxes):
        ious = [_iou(want[:4], got) for got in boxes]
        match = int(np.argmax(ious))
        assert ious[match] >= IOU_MIN, (name, k, ious[match])
        assert match == k                                       # same order: best score first
        assert float(found.probs[k]) == pytest.approx(want[4], abs=1e-4)
        marks = found.landmarks[k].numpy()                      # (5, 2) vs upstream (10,)
        np.testing.assert_allclose(marks[:, 0], want_points[:5, k], atol=0.5)
        np.testing.assert_allclose(marks[:, 1], want_points[5:, k], atol=0.5)

