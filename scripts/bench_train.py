#!/usr/bin/env python
"""Training steps per second: our PyTorch step (``training.step.Trainer``, what ``finetune``
runs) against upstream's own TF training graph, same model, same batch, one run.

1. builds (or reuses, from the cache) an upstream-written training checkpoint with
   ``third_party.facenet.testing.build.build_checkpoint`` (``--model-def``, EMA, ADAM slots,
   center-loss centers, 8 classes);
2. TF side: ``train_softmax.py``'s graph around ``facenet.train`` (compiled from the pinned
   facenet 1.0.5 wheel; ``third_party.facenet.testing.training.upstream_training_steps``),
   float32, loaded from that checkpoint, ``sess.run(train_op)`` per step, nothing fetched;
3. ours: ``resume_from(checkpoint).trainer(...)`` and ``Trainer.step`` per step;
4. the same seeded batches (``--batch-size`` images at ``--image-size``, labels 0..7), both
   with ``--threads`` threads (default: every core); rounds alternate TF and ours
   (``--steps`` timed steps each, after one unmeasured warm-up step each) and the median
   steps/s over rounds is printed with the CPU.

Both take upstream's settings (weight decay 5e-4, center loss 0.01, prelogits norm 5e-4,
keep probability 1, EMA 0.9999). Image loading is not timed (both take ready arrays). On a
machine shared with other work the figures move with the load (the load average is printed),
and torch's OpenMP threads suffer more from it than TF's thread pool: compare ``--threads 1``.

    .venv/bin/python scripts/bench_train.py [--model-def squeezenet] [--image-size 160]
        [--batch-size 32] [--steps 3] [--rounds 3] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-def", default="squeezenet",
                        help="upstream --model_def (squeezenet, inception_resnet_v1)")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--embedding-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads for each side (TF intra/inter-op, torch)")
    args = parser.parse_args()

    import torch

    from facenet_convert.converter.core.cache import cache_dir
    from facenet_convert.converter.core.machine import describe_machine, machine_line
    from facenet_convert.third_party.facenet.testing.build import build_checkpoint
    from facenet_convert.third_party.facenet.testing.training import (
        UpstreamSettings,
        upstream_training_steps,
    )
    from facenet_convert.training.resume import resume_from
    from facenet_convert.training.step import LossSettings

    cores = args.threads
    print(f"CPU: {machine_line(describe_machine())}")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    built = build_checkpoint(
        cache_dir() / "fixtures" / f"bench_train_{args.model_def}_{args.embedding_size}",
        embedding_size=args.embedding_size, num_classes=8, ema=True, optimizer="ADAM",
        centers=True, step=1, seed=5, model_def=args.model_def)
    rate = 0.01
    upstream = UpstreamSettings(optimizer="ADAM", learning_rate=rate)
    ours_settings = LossSettings(weight_decay=upstream.weight_decay,
                                 center_loss_factor=upstream.center_loss_factor,
                                 center_loss_alfa=upstream.center_loss_alfa,
                                 prelogits_norm_loss_factor=upstream.prelogits_norm_loss_factor,
                                 prelogits_norm_p=upstream.prelogits_norm_p,
                                 keep_probability=upstream.keep_probability)
    rng = np.random.default_rng(0)
    shape = (args.batch_size, args.image_size, args.image_size, 3)
    batches = [(rng.standard_normal(shape).astype(np.float32),
                rng.integers(0, 8, args.batch_size)) for _ in range(args.steps + 1)]
    torch_batches = [(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))),
                      torch.from_numpy(y)) for x, y in batches]
    trainer = resume_from(built.prefix).trainer(settings=ours_settings, learning_rate=rate)
    torch.set_num_threads(cores)

    def ours() -> float:
        start = time.perf_counter()
        for images, labels in torch_batches[1:]:
            trainer.step(images, labels, rate)
        return args.steps / (time.perf_counter() - start)

    results: dict[str, list[float]] = {"upstream TF (facenet.train graph)": [],
                                       "ours (training.step.Trainer)": []}
    with upstream_training_steps(built, shape, upstream,
                                 threads=cores) as tf_step:
        tf_step(*batches[0])                     # warm-up: graph optimisation, allocations
        trainer.step(*torch_batches[0], rate)

        def theirs() -> float:
            start = time.perf_counter()
            for images, labels in batches[1:]:
                tf_step(images, labels)
            return args.steps / (time.perf_counter() - start)

        for _ in range(args.rounds):
            results["upstream TF (facenet.train graph)"].append(theirs())
            results["ours (training.step.Trainer)"].append(ours())
    print(f"{args.model_def}, {args.image_size} px, batch {args.batch_size}, ADAM + center "
          f"loss + EMA, {cores} threads each; {args.rounds} alternating rounds of "
          f"{args.steps} steps")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"  {name:36s} {median:7.3f} steps/s ({median * args.batch_size:7.1f} images/s)"
              f"  rounds: {', '.join(f'{v:.3f}' for v in values)}")
    tf_rate, our_rate = (statistics.median(v) for v in results.values())
    print(f"  ours / TF: {our_rate / tf_rate:.2f}x")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
