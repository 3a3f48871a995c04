#!/usr/bin/env python
"""Embedding throughput on CPU: our PyTorch model vs the upstream TF graph, same images, one run.

1. builds (or reuses, from the cache) an upstream-graph checkpoint with
   ``third_party.facenet.testing.build.build_checkpoint`` (512-d, as the 2018 releases);
2. converts it with ``facenet_convert.converter.convert`` and loads it into ``InceptionResNetV1``;
3. makes ``--images`` real 160x160 face-sized crops from scikit-image's sample photographs,
   standardized with fixed image standardization (as the 2018 releases);
4. times batches of ``--batch-size`` through both, alternating TF and torch batch by batch
   after one unmeasured warm-up each, and prints images per second (median over batches),
   wall clock and per CPU second of the process, side by side, with the largest absolute
   embedding difference. Two configurations: each library's default threads, then one
   thread each (``torch.set_num_threads(1)``; TF intra/inter-op pools of 1).

TF runs the graph restored the way upstream inference does (``phase_train`` False); ours is
``models.inference.Embedder`` (what ``facenet-convert embed`` runs: BatchNorm folded, ReLU and
residual adds fused into oneDNN convolutions, channels-last). On a machine shared with other
work, wall-clock figures depend on how the scheduler shares the cores (TF runs more threads
than ours: its inter-op pool, intra-op pool and oneDNN's); the 1-minute load average is printed
so that such runs can be recognised. Measure on an otherwise idle machine.

    .venv/bin/python scripts/bench_embed.py [--batch-size 32] [--batches 4] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

EMBEDDING_SIZE = 512


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=5, help="measured batches per side")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--checkpoint-dir", type=Path, default=None,
                        help="where the upstream-graph checkpoint is built (default: cache)")
    return parser.parse_args(argv)


def sample_faces(count: int, seed: int = 0):
    """``count`` uint8 160x160 RGB crops of scikit-image's photographs (deterministic)."""
    import numpy as np
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(),
              np.repeat(data.camera()[:, :, None], 3, axis=2)]
    rng = np.random.default_rng(seed)
    crops = []
    for k in range(count):
        photo = photos[k % len(photos)]
        top = int(rng.integers(0, photo.shape[0] - 160 + 1))
        left = int(rng.integers(0, photo.shape[1] - 160 + 1))
        crops.append(photo[top:top + 160, left:left + 160, :3])
    return np.stack(crops)


class TFEmbedder:
    """The upstream inference graph restored from a checkpoint prefix (NHWC float input)."""

    def __init__(self, prefix: Path, embedding_size: int, threads: int | None = None) -> None:
        from facenet_convert.third_party.facenet.compat import load_upstream, upstream_mode
        from facenet_convert.third_party.facenet.graphs import build_inference

        self.up = load_upstream()
        tf = self.up.tf
        self.graph = tf.Graph()
        with upstream_mode(), self.graph.as_default():
            net = build_inference(self.up, embedding_size=embedding_size, num_classes=None)
            saver = tf.train.Saver(tf.global_variables())
            config = tf.ConfigProto()
            if threads is not None:
                config.intra_op_parallelism_threads = threads
                config.inter_op_parallelism_threads = threads
            self.session = tf.Session(graph=self.graph, config=config)
            saver.restore(self.session, str(prefix))
        self.images = net.images
        self.embeddings = net.embeddings

    def __call__(self, nhwc):
        from facenet_convert.third_party.facenet.compat import upstream_mode

        with upstream_mode():
            return self.session.run(self.embeddings, feed_dict={self.images: nhwc})


def load_converted(prefix: Path):
    """Our model with the converted checkpoint (strict load)."""
    from facenet_convert.converter.conversion import convert
    from facenet_convert.models.inception_resnet_v1 import InceptionResNetV1, load_strict

    result = convert(str(prefix), "inception_resnet_v1")
    model = InceptionResNetV1(embedding_size=result.embedding_size,
                              num_classes=result.num_classes)
    load_strict(model, result.state_dict, str(prefix))
    return model.eval()


def _measure(ours, theirs, nchw, nhwc, batch_size):
    """Alternate TF and torch per batch after one warm-up each.

    Returns medians of images per wall-clock second and per CPU second of this process (the
    latter is not skewed by other load on the machine when each side runs one thread), and the
    largest absolute embedding difference.
    """
    import numpy as np

    ours(nchw[0])
    theirs(nhwc[0])
    wall: dict[str, list[float]] = {"ours": [], "tensorflow": []}
    cpu: dict[str, list[float]] = {"ours": [], "tensorflow": []}
    diff = 0.0
    for torch_batch, tf_batch in zip(nchw, nhwc, strict=True):
        for side, call, batch in (("tensorflow", theirs, tf_batch), ("ours", ours, torch_batch)):
            start, start_cpu = time.perf_counter(), time.process_time()
            out = call(batch)
            wall[side].append(time.perf_counter() - start)
            cpu[side].append(time.process_time() - start_cpu)
            if side == "tensorflow":
                tf_out = out
            else:
                diff = max(diff, float(np.abs(out.numpy() - tf_out).max()))
    return ({side: batch_size / statistics.median(v) for side, v in wall.items()},
            {side: batch_size / statistics.median(v) for side, v in cpu.items()}, diff)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import torch

    from facenet_convert.models.inference import Embedder
    from facenet_convert.models.preprocessing import fixed_image_standardization
    from facenet_convert.third_party.facenet.testing.build import build_checkpoint
    from facenet_convert.third_party.wheels import cache_dir

    directory = args.checkpoint_dir or cache_dir() / "bench-embed" / f"irv1-{EMBEDDING_SIZE}d"
    built = build_checkpoint(directory, embedding_size=EMBEDDING_SIZE, num_classes=None,
                             ema=False, optimizer=None)
    model = load_converted(built.prefix)
    faces = sample_faces(args.batch_size * args.batches)
    standardized = fixed_image_standardization(
        torch.from_numpy(faces.transpose(0, 3, 1, 2).copy()))
    nchw = [standardized[i:i + args.batch_size]
            for i in range(0, len(standardized), args.batch_size)]
    nhwc = [b.permute(0, 2, 3, 1).contiguous().numpy() for b in nchw]

    default_threads = torch.get_num_threads()
    load_before = os.getloadavg()[0]
    rows = []
    for label, threads in (("default threads", None), ("1 thread each", 1)):
        torch.set_num_threads(default_threads if threads is None else threads)
        ours = Embedder(model)
        theirs = TFEmbedder(built.prefix, EMBEDDING_SIZE, threads)
        figures, per_cpu, diff = _measure(ours, theirs, nchw, nhwc, args.batch_size)
        rows.append({"threads": label, "torch_threads": torch.get_num_threads(),
                     "fused": ours.fused, "images_per_s": figures,
                     "images_per_cpu_s": per_cpu, "max_abs_diff": diff})
    torch.set_num_threads(default_threads)

    load = (load_before, os.getloadavg()[0])
    print(f"embedding throughput on CPU, images/s, batch {args.batch_size}, median of "
          f"{args.batches} batches, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"1-min load average {load[0]:.1f} before / {load[1]:.1f} after (figures from a "
          "busy machine favour the side running more threads)")
    print(f"{'':18}{'ours':>10}{'tensorflow':>12}{'ratio':>8}{'max|diff|':>11}")
    for row in rows:
        for unit, key in (("img/s", "images_per_s"), ("img/cpu-s", "images_per_cpu_s")):
            ours_s, tf_s = row[key]["ours"], row[key]["tensorflow"]
            print(f"{row['threads'][:8] + ' ' + unit:18}{ours_s:>10.2f}{tf_s:>12.2f}"
                  f"{ours_s / tf_s:>7.2f}x{row['max_abs_diff']:>11.1e}")
    if args.json is not None:
        report = {"batch_size": args.batch_size, "batches": args.batches, "rows": rows,
                  "load_average": load,
                  "torch": torch.__version__, "cpu_count": os.cpu_count(),
                  "machine": platform.machine()}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(_parse(argv))


if __name__ == "__main__":
    sys.exit(main())
