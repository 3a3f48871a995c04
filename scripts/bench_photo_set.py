#!/usr/bin/env python
"""Detection and ``align`` over a real photo set of mixed sizes: ours vs upstream, one run.

The set: every sample photograph of ``third_party/facenet/testing/photos.py`` (astronaut, camera,
coffee, chelsea, insightface's t1 and Tom Hanks crop: 10 faces and two photos without one) and
their rescaled, mirrored and rotated variants (``photos.variants``: 18 per photo), written as
PNG files under ``<work>/photos/<photo>/<variant>.png`` (108 photos, 24x12 to 1229x1024 px).
No photo is chosen for speed.

1. **Detection**: each photo through upstream ``detect_face`` (davidsandberg's code on TF, det*.npy,
   as align_dataset_mtcnn runs it) and through ours (``MTCNN.detect_faces``), alternating photo
   by photo after one untimed warm-up pass over the whole set; total seconds each side, ours /
   TF, and the smallest IoU between matched boxes (1.0: the same boxes).
2. **align over the folder**, whole runs alternating: upstream's align_dataset_mtcnn.py loop
   (read, ``detect_face``, its box selection and crop, bilinear resize, PNG write; the script's
   own lines in ``third_party/facenet/testing/reference.py`` and ``tests/test_align.py``) vs
   ``facenet_convert.converter.align.align_dataset`` in this process and with ``--workers 2``;
   photos per second and ours / upstream.

The machine (CPU class, caps, versions) and the 1-minute load average come with the figures.

    .venv/bin/python scripts/bench_photo_set.py [--runs 3] [--json OUT] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from facenet_convert.converter.core.machine import describe_machine, machine_line


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed passes per side")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=None, help="folder for the photo set")
    return parser.parse_args(argv)


def photo_set(folder: Path) -> list[Path]:
    from PIL import Image

    from facenet_convert.third_party.facenet.testing.photos import PHOTOS, variants

    paths = []
    for name, load in PHOTOS.items():
        photo = load()
        rgb = np.repeat(photo[:, :, None], 3, axis=2) if photo.ndim == 2 else photo
        for variant, image in variants(rgb).items():
            path = folder / name / f"{variant}.png"
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(path)
            paths.append(path)
    return paths


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 1.0


def _min_iou(theirs: np.ndarray, ours: np.ndarray) -> float:
    if len(theirs) != len(ours):
        return 0.0
    return min((max(_iou(t, o) for o in ours) for t in theirs), default=1.0)


def detection(images: list[np.ndarray], runs: int) -> dict[str, float]:
    from facenet_convert.models import MTCNN
    from facenet_convert.third_party.facenet.testing.reference import UpstreamDetector

    ours = MTCNN()
    with UpstreamDetector() as upstream:
        min_iou, faces = 1.0, 0
        for image in images:                      # warm-up pass, and the box comparison
            boxes, _ = upstream.detect(image)
            found = ours.detect_faces(image)[0]
            faces += len(found)
            min_iou = min(min_iou, _min_iou(np.asarray(boxes)[:, :4],
                                            found.boxes.numpy()))
        tf_s, ours_s = [], []
        for _ in range(runs):
            tf_total = ours_total = 0.0
            for image in images:
                start = time.perf_counter()
                upstream.detect(image)
                tf_total += time.perf_counter() - start
                start = time.perf_counter()
                ours.detect_faces(image)
                ours_total += time.perf_counter() - start
            tf_s.append(tf_total)
            ours_s.append(ours_total)
    tf_med, ours_med = statistics.median(tf_s), statistics.median(ours_s)
    return {"photos": len(images), "faces": faces, "tf_s": tf_med, "ours_s": ours_med,
            "ratio": ours_med / tf_med, "min_iou": min_iou}


def upstream_align(paths: list[Path], out: Path, upstream: object) -> None:
    """align_dataset_mtcnn.py's per-photo loop (single face, margin 32, 160 px)."""
    from PIL import Image

    from facenet_convert.third_party.facenet.testing.reference import align_crop

    for path in paths:
        with Image.open(path) as opened:
            img = np.asarray(opened.convert("RGB"))
        boxes, _ = upstream.detect(img)           # type: ignore[attr-defined]
        det = np.asarray(boxes)[:, 0:4]
        if det.shape[0] == 0:
            continue
        if det.shape[0] > 1:
            size = (det[:, 2] - det[:, 0]) * (det[:, 3] - det[:, 1])
            center = np.asarray(img.shape)[0:2] / 2
            offsets = np.vstack([(det[:, 0] + det[:, 2]) / 2 - center[1],
                                 (det[:, 1] + det[:, 3]) / 2 - center[0]])
            det = det[[np.argmax(size - np.sum(np.power(offsets, 2.0), 0) * 2.0)]]
        target = out / path.parent.name / f"{path.stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(align_crop(img, det[0])).save(target)


def align_runs(photos: Path, paths: list[Path], work: Path, runs: int) -> dict[str, float]:
    from facenet_convert.converter.align import AlignOptions, align_dataset
    from facenet_convert.third_party.facenet.testing.reference import UpstreamDetector

    options = AlignOptions()
    times: dict[str, list[float]] = {"upstream": [], "ours": [], "ours --workers 2": []}
    with UpstreamDetector() as upstream:
        upstream_align(paths[:4], work / "warm", upstream)
        for _ in range(runs):
            for name, taken in times.items():
                out = work / "aligned"
                shutil.rmtree(out, ignore_errors=True)
                start = time.perf_counter()
                if name == "upstream":
                    upstream_align(paths, out, upstream)
                else:
                    align_dataset(photos, out, options=options,
                                  workers=2 if "workers" in name else 0)
                taken.append(time.perf_counter() - start)
    result: dict[str, float] = {}
    for name, values in times.items():
        result[f"{name} photos/s"] = len(paths) / statistics.median(values)
    up = result["upstream photos/s"]
    result["ours / upstream"] = result["ours photos/s"] / up
    result["ours --workers 2 / upstream"] = result["ours --workers 2 photos/s"] / up
    return result


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-photo-set-"))
    photos = work / "photos"
    paths = photo_set(photos)
    from PIL import Image

    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    load_before = os.getloadavg()[0]
    detect = detection(images, args.runs)
    print(f"detection, {detect['photos']} photos ({detect['faces']} faces): TF "
          f"{detect['tf_s']:.2f} s, ours {detect['ours_s']:.2f} s, ours / TF "
          f"{detect['ratio']:.2f}x, min IoU {detect['min_iou']:.4f}")
    align = align_runs(photos, paths, work, args.runs)
    print("align: " + ", ".join(f"{k} {v:.2f}" for k, v in align.items()))
    machine = describe_machine()
    load = (load_before, os.getloadavg()[0])
    print(f"machine: {machine_line(machine)}; load average before / after: "
          f"{load[0]:.2f} / {load[1]:.2f}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "detection": detect,
                                         "align": align, "load_average": load},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
