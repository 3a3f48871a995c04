"""Regenerate the published PyTorch weights from the original upstream files, verifiably.

``regenerate(releases_dir, out_dir)`` finds the davidsandberg release folders under
``releases_dir`` (folders named like ``20180402-114759`` holding the checkpoint ``.index`` /
``.data-*``, the ``.meta`` graph and the frozen ``.pb``), checks every input file against the
sha256 the release registry (:mod:`models.releases`) pins, converts each checkpoint with
:func:`facenet_convert.converter.convert`, runs the parity check against TensorFlow when it is
importable, and writes facenet-pytorch's file set (``20180402-114759-vggface2.pt`` and its
``-features`` / ``-logits`` split, ..., ``pnet.pt``, ``rnet.pt``, ``onet.pt``) plus
``MANIFEST.json`` (sha256 and size of every output, sha256 of every input, converter version,
parity figures). MTCNN comes from ``releases_dir``'s ``det1/2/3.npy`` when present, else from
the pinned upstream ``facenet`` wheel.

Decisions: a folder named like a release that the registry does not know is skipped with a
note (there is nothing to publish it as); other entries are ignored. A hash mismatch is an
error unless ``allow_unverified`` (then the manifest says ``verified: false``). All outputs are
staged and renamed into place together, or none is. Equal inputs give byte-identical outputs
and manifest: the manifest holds no timestamps, no absolute paths and no timings.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facenet_convert.converter.core.atomic import scratch_directory, staged_outputs
from facenet_convert.converter.core.errors import (
    ChecksumMismatchError,
    ConverterError,
    MappingError,
    ParityError,
    SourceError,
)
from facenet_convert.converter.core.extras import has_extra, require_extra
from facenet_convert.converter.core.hashing import sha256_file
from facenet_convert.converter.core.version import __version__
from facenet_convert.converter.registry import names
from facenet_convert.models.releases import RELEASES, PublishedFile, Release, find_release

MANIFEST = "MANIFEST.json"
RELEASE_FOLDER = re.compile(r"\d{8}-\d{6}")
_DATA_SHARD = re.compile(r"\.data-\d{5}-of-\d{5}$")
#: Parity inputs: few and small so that regenerating stays quick; the gates are the defaults.
PARITY_BATCHES = 1
PARITY_BATCH_SIZE = 4
PARITY_SEED = 0

Echo = Callable[[str], None]


@dataclass
class InputFile:
    """One input file with its hash and what the registry expected."""

    name: str
    role: str
    path: Path
    sha256: str
    size: int
    expected_name: str | None
    expected_sha256: str | None

    @property
    def verified(self) -> bool:
        return self.expected_sha256 is not None and self.sha256 == self.expected_sha256 \
            and self.name == self.expected_name

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.name, "role": self.role, "sha256": self.sha256, "size": self.size,
                "expected_file": self.expected_name, "expected_sha256": self.expected_sha256,
                "verified": self.verified}


@dataclass
class Job:
    """One release to convert: its record, where its files come from, what they are."""

    release: Release
    origin: str                     # "RELEASES_DIR/<folder>" or the pinned wheel
    source: Path                    # what facenet_convert.converter.convert reads
    tf_source: Path                 # what parity runs on the TF side
    inputs: list[InputFile]
    notes: list[str] = field(default_factory=list)


@dataclass
class OutputRecord:
    """One written output."""

    file: str
    release: str
    part: str
    sha256: str
    size: int
    published_sha256: str | None

    def to_dict(self) -> dict[str, Any]:
        same = None if self.published_sha256 is None else self.sha256 == self.published_sha256
        return {"file": self.file, "release": self.release, "part": self.part,
                "sha256": self.sha256, "size": self.size,
                "published_sha256": self.published_sha256, "same_bytes_as_published": same}


@dataclass
class RegenerateResult:
    """What ``regenerate`` wrote (``manifest`` is the MANIFEST.json document)."""

    out_dir: Path
    outputs: list[OutputRecord]
    manifest: dict[str, Any]
    manifest_path: Path
    seconds: float

    def summary(self) -> str:
        total = sum(o.size for o in self.outputs)
        verified = "verified inputs" if self.manifest["verified"] else "UNVERIFIED inputs"
        parity = self.manifest["parity"]
        return (f"regenerated {len(self.outputs)} files ({total / 1e6:.1f} MB) from "
                f"{len(self.manifest['releases'])} releases ({verified}, parity {parity}) "
                f"into {self.out_dir} with {MANIFEST} in {self.seconds:.1f} s")


# ------------------------------------------------------------------------------ discovery


def _input(path: Path, role: str, expected_name: str | None,
           expected_sha256: str | None) -> InputFile:
    try:
        size = path.stat().st_size
        digest = sha256_file(path)
    except OSError as error:
        raise SourceError(f"cannot read input ({error.strerror or error})", path=path) from error
    return InputFile(path.name, role, path, digest, size, expected_name, expected_sha256)


def _release_folders(releases_dir: Path, notes: list[str]) -> list[tuple[Release, Path]]:
    """Registered release folders: ``releases_dir`` itself, or its children, by name."""
    candidates = [releases_dir] if RELEASE_FOLDER.fullmatch(releases_dir.name) else sorted(
        (p for p in releases_dir.iterdir() if p.is_dir() and RELEASE_FOLDER.fullmatch(p.name)),
        key=lambda p: p.name)
    found = []
    for folder in candidates:
        release = find_release(folder.name)
        if release is None or release.architecture not in names("embedding"):
            known = ", ".join(r.name for r in RELEASES if r.architecture in names("embedding"))
            notes.append(f"skipped folder {folder.name}: not a registered release "
                         f"(known: {known})")
            continue
        found.append((release, folder))
    return found


def _checkpoint_job(release: Release, folder: Path, origin: str) -> Job:
    """The inputs of one release folder, matched to the registry's files by role."""
    from facenet_convert.converter.sources.tf_bundle import resolve_prefix

    try:
        prefix, how = resolve_prefix(folder)
    except ConverterError as error:
        raise SourceError(f"release folder of {release.name} holds no usable checkpoint "
                          f"({error})", path=folder) from error
    expected = {item.role: item for item in release.source_files}
    shards = sorted(p for p in folder.iterdir()
                    if p.name.startswith(prefix.name) and _DATA_SHARD.search(p.name))
    files: list[tuple[Path, str]] = [(Path(f"{prefix}.index"), "checkpoint-index")]
    files += [(shard, "checkpoint-data") for shard in shards]
    metas = sorted(folder.glob("*.meta"))
    graphs = sorted(folder.glob("*.pb"))
    files += [(path, "meta-graph") for path in metas] + [(path, "frozen-graph") for path in graphs]
    notes = [f"took checkpoint {prefix.name} ({how.replace(str(folder), folder.name)})"]
    for role, label in (("meta-graph", ".meta graph"), ("frozen-graph", "frozen .pb graph")):
        if not any(r == role for _, r in files):
            notes.append(f"no {label} in the folder (not verified, not used)")
    inputs = []
    for path, role in files:
        want = expected.get(role)
        inputs.append(_input(path, role, want.name if want else None,
                             want.sha256 if want else None))
    return Job(release, origin, prefix, folder, inputs, notes)


def _mtcnn_jobs(releases_dir: Path) -> list[Job]:
    """det1/2/3.npy from ``releases_dir`` when there, else from the pinned facenet wheel."""
    from facenet_convert.third_party.wheels import FACENET, wheel_member

    jobs = []
    for name in names("detection"):
        release = find_release(name)
        if release is None or not release.source_files:
            raise MappingError(f"the release registry has no {name} record with its source "
                               "file; models/releases.py is incomplete")
        expected = release.source_files[0]
        local = releases_dir / expected.name
        if local.is_file():
            path, origin = local, f"RELEASES_DIR/{expected.name}"
        else:
            path = wheel_member(FACENET, f"facenet/src/align/{expected.name}")
            origin = (f"{FACENET.project}=={FACENET.version} wheel "
                      f"(sha256 {FACENET.sha256}) facenet/src/align/{expected.name}")
        job_input = _input(path, expected.role, expected.name, expected.sha256)
        jobs.append(Job(release, origin, path, path, [job_input]))
    return jobs


def _check_verified(jobs: Iterable[Job], allow_unverified: bool) -> list[str]:
    """Raise on the first unverified input unless allowed; return one note per such input."""
    problems = []
    for job in jobs:
        for item in job.inputs:
            if item.verified:
                continue
            where = f"{job.origin}/{item.name}" if job.origin.startswith("RELEASES_DIR") \
                else str(item.path)
            if item.expected_sha256 is None:
                text = (f"{where}: the release registry lists no {item.role} file for "
                        f"{job.release.name}, so it cannot be verified (sha256 {item.sha256})")
            elif item.name != item.expected_name:
                text = (f"{where}: release {job.release.name} ships {item.role} "
                        f"{item.expected_name} (sha256 {item.expected_sha256}), found "
                        f"{item.name} (sha256 {item.sha256})")
            else:
                text = (f"{where}: sha256 mismatch for release {job.release.name}: expected "
                        f"{item.expected_sha256}, found {item.sha256}")
            problems.append(text)
    if problems and not allow_unverified:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ChecksumMismatchError(
            f"{problems[0]}{more}; this is not the published file: use the original release "
            "files, or pass --allow-unverified to convert them anyway (recorded as unverified)")
    return problems


# ------------------------------------------------------------------------------ outputs


def _output_name(item: PublishedFile, fmt: str) -> str:
    return item.filename if fmt == "pt" else f"{Path(item.filename).stem}.{fmt}"


def _tensorflow_available() -> bool:
    return has_extra("tf")


def _check_sizes(job: Job, embedding: int | None, classes: int | None,
                 allow_unverified: bool) -> None:
    release = job.release
    if release.architecture not in names("embedding"):
        return
    if embedding != release.embedding_size:
        text = (f"release {release.name} has {release.embedding_size}-d embeddings but its "
                f"checkpoint holds {embedding}-d")
        if not allow_unverified:
            raise MappingError(f"{text}; this is not the published checkpoint",
                               path=job.source)
        job.notes.append(text)
    wants_logits = any(item.part in ("model", "logits") for item in release.published)
    if wants_logits and classes is None:
        raise MappingError(f"release {release.name} publishes a logits layer but the "
                           "checkpoint has none; give the training checkpoint, not an "
                           "inference-only one", path=job.source)
    if release.num_classes is not None and classes != release.num_classes:
        text = (f"release {release.name} has {release.num_classes} classes but its checkpoint "
                f"holds {classes}")
        if not allow_unverified:
            raise MappingError(f"{text}; this is not the published checkpoint",
                               path=job.source)
        job.notes.append(text)
    if release.num_classes is None and classes is not None:
        job.notes.append(f"the checkpoint's logits layer ({classes} classes) is not published "
                         f"for {release.name}: its file holds the features only")


def _metadata(job: Job, result: Any, part: str) -> dict[str, str]:
    meta = {"format": "pt", "converter": "facenet-convert", "converter_version": __version__,
            "release": job.release.name, "part": part, "architecture": result.architecture,
            "spec": result.table, "weights": result.weights,
            "source_sha256": json.dumps({i.name: i.sha256 for i in job.inputs},
                                        sort_keys=True)}
    if result.embedding_size is not None:
        meta["embedding_size"] = str(result.embedding_size)
    if result.num_classes is not None and part in ("model", "logits"):
        meta["num_classes"] = str(result.num_classes)
    return meta


def _parity_figures(report: Any, scrub: Iterable[str]) -> dict[str, Any]:
    """The deterministic part of a parity report (no paths, no timings)."""
    data = report.to_dict()
    kept = {key: data[key] for key in ("passed", "model", "inputs", "gates_settings", "gates",
                                       "outputs", "notes")}
    kept["tf_side"] = data["source"]["kind"]
    text = json.dumps(kept, sort_keys=True)
    for path in sorted(scrub, key=len, reverse=True):
        text = text.replace(json.dumps(path)[1:-1], "<path>")
    return json.loads(text)


def _run_parity(job: Job, arrays: Any, fmt: str, *, batches: int, batch_size: int,
                scrub: list[str]) -> dict[str, Any]:
    from facenet_convert.converter.parity import run_parity
    from facenet_convert.converter.writers import write_state

    with scratch_directory(prefix="facenet-convert-parity-") as tmp:
        weights = tmp / f"{job.release.name}.{fmt}"
        with open(weights, "wb") as handle:
            write_state(arrays, handle, fmt, {"weights": "raw"})
        report = run_parity(job.tf_source, weights, model=job.release.architecture,
                            batches=batches, batch_size=batch_size, seed=PARITY_SEED)
        figures = _parity_figures(report, [*scrub, str(tmp), str(weights)])
    if not report.passed:
        failed = ", ".join(f"{g.name} {g.value:.3g} > {g.limit:g}" for g in report.failed_gates)
        raise ParityError(f"the converted {job.release.name} does not compute what the "
                          f"TensorFlow graph computes ({failed}); nothing was written",
                          path=job.source)
    return figures


# ------------------------------------------------------------------------------ the API


def regenerate(releases_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
               allow_unverified: bool = False, format: str = "pt", force: bool = False,
               parity: bool | None = None, parity_batches: int = PARITY_BATCHES,
               parity_batch_size: int = PARITY_BATCH_SIZE,
               echo: Echo | None = None) -> RegenerateResult:
    """Verify, convert, check and write every release under ``releases_dir`` into ``out_dir``.

    ``parity``: None runs it when TensorFlow is importable (else a note says it was skipped),
    True requires it, False skips it. ``echo`` receives one progress line per step.
    """
    from facenet_convert.converter.conversion import convert
    from facenet_convert.converter.writers import (
        FORMATS,
        HashingWriter,
        split_state,
        write_json,
        write_state,
    )

    started = time.perf_counter()
    say = echo or (lambda _line: None)
    if format not in FORMATS:
        raise MappingError(f"unknown format {format!r}; expected one of {list(FORMATS)}")
    root = Path(releases_dir)
    if not root.is_dir():
        raise SourceError("RELEASES_DIR is not a directory; give the folder that holds the "
                          "release folders (like 20180402-114759/)", path=root)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SourceError("the output folder is a file; give a directory", path=out)
    notes: list[str] = []
    if parity is None:
        parity = _tensorflow_available()
        if not parity:
            notes.append("parity skipped: TensorFlow is not importable (install the tf extra)")
    elif not parity:
        notes.append("parity skipped (--no-parity)")
    elif not _tensorflow_available():
        require_extra("tf", "--parity")
        raise ParityError("--parity needs TensorFlow, which is not importable; install the tf "
                          "extra or pass --no-parity")

    jobs = [_checkpoint_job(release, folder, f"RELEASES_DIR/{folder.name}"
                            if folder != root else f"RELEASES_DIR ({folder.name})")
            for release, folder in _release_folders(root, notes)]
    if not jobs:
        notes.append("no registered release folder found under RELEASES_DIR: MTCNN only")
    jobs += _mtcnn_jobs(root)
    unverified = _check_verified(jobs, allow_unverified)
    for job in jobs:
        say(f"{job.release.name}: {len(job.inputs)} input files from {job.origin}, "
            f"{'verified' if all(i.verified for i in job.inputs) else 'UNVERIFIED'}")

    planned = [(job, item, out / _output_name(item, format))
               for job in jobs for item in job.release.published]
    manifest_path = out / MANIFEST
    created = not out.exists()
    if created:
        out.mkdir(parents=True)
    scrub = [str(root.absolute()), str(root), str(out.absolute()), str(out)]
    try:
        with staged_outputs([path for _, _, path in planned] + [manifest_path], force=force,
                            inputs=[i.path for job in jobs for i in job.inputs],
                            final=True) as handles:
            records: list[OutputRecord] = []
            releases: list[dict[str, Any]] = []
            versions: dict[str, str] = {}
            for job in jobs:
                result = convert(job.source, model=job.release.architecture)
                _check_sizes(job, result.embedding_size, result.num_classes, allow_unverified)
                figures = None
                if parity:
                    say(f"{job.release.name}: parity against TensorFlow")
                    figures = _run_parity(job, result.arrays, format, batches=parity_batches,
                                          batch_size=parity_batch_size, scrub=scrub)
                features, logits = split_state(result.arrays)
                parts = {"model": result.arrays, "features": features, "logits": logits}
                written = []
                for owner, item, path in planned:
                    if owner is not job:
                        continue
                    sink = HashingWriter(handles[path])
                    write_state(parts[item.part], sink, format,
                                _metadata(job, result, item.part))
                    record = OutputRecord(path.name, job.release.name, item.part, sink.sha256,
                                          sink.size, item.sha256 if format == "pt" else None)
                    records.append(record)
                    written.append(path.name)
                say(f"{job.release.name}: wrote {', '.join(written)}")
                releases.append(_release_entry(job, result, written, figures))
                del result, features, logits, parts
            versions["numpy"] = _version("numpy")
            if format == "pt" or parity:
                versions["torch"] = _version("torch")
            if parity:
                versions["tensorflow"] = _version("tensorflow")
            manifest = {
                "tool": "facenet-convert regenerate",
                "converter_version": __version__,
                "format": format,
                "allow_unverified": allow_unverified,
                "verified": not unverified,
                "unverified_inputs": unverified,
                "parity": "ran" if parity else "skipped",
                "versions": versions,
                "releases": releases,
                "outputs": [record.to_dict() for record in records],
                "notes": notes,
            }
            manifest = json.loads(_scrub_text(json.dumps(manifest), scrub))
            write_json(manifest, handles[manifest_path])
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    return RegenerateResult(out, records, manifest, manifest_path,
                            time.perf_counter() - started)


def _scrub_text(text: str, paths: Iterable[str]) -> str:
    for path in sorted(set(paths), key=len, reverse=True):
        text = text.replace(json.dumps(path)[1:-1], "<path>")
    return text


def _version(module: str) -> str:
    if module not in sys.modules:
        __import__(module)
    return str(getattr(sys.modules[module], "__version__", "unknown"))


def _release_entry(job: Job, result: Any, written: list[str],
                   figures: dict[str, Any] | None) -> dict[str, Any]:
    release = job.release
    return {
        "release": release.name, "architecture": release.architecture,
        "dataset": release.dataset, "embedding_size": result.embedding_size,
        "num_classes": result.num_classes, "lfw_accuracy": release.lfw_accuracy,
        "preprocessing": release.preprocessing, "distance_metric": release.distance_metric,
        "origin": job.origin, "source": job.source.name,
        "verified": all(item.verified for item in job.inputs),
        "inputs": [item.to_dict() for item in job.inputs],
        "table": result.table, "weights": result.weights,
        "mapped": len(result.plan.mapped), "filled": len(result.plan.filled),
        "dropped": len(result.plan.drops), "nonfinite": list(result.nonfinite),
        "outputs": written, "parity": figures, "notes": list(job.notes),
    }
