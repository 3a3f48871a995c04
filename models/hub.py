"""Pretrained weights on demand: the torch cache, else a sha256-verified download.

A release's file is looked up in ``$TORCH_HOME/checkpoints/<filename>`` (the directory torch.hub
and facenet-pytorch use). A file found there is used as it is (it may be your own
``facenet-convert regenerate`` output, whose bytes differ from facenet-pytorch's); the model
then checks its sizes against the release record. When it is absent it is downloaded from
:func:`models.releases.download_url` (``$FACENET_CONVERT_WEIGHTS_URL/<filename>`` when that
mirror is configured, else the release's published URL) and kept only if its sha256 equals the
trusted one, written atomically (temp file beside it, fsync, rename) so that an interrupted or
rejected download never leaves a file behind.

Trusted hashes come from the registry (the published files' sha256), or, for your own mirror
of regenerated files, from a *local* JSON file named by ``$FACENET_CONVERT_WEIGHTS_MANIFEST``
(``regenerate``'s ``MANIFEST.json`` or ``{filename: sha256}``), which takes precedence for the
files it lists. Nothing is ever downloaded without a trusted hash. ``$FACENET_CONVERT_OFFLINE``
(set, not ``0``) forbids downloads altogether. No torch import here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Mapping
from http.client import HTTPException
from pathlib import Path
from typing import BinaryIO
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from facenet_convert.converter.core.atomic import atomic_output
from facenet_convert.converter.core.errors import (
    ChecksumMismatchError,
    ConverterError,
    ManifestError,
    WeightsNotFoundError,
)
from facenet_convert.converter.core.version import __version__
from facenet_convert.models.releases import (
    OFFLINE_ENV,
    WEIGHTS_MANIFEST_ENV,
    WEIGHTS_URL_ENV,
    Release,
    checkpoint_dir,
    download_url,
    find_published,
    find_release,
    release_names,
    unknown_release,
)

CHUNK = 1 << 20
TIMEOUT_S = 30.0
#: Whole-download deadline (seconds) and byte cap when the size is not known in advance.
DEADLINE_ENV = "FACENET_CONVERT_DOWNLOAD_DEADLINE"
DEADLINE_S = 1800.0
MAX_UNKNOWN_BYTES = 2 << 30
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HINT = "run `facenet-convert regenerate` or place the file there"


class _Abort(Exception):
    """Carries an error out of the atomic-output block (which rewraps OSErrors)."""

    def __init__(self, error: ConverterError) -> None:
        super().__init__(str(error))
        self.error = error


def _regenerate_hint(dest: Path) -> str:
    return (f"{_HINT} (`facenet-convert regenerate RELEASES_DIR -o {dest.parent}` writes it "
            "from the original release files)")


def load_manifest(path: str | os.PathLike[str]) -> dict[str, tuple[str, int | None]]:
    """``{filename: (sha256, size or None)}`` from a ``regenerate`` MANIFEST.json (its
    ``outputs``) or a plain ``{filename: sha256}`` object."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ManifestError(f"cannot read the trusted hash list ({error}); fix or unset "
                            f"${WEIGHTS_MANIFEST_ENV}", path=path) from error
    entries: dict[str, tuple[str, int | None]] = {}
    if isinstance(document, Mapping) and isinstance(document.get("outputs"), list):
        for item in document["outputs"]:
            if not (isinstance(item, Mapping) and isinstance(item.get("file"), str)):
                raise ManifestError("an entry of outputs has no file name", path=path)
            size = item.get("size")
            entries[item["file"]] = (str(item.get("sha256", "")),
                                     size if isinstance(size, int) else None)
    elif isinstance(document, Mapping) and all(isinstance(v, str) for v in document.values()):
        entries = {str(name): (sha, None) for name, sha in document.items()}
    else:
        raise ManifestError("expected a MANIFEST.json written by `facenet-convert regenerate` "
                            "or a JSON object {filename: sha256}", path=path)
    bad = sorted(name for name, (sha, _) in entries.items() if not _SHA256.fullmatch(sha))
    if bad:
        raise ManifestError(f"not a lowercase hex sha256 for {', '.join(bad[:3])}", path=path)
    return entries


def trusted_sha256(filename: str) -> tuple[str | None, int | None, str]:
    """The sha256 (and size) a download of ``filename`` must have, and where it comes from.

    ``$FACENET_CONVERT_WEIGHTS_MANIFEST`` first (a local file you trust), then the registry's
    published hash; ``(None, None, "")`` when neither knows the file.
    """
    manifest = os.environ.get(WEIGHTS_MANIFEST_ENV, "").strip()
    if manifest:
        entries = load_manifest(manifest)
        if filename in entries:
            sha, size = entries[filename]
            return sha, size, f"${WEIGHTS_MANIFEST_ENV} ({manifest})"
    found = find_published(filename)
    if found is not None and found[1].sha256 is not None:
        return found[1].sha256, found[1].size, "the release registry"
    return None, None, ""


def ensure_weights(release: Release, *, progress: bool | None = None) -> Path:
    """The cached file of ``release``, downloading and verifying it first when absent."""
    dest = checkpoint_dir() / release.filename
    if dest.is_file():
        return dest
    if os.environ.get(OFFLINE_ENV, "").strip() not in ("", "0"):
        raise WeightsNotFoundError(
            f"weights of release {release.name} not found (expected file {release.filename} "
            f"in {dest.parent}) and ${OFFLINE_ENV} forbids downloads; "
            f"{_regenerate_hint(dest)}", path=dest)
    url = download_url(release)
    if url is None:
        raise WeightsNotFoundError(
            f"weights of release {release.name} not found (expected file {release.filename} "
            f"in {dest.parent}) and no download location is known for them (set "
            f"${WEIGHTS_URL_ENV} to a mirror); {_regenerate_hint(dest)}", path=dest)
    sha256, size, origin = trusted_sha256(release.filename)
    if sha256 is None:
        raise WeightsNotFoundError(
            f"weights of release {release.name} not found (expected file {release.filename} "
            f"in {dest.parent}); no sha256 is known for it, so it is not downloaded "
            f"unverified: fetch {url} yourself, or list its sha256 in "
            f"${WEIGHTS_MANIFEST_ENV}; {_regenerate_hint(dest)}", path=dest)
    return download_file(url, dest, sha256=sha256, size=size, origin=origin,
                         progress=progress)


def download_deadline() -> float:
    """Seconds a whole download may take: ``$FACENET_CONVERT_DOWNLOAD_DEADLINE`` or 1800."""
    text = os.environ.get(DEADLINE_ENV, "").strip()
    try:
        value = float(text) if text else DEADLINE_S
    except ValueError:
        raise WeightsNotFoundError(f"${DEADLINE_ENV} must be a number of seconds, not "
                                   f"{text!r}") from None
    return value if value > 0 else DEADLINE_S


def download_file(url: str, dest: str | os.PathLike[str], *, sha256: str,
                  size: int | None = None, origin: str = "the caller",
                  progress: bool | None = None, timeout: float = TIMEOUT_S,
                  deadline: float | None = None) -> Path:
    """Download ``url`` to ``dest`` atomically, keeping it only if its sha256 is ``sha256``.

    ``size`` (when known) bounds the download, else 2 GiB does; ``timeout`` bounds each read
    and ``deadline`` (default :func:`download_deadline`) the whole transfer, so a server that
    drips bytes cannot hold the run forever. ``progress``: a bar on stderr; default when
    stderr is a terminal. Errors: :class:`WeightsNotFoundError` (offline, HTTP error, short,
    cut or oversized body, deadline), :class:`ChecksumMismatchError` (nothing is left behind
    either way).
    """
    dest = Path(dest)
    ends = time.monotonic() + (deadline if deadline is not None else download_deadline())
    if progress is None:
        progress = sys.stderr.isatty()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WeightsNotFoundError(f"cannot create the cache directory {dest.parent} "
                                   f"({error.strerror or error}); set $TORCH_HOME to a writable "
                                   f"folder, or {_HINT}", path=dest) from error
    request = Request(url, headers={"User-Agent": f"facenet-convert/{__version__}"})
    try:
        response = urlopen(request, timeout=timeout)
    except HTTPException as error:                 # a malformed status line or headers
        raise WeightsNotFoundError(f"cannot download {url} ({type(error).__name__}); "
                                   f"{_regenerate_hint(dest)}", path=dest) from error
    except HTTPError as error:
        raise WeightsNotFoundError(f"download of {url} failed (HTTP {error.code} "
                                   f"{error.reason}); {_regenerate_hint(dest)}",
                                   path=dest) from error
    except (URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise WeightsNotFoundError(f"cannot download {url} ({reason}; offline?); "
                                   f"{_regenerate_hint(dest)}", path=dest) from error
    try:
        with response:
            declared = response.headers.get("Content-Length")
            total = int(declared) if declared and declared.isdigit() else None
            if size is not None and total is not None and total != size:
                raise WeightsNotFoundError(
                    f"{url} announces {total} bytes but {dest.name} has {size} ({origin}); "
                    f"the server holds another file; {_regenerate_hint(dest)}", path=dest)
            try:
                with atomic_output(dest, force=True) as handle:
                    _copy_verified(response, handle, url=url, dest=dest, sha256=sha256,
                                   size=size if size is not None else total, origin=origin,
                                   progress=progress, ends=ends)
            except _Abort as abort:
                raise abort.error from None
    finally:
        response.close()
    return dest


def _copy_verified(response: BinaryIO, handle: BinaryIO, *, url: str, dest: Path, sha256: str,
                   size: int | None, origin: str, progress: bool, ends: float) -> None:
    digest = hashlib.sha256()
    done = 0
    cap = size if size is not None else MAX_UNKNOWN_BYTES
    bar = _Progress(dest.name, size) if progress else None
    while True:
        if time.monotonic() > ends:
            raise _Abort(WeightsNotFoundError(
                f"download of {url} did not finish in time ({done} bytes so far; "
                f"${DEADLINE_ENV} sets the limit); discarded; {_regenerate_hint(dest)}",
                path=dest))
        try:
            chunk = response.read1(CHUNK) if hasattr(response, "read1") else response.read(CHUNK)
        except (OSError, ValueError, HTTPException) as error:
            raise _Abort(WeightsNotFoundError(
                f"download of {url} broke off after {done} bytes "
                f"({type(error).__name__}: {error}); {_regenerate_hint(dest)}",
                path=dest)) from error
        if not chunk:
            break
        done += len(chunk)
        if size is None and done > cap:
            raise _Abort(WeightsNotFoundError(
                f"{url} sends more than {cap} bytes for {dest.name} (no size is known for "
                f"it); discarded; {_regenerate_hint(dest)}", path=dest))
        if size is not None and done > size:
            raise _Abort(ChecksumMismatchError(
                f"{url} sends more than the {size} bytes {dest.name} has ({origin}); "
                f"discarded; {_regenerate_hint(dest)}", path=dest))
        digest.update(chunk)
        handle.write(chunk)
        if bar is not None:
            bar.update(done)
    if bar is not None:
        bar.close(done)
    found = digest.hexdigest()
    if size is not None and done != size:
        raise _Abort(WeightsNotFoundError(
            f"download of {url} ended after {done} of {size} bytes; discarded; "
            f"{_regenerate_hint(dest)}", path=dest))
    if found != sha256:
        raise _Abort(ChecksumMismatchError(
            f"sha256 mismatch for {dest.name} downloaded from {url}: expected {sha256} "
            f"({origin}), found {found}; the download was discarded; check "
            f"${WEIGHTS_URL_ENV} / ${WEIGHTS_MANIFEST_ENV}, or {_HINT}", path=dest))


class _Progress:
    """A one-line progress bar on stderr, redrawn at most ten times a second."""

    def __init__(self, name: str, total: int | None) -> None:
        self.name = name
        self.total = total
        self.last = 0.0

    def update(self, done: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < 0.1:
            return
        self.last = now
        if self.total:
            fraction = min(done / self.total, 1.0)
            filled = int(fraction * 30)
            text = (f"\r{self.name} [{'#' * filled}{'.' * (30 - filled)}] "
                    f"{fraction:4.0%} {done / 1e6:.1f}/{self.total / 1e6:.1f} MB")
        else:
            text = f"\r{self.name} {done / 1e6:.1f} MB"
        sys.stderr.write(text)
        sys.stderr.flush()

    def close(self, done: int) -> None:
        self.update(done, force=True)
        sys.stderr.write("\n")
        sys.stderr.flush()


def resolve_pretrained(pretrained: str | os.PathLike[str],
                       architecture: str) -> tuple[Path, Release | None]:
    """Turn a ``pretrained`` argument into the weights file to load (and its release, if any).

    A registered name or alias of ``architecture`` means the cached release file (downloaded
    and verified when absent, see :func:`ensure_weights`); any other
    string or path-like is a file path. Raises :class:`WeightsNotFoundError` for a missing
    file and :class:`UnknownReleaseError` for a string that is neither.
    """
    if isinstance(pretrained, str) and not os.path.exists(pretrained):
        release = find_release(pretrained)
        if release is not None and release.architecture == architecture:
            return ensure_weights(release), release
        looks_like_path = os.sep in pretrained or "/" in pretrained or Path(pretrained).suffix
        if not looks_like_path:
            raise unknown_release(pretrained, architecture)
    path = Path(os.fspath(pretrained)).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(
            "no such weights file; pass an existing .pt/.safetensors file or one of the "
            f"releases {', '.join(release_names(architecture))}", path=path)
    return path, None
