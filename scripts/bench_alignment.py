#!/usr/bin/env python
"""Similarity alignment vs upstream's box crop under in-plane rotation, on real photos.

Each photo (scikit-image's astronaut and camera, insightface 0.7.3's t1.jpg with six people) is
turned by every angle (-30..+30 degrees, every 10, on a canvas that holds all of it); MTCNN
finds the faces again, each is matched to its upright face by where its landmarks should have
gone, cropped both ways (box: upstream's 160 px / margin 32 crop; similarity: onto the facenet
template) and embedded. The table gives, per angle, the euclidean distance between the
embeddings of each turned face and of the same face upright, cropped the same way (mean and
max over the faces).

Then the upright faces' verification decisions: same person = a face and its mirror image or
its rescaled copies (x0.75, x1.33); different people = every pair of the eight people. Both
modes decide ``distance < threshold`` (``--threshold``; default: the threshold that best
separates the box mode's pairs); the script counts the pairs on which the modes disagree.

The embedding net is FaceNet's Inception-ResNet-V1 from ``--weights FILE`` / ``--pretrained
NAME`` (e.g. vggface2, when cached), or with ``--net dlib`` dlib's face recognition ResNet
(``dlib`` or ``dlib-bin`` and ``face_recognition_models`` installed; a real net trained on
faces; each 160 px crop is resized to its 150 px input with INTER_AREA). A net with random
weights cannot stand in: it puts every face about 0.001 from every other.

    .venv/bin/python scripts/bench_alignment.py [--pretrained vggface2 | --net dlib] [--json OUT]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from facenet_convert.converter.core.machine import describe_machine, machine_line

PHOTOS = ("astronaut", "camera", "t1")
ANGLES = (-30, -20, -10, 0, 10, 20, 30)
IMAGE_SIZE = 160
MARGIN = 32


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", choices=("facenet", "dlib"), default="facenet",
                        help="embedding net (dlib: dlib's face ResNet, if installed)")
    parser.add_argument("--weights", default=None, help="converted Inception-ResNet-V1 file")
    parser.add_argument("--pretrained", default=None, help="a cached release name")
    parser.add_argument("--angles", type=int, nargs="+", default=list(ANGLES))
    parser.add_argument("--threshold", type=float, default=None,
                        help="verification threshold (default: the box mode's best)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return parser.parse_args(argv)


def load_embedder(args: argparse.Namespace) -> tuple[Any, str]:
    """(uint8 NCHW crops -> float64 embeddings, what the net is)."""
    if args.net == "dlib":
        return DlibEmbedder(), "dlib face recognition ResNet v1 (face_recognition_models)"
    if args.weights is None and args.pretrained is None:
        raise SystemExit("give trained weights (--weights FILE or --pretrained NAME) or "
                         "--net dlib: a net with random weights cannot show this")
    from facenet_convert.converter.embedding import load_embedding_model

    loaded = load_embedding_model(args.weights, args.pretrained, fuse=False)
    return (FacenetEmbedder(loaded.model.eval(), loaded.preprocessing),
            f"{loaded.source} ({loaded.preprocessing})")


class FacenetEmbedder:
    def __init__(self, model: Any, preprocessing: str) -> None:
        from facenet_convert.models.preprocessing import standardization

        self.model = model
        self.standardize = standardization(preprocessing)

    def __call__(self, crops: Any) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(self.standardize(crops)).numpy().astype(np.float64)


class DlibEmbedder:
    """dlib's 128-d face descriptor of each crop, resized to its 150 px input."""

    def __init__(self) -> None:
        try:
            import dlib
            import face_recognition_models
        except ImportError:
            raise SystemExit("--net dlib needs dlib (or dlib-bin) and face_recognition_models "
                             "installed") from None
        self.net = dlib.face_recognition_model_v1(
            face_recognition_models.face_recognition_model_location())

    def __call__(self, crops: Any) -> np.ndarray:
        import cv2

        chips = [np.ascontiguousarray(cv2.resize(crop, (150, 150), interpolation=cv2.INTER_AREA))
                 for crop in crops.numpy().transpose(0, 2, 3, 1)]
        return np.array([np.array(self.net.compute_face_descriptor(chip)) for chip in chips],
                        dtype=np.float64)


Embedder = FacenetEmbedder | DlibEmbedder


def crops_of(detectors: dict[str, Any], image: np.ndarray, boxes: np.ndarray,
             points: np.ndarray) -> dict[str, Any]:
    return {mode: detector.extract(image, boxes, points) for mode, detector in detectors.items()}


def match(expected: np.ndarray, landmarks: np.ndarray) -> int | None:
    """The detection whose landmarks lie nearest where the face's should be (within half its
    eye distance on average: MTCNN's landmarks of a tilted face move by a quarter of it when
    the photo turns; the faces of these photos lie several eye distances apart), or None."""
    if len(landmarks) == 0:
        return None
    errors = np.linalg.norm(landmarks - expected[None], axis=2).mean(axis=1)
    best = int(np.argmin(errors))
    eyes = float(np.linalg.norm(expected[1] - expected[0]))
    return best if errors[best] < 0.5 * eyes else None


def rotation_table(detectors: dict[str, Any], embed: Embedder, photos: dict[str, np.ndarray],
                   angles: list[int]) -> list[dict[str, Any]]:
    from facenet_convert.third_party.facenet.testing.photos import rotated

    finder = detectors["box"]
    rows = []
    upright: dict[str, tuple[Any, dict[str, np.ndarray]]] = {}
    for name, photo in photos.items():
        found = finder.detect_faces(photo)[0]
        points = found.landmarks.numpy()
        crops = crops_of(detectors, photo, found.boxes.numpy(), points)
        upright[name] = (points, {mode: embed(c) for mode, c in crops.items()})
    for angle in angles:
        distances: dict[str, list[float]] = {mode: [] for mode in detectors}
        labels: list[str] = []
        faces = matched = 0
        for name, photo in photos.items():
            points, reference = upright[name]
            turned, matrix = rotated(photo, angle)
            found = finder.detect_faces(turned)[0]
            boxes, landmarks = found.boxes.numpy(), found.landmarks.numpy()
            for index, face in enumerate(points):
                faces += 1
                expected = face @ matrix[:, :2].T + matrix[:, 2]
                hit = match(expected, landmarks)
                if hit is None:
                    continue
                matched += 1
                labels.append(f"{name}#{index}")
                crops = crops_of(detectors, turned, boxes[[hit]], landmarks[[hit]])
                for mode, crop in crops.items():
                    vector = embed(crop)[0]
                    distances[mode].append(float(np.linalg.norm(vector - reference[mode][index])))
        rows.append({"angle": angle, "faces": faces, "matched": matched,
                     **{mode: {"mean": float(np.mean(d)) if d else None,
                               "median": float(np.median(d)) if d else None,
                               "max": float(np.max(d)) if d else None,
                               "worst": labels[int(np.argmax(d))] if d else None}
                        for mode, d in distances.items()}})
    return rows


def verification(detectors: dict[str, Any], embed: Embedder, photos: dict[str, np.ndarray],
                 threshold: float | None) -> dict[str, Any]:
    """Same-person pairs (a face and its mirrored / rescaled copies) and different-people pairs
    (every two of the people), decided by both modes at one threshold."""
    from facenet_convert.third_party.facenet.testing.photos import resized

    finder = detectors["box"]
    people: list[dict[str, np.ndarray]] = []          # per person: mode -> upright embedding
    names: list[str] = []
    same_names: list[str] = []
    same: dict[str, list[float]] = {mode: [] for mode in detectors}
    for name, photo in photos.items():
        found = finder.detect_faces(photo)[0]
        points = found.landmarks.numpy()
        crops = crops_of(detectors, photo, found.boxes.numpy(), points)
        vectors = {mode: embed(c) for mode, c in crops.items()}
        for index in range(len(points)):
            people.append({mode: vectors[mode][index] for mode in detectors})
            names.append(f"{name}#{index}")
        height, width = photo.shape[:2]
        for copy_name in ("mirror", "x0.75", "x1.33"):
            if copy_name == "mirror":
                copy = np.ascontiguousarray(photo[:, ::-1])
                mapping = np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0]])
            else:
                factor = float(copy_name[1:])
                size = (round(width * factor), round(height * factor))
                copy = resized(photo, *size)
                sx, sy = size[0] / width, size[1] / height
                mapping = np.array([[sx, 0.0, (sx - 1) / 2], [0.0, sy, (sy - 1) / 2]])
            seen = finder.detect_faces(copy)[0]
            boxes, landmarks = seen.boxes.numpy(), seen.landmarks.numpy()
            for index, face in enumerate(points):
                expected = face @ mapping[:, :2].T + mapping[:, 2]
                if copy_name == "mirror":          # the mirror swaps left and right points
                    expected = expected[[1, 0, 2, 4, 3]]
                hit = match(expected, landmarks)
                if hit is None:
                    continue
                same_names.append(f"{name}#{index} {copy_name}")
                crops = crops_of(detectors, copy, boxes[[hit]], landmarks[[hit]])
                for mode, crop in crops.items():
                    same[mode].append(float(np.linalg.norm(embed(crop)[0] - vectors[mode][index])))
    different = {mode: [float(np.linalg.norm(a[mode] - b[mode]))
                        for a, b in itertools.combinations(people, 2)] for mode in detectors}
    if threshold is None:
        threshold = best_threshold(same["box"], different["box"])
    decisions = {mode: [d < threshold for d in same[mode] + different[mode]]
                 for mode in detectors}
    pair_names = same_names + [f"{a} / {b}" for a, b in itertools.combinations(names, 2)]
    truth = [True] * len(same["box"]) + [False] * len(different["box"])
    return {"threshold": threshold, "people": len(people), "same_pairs": len(same["box"]),
            "different_pairs": len(different["box"]),
            "same": {mode: _range(v) for mode, v in same.items()},
            "different": {mode: _range(v) for mode, v in different.items()},
            "correct": {mode: int(sum(d == t for d, t in zip(dec, truth, strict=True)))
                        for mode, dec in decisions.items()},
            "disagreements": [name for name, a, b in zip(pair_names, decisions["box"],
                                                          decisions["similarity"], strict=True)
                              if a != b]}


def _range(values: list[float]) -> dict[str, float]:
    return {"min": float(np.min(values)), "mean": float(np.mean(values)),
            "max": float(np.max(values))}


def best_threshold(same: list[float], different: list[float]) -> float:
    """The threshold (midway between two observed distances) with the most correct decisions,
    the smallest such."""
    values = sorted(same + different)
    candidates = [(a + b) / 2 for a, b in itertools.pairwise(values)] or [values[0] + 1e-6]
    def correct(t: float) -> int:
        return sum(d < t for d in same) + sum(d >= t for d in different)
    return max(candidates, key=lambda t: (correct(t), -t))


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import torch

    from facenet_convert.models.mtcnn.detector import MTCNN
    from facenet_convert.third_party.facenet.testing.photos import PHOTOS as SOURCES

    torch.set_num_threads(max(1, torch.get_num_threads()))
    embed, what = load_embedder(args)
    detectors = {mode: MTCNN(image_size=IMAGE_SIZE, margin=MARGIN, alignment=mode)
                 for mode in ("box", "similarity")}
    photos = {name: SOURCES[name]() for name in PHOTOS}
    rows = rotation_table(detectors, embed, photos, args.angles)
    verdict = verification(detectors, embed, photos, args.threshold)
    machine = describe_machine()
    print(f"embedding net: {what}")
    print(f"machine: {machine_line(machine)}\n")
    print("| rotation | faces found | box: mean | median | max (face) | similarity: mean "
          "| median | max (face) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        cells = []
        for mode in ("box", "similarity"):
            figures = row[mode]
            if figures["mean"] is None:
                cells += ["-", "-", "-"]
                continue
            cells += [f"{figures['mean']:.3f}", f"{figures['median']:.3f}",
                      f"{figures['max']:.3f} ({figures['worst']})"]
        print(f"| {row['angle']:+d} deg | {row['matched']}/{row['faces']} | "
              + " | ".join(cells) + " |")
    total = verdict["same_pairs"] + verdict["different_pairs"]
    print(f"\nupright verification at threshold {verdict['threshold']:.3f}: "
          f"{verdict['same_pairs']} same-person pairs, {verdict['different_pairs']} "
          f"different-people pairs ({verdict['people']} people)")
    print("| mode | same: min / mean / max | different: min / mean / max | correct |")
    print("| --- | --- | --- | ---: |")
    for mode in ("box", "similarity"):
        s, d = verdict["same"][mode], verdict["different"][mode]
        print(f"| {mode} | {s['min']:.3f} / {s['mean']:.3f} / {s['max']:.3f} | "
              f"{d['min']:.3f} / {d['mean']:.3f} / {d['max']:.3f} | "
              f"{verdict['correct'][mode]}/{total} |")
    disagree = verdict["disagreements"]
    print(f"\nthe modes disagree on {len(disagree)} of {total} pairs"
          + (f": {', '.join(disagree)}" if disagree else ""))
    if args.json is not None:
        args.json.write_text(json.dumps({"net": what, "machine": machine, "rotation": rows,
                                         "verification": verdict}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
