#!/usr/bin/env python
"""MTCNN detection on CPU: ours vs upstream TF ``detect_face``, same photos, one run.

Photos: insightface's ``t1.jpg`` (six people) and scikit-image's ``astronaut``, each scaled to a
small size (300x250) and to 1080p (1920x1080). Upstream is davidsandberg's own ``detect_face``
with det1/2/3.npy on TensorFlow (``third_party.facenet.testing.reference.UpstreamDetector``,
OpenCV resizes, as align_dataset_mtcnn runs it); ours is ``models.detection.MTCNN`` on the
derived PNet/RNet/ONet. After one unmeasured warm-up each, calls alternate TF / ours and the
median milliseconds per image are reported with the ratio ours / TF, plus ours on a batch of
same-size photos in one call. Last, faces per second through the whole detect -> crop ->
standardize -> embed chain (``embed --detect``'s path, InceptionResNetV1 via ``Embedder``).
The 1-minute load average is printed: on a shared machine the figures move with it.

    .venv/bin/python scripts/bench_detect.py [--runs 5] [--json OUT]

For a quiet re-measure run it alone on an idle machine, e.g. ``--runs 7 --json
bench_detect.json``, two or three times: the ratio moves with the load (TF's thread pools take
a larger share of a busy machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SIZES = {"small 300x250": (300, 250), "1080p 1920x1080": (1920, 1080)}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="measured calls per side and photo")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return parser.parse_args(argv)


def _photos() -> dict[str, dict[str, object]]:
    from tests.detection_photos import PHOTOS, resized

    base = {"t1": PHOTOS["t1"](), "astronaut": PHOTOS["astronaut"]()}
    return {size: {name: resized(photo, *dims) for name, photo in base.items()}
            for size, dims in SIZES.items()}


def _timed(function: object, *args: object) -> float:
    start = time.perf_counter()
    function(*args)  # type: ignore[operator]
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from facenet_convert.models.detection import MTCNN
    from facenet_convert.models.inception_resnet_v1 import InceptionResNetV1
    from facenet_convert.models.inference import Embedder
    from facenet_convert.models.preprocessing import fixed_image_standardization
    from facenet_convert.third_party.facenet.testing.reference import UpstreamDetector

    ours = MTCNN(margin=32)
    load_before = os.getloadavg()[0]
    rows = []
    photos = _photos()
    with UpstreamDetector() as upstream:
        for size, images in photos.items():
            tf_times, our_times, faces = [], [], 0
            for image in images.values():
                upstream.detect(image)
                ours.detect_faces(image)
                for _ in range(args.runs):
                    tf_times.append(_timed(upstream.detect, image))
                    our_times.append(_timed(ours.detect_faces, image))
                faces += len(ours.detect_faces(image)[0])
            batch = list(images.values())
            batched = [_timed(ours.detect_faces, batch) / len(batch) for _ in range(args.runs)]
            tf_ms = statistics.median(tf_times) * 1e3
            our_ms = statistics.median(our_times) * 1e3
            rows.append({"size": size, "photos": len(images), "faces": faces,
                         "tf_ms": tf_ms, "ours_ms": our_ms, "ratio": our_ms / tf_ms,
                         "ours_batched_ms": statistics.median(batched) * 1e3})
            print(f"{size}: TF {tf_ms:.1f} ms/image, ours {our_ms:.1f} ms/image "
                  f"({our_ms / tf_ms:.2f}x), ours batched {rows[-1]['ours_batched_ms']:.1f} "
                  f"ms/image", flush=True)

    embedder = Embedder(InceptionResNetV1().eval())
    chain_images = [image for images in photos.values() for image in images.values()]

    def chain() -> int:
        count = 0
        for image in chain_images:
            found = ours.detect_faces(image)[0]
            if len(found):
                crops = fixed_image_standardization(ours.extract(image, found))
                embedder(crops)
                count += len(found)
        return count

    chain()
    with torch.inference_mode():
        times, counts = [], []
        for _ in range(max(args.runs // 2, 1)):
            start = time.perf_counter()
            counts.append(chain())
            times.append(time.perf_counter() - start)
    faces_per_s = float(np.median([c / t for c, t in zip(counts, times, strict=True)]))
    print(f"detect -> crop -> embed: {faces_per_s:.1f} faces/s "
          f"({counts[0]} faces in {len(chain_images)} photos)")
    load = (load_before, os.getloadavg()[0])
    print(f"load average (1 min) before / after: {load[0]:.2f} / {load[1]:.2f}")
    if args.json is not None:
        report = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                  "rows": rows, "chain_faces_per_s": faces_per_s,
                  "chain_faces": counts[0], "chain_photos": len(chain_images),
                  "load_average": load}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(_parse(argv))


if __name__ == "__main__":
    sys.exit(main())
