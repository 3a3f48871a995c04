"""``align`` on Ray: crops and per-shard JSON records, then ``bounding_boxes``."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facenet_convert.converter.core.atomic import atomic_output, check_output_path
from facenet_convert.converter.core.checks import dumps as json_dumps
from facenet_convert.converter.core.hashing import sha256_file
from facenet_convert.converter.scale.runtime import RayOptions, is_loopback, require_ray, start_ray
from facenet_convert.converter.scale.shards import (
    MANIFEST,
    ScaleSummary,
    Shard,
    map_shards,
    plan_shards,
    rebuilding,
    run_shards,
    shard_identity,
    write_manifest,
)

if TYPE_CHECKING:
    import ray.data

    from facenet_convert.converter.align import AlignOptions



class AlignShards:
    """A Ray Data actor: builds MTCNN once and aligns one shard per call with
    :func:`align.align_photo` and :func:`align.write_photo` (the local engine's functions)."""

    def __init__(self, options: AlignOptions, output_dir: str, env: dict[str, str]) -> None:
        import torch

        from facenet_convert.converter.align import _detector

        os.environ.update(env)
        torch.set_num_threads(1)            # as align's worker processes
        self.options = options
        self.output_dir = output_dir
        _detector(options)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        records = []
        for index, shard_id, inputs in zip(batch["index"], batch["id"], batch["inputs"],
                                           strict=True):
            began = time.perf_counter()
            tasks = [tuple(t) for t in json.loads(inputs)]
            record = _align_shard(Path(self.output_dir), int(index), str(shard_id), tasks,
                                  self.options)
            record["seconds"] = round(time.perf_counter() - began, 4)
            records.append(json.dumps(record))
        return {"record": np.array(records, dtype=object)}




def _align_file(index: int, shard_id: str) -> str:
    return f"align-{index:06d}-{shard_id}.json"


def _align_shard(out: Path, index: int, shard_id: str, tasks: list[tuple[str, str]],
                 options: AlignOptions) -> dict[str, Any]:
    from facenet_convert.converter.align import align_photo, write_photo

    photos, skipped, lines = [], [], []
    for task in tasks:
        result = align_photo(task, options)
        lines += write_photo(result)
        if result.problem is not None:
            skipped.append((result.source, result.problem))
        else:
            photos.append({"source": result.source, "crops": [
                [name, sha256_file(name), *map(int, bb)] for name, _, bb in result.crops]})
            if result.left_out:                      # faces similarity alignment skipped
                photos[-1]["left_out"] = result.left_out
    body = {"index": index, "id": shard_id, "inputs": len(tasks), "photos": photos,
            "skipped": skipped, "lines": lines}
    data = json_dumps(body, indent=0).encode("utf-8")
    name = _align_file(index, shard_id)
    with atomic_output(out / name, force=True, part=True) as handle:
        handle.write(data)
    return _align_record(body, name, hashlib.sha256(data).hexdigest())


def _align_record(body: dict[str, Any], name: str, sha256: str) -> dict[str, Any]:
    return {"index": body["index"], "id": body["id"], "inputs": body["inputs"],
            "skipped": [tuple(s) for s in body["skipped"]], "file": name, "sha256": sha256,
            "rows": len(body["photos"]), "lines": body["lines"],
            "faces": sum(len(p["crops"]) for p in body["photos"])}


def _finished_align_shard(out: Path) -> Callable[[Shard], dict | None]:
    def finished(shard: Shard) -> dict | None:
        path = out / _align_file(shard.index, shard.id)
        try:
            if not path.is_file():
                return None
            data = path.read_bytes()
            body = json.loads(data)
            if body.get("id") != shard.id or body.get("inputs") != len(shard.inputs):
                return None
            crops = [c for p in body["photos"] for c in p["crops"]]
            if len(body["photos"]) + len(body["skipped"]) != body["inputs"] or not all(
                    Path(c[0]).is_file() and sha256_file(c[0]) == c[1] for c in crops):
                rebuilding(path)               # a crop went missing or changed: redo it
                return None
            return _align_record(body, path.name, hashlib.sha256(data).hexdigest())
        except (OSError, KeyError, ValueError, TypeError, IndexError):
            return None
    return finished


def _align_plan(input_dir: str | os.PathLike[str], output_dir: str | os.PathLike[str],
                options: AlignOptions
                ) -> tuple[list[tuple[str, list[Path]]], list[tuple[str, str]], Path,
                           list[tuple[str, str]]]:
    """Classes, (photo, crop) tasks, the output folder and skipped list entries."""
    from facenet_convert.converter.align import plan_alignment

    classes, skipped, out = plan_alignment(input_dir, output_dir, options)
    tasks = [(str(image), str(out / name / f"{image.stem}.png"))
             for name, images in classes for image in images]
    return classes, tasks, out, skipped


def _align_settings(options: AlignOptions) -> dict[str, Any]:
    """The options and the MTCNN weights' sha256 (None: the shipped weights): shard ids.
    Settings added later are left out at their defaults, so earlier runs' shards keep their
    ids and resume."""
    from facenet_convert.converter.align import ADDED_SETTINGS

    settings = asdict(options)
    for key, default in ADDED_SETTINGS.items():
        if settings[key] == default:
            del settings[key]
    settings["nets_sha256"] = [sha256_file(n) if n else None for n in options.nets]
    return settings


def align_ray_dataset(input_dir: str | os.PathLike[str], output_dir: str | os.PathLike[str],
                  options: AlignOptions | None = None, *, ray_options: RayOptions | None = None
                  ) -> ray.data.Dataset:
    """A lazy ``ray.data.Dataset`` of shard records (JSON strings, column ``record``); running
    it aligns ``input_dir`` into ``output_dir`` as the local ``align`` does. Ray as for
    :func:`embed_dataset`; :func:`align_to_shards` adds resume and the manifest."""
    from facenet_convert.converter.align import AlignOptions, make_folders

    options = options or AlignOptions()
    ray_options = ray_options or RayOptions()
    classes, tasks, out, _ = _align_plan(input_dir, output_dir, options)
    make_folders(out, classes)
    shards = plan_shards(tasks, ray_options.shard_size, shard_identity("align",
                                                                  _align_settings(options)))
    start_ray(ray_options)
    return map_shards(shards, AlignShards, {"options": options, "output_dir": str(out)},
                       ray_options)


def align_to_shards(input_dir: str | os.PathLike[str], output_dir: str | os.PathLike[str],
                    options: AlignOptions | None = None, *, ray_options: RayOptions | None = None,
                    force: bool = False, on_total: Callable[[int], Any] | None = None,
                    on_done: Callable[[int], Any] | None = None) -> ScaleSummary:
    """Align on Ray: the local engine's crops and bounding_boxes lines, plus shard records and
    ``manifest.json``; finished shards of an earlier run are kept (see the module docstring).
    ``on_total(n)`` once the photos are listed, ``on_done(k)`` per finished shard (progress)."""
    from facenet_convert.converter.align import AlignOptions, make_folders

    options = options or AlignOptions()
    ray_options = ray_options or RayOptions()
    require_ray(loopback=is_loopback(ray_options.address))
    began = time.perf_counter()
    classes, tasks, out, skipped = _align_plan(input_dir, output_dir, options)
    settings = _align_settings(options)
    make_folders(out, classes)
    check_output_path(out / MANIFEST, force=True)
    identity = shard_identity("align", settings)
    shards = plan_shards(tasks, ray_options.shard_size, identity)
    if on_total is not None:
        on_total(len(tasks))
    records, reused = run_shards(shards, _finished_align_shard(out), AlignShards,
                           {"options": options, "output_dir": str(out)}, ray_options, force,
                           on_done)
    key = int(hashlib.sha256(identity.encode()).hexdigest(), 16) % 100000   # rerun: same file
    boxes_file = out / f"bounding_boxes_{key:05d}.txt"
    with atomic_output(boxes_file, force=True, final=True) as handle:
        handle.write("".join(line for r in records for line in r["lines"]).encode("utf-8"))
    manifest = write_manifest(out, "align", settings,
                               [{k: v for k, v in r.items() if k != "lines"} for r in records],
                               skipped, len(tasks) + len(skipped))
    return ScaleSummary(str(out), str(out / MANIFEST), manifest["inputs"], manifest["rows"],
                        len(manifest["skipped"]), len(shards), reused,
                        round(time.perf_counter() - began, 3),
                        {"faces": sum(r["faces"] for r in records),
                         "bounding_boxes": str(boxes_file)})
