#!/usr/bin/env python
"""MTCNN detection on CPU: ours vs upstream TF ``detect_face``, same photos, one run.

Photos: insightface's ``t1.jpg`` (six people) and scikit-image's ``astronaut``, each scaled to a
small size (300x250) and to 1080p (1920x1080). Upstream is davidsandberg's own ``detect_face``
with det1/2/3.npy on TensorFlow (``third_party.facenet.testing.reference.UpstreamDetector``,
OpenCV resizes, as align_dataset_mtcnn runs it); ours is ``models.detection.MTCNN`` on the
derived PNet/RNet/ONet. Each side runs in blocks of back-to-back calls (as ``align`` runs a
folder), blocks alternating TF / ours, each after a pause and one untimed call, so that neither
side is timed while the other's pool threads still spin; the milliseconds per image (mean over
the photos of each one's median) and the ratio ours / TF are reported, plus ours per photo on
a list of 8 same-size photos in one call (the photos, their mirror images, twice). Last, faces
per second through the whole detect -> crop -> standardize -> embed chain (``embed
--detect``'s path, InceptionResNetV1 via ``Embedder``).
The 1-minute load average is printed: on a shared machine the figures move with it.

Two more columns say where the time goes: TF's time inside its three net calls, and the floor
for any detector that runs these nets exactly: the CPU time of our PNet/RNet/ONet forwards for
one detection (single-threaded, best of 3), divided by the cores this process may use.

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

from facenet_convert.converter.core.machine import describe_machine

SIZES = {"small 300x250": (300, 250), "1080p 1920x1080": (1920, 1080)}
BLOCK = 3
"""Timed calls per block: each side runs back to back (as ``align`` runs photos), in blocks
that alternate TF / ours, each after a pause and one untimed call, so that neither side is
timed while the other's pool threads still spin or its own are asleep."""
SETTLE_S = 0.2


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5,
                        help=f"blocks of {BLOCK} measured calls per side and photo")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return parser.parse_args(argv)


def _photos() -> dict[str, dict[str, object]]:
    from facenet_convert.third_party.facenet.testing.photos import PHOTOS, resized

    base = {"t1": PHOTOS["t1"](), "astronaut": PHOTOS["astronaut"]()}
    return {size: {name: resized(photo, *dims) for name, photo in base.items()}
            for size, dims in SIZES.items()}


def _timed(function: object, *args: object) -> float:
    start = time.perf_counter()
    function(*args)  # type: ignore[operator]
    return time.perf_counter() - start


def _block(function: object, *args: object) -> object:
    """After a pause and one untimed call: ``count`` timed calls back to back."""
    time.sleep(SETTLE_S)
    function(*args)  # type: ignore[operator]
    return lambda count: [_timed(function, *args) for _ in range(count)]


def _net_floor_ms(ours: object, image: object) -> float:
    """CPU milliseconds of the PNet/RNet/ONet forwards one detection of ``image`` runs,
    single-threaded, divided by the cores: no exact detector with these nets beats it here."""
    import torch

    inputs: list[tuple[object, object]] = []
    nets = (ours.pnet, ours.rnet, ours.onet)  # type: ignore[attr-defined]

    def recorder(plain: object) -> object:
        def record(x: object) -> object:
            inputs.append((plain, x.clone()))  # type: ignore[attr-defined]
            return plain(x)  # type: ignore[operator]
        return record

    for net in nets:                  # detection calls each net's detect_forward
        net.detect_forward = recorder(net.detect_forward)
    try:
        ours.detect_faces(image)  # type: ignore[attr-defined]
    finally:
        for net in nets:
            del net.detect_forward
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for net, x in inputs:
                net(x)                                  # warm
            best = float("inf")
            for _ in range(3):
                start = time.thread_time()
                for net, x in inputs:
                    net(x)
                best = min(best, time.thread_time() - start)
    finally:
        torch.set_num_threads(threads)
    return best * 1e3 / len(os.sched_getaffinity(0))


def _timed_tf_nets(upstream: object) -> dict[str, float]:
    """Wrap upstream's three net calls to add their wall seconds into the returned dict."""
    spent = {"seconds": 0.0}

    def timed(net: object) -> object:
        def call(x: object) -> object:
            start = time.perf_counter()
            try:
                return net(x)  # type: ignore[operator]
            finally:
                spent["seconds"] += time.perf_counter() - start
        return call

    upstream._nets = tuple(timed(net) for net in upstream._nets)  # type: ignore[attr-defined]
    return spent


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from facenet_convert.models.inception_resnet_v1 import InceptionResNetV1
    from facenet_convert.models.inference import Embedder
    from facenet_convert.models.mtcnn.detector import MTCNN
    from facenet_convert.models.preprocessing import fixed_image_standardization
    from facenet_convert.third_party.facenet.testing.reference import UpstreamDetector

    ours = MTCNN(margin=32)
    load_before = os.getloadavg()[0]
    rows = []
    photos = _photos()
    with UpstreamDetector() as upstream:
        tf_nets = _timed_tf_nets(upstream)
        for size, images in photos.items():
            tf_ms, our_ms, faces, floors, tf_nets_ms, per_photo = [], [], 0, [], [], []
            for name, image in images.items():
                upstream.detect(image)
                ours.detect_faces(image)
                tf_times, our_times, tf_net_times = [], [], []
                for _ in range(args.runs):
                    tf_block = _block(upstream.detect, image)
                    before = tf_nets["seconds"]
                    tf_times.extend(tf_block(BLOCK))
                    tf_net_times.append((tf_nets["seconds"] - before) / BLOCK)
                    our_times.extend(_block(ours.detect_faces, image)(BLOCK))
                tf_ms.append(statistics.median(tf_times) * 1e3)
                our_ms.append(statistics.median(our_times) * 1e3)
                tf_nets_ms.append(statistics.median(tf_net_times) * 1e3)
                per_photo.append(f"{name} {tf_ms[-1]:.1f} / {our_ms[-1]:.1f}")
                faces += len(ours.detect_faces(image)[0])
                floors.append(_net_floor_ms(ours, image))
            # a list as align or embed --detect sees a folder: each photo and its mirror, twice
            batch = [*images.values(), *(np.ascontiguousarray(i[:, ::-1]) for i in images.values())]
            batch = batch * 2
            batched = [seconds / len(batch) for _ in range(args.runs)
                       for seconds in _block(ours.detect_faces, batch)(BLOCK)]
            # per image: the mean over the photos of each photo's median (the time per photo
            # of the whole set; a pooled median would jump between unlike photos)
            rows.append({"size": size, "photos": len(images), "faces": faces,
                         "tf_ms": statistics.mean(tf_ms), "ours_ms": statistics.mean(our_ms),
                         "ratio": statistics.mean(our_ms) / statistics.mean(tf_ms),
                         "ours_batched_ms": statistics.median(batched) * 1e3,
                         "tf_nets_ms": statistics.mean(tf_nets_ms),
                         "nets_floor_ms": statistics.mean(floors),
                         "per_photo_tf_ours_ms": per_photo})
            tf_mean, our_mean = rows[-1]["tf_ms"], rows[-1]["ours_ms"]
            floor = rows[-1]["nets_floor_ms"]
            print(f"{size}: TF {tf_mean:.1f} ms/image (its nets {rows[-1]['tf_nets_ms']:.1f}), "
                  f"ours {our_mean:.1f} ms/image ({our_mean / tf_mean:.2f}x), ours batched "
                  f"{rows[-1]['ours_batched_ms']:.1f} ms/image; our nets' CPU time / cores "
                  f"{floor:.1f} ms ({floor / tf_mean:.2f}x TF); TF / ours per photo: "
                  f"{', '.join(per_photo)}", flush=True)

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
        report = {"machine": describe_machine(), "threads": torch.get_num_threads(),
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
