"""Scale ``align`` and ``embed`` out on Ray Data: the local engine's per-item code on actor pools.

The driver lists the inputs (a folder walk as the local engine does, or a ``.txt`` / ``.parquet``
list of paths), keeps their order and cuts them into shards of ``shard_size`` consecutive
inputs. Each shard is one row of a ``ray.data`` dataset, mapped (``map_batches``) by a pool of
``actors`` actors that build MTCNN / the embedding engine once each and run the very functions
the local engine runs (:func:`embedding.embed_images`, :func:`align.align_photo` +
:func:`align.write_photo`) on the shard's inputs.

Identical results: ``embed`` shards are rounded up to a multiple of the batch size, so every
shard runs the batches the local engine runs on the same list (the local detect path flushes
at multiples of the batch size too); ``align`` works photo by photo (MTCNN's results do not
depend on torch's thread count). Embedding results can depend on the thread count: ONNX
Runtime (the default backend) gave the same bits for 1 and 2 threads and any batch here, the
torch engines do not, so with ``--backend torch`` the actors' ``EmbedSpec.threads`` (1) must
equal the local run's torch threads (``OMP_NUM_THREADS=1``). ``tests/test_scale.py`` checks
both engines bit for bit.

Outputs (in the output folder; every file written atomically):

* ``embed``: ``embed-<index>-<id>.parquet`` per shard, columns ``name``, ``source``,
  ``embedding`` (float32 list) and with detection ``box``, ``prob``, ``landmarks``; the shard's
  skipped inputs sit in the file's metadata (``facenet_convert.shard``).
* ``align``: the crops exactly as the local engine writes them (same layout and bytes), one
  ``align-<index>-<id>.json`` per shard listing its photos, crops (with sha256), skips and
  bounding_boxes lines, and one ``bounding_boxes_<NNNNN>.txt`` for the run.
* ``manifest.json``: each shard with its file, sha256, input and row counts and the seconds
  its actor spent on it (None when kept from an earlier run), and every skipped input with a
  one-line reason. Every input appears exactly once: in a row or in a skip.

A shard's id hashes its inputs, the options and the model's weights, so a rerun (after an
interrupt or a failure) keeps the finished shards whose file is intact and computes only the
others; a changed input list or option makes new shards. Ray retries a task whose actor died
(``max_restarts``, ``max_task_retries``); shard files have deterministic names and are written
atomically, so a retried shard replaces nothing but itself and no row is lost or duplicated.

Ray is imported only here and only when this engine runs (``pip install facenet-convert[ray]``).
"""

from __future__ import annotations

from facenet_convert.converter.scale.align import align_ray_dataset, align_to_shards
from facenet_convert.converter.scale.embed import (
    EmbedSpec,
    embed_dataset,
    embed_to_shards,
    path_embedder,
    read_embeddings,
    shard_size_for,
)
from facenet_convert.converter.scale.runtime import (
    DEFAULT_SHARD_SIZE,
    LOOPBACK_ENV,
    RayOptions,
    is_loopback,
    require_ray,
    start_ray,
)
from facenet_convert.converter.scale.shards import (
    ENGINES,
    MANIFEST,
    SHARD_KEY,
    ScaleSummary,
    Shard,
    list_inputs,
    plan_shards,
)

__all__ = ["DEFAULT_SHARD_SIZE", "ENGINES", "LOOPBACK_ENV", "MANIFEST", "SHARD_KEY",
           "EmbedSpec", "RayOptions", "ScaleSummary", "Shard", "align_ray_dataset",
           "align_to_shards", "embed_dataset", "embed_to_shards", "is_loopback", "list_inputs",
           "path_embedder", "plan_shards", "read_embeddings", "require_ray", "shard_size_for",
           "start_ray"]
