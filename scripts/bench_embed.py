#!/usr/bin/env python
"""Embedding throughput on CPU, every inference path side by side in one run, vs the hardware.

1. builds (or reuses, from the cache) an upstream-graph checkpoint with
   ``third_party.facenet.testing.build.build_checkpoint`` (512-d, as the 2018 releases);
2. converts it with ``facenet_convert.converter.convert`` and loads it into ``InceptionResNetV1``;
3. makes ``--images`` real 160x160 face-sized crops from scikit-image's sample photographs,
   standardized with fixed image standardization (as the 2018 releases);
4. measures the machine's matmul peak (a 4096x4096 matmul in fp32 and in bf16, best of 3);
5. times batches of ``--batch-size`` through every path, round-robin batch by batch after one
   unmeasured warm-up each, and prints images per second (median over batches), effective
   GFLOP/s (2.84 GFLOP per 160x160 image for InceptionResNetV1) and the fraction of the
   matching matmul peak, with each path's largest absolute embedding difference from TF.

Paths: ``tf-graph`` (the upstream graph restored as upstream inference does), ``eager`` (the
plain model, facenet-pytorch's way), ``torch-inference`` (scripted, frozen,
``optimize_for_inference``), ``onnxruntime`` (a plain ONNX Runtime session over the exported
model), ``ours-default`` (what ``facenet-convert embed`` runs: ``make_engine()``), ``ours-bf16``
(``--precision bf16``; only on CPUs with AVX512_BF16/AMX), ``ours-int8`` (``--precision int8``,
ONNX Runtime quantization). For bf16 and int8 it also prints the embedding difference from
fp32 and how many same/different decisions on every pair of the images change (at 1.1 and at
the median distance). The checkpoint is untrained (random weights): its embeddings of
different images lie close together, so these decision counts are a worst case, not what
trained weights give.

On a machine shared with other work the figures move with the load (the 1-minute load average
is printed before and after). Measure on an otherwise idle machine.

    .venv/bin/python scripts/bench_embed.py [--batch-size 32] [--batches 5] [--json OUT]
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
    from facenet_convert.models.inception_resnet_v1 import InceptionResNetV1
    from facenet_convert.models.weights import load_strict

    result = convert(str(prefix), "inception_resnet_v1")
    model = InceptionResNetV1(embedding_size=result.embedding_size,
                              num_classes=result.num_classes)
    load_strict(model, result.state_dict, str(prefix))
    return model.eval()


GFLOP_PER_IMAGE = 2.84
"""Multiply-adds x 2 of InceptionResNetV1 on one 160x160 image."""


def matmul_peak(dtype_name: str, size: int = 4096, repeats: int = 3) -> float:
    """GFLOP/s of the best of ``repeats`` ``size`` x ``size`` matmuls in ``dtype_name``."""
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * size ** 3 / best / 1e9


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def build_paths(model, nchw, theirs, bf16: bool):
    """name -> callable(batch index) -> numpy embeddings, and the fp32/bf16 peak each uses."""
    import torch

    from facenet_convert.converter.engines import OnnxModel, make_engine, onnx_bytes

    with torch.no_grad():
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(model)))
    session = OnnxModel(onnx_bytes(model, nchw[0][:2], dynamic={0: ("batch", 1)}))
    default = make_engine(model)
    nhwc = [b.permute(0, 2, 3, 1).contiguous().numpy() for b in nchw]

    def torch_call(runner):
        def call(i):
            with torch.inference_mode():
                return runner(nchw[i]).float().numpy()
        return call

    paths = {"tf-graph": (lambda i: theirs(nhwc[i]), "float32"),
             "eager": (torch_call(model), "float32"),
             "torch-inference": (torch_call(frozen), "float32"),
             "onnxruntime": (lambda i: session.run(nchw[i])[0], "float32"),
             f"ours-default ({default.describe()})": (torch_call(default), "float32")}
    if bf16:
        half = make_engine(model, precision="bf16")
        paths[f"ours-bf16 ({half.describe()})"] = (torch_call(half), "bfloat16")
    quantized = make_engine(model, precision="int8")
    # int8 has no matmul peak measured here: its row is set against the fp32 peak
    paths[f"ours-int8 ({quantized.describe()})"] = (torch_call(quantized), "float32")
    return paths


SETTLE_S = 0.3
"""Pause before each timed call: ONNX Runtime's and OpenMP's thread pools keep spinning for a
moment after a call returns and slow whichever path runs next, so without it the round-robin
order would favour some paths (docs/performance.md)."""


def measure(paths, batches: int, batch_size: int):
    """Round-robin over the paths per batch after a warm-up; medians of img/s."""
    outputs = {}
    for call, _ in paths.values():
        call(0)
    times: dict[str, list[float]] = {name: [] for name in paths}
    for i in range(batches):
        for name, (call, _) in paths.items():
            time.sleep(SETTLE_S)
            start = time.perf_counter()
            out = call(i)
            times[name].append(time.perf_counter() - start)
            outputs.setdefault(name, []).append(out)
    return ({name: batch_size / statistics.median(t) for name, t in times.items()},
            {name: _concat(v) for name, v in outputs.items()})


def _concat(chunks):
    import numpy as np

    return np.concatenate(chunks)


def decisions_changed(reference, other) -> dict[str, int]:
    """Pairs whose same/different decision differs, at 1.1 and at the median distance."""
    import itertools

    import numpy as np

    pairs = list(itertools.combinations(range(len(reference)), 2))
    d_ref = np.array([np.linalg.norm(reference[i] - reference[j]) for i, j in pairs])
    d_other = np.array([np.linalg.norm(other[i] - other[j]) for i, j in pairs])
    median = float(np.median(d_ref))
    return {"pairs": len(pairs), "median_threshold": median,
            **{f"changed_at_{t:.3g}": int(((d_ref < t) != (d_other < t)).sum())
               for t in (1.1, median)},
            "max_abs_distance_diff": float(np.abs(d_ref - d_other).max())}


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import torch

    from facenet_convert.converter.engines import bf16_supported
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
    load_before = os.getloadavg()[0]
    bf16 = bf16_supported()
    peaks = {"float32": matmul_peak("float32")}
    if bf16:
        peaks["bfloat16"] = matmul_peak("bfloat16")
    theirs = TFEmbedder(built.prefix, EMBEDDING_SIZE)
    paths = build_paths(model, nchw, theirs, bf16)
    images_per_s, outputs = measure(paths, args.batches, args.batch_size)
    reference = outputs["tf-graph"]
    rows = []
    for name, (_, dtype) in paths.items():
        gflops = images_per_s[name] * GFLOP_PER_IMAGE
        rows.append({"path": name, "images_per_s": images_per_s[name], "gflop_per_s": gflops,
                     "peak": dtype, "of_peak": gflops / peaks[dtype],
                     "max_abs_diff_vs_tf": float(np.abs(outputs[name] - reference).max())})
    fp32 = outputs["eager"]
    reduced = {}
    for name in outputs:
        if name.startswith(("ours-bf16", "ours-int8")):
            reduced[name] = {"max_abs_embedding_diff": float(np.abs(outputs[name] - fp32).max()),
                             **decisions_changed(fp32, outputs[name])}
    load = (load_before, os.getloadavg()[0])
    print(f"embedding throughput on CPU, batch {args.batch_size}, median of {args.batches} "
          f"batches, {os.cpu_count()} cores, torch {torch.__version__}; matmul peak "
          + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items())
          + f"; 1-min load average {load[0]:.1f} before / {load[1]:.1f} after")
    print(f"{'path':34}{'img/s':>8}{'GFLOP/s':>9}{'of peak':>9}{'max|d| vs TF':>14}")
    for row in rows:
        print(f"{row['path']:34}{row['images_per_s']:>8.1f}{row['gflop_per_s']:>9.0f}"
              f"{row['of_peak']:>8.0%} {row['max_abs_diff_vs_tf']:>13.1e}")
    for name, figures in reduced.items():
        print(f"{name} vs fp32 (eager): {json.dumps(figures)}")
    if args.json is not None:
        report = {"batch_size": args.batch_size, "batches": args.batches, "rows": rows,
                  "peaks_gflop_per_s": peaks, "gflop_per_image": GFLOP_PER_IMAGE,
                  "reduced_vs_fp32": reduced, "load_average": load,
                  "torch": torch.__version__, "machine": describe_machine()}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(_parse(argv))


if __name__ == "__main__":
    sys.exit(main())
