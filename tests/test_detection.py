"""MTCNN detection: the same faces as upstream TF ``detect_face`` on real photographs.

Photographs ship in PyPI packages (see :mod:`tests.detection_photos`). The upstream side is
davidsandberg's own detect_face with the real det1/2/3.npy on TF 2.x, resizing with OpenCV
as align_dataset_mtcnn runs it; its results are cached under the wheel cache keyed by the
sha256 of the image and of the software versions, so only the first run pays for TF.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from facenet_convert.converter.core.errors import DetectionInputError
from facenet_convert.models.area_resize import CropPlan, CropSource, resize_boxes, summed_area_table
from facenet_convert.models.mtcnn import prelu_pool
from facenet_convert.models.mtcnn.boxes import batched_nms
from facenet_convert.models.mtcnn.cascade import IntegralSource
from facenet_convert.models.mtcnn.detector import MTCNN
from facenet_convert.models.workers import TorchWorkers
from facenet_convert.third_party.facenet.testing.photos import (
    EXPECTED_FACES,
    PHOTOS,
    insightface_image,
    variants,
)
from facenet_convert.third_party.facenet.testing.upstream_code import upstream_functions
from tests.upstream_detection import upstream_results

__all__ = ["PHOTOS", "insightface_image"]          # test_embed_verify imports them from here

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless runs MTCNN's pyramid")
pytest.importorskip("skimage.data")

TOLERANCE = 1e-3       # pixels (boxes, landmarks) and probability


@pytest.fixture(scope="module")
def detector(published_mtcnn: dict[str, Path]) -> MTCNN:
    return MTCNN(margin=32, **published_mtcnn)


def _upstream_nms() -> Any:
    """Upstream's numpy ``nms`` compiled from the pinned wheel (no TF or cv2 needed)."""
    return upstream_functions("facenet/src/align/detect_face.py", ("nms",))["nms"]


def test_batched_nms_equals_upstream_per_group_ties_included() -> None:
    nms = _upstream_nms()
    rng = np.random.default_rng(3)
    for mode, upstream_mode in (("union", "Union"), ("min", "Min")):
        for threshold in (0.3, 0.5, 0.7):
            count = 300
            xy = np.round(rng.uniform(0, 200, (count, 2)))
            size = np.round(rng.uniform(5, 60, (count, 2)))
            boxes = np.hstack([xy, xy + size])
            scores = rng.integers(0, 40, count) / 40.0             # many equal scores
            groups = np.sort(rng.integers(0, 4, count))
            got = batched_nms(boxes, scores, groups, threshold, mode)
            want = []
            for group in range(4):
                index = np.flatnonzero(groups == group)
                picked = nms(np.hstack([boxes[index], scores[index, None]]), threshold,
                             upstream_mode)
                want.extend(index[picked].tolist())
            assert got.tolist() == want, (mode, threshold)
    # degenerate boxes (zero or negative sides: overlaps of 0/0 or x/0) as upstream drops them
    boxes = np.array([[10, 10, 20, 20], [10, 10, 9, 20], [10, 10, 9, 9], [5, 5, 25, 25],
                      [30, 30, 28, 31], [30, 30, 40, 40]], dtype=np.float64)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    for mode, upstream_mode in (("union", "Union"), ("min", "Min")):
        with np.errstate(divide="ignore", invalid="ignore"):
            want = nms(np.hstack([boxes, scores[:, None]]), 0.5, upstream_mode).tolist()
        got = batched_nms(boxes, scores, np.zeros(len(boxes), dtype=np.int64), 0.5, mode)
        assert got.tolist() == want, mode
    empty = batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64), 0.5)
    assert empty.size == 0
    with pytest.raises(ValueError, match="'union' or 'min'"):
        batched_nms(boxes, scores, np.zeros(len(boxes), dtype=np.int64), 0.5, "Union")


def _upstream_crop(image: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """detect_face's candidate crop: zero-padded float64 ``tmp`` and cv2 INTER_AREA."""
    height, width = image.shape[:2]
    x1, y1, x2, y2 = (int(v) for v in box)
    tmp = np.zeros((y2 - y1 + 1, x2 - x1 + 1, image.shape[2]))
    ys0, ys1, xs0, xs1 = max(y1 - 1, 0), min(y2, height), max(x1 - 1, 0), min(x2, width)
    if ys1 > ys0 and xs1 > xs0:
        tmp[ys0 - (y1 - 1):ys1 - (y1 - 1), xs0 - (x1 - 1):xs1 - (x1 - 1)] = \
            image[ys0:ys1, xs0:xs1]
    return cv2.resize(tmp, (size, size), interpolation=cv2.INTER_AREA)


def test_candidate_crops_equal_opencv_inter_area() -> None:
    photo = PHOTOS["astronaut"]()[:300, :400]
    rng = np.random.default_rng(0)
    boxes = []
    for _ in range(400):                 # shrink, grow, mixed, partly or wholly outside
        side = int(rng.integers(1, 160))
        x1, y1 = int(rng.integers(-40, 420)), int(rng.integers(-40, 320))
        boxes.append([x1, y1, x1 + side - 1 + int(rng.integers(0, 3)), y1 + side - 1])
    boxes += [[1, 1, 48, 48], [5, 5, 100, 100], [3, 3, 26, 26], [1, 1, 24, 48], [7, 9, 30, 32]]
    boxes += [[-200, -190, -171, -161], [430, 330, 459, 359], [-60, 100, -20, 140]]  # outside
    boxes_np = np.array(boxes)
    for size in (24, 48):                # small boxes: dense weights; large: prefix sums
        got = resize_boxes(photo, boxes_np, size)
        for k, box in enumerate(boxes_np):
            np.testing.assert_allclose(got[k], _upstream_crop(photo, box, size), rtol=0,
                                       atol=1e-6, err_msg=f"{box} -> {size}")
    for channels in (1, 4):              # the compiled prefix-sum loop for other channel counts
        image = np.ascontiguousarray(np.resize(photo, (300, 400, channels)))
        got = resize_boxes(image, boxes_np, 24)
        for k, box in enumerate(boxes_np):
            want = _upstream_crop(image, box, 24).reshape(24, 24, channels)
            np.testing.assert_allclose(got[k], want, rtol=0, atol=1e-6, err_msg=f"{box}")


def test_crop_plan_parts_equal_one_pass() -> None:
    """Worker threads compute crops in parts: every part count gives the same bits, the
    scaled float32 crops are the float64 ones scaled as the nets' input; an empty plan has
    no parts."""
    photo = PHOTOS["t1"]()
    rng = np.random.default_rng(1)
    side = rng.integers(5, 200, 300)
    x1, y1 = rng.integers(-30, 1250, 300), rng.integers(-30, 860, 300)
    boxes = np.stack([x1, y1, x1 + side - 1, y1 + side - 1 + rng.integers(0, 3, 300)], axis=1)
    for size in (24, 48):
        whole = resize_boxes(photo, boxes, size)
        plan = CropPlan(CropSource(photo), boxes, size)
        for count in (1, 2, 7, 64, 1000):
            pieces = np.full_like(whole, np.nan)
            parts = plan.parts(count)
            assert len(parts) == min(count, len(boxes))
            for part in parts:
                pieces[part] = plan.compute(part).numpy()
            np.testing.assert_array_equal(pieces, whole)
        scaled = plan.compute(slice(3, 40), 127.5, 0.0078125, np.float32).numpy()
        assert scaled.dtype == np.float32
        np.testing.assert_array_equal(scaled, ((whole[3:40] - 127.5) * 0.0078125).astype(
            np.float32))
    assert CropPlan(CropSource(photo), np.zeros((0, 4)), 24).parts(3) == []


def test_large_photos_of_a_list_get_their_results_alone(detector: MTCNN) -> None:
    """Lists of large photos are detected photo by photo on the workers: the same bits as
    one call per photo, in order."""
    photo = PHOTOS["t1"]()                                        # 1280x886: side by side
    photos = [photo, np.ascontiguousarray(photo[:, ::-1]), photo[:600]]
    together = detector.detect_faces(photos)
    for image, found in zip(photos, together, strict=True):
        alone = detector.detect_faces(image)[0]
        for name in ("boxes", "probs", "landmarks"):
            assert torch.equal(getattr(found, name), getattr(alone, name)), name
    assert len(together[0]) == 6 and min(len(found) for found in together) > 0


def test_opencv_threads_are_given_back(detector: MTCNN, monkeypatch: pytest.MonkeyPatch
                                       ) -> None:
    """Detection runs OpenCV single-threaded (the workers split the pyramid) and gives the
    caller's OpenCV thread count back, also after an error."""
    seen = []
    resize = cv2.resize

    def recording_resize(*args: Any, **kwargs: Any) -> np.ndarray:
        seen.append(cv2.getNumThreads())
        return resize(*args, **kwargs)

    monkeypatch.setattr(cv2, "resize", recording_resize)
    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(3)
        detector.detect_faces(PHOTOS["astronaut"]()[:200, :200])
        assert seen and set(seen) == {1} and cv2.getNumThreads() == 3
        with pytest.raises(DetectionInputError):
            detector.detect_faces(np.zeros((20, 20, 3), np.uint16))
        assert cv2.getNumThreads() == 3
        with ThreadPoolExecutor(4) as callers:         # overlapping calls from other threads
            list(callers.map(detector.detect_faces, [PHOTOS["astronaut"]()[:150, :150]] * 8))
        assert cv2.getNumThreads() == 3
    finally:
        cv2.setNumThreads(before)


def test_detections_do_not_depend_on_the_worker_count(detector: MTCNN) -> None:
    """Bands, parts and NMS blocks are cut by the input alone and every task runs on one
    intra-op thread, also work that stays in the calling thread: 1, 2 or 3 workers, one photo
    at a time or several in flight (``detect_each``), give the same bits. (A worker once
    inherited its caller's thread count; a lone task ran on the caller's two threads and
    moved a 56 px photo's box by 8e-7 px.)"""
    t1 = cv2.resize(PHOTOS["t1"](), (960, 664), interpolation=cv2.INTER_AREA)
    hanks = PHOTOS["hanks"]()
    photos = [t1, variants(hanks)["scale0.5"], hanks, PHOTOS["astronaut"]()[:200, 120:330]]
    runs = []
    for count in (1, 2, 3):
        twin = MTCNN(margin=32, pnet=detector.pnet, rnet=detector.rnet, onet=detector.onet)
        twin._workers = TorchWorkers(count, "test", pin_single=True)
        runs.append([twin.detect_faces(photo)[0] for photo in photos])
        runs.append(twin.detect_each(photos))
        twin._workers.close()
    assert len(runs[0][0]) == 6 and all(len(found) > 0 for found in runs[0])
    for run in runs[1:]:
        for want, found in zip(runs[0], run, strict=True):
            for name in ("boxes", "probs", "landmarks"):
                assert torch.equal(getattr(want, name), getattr(found, name)), name


def test_fast_paths_are_bit_exact(detector: MTCNN) -> None:
    """Detection's speed-ups change no bit: the fused PReLU + ceil-mode pooling equals the
    nets' own modules (every pool of the three nets, odd and even sizes, both memory
    formats, a shared slope), each net's detect_forward equals its forward on real photo
    crops, and cv2.integral's table equals numpy's prefix sums."""
    generator = torch.Generator().manual_seed(0)
    pools = [(net.prelu1, net.pool1) for net in (detector.pnet, detector.rnet, detector.onet)]
    pools += [(detector.rnet.prelu2, detector.rnet.pool2), (detector.onet.prelu2,
              detector.onet.pool2), (detector.onet.prelu3, detector.onet.pool3)]
    shared = torch.nn.PReLU(1, init=-0.3)
    pools.append((shared, torch.nn.MaxPool2d(3, 2, ceil_mode=True)))
    with torch.inference_mode():
        for prelu, pool in pools:
            channels = prelu.weight.numel() if prelu is not shared else 5
            for height, width in itertools.product(range(3, 10), repeat=2):
                x = torch.randn((2, channels, height, width), generator=generator)
                for tensor in (x, x.contiguous(memory_format=torch.channels_last)):
                    assert torch.equal(prelu_pool(tensor, prelu, pool), pool(prelu(tensor)))
    photo = torch.from_numpy(PHOTOS["astronaut"]()[:101, :87].copy())
    x = ((photo.permute(2, 0, 1)[None].float() - 127.5) * 0.0078125).contiguous(
        memory_format=torch.channels_last)
    crops = {24: torch.nn.functional.interpolate(x, size=(24, 24)).repeat(3, 1, 1, 1),
             48: torch.nn.functional.interpolate(x, size=(48, 48)).repeat(3, 1, 1, 1)}
    with torch.inference_mode():
        for net, inputs in ((detector.pnet, x), (detector.rnet, crops[24]),
                            (detector.onet, crops[48])):
            inputs = inputs.contiguous(memory_format=torch.channels_last)
            for fast, plain in zip(net.detect_forward(inputs), net(inputs), strict=True):
                assert torch.equal(fast, plain), type(net).__name__
            # the same nets in plain NCHW memory: the fused pass keeps the input's layout
            plain_net = type(net)()
            plain_net.load_state_dict(net.state_dict())
            inputs = inputs.contiguous()
            for fast, plain in zip(plain_net.detect_forward(inputs), plain_net(inputs),
                                   strict=True):
                assert torch.equal(fast, plain), type(net).__name__
    image = insightface_image("t1.jpg")
    assert np.array_equal(IntegralSource(image).table, summed_area_table(image))


def test_scales_follow_upstream(detector: MTCNN) -> None:
    scales = detector.scales(512, 512)
    assert scales[0] == pytest.approx(0.6) and len(scales) == 10
    assert all(b == pytest.approx(a * 0.709) for a, b in itertools.pairwise(scales))
    assert detector.scales(19, 400) == []                      # shorter side * 0.6 < 12


def test_detect_real_photographs_without_tf(detector: MTCNN) -> None:
    images = [PHOTOS[name]() for name in PHOTOS]
    results = detector.detect_faces(images)                    # one batched call
    for name, found in zip(PHOTOS, results, strict=True):
        assert len(found) == EXPECTED_FACES[name], name
        assert found.boxes.dtype == torch.float64 and found.landmarks.shape == (len(found), 5, 2)
        assert bool((found.probs > 0.7).all())
    one = detector.detect_faces(PHOTOS["astronaut"]())[0]
    # alone or in a batch: the same up to float32 noise (nets see other batch sizes)
    torch.testing.assert_close(one.boxes, results[0].boxes, rtol=0, atol=1e-4)
    assert len(detector.detect_faces(np.zeros((8, 8, 3), np.uint8))[0]) == 0   # below pyramid


def test_extract_crops_as_align_dataset_mtcnn(detector: MTCNN) -> None:
    from facenet_convert.third_party.facenet.testing.reference import align_crop

    photo = PHOTOS["t1"]()
    found = detector.detect_faces(photo)[0]
    crops = detector.extract(photo, found)
    assert crops.shape == (6, 3, 160, 160) and crops.dtype == torch.uint8
    for crop, det in zip(crops, found.boxes.numpy(), strict=True):
        scaled = align_crop(photo, det)                          # upstream's own arithmetic
        np.testing.assert_array_equal(crop.numpy().transpose(1, 2, 0), scaled)


# --------------------------------------------------------------------------- upstream identity

def identity_cases() -> dict[str, np.ndarray]:
    """>= 100 real-photo cases: 6 photographs x 18 rescaled, flipped, rotated variants."""
    cases = {}
    for name, load in PHOTOS.items():
        photo = load()
        if name == "t1":                  # 886x1280: keep the test quick, full size once
            cases["t1/full"] = photo
            photo = cv2.resize(photo, (640, 443), interpolation=cv2.INTER_AREA)
        for variant, image in variants(photo).items():
            cases[f"{name}/{variant}"] = image
    return cases


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


@pytest.mark.tf
def test_same_faces_as_upstream_tf_on_every_case(detector: MTCNN) -> None:
    cases = identity_cases()
    assert len(cases) >= 100
    want = upstream_results(cases)
    by_size: dict[tuple[int, ...], list[str]] = {}
    for name, image in cases.items():
        by_size.setdefault(image.shape, []).append(name)
    faces = 0
    problems = []
    for names in by_size.values():                     # same-size photos share a call
        for name, found in zip(names, detector.detect_faces([cases[n] for n in names]),
                               strict=True):
            boxes, points = want[name]
            if len(found) != boxes.shape[0]:
                problems.append(f"{name}: {len(found)} faces, upstream {boxes.shape[0]}")
                continue
            faces += len(found)
            got = found.boxes.numpy()
            marks = found.landmarks.numpy()
            for k in range(len(found)):                  # same order: upstream's NMS order
                errors = (np.abs(got[k] - boxes[k, :4]).max(),
                          abs(float(found.probs[k]) - boxes[k, 4]),
                          np.abs(marks[k, :, 0] - points[:5, k]).max(),
                          np.abs(marks[k, :, 1] - points[5:, k]).max())
                if max(errors) > TOLERANCE or _iou(got[k], boxes[k, :4]) < 0.999:
                    problems.append(f"{name} face {k}: box/prob/landmark errors {errors}")
    assert not problems, "; ".join(problems[:10])
    assert faces >= 100
