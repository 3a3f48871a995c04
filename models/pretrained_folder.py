"""Hub-style model folders: ``model.safetensors`` + ``config.json`` (+ ``README.md``), the
layout timm and py-feat publish on the Hugging Face Hub, read and written safely.

:class:`PretrainedFolderMixin` gives every model of the zoo (Inception-ResNet-V1/V2,
SqueezeNet, PNet/RNet/ONet, MTCNN) ``from_pretrained(folder_or_repo_id)`` and
``save_pretrained(folder)``. Loading executes nothing from the folder: no pickle, no code,
only a JSON config and a safetensors file, both checked before anything is allocated:

* the folder is a local directory, or a Hub repo id (``owner/name``) resolved through
  huggingface_hub's cache (the ``hub`` extra; ``HF_HUB_OFFLINE=1`` or
  ``$FACENET_CONVERT_OFFLINE`` keep it to the cache); a file that is a symlink out of the
  folder (out of the repo's cache folder for a repo id) or no regular file is refused;
* ``config.json`` is at most :data:`MAX_CONFIG_BYTES`, strict JSON (no NaN, no duplicate
  keys), every key known and of its type; its architecture must be the class's, its release
  (when named) must agree with its sizes;
* ``model.safetensors``'s header is bounded, its spans tile the data exactly, and its keys,
  shapes and dtypes must be those of the model the config describes (computed on the
  ``meta`` device, so a lying config allocates nothing); the file's size and sha256 must be
  the config's; a NaN or Inf anywhere refuses the folder.

Every refusal is one line (:class:`HubFolderError`) and returns no model. Writing is
deterministic (sorted metadata, state-dict order, no timestamps), so
``save_pretrained(from_pretrained(folder))`` writes the same bytes; the card (``README.md``)
is carried over only while the weights are the ones it describes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from facenet_convert.converter.core.errors import OutputError, SourceError
from facenet_convert.converter.core.inputs import describe_os_error, open_regular
from facenet_convert.converter.core.version import __version__
from facenet_convert.models.releases import (
    FIXED_STANDARDIZATION,
    OFFLINE_ENV,
    PREWHITEN,
    find_release,
)

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor, nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
FORMAT = "facenet-convert-hub-folder"
FORMAT_VERSION = 1
MAX_CONFIG_BYTES = 64 << 10
#: A safetensors header larger than this is refused before it is read (V1's is ~60 KB).
MAX_HEADER_BYTES = 8 << 20
MAX_TENSORS = 10_000
MAX_EMBEDDING_SIZE = 1 << 16
MAX_CLASSES = 1 << 21
#: What a model's input must be standardized with: upstream's two, and MTCNN's scaling.
PREPROCESSINGS = (FIXED_STANDARDIZATION, PREWHITEN, "mtcnn")
#: architecture -> (task, class that loads it): data, so that no folder names code.
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "inception_resnet_v1": ("embedding", "InceptionResNetV1"),
    "inception_resnet_v2": ("embedding", "InceptionResNetV2"),
    "squeezenet": ("embedding", "SqueezeNet"),
    "pnet": ("detection", "PNet"),
    "rnet": ("detection", "RNet"),
    "onet": ("detection", "ONet"),
    "mtcnn": ("detection", "MTCNN"),
}
#: Keys every config has, then the keys of one task.
COMMON_KEYS = ("format", "format_version", "architecture", "task", "input_size",
               "preprocessing", "weights_sha256", "source_sha256", "release",
               "converter_version")
TASK_KEYS = {"embedding": ("embedding_size", "num_classes"), "detection": ()}
MTCNN_KEYS = ("detector",)
#: What a provenance (kept from a loaded folder, or given by the exporter) may say.
PROVENANCE_KEYS = ("preprocessing", "source_sha256", "release", "converter_version")
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: safetensors dtype tag -> (numpy dtype string, torch dtype name, bytes per value)
_DTYPES = {"F64": ("<f8", "float64", 8), "F32": ("<f4", "float32", 4),
           "F16": ("<f2", "float16", 2), "I64": ("<i8", "int64", 8), "I32": ("<i4", "int32", 4),
           "I16": ("<i2", "int16", 2), "I8": ("i1", "int8", 1), "U8": ("u1", "uint8", 1),
           "BOOL": ("?", "bool", 1)}
_TAGS = {torch_name: tag for tag, (_, torch_name, _) in _DTYPES.items()}


class HubFolderError(SourceError):
    """A Hub-style folder (or repo id) that cannot be loaded or written as asked."""


# ------------------------------------------------------------------------------ resolving


@dataclass(frozen=True)
class ResolvedFolder:
    """Where a folder's files are: ``files`` by name, all inside ``root`` once resolved."""

    name: str                   # what the caller gave
    root: Path                  # the folder (or, for a repo id, the repo's cache folder)
    files: dict[str, Path]
    origin: str                 # "folder" or "hub"


def hub_offline() -> bool:
    """Whether repo ids resolve from the cache only: ``HF_HUB_OFFLINE`` as huggingface_hub
    reads it (1, ON, YES, TRUE), but read now rather than when huggingface_hub was imported,
    or ``$FACENET_CONVERT_OFFLINE`` (set, not 0, as for every download of this package)."""
    hf = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    return hf or os.environ.get(OFFLINE_ENV, "").strip() not in ("", "0")


def resolve_folder(folder_or_repo_id: str | os.PathLike[str], *, revision: str | None = None,
                   cache_dir: str | os.PathLike[str] | None = None,
                   local_files_only: bool | None = None,
                   names: tuple[str, ...] = (CONFIG_NAME, WEIGHTS_NAME)) -> ResolvedFolder:
    """The files ``names`` of a local folder, or of a Hub repo through huggingface_hub's
    cache (a local directory of that name wins over a repo id)."""
    if not isinstance(folder_or_repo_id, (str, os.PathLike)) or isinstance(
            os.fspath(folder_or_repo_id), bytes):
        raise HubFolderError("expected a folder path or a Hub repo id (owner/name) as text, "
                             f"got {type(folder_or_repo_id).__name__}")
    given = os.fspath(folder_or_repo_id)
    path = Path(given).expanduser()
    try:
        is_folder = path.is_dir()
    except OSError as error:              # a name too long for the file system...
        raise HubFolderError(f"cannot use this path ({describe_os_error(error)})",
                             path=given[:200]) from None
    if is_folder:
        root = Path(os.path.realpath(path))
        return ResolvedFolder(given, root, {name: path / name for name in names}, "folder")
    if isinstance(folder_or_repo_id, str) and REPO_ID.fullmatch(given) and ".." not in given:
        return _resolve_repo(given, revision, cache_dir, local_files_only, names)
    raise HubFolderError("no such folder, and not a Hub repo id (owner/name); give a folder "
                         f"holding {CONFIG_NAME} and {WEIGHTS_NAME} (written by save_pretrained "
                         "or `facenet-convert export --hub-folder`)", path=given)


def _resolve_repo(repo_id: str, revision: str | None, cache_dir: str | os.PathLike[str] | None,
                  local_files_only: bool | None, names: tuple[str, ...]) -> ResolvedFolder:
    from facenet_convert.converter.core.extras import require_extra

    require_extra("hub", f"loading the Hub repo id {repo_id!r}")
    import huggingface_hub

    offline = hub_offline() if local_files_only is None else bool(local_files_only)
    files: dict[str, Path] = {}
    for name in names:
        try:
            found = huggingface_hub.hf_hub_download(
                repo_id, name, revision=revision,
                cache_dir=None if cache_dir is None else os.fspath(cache_dir),
                local_files_only=offline)
        except Exception as error:  # noqa: BLE001 - huggingface_hub raises many types
            first = (str(error).strip().splitlines() or [""])[0][:200]
            hint = ("it is not in the Hugging Face cache and downloads are off (HF_HUB_OFFLINE "
                    f"or ${OFFLINE_ENV}): download it once online, or pass a local folder"
                    if offline else "check the repo id, the revision and your connection")
            raise HubFolderError(f"cannot get {name} of Hub repo {repo_id} "
                                 f"({type(error).__name__}: {first}); {hint}") from None
        files[name] = Path(found)
    snapshots = {path.parent for path in files.values()}
    if len(snapshots) != 1:
        raise HubFolderError(f"the files of Hub repo {repo_id} come from different revisions "
                             f"({', '.join(sorted(p.name for p in snapshots))}); pass revision=")
    (snapshot,) = snapshots
    # the cache's snapshot files are links into the repo's blobs/: the repo folder is the root
    root = snapshot.parent.parent if snapshot.parent.name == "snapshots" else snapshot
    if root.is_symlink():          # the repo's own folder a link: its target is no cache
        raise HubFolderError(f"the cache folder of Hub repo {repo_id} is a link to "
                             f"{os.path.realpath(root)}; refusing to read outside the cache",
                             path=root)
    return ResolvedFolder(repo_id, Path(os.path.realpath(root)), files, "hub")


def _inside(resolved: ResolvedFolder, name: str) -> Path:
    """The real path of ``name``, refused when it leaves the folder (a symlink out)."""
    path = resolved.files[name]
    if not os.path.lexists(path):
        raise HubFolderError(f"no {name} in the folder; a Hub folder holds {CONFIG_NAME} and "
                             f"{WEIGHTS_NAME}", path=path)
    real = Path(os.path.realpath(path))
    if resolved.root not in real.parents:
        raise HubFolderError(f"{name} is a link to {real}, outside the folder; refusing to "
                             "follow it (copy the file into the folder)", path=path)
    return real


# ------------------------------------------------------------------------------- config


def _strict_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)                      # linear: a header of 600k keys stays fast
    if len(out) != len(pairs):
        counts = Counter(key for key, _ in pairs)
        repeated = sorted(key for key, count in counts.items() if count > 1)
        raise ValueError(f"duplicate keys {repeated[:5]}")
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(data: bytes, what: str, path: str | os.PathLike[str]) -> Any:
    """Parse UTF-8 JSON refusing NaN/Infinity and duplicate keys (either can hide a lie)."""
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_strict_pairs,
                          parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        text = " ".join(str(error).split())[:160]
        raise HubFolderError(f"{what} is not valid JSON ({type(error).__name__}: {text})",
                             path=path) from None


def _read_bounded(path: Path, what: str, limit: int) -> bytes:
    with open_regular(path, what, HubFolderError) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            raise HubFolderError(f"{what} is {size} bytes, more than the {limit} allowed; "
                                 "refusing to read it", path=path)
        return handle.read(limit + 1)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _check_type(config: Mapping[str, Any], key: str, ok: bool, expected: str, path: str) -> None:
    if not ok:
        raise HubFolderError(f"{CONFIG_NAME}: {key} must be {expected}, found "
                             f"{json.dumps(config.get(key))[:80]}", path=path, key=key)


def check_config(config: Any, path: str | os.PathLike[str]) -> dict[str, Any]:
    """``config`` if it is a config this version reads (every key known, typed, coherent)."""
    where = os.fspath(path)
    if not isinstance(config, dict):
        raise HubFolderError(f"{CONFIG_NAME} must hold a JSON object, found "
                             f"{type(config).__name__}", path=where)
    if config.get("format") != FORMAT:
        raise HubFolderError(f"{CONFIG_NAME} is not a facenet-convert Hub config (format "
                             f"{json.dumps(config.get('format'))[:60]}, expected {FORMAT!r})",
                             path=where)
    if config.get("format_version") != FORMAT_VERSION:
        raise HubFolderError(f"{CONFIG_NAME} has format_version "
                             f"{json.dumps(config.get('format_version'))[:20]}; this version "
                             f"reads {FORMAT_VERSION}: upgrade facenet-convert", path=where)
    architecture = config.get("architecture")
    if not isinstance(architecture, str) or architecture not in ARCHITECTURES:
        raise HubFolderError(f"{CONFIG_NAME}: unknown architecture "
                             f"{json.dumps(architecture)[:60]}; known: "
                             f"{', '.join(ARCHITECTURES)}", path=where, key="architecture")
    task = ARCHITECTURES[architecture][0]
    allowed = (*COMMON_KEYS, *TASK_KEYS[task], *(MTCNN_KEYS if architecture == "mtcnn" else ()))
    unknown = sorted(set(config) - set(allowed))
    missing = [key for key in allowed if key not in config]
    if unknown or missing:
        parts = [f"{label} {', '.join(items)}" for label, items in
                 (("unknown keys", unknown), ("missing keys", missing)) if items]
        raise HubFolderError(f"{CONFIG_NAME} ({architecture}): {'; '.join(parts)}",
                             path=where)
    _check_type(config, "task", config["task"] == task, f"{task!r} for {architecture}", where)
    size = config["input_size"]
    _check_type(config, "input_size", size is None or (
        isinstance(size, list) and len(size) == 2 and all(_is_int(v) and 0 < v <= 4096
                                                          for v in size)),
        "null or [height, width]", where)
    _check_type(config, "preprocessing", config["preprocessing"] is None
                or config["preprocessing"] in PREPROCESSINGS,
                f"null or one of {', '.join(PREPROCESSINGS)}", where)
    _check_type(config, "weights_sha256", isinstance(config["weights_sha256"], str)
                and _SHA256.fullmatch(config["weights_sha256"]) is not None,
                "a lowercase hex sha256", where)
    sources = config["source_sha256"]
    _check_type(config, "source_sha256", isinstance(sources, dict) and len(sources) <= 64
                and all(isinstance(k, str) and 0 < len(k) <= 255 and isinstance(v, str)
                        and _SHA256.fullmatch(v) for k, v in sources.items()),
                "an object {file name: sha256}", where)
    _check_type(config, "converter_version", isinstance(config["converter_version"], str)
                and 0 < len(config["converter_version"]) <= 64, "a version string", where)
    release = config["release"]
    _check_type(config, "release", release is None or isinstance(release, str),
                "null or a release name", where)
    if task == "embedding":
        _check_type(config, "embedding_size", _is_int(config["embedding_size"])
                    and 0 < config["embedding_size"] <= MAX_EMBEDDING_SIZE,
                    f"an integer in 1..{MAX_EMBEDDING_SIZE}", where)
        classes = config["num_classes"]
        _check_type(config, "num_classes", classes is None or (
            _is_int(classes) and 0 < classes <= MAX_CLASSES),
            f"null or an integer in 1..{MAX_CLASSES}", where)
    if architecture == "mtcnn":
        _check_detector(config, where)
    if release is not None:
        _check_release(config, architecture, where)
    return config


#: MTCNN's detector settings: key -> (check, what it must be)
_DETECTOR: dict[str, tuple[Any, str]] = {
    "image_size": (lambda v: _is_int(v) and 0 < v <= 4096, "an integer in 1..4096"),
    "margin": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "min_face_size": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "thresholds": (lambda v: isinstance(v, list) and len(v) == 3
                   and all(_is_number(t) for t in v), "three numbers"),
    "factor": (lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1)"),
    "post_process": (lambda v: isinstance(v, bool), "true or false"),
    "select_largest": (lambda v: isinstance(v, bool), "true or false"),
    "selection_method": (lambda v: isinstance(v, str) and len(v) <= 40, "a method name"),
    "keep_all": (lambda v: isinstance(v, bool), "true or false"),
    "alignment": (lambda v: isinstance(v, str) and len(v) <= 40, "an alignment name"),
    "template": (lambda v: isinstance(v, str) and len(v) <= 40, "a template name"),
}


def _check_detector(config: Mapping[str, Any], where: str) -> None:
    settings = config["detector"]
    if not isinstance(settings, dict) or set(settings) != set(_DETECTOR):
        found = sorted(settings) if isinstance(settings, dict) else type(settings).__name__
        raise HubFolderError(f"{CONFIG_NAME}: detector must hold exactly "
                             f"{', '.join(_DETECTOR)}; found {found}", path=where,
                             key="detector")
    for key, (check, what) in _DETECTOR.items():
        if not check(settings[key]):
            raise HubFolderError(f"{CONFIG_NAME}: detector.{key} must be {what}, found "
                                 f"{json.dumps(settings[key])[:60]}", path=where,
                                 key=f"detector.{key}")


def _check_release(config: Mapping[str, Any], architecture: str, where: str) -> None:
    release = find_release(config["release"])
    if release is None or release.architecture != architecture:
        raise HubFolderError(f"{CONFIG_NAME}: release {config['release']!r} is no "
                             f"{architecture} release", path=where, key="release")
    facts = {"embedding_size": release.embedding_size, "num_classes": release.num_classes}
    if release.preprocessing in (FIXED_STANDARDIZATION, PREWHITEN):
        facts["preprocessing"] = release.preprocessing
    for key, expected in facts.items():
        if key in config and config[key] != expected:
            raise HubFolderError(f"{CONFIG_NAME}: release {release.name} has {key} "
                                 f"{expected}, the config says {config[key]}", path=where,
                                 key=key)


def read_config(resolved: ResolvedFolder) -> dict[str, Any]:
    """The checked ``config.json`` of a resolved folder."""
    path = _inside(resolved, CONFIG_NAME)
    data = _read_bounded(path, CONFIG_NAME, MAX_CONFIG_BYTES)
    return check_config(strict_json(data, CONFIG_NAME, resolved.files[CONFIG_NAME]),
                        resolved.files[CONFIG_NAME])


# ---------------------------------------------------------------------------- safetensors

Layout = dict[str, tuple[tuple[int, ...], str]]   # key -> (shape, torch dtype name)


def layout_of(module: nn.Module) -> Layout:
    """Every state-dict entry's shape and dtype (works on ``meta`` tensors)."""
    return {key: (tuple(int(d) for d in value.shape), str(value.dtype).removeprefix("torch."))
            for key, value in module.state_dict().items()}


@dataclass
class _Entry:
    key: str
    tag: str
    shape: tuple[int, ...]
    begin: int
    end: int


def _header_entries(header: Any, data_size: int, path: Path) -> tuple[list[_Entry], dict]:
    if not isinstance(header, dict):
        raise HubFolderError(f"{WEIGHTS_NAME}: the header is not a JSON object", path=path)
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise HubFolderError(f"{WEIGHTS_NAME}: __metadata__ must map strings to strings",
                             path=path)
    if len(header) > MAX_TENSORS:
        raise HubFolderError(f"{WEIGHTS_NAME}: {len(header)} tensors, more than "
                             f"{MAX_TENSORS}", path=path)
    entries = []
    for key, info in header.items():
        if not (isinstance(info, dict) and set(info) == {"dtype", "shape", "data_offsets"}
                and info["dtype"] in _DTYPES and isinstance(info["shape"], list)
                and len(info["shape"]) <= 8 and all(_is_int(d) and d >= 0
                                                    for d in info["shape"])
                and isinstance(info["data_offsets"], list) and len(info["data_offsets"]) == 2
                and all(_is_int(o) for o in info["data_offsets"])):
            raise HubFolderError(f"{WEIGHTS_NAME}: malformed header entry (expected dtype, "
                                 "shape and data_offsets)", path=path, key=key)
        begin, end = info["data_offsets"]
        count = math.prod(info["shape"])
        itemsize = _DTYPES[info["dtype"]][2]
        if not 0 <= begin <= end <= data_size or end - begin != count * itemsize:
            raise HubFolderError(f"{WEIGHTS_NAME}: data_offsets [{begin}, {end}] do not hold "
                                 f"{count} {info['dtype']} values inside the {data_size} data "
                                 "bytes", path=path, key=key)
        entries.append(_Entry(key, info["dtype"], tuple(info["shape"]), begin, end))
    position = 0
    for entry in sorted(entries, key=lambda e: (e.begin, e.end)):
        if entry.begin != position:
            raise HubFolderError(f"{WEIGHTS_NAME}: tensor data "
                                 f"{'overlaps' if entry.begin < position else 'leaves a gap'} "
                                 f"at byte {min(entry.begin, position)}", path=path,
                                 key=entry.key)
        position = entry.end
    if position != data_size:
        raise HubFolderError(f"{WEIGHTS_NAME}: {data_size - position} data bytes belong to no "
                             "tensor", path=path)
    return entries, metadata


def _compare_layout(entries: list[_Entry], expected: Layout, config_path: str, path: Path,
                    architecture: str) -> None:
    found = {e.key: (e.shape, _DTYPES[e.tag][1]) for e in entries}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [f"{key} expected {list(shape)} {dtype} found {list(found[key][0])} "
                  f"{found[key][1]}" for key, (shape, dtype) in expected.items()
                  if key in found and found[key] != (shape, dtype)]
    if missing or unexpected or mismatched:
        parts = [f"{label} ({len(items)}): {', '.join(items[:3])}"
                 f"{', ...' if len(items) > 3 else ''}"
                 for label, items in (("missing", missing), ("unexpected", unexpected),
                                      ("mismatch", mismatched)) if items]
        raise HubFolderError(f"{WEIGHTS_NAME} does not hold the {architecture} that "
                             f"{Path(config_path).name} describes: {'; '.join(parts)}",
                             path=path)


def read_weights(path: Path, expected: Layout, config: Mapping[str, Any], config_path: str,
                 shown: Path) -> dict[str, np.ndarray]:
    """The arrays of ``model.safetensors`` after every header, size, hash and value check."""
    import numpy as np

    with open_regular(path, WEIGHTS_NAME, HubFolderError) as handle:
        size = os.fstat(handle.fileno()).st_size
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise HubFolderError(f"{WEIGHTS_NAME} is {size} bytes, too short for a "
                                 "safetensors header", path=shown)
        length = int.from_bytes(prefix, "little")
        if not 2 <= length <= min(MAX_HEADER_BYTES, size - 8):
            raise HubFolderError(f"{WEIGHTS_NAME}: header length {length} is not within "
                                 f"2..{min(MAX_HEADER_BYTES, max(size - 8, 2))}", path=shown)
        raw_header = handle.read(length)
        header = strict_json(raw_header, f"{WEIGHTS_NAME}'s header", shown)
        data_size = size - 8 - length
        entries, metadata = _header_entries(header, data_size, shown)
        declared = metadata.get("facenet_convert.architecture")
        if declared is not None and declared != config["architecture"]:
            raise HubFolderError(f"{WEIGHTS_NAME}'s header says architecture {declared!r}, "
                                 f"{CONFIG_NAME} says {config['architecture']!r}", path=shown)
        _compare_layout(entries, expected, config_path, shown, config["architecture"])
        data = handle.read(data_size + 1)
    if len(data) != data_size:
        raise HubFolderError(f"{WEIGHTS_NAME} changed while it was read", path=shown)
    digest = hashlib.sha256(prefix)
    digest.update(raw_header)
    digest.update(data)
    if digest.hexdigest() != config["weights_sha256"]:
        raise HubFolderError(f"{WEIGHTS_NAME} has sha256 {digest.hexdigest()}, "
                             f"{CONFIG_NAME} says {config['weights_sha256']}: these are not "
                             "the weights the config describes", path=shown)
    arrays = {}
    view = memoryview(data)
    for entry in entries:
        array = np.frombuffer(view[entry.begin:entry.end], dtype=_DTYPES[entry.tag][0])
        array = array.reshape(entry.shape)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise HubFolderError(f"{WEIGHTS_NAME} holds NaN or Inf values; refusing these "
                                 "weights", path=shown, key=entry.key)
        arrays[entry.key] = array
    return {key: arrays[key] for key in expected}


def safetensors_bytes(state: Mapping[str, Tensor], metadata: Mapping[str, str]) -> bytes:
    """A safetensors file of ``state`` (its order), metadata keys sorted: equal tensors give
    equal bytes, run after run."""
    header: dict[str, Any] = {"__metadata__": {key: metadata[key] for key in sorted(metadata)}}
    blobs = []
    offset = 0
    for key, value in state.items():
        tensor = value.detach().to("cpu").contiguous()
        tag = _TAGS.get(str(tensor.dtype).removeprefix("torch."))
        if tag is None:
            raise OutputError(f"dtype {tensor.dtype} cannot be written to safetensors here",
                              key=key)
        blob = tensor.numpy().astype(_DTYPES[tag][0], copy=False).tobytes()
        header[key] = {"dtype": tag, "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return b"".join([len(text).to_bytes(8, "little"), text, *blobs])


# ------------------------------------------------------------------------------ writing


@dataclass
class FolderContent:
    """What a Hub folder holds, in memory: the weights' bytes, the config, the card."""

    weights: bytes
    config: dict[str, Any]
    card: str | None = None

    def files(self) -> dict[str, bytes]:
        out = {WEIGHTS_NAME: self.weights, CONFIG_NAME: config_bytes(self.config)}
        if self.card is not None:
            out[CARD_NAME] = self.card.encode("utf-8")
        return out


def config_bytes(config: Mapping[str, Any]) -> bytes:
    """The config as written: sorted keys, 2-space indent, trailing newline, strict JSON."""
    return (json.dumps(config, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


@contextmanager
def output_folder(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """``folder``, created when missing (its parent must exist) and removed again when what
    runs inside fails and leaves it empty."""
    path = Path(folder)
    if os.path.lexists(path) and not path.is_dir():
        raise OutputError("the output folder is a file; give a directory", path=path)
    created = False
    if not os.path.exists(path):          # False, not an error, for a name too long
        try:
            path.mkdir()
            created = True
        except FileExistsError:
            if not path.is_dir():     # another writer made it meanwhile: a folder is fine
                raise OutputError("the output folder is a file; give a directory",
                                  path=path) from None
        except OSError as error:
            raise OutputError(f"cannot create the folder: {describe_os_error(error)}",
                              path=path) from None
    try:
        yield path
    except BaseException:
        if created:
            try:
                path.rmdir()          # only when empty: a concurrent writer's files stay
            except OSError:
                pass
        raise


def write_folder(folder: str | os.PathLike[str], files: Mapping[str, bytes], *,
                 force: bool = False, inputs: tuple[str | os.PathLike[str], ...] = ()
                 ) -> Path:
    """Write ``files`` into ``folder`` all or nothing (core.atomic), creating the folder."""
    from facenet_convert.converter.core.atomic import staged_outputs

    with output_folder(folder) as path:
        targets = {path / name: data for name, data in files.items()}
        with staged_outputs(list(targets), force=force, inputs=inputs,
                            final=True) as handles:
            for target, data in targets.items():
                handles[target].write(data)
    return path


# -------------------------------------------------------------------------------- mixin


@dataclass
class _Loaded:
    """What a model loaded from a folder remembers, for save_pretrained."""

    provenance: dict[str, Any]
    weights_sha256: str
    card: str | None = field(default=None, repr=False)


class PretrainedFolderMixin:
    """``from_pretrained`` / ``save_pretrained`` for a zoo model.

    A class sets :attr:`HUB_ARCHITECTURE` (a key of :data:`ARCHITECTURES`) or overrides
    :meth:`hub_architecture`, sets
    :attr:`HUB_INPUT_SIZE`, and overrides :meth:`hub_facts` (its task's config keys) and
    :meth:`hub_build` (an unloaded model from a config) when its constructor needs them.
    """

    HUB_ARCHITECTURE: ClassVar[str]
    HUB_INPUT_SIZE: ClassVar[tuple[int, int] | None] = None
    #: Constructor arguments that the folder decides (passing them is refused).
    HUB_FIXED_ARGUMENTS: ClassVar[tuple[str, ...]] = ("pretrained",)

    # -- per class

    @classmethod
    def hub_architecture(cls) -> str:
        """The config's ``architecture`` (a key of :data:`ARCHITECTURES`)."""
        return cls.HUB_ARCHITECTURE

    def hub_facts(self) -> dict[str, Any]:
        """The task's config keys (sizes, detector settings) of this model as it is."""
        return {}

    def hub_provenance(self) -> dict[str, Any]:
        """What the model itself knows of its provenance (a release it was built from, its
        input standardization); a loaded folder's or the exporter's provenance wins."""
        task = ARCHITECTURES[self.hub_architecture()][0]
        return {"preprocessing": "mtcnn" if task == "detection" else None}

    @classmethod
    def hub_build(cls, config: Mapping[str, Any], **kwargs: Any) -> nn.Module:
        """An unloaded model of the config's sizes (``kwargs``: the caller's arguments)."""
        return cls(**kwargs)  # type: ignore[return-value]

    @classmethod
    def hub_layout(cls, config: Mapping[str, Any]) -> Layout:
        """The state-dict layout the config describes, computed without allocating."""
        import torch

        with torch.device("meta"):
            return layout_of(cls.hub_build(config))

    # -- the API

    def hub_config(self, provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``config.json`` for this model without ``weights_sha256`` (see :func:`hub_content`)."""
        loaded: _Loaded | None = getattr(self, "_hub_loaded", None)
        kept = {**self.hub_provenance(), **(loaded.provenance if loaded is not None else {}),
                **(provenance or {})}
        unknown = sorted(set(kept) - set(PROVENANCE_KEYS))
        if unknown:
            raise OutputError(f"unknown provenance keys {unknown}; known: "
                              f"{', '.join(PROVENANCE_KEYS)}")
        task = ARCHITECTURES[self.hub_architecture()][0]
        size = self.HUB_INPUT_SIZE
        config: dict[str, Any] = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "architecture": self.hub_architecture(), "task": task,
            "input_size": None if size is None else list(size),
            "preprocessing": kept.get("preprocessing"),
            "source_sha256": dict(sorted(dict(kept.get("source_sha256") or {}).items())),
            "release": kept.get("release"),
            "converter_version": kept.get("converter_version", __version__),
            **self.hub_facts(),
        }
        return config

    def hub_content(self, provenance: Mapping[str, Any] | None = None) -> FolderContent:
        """The folder's files in memory; the loaded card only while the weights are the
        ones it describes (the release too)."""
        state = self.state_dict()  # type: ignore[attr-defined]
        other = sorted({str(t.dtype) for t in state.values()
                        if t.is_floating_point() and str(t.dtype) != "torch.float32"})
        if other:        # from_pretrained reads float32 folders only: refuse, never write one
            raise OutputError(f"a Hub folder holds float32 weights; this model holds "
                              f"{', '.join(other)} (call .float() before saving)")
        weights = safetensors_bytes(state, {"format": "pt",
                                            "facenet_convert.architecture":
                                                self.hub_architecture()})
        sha = hashlib.sha256(weights).hexdigest()
        config = self.hub_config(provenance)
        loaded: _Loaded | None = getattr(self, "_hub_loaded", None)
        same = loaded is not None and loaded.weights_sha256 == sha
        if loaded is not None and not same and not (provenance or {}).get("release"):
            config["release"] = None          # changed weights are no longer the release
        config["weights_sha256"] = sha
        check_config(json.loads(config_bytes(config)), CONFIG_NAME)
        return FolderContent(weights, config, loaded.card if same and loaded else None)

    def save_pretrained(self, folder: str | os.PathLike[str], *, force: bool = False) -> Path:
        """Write ``model.safetensors``, ``config.json`` (and the card it was loaded with, while
        the weights are unchanged) into ``folder``, all or nothing; returns the folder."""
        return write_folder(folder, self.hub_content().files(), force=force)

    @classmethod
    def from_pretrained(cls, folder_or_repo_id: str | os.PathLike[str], *,
                        revision: str | None = None,
                        cache_dir: str | os.PathLike[str] | None = None,
                        local_files_only: bool | None = None, **kwargs: Any) -> Any:
        """The model of a Hub folder (``save_pretrained`` / ``export --hub-folder``) or a Hub
        repo id (``owner/name``, through huggingface_hub's cache). ``kwargs`` go to the
        constructor (``classify``, ``device``, MTCNN's detector settings...); the sizes and
        weights come from the folder. Refuses, in one line, a folder whose config and weights
        disagree with each other or with this class; executes nothing from it."""
        import torch

        fixed = sorted(set(kwargs) & {*cls.HUB_FIXED_ARGUMENTS, "embedding_size",
                                      "num_classes"})
        if fixed:
            raise HubFolderError(f"{', '.join(fixed)} come from the folder's {CONFIG_NAME}; "
                                 f"do not pass them to {cls.__name__}.from_pretrained")
        resolved = resolve_folder(folder_or_repo_id, revision=revision, cache_dir=cache_dir,
                                  local_files_only=local_files_only)
        config_path = str(resolved.files[CONFIG_NAME])
        config = read_config(resolved)
        if config["architecture"] != cls.hub_architecture():
            owner = ARCHITECTURES[config["architecture"]][1]
            raise HubFolderError(f"the folder holds a {config['architecture']} model, not a "
                                 f"{cls.hub_architecture()}; load it with "
                                 f"{owner}.from_pretrained", path=config_path)
        if config["input_size"] != (None if cls.HUB_INPUT_SIZE is None
                                    else list(cls.HUB_INPUT_SIZE)):
            raise HubFolderError(f"{CONFIG_NAME}: input_size {config['input_size']} is not "
                                 f"{cls.__name__}'s {cls.HUB_INPUT_SIZE}", path=config_path,
                                 key="input_size")
        expected = cls.hub_layout(config)
        weights_path = _inside(resolved, WEIGHTS_NAME)
        arrays = read_weights(weights_path, expected, config, config_path,
                              resolved.files[WEIGHTS_NAME])
        try:
            model = cls.hub_build(config, **kwargs)
        except (TypeError, ValueError) as error:
            raise HubFolderError(f"cannot build {cls.__name__} from the folder "
                                 f"({type(error).__name__}: {error})",
                                 path=config_path) from None
        state = {key: torch.from_numpy(array.copy()) for key, array in arrays.items()}
        model.load_state_dict(state, strict=True)
        model.eval()
        card = _read_card(resolved, revision, cache_dir, local_files_only)
        model._hub_loaded = _Loaded(
            {key: config[key] for key in PROVENANCE_KEYS}, config["weights_sha256"], card)
        return model


def _read_card(resolved: ResolvedFolder, revision: str | None,
               cache_dir: str | os.PathLike[str] | None,
               local_files_only: bool | None) -> str | None:
    """The folder's card, kept to be written again unchanged (never interpreted); None when
    there is none or it cannot be had."""
    try:
        if resolved.origin == "hub":
            card = resolve_folder(resolved.name, revision=revision, cache_dir=cache_dir,
                                  local_files_only=local_files_only, names=(CARD_NAME,))
            if card.files[CARD_NAME].parent != resolved.files[CONFIG_NAME].parent:
                return None               # another revision's card
            resolved = card
        else:
            resolved = ResolvedFolder(resolved.name, resolved.root,
                                      {CARD_NAME: resolved.files[CONFIG_NAME].with_name(
                                          CARD_NAME)}, resolved.origin)
        if not os.path.lexists(resolved.files[CARD_NAME]):
            return None
        real = _inside(resolved, CARD_NAME)
        return _read_bounded(real, CARD_NAME, 1 << 20).decode("utf-8")
    except (HubFolderError, UnicodeDecodeError):
        return None
