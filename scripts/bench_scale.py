#!/usr/bin/env python
"""Local engine vs ``--engine ray`` on this machine, same inputs, side by side in one run.

For ``embed`` (``--images`` real face crops of scikit-image's photographs, a 512-d
Inception-ResNet-V1 with seeded weights, the default backend) and for ``align`` (``--photos``
rescaled real photographs, the published MTCNN weights), each engine runs as the CLI does, in
a fresh process (``python -m facenet_convert.converter ...``), after one unmeasured warm-up
(which also fills the ONNX export cache). Reported per engine: wall seconds (median of
``--runs``, process start to exit: imports, model load, Ray start for ``ray``), the
throughput, the throughput per core (local: the process's torch threads; ray: ``--actors``
actors of one CPU each), and the ray / local wall ratio (the overhead); then the steady rates
that size a cluster, without process start and model loading: the local engine's own
functions in this process per core (its rate over the torch threads), and each Ray actor's
rate (median over shards of inputs per second of actor time, from the manifest). The Ray side
checks
that its rows equal the local ones bit for bit (embed) and its crops byte for byte (align).

Ray starts a local cluster bound to 127.0.0.1 (no dashboard). On a 2-core machine shared with
other work the figures move with the load; the 1-minute load average is printed.

    .venv/bin/python scripts/bench_scale.py [--images 96] [--photos 16] [--runs 1] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from facenet_convert.converter.core.machine import describe_machine


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96, help="face crops to embed")
    parser.add_argument("--photos", type=int, default=16, help="photos to align")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--runs", type=int, default=1, help="measured runs per engine")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return parser.parse_args(argv)


def _inputs(work: Path, images: int, photos: int) -> tuple[Path, Path, Path, Path]:
    """Face crops, a photo dataset, seeded weights and an MTCNN folder under ``work``."""
    import numpy as np
    import torch
    from PIL import Image
    from skimage import data

    from facenet_convert.models.inception_resnet_v1 import InceptionResNetV1
    from facenet_convert.third_party.wheels import FACENET_PYTORCH, wheel_member

    rng = np.random.default_rng(0)
    astronaut = data.astronaut()
    faces = work / "faces"
    faces.mkdir()
    for k in range(images):
        y, x = rng.integers(0, 60), rng.integers(120, 200)
        Image.fromarray(astronaut[y:y + 180, x:x + 180]).save(faces / f"face{k:05d}.png")
    dataset = work / "photos"
    sources = [astronaut, np.repeat(data.camera()[:, :, None], 3, axis=2)]
    for k in range(photos):
        folder = dataset / f"class{k % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        photo = sources[k % 2]
        side = int(photo.shape[0] * (0.6 + 0.4 * (k % 5) / 4))
        Image.fromarray(photo).resize((side, side)).save(folder / f"photo{k:05d}.png")
    torch.manual_seed(0)
    weights = work / "weights.pt"
    torch.save(InceptionResNetV1(embedding_size=512).eval().state_dict(), weights)
    mtcnn = work / "mtcnn"
    mtcnn.mkdir()
    for name in ("pnet", "rnet", "onet"):
        shutil.copy(wheel_member(FACENET_PYTORCH, f"facenet_pytorch/data/{name}.pt"),
                    mtcnn / f"{name}.pt")
    return faces, dataset, weights, mtcnn


def _cli(*args: object) -> float:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "facenet_convert.converter",
                           *map(str, args)], env=env, capture_output=True, text=True,
                          check=False)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"bench_scale: {' '.join(map(str, args[:3]))} failed: "
                         f"{done.stderr.strip()[-400:]}")
    return seconds


def _timed(runs: int, make: Callable[[int], float]) -> float:
    make(-1)                                                 # warm-up, unmeasured
    return statistics.median(make(k) for k in range(runs))


def _local_rates(faces: Path, dataset: Path, weights: Path, mtcnn: Path, batch_size: int
                 ) -> tuple[float, float]:
    """Steady rates of the local engine's own functions in this process (default threads,
    models loaded, one warm-up pass): embedded images/s and aligned photos/s."""
    from facenet_convert.converter.align import AlignOptions, align_photo, mtcnn_nets
    from facenet_convert.converter.embedding import embed_images, load_embedding_model

    loaded = load_embedding_model(weights)
    paths = sorted(faces.iterdir())
    embed_images(loaded, paths[:batch_size], batch_size=batch_size)
    began = time.perf_counter()
    embed_images(loaded, paths, batch_size=batch_size)
    embed_rate = len(paths) / (time.perf_counter() - began)
    options = AlignOptions(nets=mtcnn_nets(mtcnn))
    tasks = [(str(p), str(p.with_suffix(".crop.png"))) for p in sorted(dataset.rglob("*.png"))]
    align_photo(tasks[0], options)
    began = time.perf_counter()
    for task in tasks:
        align_photo(task, options)
    return embed_rate, len(tasks) / (time.perf_counter() - began)


def _actor_rate(folder: Path) -> float:
    """An actor's steady rate: the median over shards of inputs / seconds its actor spent
    (the manifest's per-shard seconds; an actor's first shard includes its warm-up)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    return statistics.median(s["inputs"] / s["seconds"] for s in manifest["shards"])


def run(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from facenet_convert.converter.scale import read_embeddings

    threads = torch.get_num_threads()
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        faces, dataset, weights, mtcnn = _inputs(work, args.images, args.photos)
        embed = ["embed", faces, "--weights", weights, "--batch-size", args.batch_size,
                 "--force"]
        ray_args = ["--engine", "ray", "--actors", args.actors, "--shard-size",
                    args.batch_size]
        local_embed = _timed(args.runs, lambda k: _cli(*embed, "-o", work / f"e{k}.npz"))
        ray_embed = _timed(args.runs, lambda k: _cli(*embed, *ray_args, "-o", work / f"e{k}"))
        saved = np.load(work / "e0.npz")
        table = read_embeddings(work / "e0")
        order = np.argsort(table.column("name").to_pylist())
        got = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))[order]
        embed_equal = bool(np.array_equal(got, saved["embeddings"][np.argsort(saved["names"])]))

        align = ["align", dataset, "--mtcnn", mtcnn]
        ray_align_args = ["--engine", "ray", "--actors", args.actors, "--shard-size",
                          max(1, args.photos // (4 * args.actors))]
        local_align = _timed(args.runs, lambda k: _cli(*align, work / f"a{k}", "--force"))
        ray_align = _timed(args.runs, lambda k: _cli(*align, work / f"r{k}", *ray_align_args,
                                                     "--force"))
        crops = sorted(p.relative_to(work / "a0") for p in (work / "a0").rglob("*.png"))
        align_equal = bool(crops) and all(
            (work / "a0" / c).read_bytes() == (work / "r0" / c).read_bytes() for c in crops)
        steady = _local_rates(faces, dataset, weights, mtcnn, args.batch_size)
        actor = (_actor_rate(work / "e0"), _actor_rate(work / "r0"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def row(name: str, count: int, local: float, ray: float, unit: str, equal: bool,
            core: float, per_actor: float) -> dict:
        return {"step": name, "count": count, "unit": unit, "local_s": round(local, 2),
                "steady_local_per_core_s": round(core / threads, 2),
                "steady_ray_per_actor_s": round(per_actor, 2),
                "ray_s": round(ray, 2), "overhead": round(ray / local, 2),
                "local_per_s": round(count / local, 2), "ray_per_s": round(count / ray, 2),
                "local_per_core_s": round(count / local / threads, 2),
                "ray_per_core_s": round(count / ray / args.actors, 2), "identical": equal}

    return {"cores": os.cpu_count(), "torch_threads": threads, "actors": args.actors,
            "runs": args.runs, "load_average": list(os.getloadavg()),
            "rows": [row("embed", args.images, local_embed, ray_embed, "images", embed_equal,
                         steady[0], actor[0]),
                     row("align", args.photos, local_align, ray_align, "photos",
                         align_equal, steady[1], actor[1])]}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    result = run(args)
    result["machine"] = describe_machine()
    for r in result["rows"]:
        print(f"{r['step']}: {r['count']} {r['unit']}  local {r['local_s']:.1f} s "
              f"({r['local_per_core_s']:.1f}/s/core)  ray {r['ray_s']:.1f} s "
              f"({r['ray_per_core_s']:.1f}/s/core, {args.actors} actors)  "
              f"ray/local {r['overhead']:.2f}x  identical: {r['identical']}; steady per "
              f"core: local {r['steady_local_per_core_s']:.1f}/s, ray "
              f"{r['steady_ray_per_actor_s']:.1f}/s per actor")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
