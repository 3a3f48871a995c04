#!/usr/bin/env python
"""Derive the ``facenet`` alignment template (models/face_alignment.py ``FACENET_TEMPLATE``):
where upstream's box crop (align_dataset_mtcnn.py, 160 px, margin 32) puts the five MTCNN
landmarks of an upright face, on average over real photos.

The photos are the pinned real ones of ``third_party/facenet/testing/photos.py``
(scikit-image's astronaut and camera, insightface 0.7.3's t1.jpg with six people,
Tom_Hanks_54745.png), each as it is and mirrored left-right (so the template is symmetric up
to detection noise). A face counts when it is upright (eye line within ``MAX_ROLL`` degrees of
horizontal) and its margin-grown box lies inside the photo (else upstream's crop is clipped and
the face is not where an unclipped crop puts it). Detection is this package's MTCNN with the
shipped weights and the defaults (equal to upstream detect_face); a landmark at photo pixel
``x`` lands in a crop of ``x0..x1`` resized to 160 at ``(x - x0 + 0.5) * 160 / (x1 - x0) - 0.5``
(the pixel-centre mapping of the bilinear resize).

    python scripts/derive_alignment_template.py            # print the faces and the table
    python scripts/derive_alignment_template.py --write    # also rewrite FACENET_TEMPLATE
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "models" / "face_alignment.py"
PHOTO_NAMES = ("astronaut", "camera", "t1", "hanks")
MIN_PROBABILITY = 0.95
MAX_ROLL = 15.0
MAX_YAW = 0.25
IMAGE_SIZE = 160
MARGIN = 32
DECIMALS = 4


def _describe(box: np.ndarray, prob: float, points: np.ndarray, height: int, width: int,
              detector: object) -> dict[str, object]:
    """One face: its landmarks in the 160 px box crop, pose figures and why it does not count."""
    x0, y0, x1, y1 = detector.crop_box(box, height, width)          # type: ignore[attr-defined]
    crop = np.empty((5, 2))
    crop[:, 0] = (points[:, 0] - x0 + 0.5) * IMAGE_SIZE / (x1 - x0) - 0.5
    crop[:, 1] = (points[:, 1] - y0 + 0.5) * IMAGE_SIZE / (y1 - y0) - 0.5
    eyes = points[1] - points[0]
    distance = float(np.hypot(*eyes))
    roll = math.degrees(math.atan2(eyes[1], eyes[0]))
    yaw = float((points[2] - (points[0] + points[1]) / 2) @ eyes) / distance ** 2
    half = MARGIN / 2
    inside = (box[0] - half >= 0 and box[1] - half >= 0 and box[2] + half <= width
              and box[3] + half <= height)
    reasons = [why for why, bad in (
        (f"probability {prob:.3f}", prob < MIN_PROBABILITY),
        (f"roll {roll:+.1f} deg", abs(roll) > MAX_ROLL),
        (f"turned (nose {yaw:+.2f} eye distances off centre)", abs(yaw) > MAX_YAW),
        ("crop clipped by the photo's edge", not inside)) if bad]
    return {"box": box, "size": (float(box[2] - box[0]), float(box[3] - box[1])),
            "prob": prob, "roll": roll, "yaw": yaw, "crop": crop, "why": "; ".join(reasons)}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return float(w * h / union) if union > 0 else 0.0


def faces() -> list[dict[str, object]]:
    """Every face detected in the photos and their mirror images, with its crop landmarks and
    why it does not count (empty when it does). A face counts only with its mirror twin (the
    mirror image's face whose box, mirrored back, overlaps it most, IoU > 0.5): both pass or
    neither, so the template is left-right symmetric up to detection noise."""
    from facenet_convert.models.mtcnn.detector import MTCNN
    from facenet_convert.third_party.facenet.testing.photos import PHOTOS

    detector = MTCNN(image_size=IMAGE_SIZE, margin=MARGIN)
    found: list[dict[str, object]] = []
    for name in PHOTO_NAMES:
        photo = PHOTOS[name]()
        height, width = photo.shape[:2]
        sides = []
        for mirrored in (False, True):
            image = np.ascontiguousarray(photo[:, ::-1]) if mirrored else photo
            detections = detector.detect_faces(image)[0]
            sides.append([{"photo": name, "mirrored": mirrored, "face": index,
                           **_describe(box, float(prob), points, height, width, detector)}
                          for index, (box, prob, points) in enumerate(zip(
                              detections.boxes.numpy(), detections.probs.numpy(),
                              detections.landmarks.numpy(), strict=True))])
        for face in sides[0]:
            box = face["box"]                                   # type: ignore[index]
            back = [np.array([width - 1 - twin["box"][2], twin["box"][1],  # type: ignore[index]
                              width - 1 - twin["box"][0], twin["box"][3]])  # type: ignore[index]
                    for twin in sides[1]]
            overlaps = [_iou(box, other) for other in back]     # type: ignore[arg-type]
            best = int(np.argmax(overlaps)) if overlaps else -1
            twin = sides[1][best] if best >= 0 and overlaps[best] > 0.5 else None
            if twin is None:
                face["why"] = face["why"] or "no mirror twin"
                continue
            face["twin"], twin["twin"] = twin["face"], face["face"]
            if face["why"] or twin["why"]:
                face["why"] = face["why"] or "its mirror twin does not count"
                twin["why"] = twin["why"] or "its mirror twin does not count"
        for twin in sides[1]:
            if "twin" not in twin:
                twin["why"] = twin["why"] or "no mirror twin"
        found += sides[0] + sides[1]
    for face in found:
        face["used"] = not face["why"]
    return found


def derive() -> tuple[np.ndarray, list[dict[str, object]]]:
    """The template (mean crop landmarks of the faces used, rounded) and every face."""
    found = faces()
    used = [face["crop"] for face in found if face["used"]]
    if not used:
        raise SystemExit("no upright face found: cannot derive a template")
    mean = np.mean(np.stack(used), axis=0)         # type: ignore[arg-type]
    return np.round(mean, DECIMALS), found


def literal(points: np.ndarray) -> str:
    rows = "".join(f"    ({x:.{DECIMALS}f}, {y:.{DECIMALS}f}),\n" for x, y in points.tolist())
    return f"FACENET_TEMPLATE = (\n{rows})"


def write(points: np.ndarray) -> None:
    text = MODULE.read_text(encoding="utf-8")
    pattern = re.compile(r"FACENET_TEMPLATE = \(\n(?:    \([^)]*\),\n){5}\)")
    if len(pattern.findall(text)) != 1:
        raise SystemExit(f"{MODULE}: cannot find the one FACENET_TEMPLATE table to rewrite")
    MODULE.write_text(pattern.sub(literal(points), text), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true",
                        help="rewrite FACENET_TEMPLATE in models/face_alignment.py")
    args = parser.parse_args(argv)
    points, found = derive()
    print("| photo | mirrored | face | box w x h | probability | roll (deg) | nose offset | used |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for face in found:
        w, h = face["size"]                          # type: ignore[misc]
        print(f"| {face['photo']} | {'yes' if face['mirrored'] else 'no'} | {face['face']} "
              f"| {w:.0f} x {h:.0f} | {face['prob']:.3f} | {face['roll']:+.1f} "
              f"| {face['yaw']:+.2f} | {'yes' if face['used'] else face['why']} |")
    used = [face for face in found if face["used"]]
    sizes = np.array([face["size"] for face in used])
    print(f"\n{len(used)} faces used; mean box {sizes[:, 0].mean():.0f} x "
          f"{sizes[:, 1].mean():.0f} px\n")
    print(literal(points))
    if args.write:
        write(points)
        print(f"\nwrote {MODULE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
