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

import hashlib
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facenet_convert.converter.core.atomic import atomic_output, check_output_path
from facenet_convert.converter.core.checks import dumps as json_dumps
from facenet_convert.converter.core.errors import ConverterError, ScaleError, one_line
from facenet_convert.converter.core.extras import require_extra
from facenet_convert.converter.core.hashing import sha256_file
from facenet_convert.converter.core.inputs import input_inside, read_input_list, unique_files
from facenet_convert.converter.core.version import __version__

if TYPE_CHECKING:
    import ray.data

    from facenet_convert.converter.align import AlignOptions

ENGINES = ("local", "ray")
MANIFEST = "manifest.json"
DEFAULT_SHARD_SIZE = 1024
SHARD_KEY = "facenet_convert.shard"
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"     # "0": Ray binds and talks on loopback


# ----------------------------------------------------------------------------- Ray


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray engine runs."""

    address: str | None = None      # None: start a local Ray bound to 127.0.0.1
    actors: int = 2
    shard_size: int = DEFAULT_SHARD_SIZE
    max_retries: int = 3            # actor restarts and task retries after a worker death
    local_cpus: int | None = None   # CPUs of a Ray started here (None: the actor count)


def is_loopback(address: str | None) -> bool:
    """Whether Ray is to run on this machine only: no address, or a loopback one."""
    if address is None:
        return True
    host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def require_ray(loopback: bool = False) -> Any:
    """The ``ray`` module, or a one-line error saying how to install it.

    ``loopback``: keep Ray on 127.0.0.1. Ray (2.60) otherwise rewrites 127.0.0.1 to the node's
    outward address and listens on every interface; its "no cluster" mode (the variable below,
    read at import and inherited by the processes it starts, and the constant it sets) keeps
    every address and socket on the loopback interface.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # the driver's core worker logs, at error level, expected events of a retried actor
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    if loopback:
        os.environ[LOOPBACK_ENV] = "0"
    require_extra("ray", "--engine ray (Ray Data)")
    import ray
    import ray.data
    if loopback:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False        # when ray was imported before
    return ray


def start_ray(options: RayOptions) -> bool:
    """Connect to ``options.address`` or start a loopback-only local Ray; True if started
    here (the caller shuts it down). An already initialized Ray is used as it is."""
    ray = require_ray(loopback=is_loopback(options.address))
    import logging

    logging.getLogger("ray.data").setLevel(logging.CRITICAL)   # its errors end as ScaleError
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    if ray.is_initialized():
        return False
    try:
        if options.address:
            ray.init(address=options.address, log_to_driver=False,
                     logging_level=logging.ERROR)
        else:
            ray.init(num_cpus=options.local_cpus or options.actors,
                     _node_ip_address="127.0.0.1", include_dashboard=False,
                     log_to_driver=False, logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = options.address or "a local Ray on 127.0.0.1"
        message = " ".join(str(error).split())[:300]
        raise ScaleError(f"cannot start or reach Ray ({where}): {message}") from None
    return True


def _forwarded_env() -> dict[str, str]:
    """This process's FACENET_CONVERT_* settings (pixel cap, cache, offline), for the actors,
    which Ray starts with the raylet's environment, not ours."""
    return {k: v for k, v in os.environ.items() if k.startswith("FACENET_CONVERT_")}


def _map_shards(shards: list[Shard], actor: type, kwargs: dict[str, Any],
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
            fn_constructor_kwargs={**kwargs, "env": _forwarded_env()}, num_cpus=1,
            max_restarts=options.max_retries, max_task_retries=options.max_retries)


# ----------------------------------------------------------------------------- shards


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


def _identity(kind: str, settings: dict[str, Any]) -> str:
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


def _write_manifest(out: Path, kind: str, settings: dict[str, Any], records: list[dict],
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


def _run(shards: list[Shard], finished: Callable[[Shard], dict | None], actor: type,
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
        try:
            for row in _map_shards(todo, actor, kwargs, options).iter_rows():
                record = json.loads(row["record"])
                if on_done is not None and record["index"] not in records:
                    on_done(sizes.get(record["index"], 0))
                records[record["index"]] = record       # a retried shard: same file, same row
        except ConverterError:
            raise
        except Exception as error:  # noqa: BLE001 - Ray wraps a worker's error in many types
            raise ScaleError(f"the Ray job failed ({_last_line(error)}); finished shards are "
                             "kept, rerun to compute the rest") from None
        finally:
            if started:
                require_ray().shutdown()
    missing = [s.index for s in shards if s.index not in records]
    if missing:
        raise ScaleError(f"{len(missing)} shards came back without a result (first: "
                         f"{missing[0]}); rerun to compute them")
    return [records[s.index] for s in shards], reused


def _last_line(error: BaseException) -> str:
    """The line of a (remote) traceback that says what went wrong, shortened."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:300]


def _check_outside(out: Path, inputs: Sequence[str | os.PathLike[str]]) -> None:
    """Outputs never alias inputs: no input may be the output folder or lie inside it."""
    item = input_inside(out, inputs)
    if item is not None:
        raise ScaleError("an input lies inside the output folder; write the shards to a "
                         "folder of their own", path=item)


def _mkdir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ScaleError(f"cannot create the output folder ({error.strerror or error})",
                         path=out) from None
    check_output_path(out / MANIFEST, force=True)


# ----------------------------------------------------------------------------- inputs


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


# ----------------------------------------------------------------------------- embed


@dataclass(frozen=True, kw_only=True)
class EmbedSpec:
    """What every actor needs to build the same model and detector as the driver (picklable)."""

    weights: str | None = None
    pretrained: str | None = None
    preprocessing: str | None = None
    device: str = "cpu"
    backend: str = "auto"
    precision: str = "fp32"
    fuse: bool = True
    detect: bool = False
    mtcnn_dir: str | None = None
    margin: float = 32.0
    min_face_size: float = 20.0
    fit: str = "resize"
    batch_size: int = 32
    threads: int = 1                # torch threads per actor (torch CPU results depend on it)

    def load(self) -> tuple[Any, Any]:
        """(LoadedModel, MTCNN or None), as the embed command builds them."""
        from facenet_convert.converter.embedding import load_detector, load_embedding_model

        loaded = load_embedding_model(self.weights, self.pretrained, self.preprocessing,
                                      self.device, fuse=self.fuse, backend=self.backend,
                                      precision=self.precision)
        detector = (load_detector(self.mtcnn_dir, self.margin, self.min_face_size, self.device)
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
            _rebuilding(path)
            return None
        info = pq.read_metadata(path)
        return {**meta, "skipped": [tuple(s) for s in meta["skipped"]], "file": path.name,
                "sha256": sha256_file(path), "rows": info.num_rows}
    return finished


def _embed_settings(spec: EmbedSpec, loaded: Any) -> dict[str, Any]:
    from facenet_convert.converter.engines import state_sha256

    settings = asdict(spec)
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
    return _map_shards(shards, EmbedShards, {"spec": spec, "output_dir": None}, options)


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
    _check_outside(out, [*inputs, *([spec.weights] if spec.weights else [])])
    if loaded is None:
        loaded, _ = spec.load()
    loaded.engine.describe()          # the engine built here first: actors find it cached
    settings = _embed_settings(spec, loaded)
    _mkdir(out)
    shards = plan_shards(inputs, shard_size_for(options.shard_size, spec.batch_size),
                         _identity("embed", settings))
    records, reused = _run(shards, _finished_embed_shard(out), EmbedShards,
                           {"spec": spec, "output_dir": str(out)}, options, force, on_done)
    manifest = _write_manifest(out, "embed", settings, records, list(skipped),
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
            rows = list(_map_shards(shards, PathShards, {"spec": used, "flip": flip},
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


# ----------------------------------------------------------------------------- align


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


def _rebuilding(path: Path) -> None:
    print(one_line(f"facenet-convert: {path} (or a file it lists) does not match what was "
                   "recorded when it was written; computing it again"), file=sys.stderr)


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
                _rebuilding(path)               # a crop went missing or changed: redo it
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
    """The options and the MTCNN weights' sha256 (None: the shipped weights): shard ids."""
    settings = asdict(options)
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
    shards = plan_shards(tasks, ray_options.shard_size, _identity("align",
                                                                  _align_settings(options)))
    start_ray(ray_options)
    return _map_shards(shards, AlignShards, {"options": options, "output_dir": str(out)},
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
    identity = _identity("align", settings)
    shards = plan_shards(tasks, ray_options.shard_size, identity)
    if on_total is not None:
        on_total(len(tasks))
    records, reused = _run(shards, _finished_align_shard(out), AlignShards,
                           {"options": options, "output_dir": str(out)}, ray_options, force,
                           on_done)
    key = int(hashlib.sha256(identity.encode()).hexdigest(), 16) % 100000   # rerun: same file
    boxes_file = out / f"bounding_boxes_{key:05d}.txt"
    with atomic_output(boxes_file, force=True, final=True) as handle:
        handle.write("".join(line for r in records for line in r["lines"]).encode("utf-8"))
    manifest = _write_manifest(out, "align", settings,
                               [{k: v for k, v in r.items() if k != "lines"} for r in records],
                               skipped, len(tasks) + len(skipped))
    return ScaleSummary(str(out), str(out / MANIFEST), manifest["inputs"], manifest["rows"],
                        len(manifest["skipped"]), len(shards), reused,
                        round(time.perf_counter() - began, 3),
                        {"faces": sum(r["faces"] for r in records),
                         "bounding_boxes": str(boxes_file)})

