"""``embed`` and ``evaluate``'s embedding step on Ray: Parquet shards of embeddings."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facenet_convert.converter.core.atomic import atomic_output
from facenet_convert.converter.core.errors import ScaleError
from facenet_convert.converter.core.hashing import sha256_file
from facenet_convert.converter.scale.runtime import RayOptions, is_loopback, require_ray, start_ray
from facenet_convert.converter.scale.shards import (
    MANIFEST,
    SHARD_KEY,
    ScaleSummary,
    Shard,
    check_outside,
    make_output_dir,
    map_shards,
    plan_shards,
    rebuilding,
    run_shards,
    shard_identity,
    write_manifest,
)

if TYPE_CHECKING:
    import ray.data




@dataclass(frozen=True, kw_only=True)
class EmbedSpec:
    """What every actor needs to build the same model and detector as the driver (picklable)."""

    weights: str | None = None
    pretrained: str | None = None
    preprocessing: str | None = None
    device: str = "cpu"
    backend: str = "auto"
    precision: str = "fp32"
    calibration: str | None = None
    fuse: bool = True
    detect: bool = False
    mtcnn_dir: str | None = None
    margin: float = 32.0
    min_face_size: float = 20.0
    alignment: str = "box"          # --detect: box | similarity (models/face_alignment.py)
    template: str = "facenet"
    fit: str = "resize"
    batch_size: int = 32
    threads: int = 1                # torch threads per actor (torch CPU results depend on it)

    def load(self) -> tuple[Any, Any]:
        """(LoadedModel, MTCNN or None), as the embed command builds them."""
        from facenet_convert.converter.embedding import load_detector, load_embedding_model

        loaded = load_embedding_model(self.weights, self.pretrained, self.preprocessing,
                                      self.device, fuse=self.fuse, backend=self.backend,
                                      precision=self.precision, calibration=self.calibration)
        detector = (load_detector(self.mtcnn_dir, self.margin, self.min_face_size, self.device,
                                  alignment=self.alignment, template=self.template)
                    if self.detect else None)
        return loaded, detector


def shard_size_for(shard_size: int, batch_size: int) -> int:
    """``shard_size`` rounded up to a multiple of ``batch_size``: every shard then starts a
    batch of the local engine, so both run the same batches (CPU results can depend on them)."""
    return -(-max(shard_size, 1) // batch_size) * batch_size


def _embed_table(result: Any, size: int, detected: bool) -> Any:
    import numpy as np
    import pyarrow as pa

    matrix = result.matrix(size)
    rows = len(result.names)
    columns = {
        "name": pa.array(result.names, pa.string()),
        "source": pa.array([n.rsplit("#", 1)[0] if detected else n for n in result.names],
                           pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(
            pa.array(matrix.reshape(-1), pa.float32()), size)}
    if detected:
        boxes = np.asarray(result.boxes, dtype=np.float64).reshape(rows, 4)
        marks = np.asarray(result.landmarks, dtype=np.float64).reshape(rows, 10)
        columns["box"] = pa.FixedSizeListArray.from_arrays(pa.array(boxes.reshape(-1)), 4)
        columns["prob"] = pa.array(np.asarray(result.probs, dtype=np.float32))
        columns["landmarks"] = pa.FixedSizeListArray.from_arrays(pa.array(marks.reshape(-1)),
                                                                 10)
    return pa.table(columns)


class EmbedShards:
    """A Ray Data actor: builds the model once, embeds one shard per call with
    :func:`embedding.embed_images` (the local engine's function), and writes the shard's
    Parquet file (``output_dir``) or returns its rows (``output_dir`` None)."""

    def __init__(self, spec: EmbedSpec, output_dir: str | None, env: dict[str, str]) -> None:
        import torch

        os.environ.update(env)
        torch.set_num_threads(spec.threads)
        self.spec = spec
        self.output_dir = output_dir
        self.loaded, self.detector = spec.load()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np
        import pyarrow as pa

        from facenet_convert.converter.embedding import embed_images

        tables, records = [], []
        for index, shard_id, inputs in zip(batch["index"], batch["id"], batch["inputs"],
                                           strict=True):
            began = time.perf_counter()
            paths = [Path(p) for p in json.loads(inputs)]
            result = embed_images(self.loaded, paths, detector=self.detector,
                                  batch_size=self.spec.batch_size, fit=self.spec.fit)
            table = _embed_table(result, self.loaded.embedding_size, self.detector is not None)
            if self.output_dir is None:
                tables.append(table)
            else:
                record = _write_embed_shard(Path(self.output_dir), int(index), str(shard_id),
                                            len(paths), table, result.skipped)
                record["seconds"] = round(time.perf_counter() - began, 4)
                records.append(json.dumps(record))
        if self.output_dir is not None:
            return {"record": np.array(records, dtype=object)}
        return pa.concat_tables(tables)


def _embed_file(index: int, shard_id: str) -> str:
    return f"embed-{index:06d}-{shard_id}.parquet"


def _write_embed_shard(out: Path, index: int, shard_id: str, inputs: int, table: Any,
                       skipped: Sequence[tuple[str, str]]) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # the rows' sha256 as a reader will see them: after the Parquet round trip
    first = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata(None), first)
    readback = pq.read_table(pa.BufferReader(first.getvalue()))
    meta = {"index": index, "id": shard_id, "inputs": inputs, "skipped": list(skipped),
            "content_sha256": _table_sha256(readback)}
    table = table.replace_schema_metadata({SHARD_KEY: json.dumps(meta)})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue().to_pybytes()
    name = _embed_file(index, shard_id)
    with atomic_output(out / name, force=True, part=True) as handle:
        handle.write(data)
    return {**meta, "file": name, "sha256": hashlib.sha256(data).hexdigest(),
            "rows": table.num_rows}


def _table_sha256(table: Any) -> str:
    """sha256 of a shard's rows (Arrow IPC bytes, schema metadata left out): recorded in the
    shard when written, checked before ``--resume`` keeps it."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    plain = table.replace_schema_metadata(None)
    with pa.ipc.new_stream(sink, plain.schema) as writer:
        writer.write_table(plain)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def _finished_embed_shard(out: Path) -> Callable[[Shard], dict | None]:
    def finished(shard: Shard) -> dict | None:
        import pyarrow.parquet as pq

        path = out / _embed_file(shard.index, shard.id)
        try:
            if not path.is_file():
                return None
            table = pq.read_table(path)
            meta = json.loads((table.schema.metadata or {})[SHARD_KEY.encode()])
            intact = (meta.get("content_sha256") == _table_sha256(table)
                      and table.num_rows + len(meta["skipped"]) >= meta["inputs"])
        except (OSError, KeyError, ValueError, TypeError, AttributeError):
            return None                         # unreadable or foreign: computed again
        if meta.get("id") != shard.id or meta.get("inputs") != len(shard.inputs):
            return None
        if not intact:
            rebuilding(path)
            return None
        info = pq.read_metadata(path)
        return {**meta, "skipped": [tuple(s) for s in meta["skipped"]], "file": path.name,
                "sha256": sha256_file(path), "rows": info.num_rows}
    return finished


def _embed_settings(spec: EmbedSpec, loaded: Any) -> dict[str, Any]:
    from facenet_convert.converter.engines import state_sha256

    settings = asdict(spec)
    for key, default in (("alignment", "box"), ("template", "facenet")):
        if settings[key] == default:        # added later: earlier runs' shards keep their ids
            del settings[key]
    settings["weights_sha256"] = state_sha256(loaded.model)
    settings["resolved_preprocessing"] = loaded.preprocessing
    if spec.mtcnn_dir is not None:
        folder = Path(spec.mtcnn_dir)
        settings["mtcnn_sha256"] = {p.name: sha256_file(p) for p in sorted(folder.iterdir())
                                    if p.stem in ("pnet", "rnet", "onet") and p.is_file()}
    return settings


def embed_dataset(paths: Sequence[str | os.PathLike[str]], spec: EmbedSpec | None = None, *,
                  options: RayOptions | None = None) -> ray.data.Dataset:
    """A lazy ``ray.data.Dataset`` of the embeddings of ``paths`` (columns ``name``,
    ``source``, ``embedding``; with detection also ``box``, ``prob``, ``landmarks``), for
    pipelines of your own. Inputs that cannot be embedded give no row (``embed_to_shards``
    lists them). Uses the initialized Ray, else connects to ``options.address`` or starts a
    loopback-only local Ray (left running for the dataset; ``ray.shutdown()`` ends it)."""
    spec = spec or EmbedSpec()
    options = options or RayOptions()
    items = [str(p) for p in paths]
    shards = plan_shards(items, shard_size_for(options.shard_size, spec.batch_size), "")
    start_ray(options)
    return map_shards(shards, EmbedShards, {"spec": spec, "output_dir": None}, options)


def embed_to_shards(paths: Sequence[Path], output_dir: str | os.PathLike[str],
                    spec: EmbedSpec, *, skipped: Sequence[tuple[str, str]] = (),
                    options: RayOptions | None = None, force: bool = False,
                    loaded: Any = None,
                    on_done: Callable[[int], Any] | None = None) -> ScaleSummary:
    """Embed ``paths`` on Ray into Parquet shards + ``manifest.json`` in ``output_dir``
    (see the module docstring); ``skipped`` (inputs the driver refused) go to the manifest.
    ``on_done(k)`` reports k more inputs finished, a shard at a time (progress)."""
    options = options or RayOptions()
    require_ray(loopback=is_loopback(options.address))
    began = time.perf_counter()
    out = Path(output_dir)
    inputs = [str(p) for p in paths]
    check_outside(out, [*inputs, *([spec.weights] if spec.weights else [])])
    if loaded is None:
        loaded, _ = spec.load()
    loaded.engine.describe()          # the engine built here first: actors find it cached
    settings = _embed_settings(spec, loaded)
    make_output_dir(out)
    shards = plan_shards(inputs, shard_size_for(options.shard_size, spec.batch_size),
                         shard_identity("embed", settings))
    records, reused = run_shards(shards, _finished_embed_shard(out), EmbedShards,
                           {"spec": spec, "output_dir": str(out)}, options, force, on_done)
    manifest = write_manifest(out, "embed", settings, records, list(skipped),
                               len(inputs) + len(skipped))
    return ScaleSummary(str(out), str(out / MANIFEST), manifest["inputs"], manifest["rows"],
                        len(manifest["skipped"]), len(shards), reused,
                        round(time.perf_counter() - began, 3),
                        {"embedding_size": loaded.embedding_size,
                         "preprocessing": loaded.preprocessing})


class PathShards:
    """A Ray Data actor for ``evaluate``'s embedding step: :func:`embedding.embed_paths` (the
    local engine's function) on one shard per call; embeddings come back in the record."""

    def __init__(self, spec: EmbedSpec, flip: bool, env: dict[str, str]) -> None:
        import torch

        os.environ.update(env)
        torch.set_num_threads(spec.threads)
        self.spec = spec
        self.flip = flip
        self.loaded, self.detector = spec.load()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import base64

        import numpy as np

        from facenet_convert.converter.embedding import embed_paths

        records = []
        for index, inputs in zip(batch["index"], batch["inputs"], strict=True):
            result = embed_paths(self.loaded, [Path(p) for p in json.loads(inputs)],
                                 detector=self.detector, flip=self.flip,
                                 batch_size=self.spec.batch_size, fit=self.spec.fit)
            arrays = [result.embeddings, *([result.flipped] if self.flip else [])]
            records.append(json.dumps({
                "index": int(index), "paths": [str(p) for p in result.paths],
                "skipped": result.skipped,
                "arrays": [base64.b64encode(np.ascontiguousarray(a, dtype=np.float32)
                                            .tobytes()).decode() for a in arrays]}))
        return {"record": np.array(records, dtype=object)}


def path_embedder(spec: EmbedSpec, options: RayOptions | None = None) -> Callable[..., Any]:
    """An ``embed_paths`` look-alike that runs on Ray, for ``evaluate_pairs(embed=...)``: the
    actors rebuild the model from ``spec`` (the ``loaded`` and ``detector`` given are the
    driver's, unused); results in input order, skips as the local engine reports them."""
    options = options or RayOptions()
    require_ray(loopback=is_loopback(options.address))

    def embed(loaded: Any, paths: Sequence[Path], *, detector: Any = None, flip: bool = False,
              batch_size: int = 32, workers: int = 0, fit: str = "resize",
              reference: Any = None, on_done: Callable[[int], Any] | None = None) -> Any:
        import base64

        import numpy as np

        from facenet_convert.converter.embedding import PathEmbeddings

        if reference is not None:
            raise ScaleError("--compare-with runs the TF graph in this process; use "
                             "--engine local with it")
        used = EmbedSpec(**{**asdict(spec), "batch_size": batch_size, "fit": fit,
                            "detect": detector is not None})
        shards = plan_shards([str(p) for p in paths],
                             shard_size_for(options.shard_size, batch_size), "")
        started = start_ray(options)
        try:
            rows = list(map_shards(shards, PathShards, {"spec": used, "flip": flip},
                                    options).iter_rows())
        finally:
            if started:
                require_ray().shutdown()
        records = sorted((json.loads(r["record"]) for r in rows), key=lambda r: r["index"])
        if [r["index"] for r in records] != [s.index for s in shards]:
            raise ScaleError("some shards came back without a result; rerun")
        size = loaded.embedding_size
        parts: list[list[Any]] = [[], []]
        done: list[Path] = []
        skipped: list[tuple[str, str]] = []
        for record in records:
            done += [Path(p) for p in record["paths"]]
            skipped += [tuple(s) for s in record["skipped"]]
            for k, text in enumerate(record["arrays"]):
                parts[k].append(np.frombuffer(base64.b64decode(text),
                                              dtype=np.float32).reshape(-1, size))
        if on_done is not None:
            on_done(len(paths))
        empty = np.zeros((0, size), dtype=np.float32)
        ours = np.concatenate(parts[0]) if parts[0] else empty
        flipped = (np.concatenate(parts[1]) if parts[1] else empty) if flip else None
        return PathEmbeddings(done, ours, flipped, skipped=skipped)
    return embed


def read_embeddings(output_dir: str | os.PathLike[str]) -> Any:
    """All rows of a finished ``embed_to_shards`` folder as one pyarrow Table (manifest order),
    each shard's sha256 checked against the manifest."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(output_dir)
    manifest = json.loads((out / MANIFEST).read_text())
    tables = []
    for shard in manifest["shards"]:
        path = out / shard["file"]
        if sha256_file(path) != shard["sha256"]:
            raise ScaleError("shard does not match the manifest's sha256; rerun the job",
                             path=path)
        tables.append(pq.read_table(path).replace_schema_metadata(None))
    return pa.concat_tables(tables) if tables else pa.table({"name": pa.array([], pa.string())})
