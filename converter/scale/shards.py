"""Shards: the unit written, retried and resumed; their plan, the manifest, and the inputs."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facenet_convert.converter.core.atomic import (
    atomic_output,
    check_output_path,
    note_finished_part,
)
from facenet_convert.converter.core.checks import dumps as json_dumps
from facenet_convert.converter.core.errors import ConverterError, ScaleError, one_line
from facenet_convert.converter.core.inputs import input_inside, read_input_list, unique_files
from facenet_convert.converter.core.version import __version__
from facenet_convert.converter.scale.runtime import (
    RayOptions,
    forwarded_env,
    require_ray,
    start_ray,
)

if TYPE_CHECKING:
    import ray.data


ENGINES = ("local", "ray")
MANIFEST = "manifest.json"
SHARD_KEY = "facenet_convert.shard"


@dataclass(frozen=True)
class Shard:
    """Consecutive inputs processed and written together; ``id`` names its content."""

    index: int
    id: str
    inputs: list[Any]


def plan_shards(inputs: Sequence[Any], shard_size: int, identity: str) -> list[Shard]:
    """Cut ``inputs`` (in order) into shards; an id hashes ``identity`` and the shard's inputs."""
    if shard_size < 1:
        raise ScaleError(f"shard size must be at least 1, got {shard_size}")
    shards = []
    for index, start in enumerate(range(0, len(inputs), shard_size)):
        part = list(inputs[start:start + shard_size])
        digest = hashlib.sha256(identity.encode())
        digest.update(json.dumps(part).encode("utf-8", "surrogateescape"))
        shards.append(Shard(index, digest.hexdigest()[:16], part))
    return shards


def shard_identity(kind: str, settings: dict[str, Any]) -> str:
    return json.dumps({"kind": kind, "version": __version__, **settings}, sort_keys=True,
                      default=str)


@dataclass
class ScaleSummary:
    """What a sharded run did; ``as_dict`` is what the commands print."""

    output_dir: str
    manifest: str
    inputs: int = 0
    rows: int = 0
    skipped: int = 0
    shards: int = 0
    reused_shards: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def write_manifest(out: Path, kind: str, settings: dict[str, Any], records: list[dict],
                    driver_skips: list[tuple[str, str]], inputs: int) -> dict[str, Any]:
    skipped = [{"path": p, "reason": r, "shard": None} for p, r in driver_skips]
    shards = []
    for record in sorted(records, key=lambda r: r["index"]):
        skipped += [{"path": p, "reason": r, "shard": record["index"]}
                    for p, r in record["skipped"]]
        shards.append({**{k: record[k] for k in ("index", "id", "file", "sha256", "inputs",
                                                 "rows")},
                       "seconds": record.get("seconds")})    # None: kept from an earlier run
    manifest = {"kind": kind, "version": __version__, "settings": settings, "inputs": inputs,
                "rows": sum(s["rows"] for s in shards), "shards": shards, "skipped": skipped}
    with atomic_output(out / MANIFEST, force=True, final=True) as handle:
        handle.write(json_dumps(manifest, indent=1, default=str).encode("utf-8"))
    return manifest


def run_shards(shards: list[Shard], finished: Callable[[Shard], dict | None], actor: type,
         kwargs: dict[str, Any], options: RayOptions, force: bool,
         on_done: Callable[[int], Any] | None = None) -> tuple[list[dict], int]:
    """Records of every shard: reused when finished (unless ``force``), else computed on Ray.
    ``on_done(k)``: k more inputs are finished (a reused or returned shard's inputs)."""
    records: dict[int, dict] = {}
    sizes = {shard.index: len(shard.inputs) for shard in shards}
    for shard in shards:
        record = None if force else finished(shard)
        if record is not None:
            records[shard.index] = record
            if on_done is not None:
                on_done(sizes[shard.index])
    reused = len(records)
    todo = [s for s in shards if s.index not in records]
    if todo:
        started = start_ray(options)
        # from here actors commit shards themselves, before this process hears of them: an
        # interruption keeps what they finished and must not say "nothing written"
        note_finished_part()
        try:
            for row in map_shards(todo, actor, kwargs, options).iter_rows():
                record = json.loads(row["record"])
                if on_done is not None and record["index"] not in records:
                    on_done(sizes.get(record["index"], 0))
                records[record["index"]] = record       # a retried shard: same file, same row
        except ConverterError:
            raise
        except Exception as error:  # noqa: BLE001 - Ray wraps a worker's error in many types
            raise ScaleError(f"the Ray job failed ({last_line(error)}); finished shards are "
                             "kept, rerun to compute the rest") from None
        finally:
            if started:
                require_ray().shutdown()
    missing = [s.index for s in shards if s.index not in records]
    if missing:
        raise ScaleError(f"{len(missing)} shards came back without a result (first: "
                         f"{missing[0]}); rerun to compute them")
    return [records[s.index] for s in shards], reused


def last_line(error: BaseException) -> str:
    """The line of a (remote) traceback that says what went wrong, shortened."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:300]


def check_outside(out: Path, inputs: Sequence[str | os.PathLike[str]]) -> None:
    """Outputs never alias inputs: no input may be the output folder or lie inside it."""
    item = input_inside(out, inputs)
    if item is not None:
        raise ScaleError("an input lies inside the output folder; write the shards to a "
                         "folder of their own", path=item)


def make_output_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ScaleError(f"cannot create the output folder ({error.strerror or error})",
                         path=out) from None
    check_output_path(out / MANIFEST, force=True)


def list_inputs(items: Sequence[str], input_list: str | None = None
                ) -> tuple[list[Path], list[tuple[str, str]]]:
    """IMAGES expanded as the local engine does (:func:`embedding.expand_inputs`), then the
    entries of ``input_list``; a path named twice is kept once (the repeat is a skip)."""
    from facenet_convert.converter.embedding import expand_inputs

    paths, skipped = expand_inputs(items)
    if input_list is not None:
        listed, listed_skips = read_input_list(input_list, ScaleError)
        paths += listed
        skipped += listed_skips
    unique, repeated = unique_files(paths)
    return unique, skipped + repeated

def map_shards(shards: list[Shard], actor: type, kwargs: dict[str, Any],
                options: RayOptions) -> ray.data.Dataset:
    """A dataset of shard descriptors mapped by a pool of ``actor``s, one shard per call."""
    ray = require_ray()
    items = [{"index": s.index, "id": s.id, "inputs": json.dumps(s.inputs)} for s in shards]
    if not items:
        return ray.data.from_items([{"index": -1, "id": "", "inputs": "[]"}]).limit(0)
    dataset = ray.data.from_items(items, override_num_blocks=len(items))
    size = max(1, min(options.actors, len(items)))
    with warnings.catch_warnings():
        # Ray 2.60 has no named parameter for these yet (its default is unbounded retries);
        # bounded, so an input that kills its actor every time ends the job instead of looping
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        return dataset.map_batches(
            actor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=size),
            fn_constructor_kwargs={**kwargs, "env": forwarded_env()}, num_cpus=1,
            max_restarts=options.max_retries, max_task_retries=options.max_retries)


def rebuilding(path: Path) -> None:
    print(one_line(f"facenet-convert: {path} (or a file it lists) does not match what was "
                   "recorded when it was written; computing it again"), file=sys.stderr)
