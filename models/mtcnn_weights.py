"""PNet/RNet/ONet weights derived on first use from the pinned facenet package's det1/2/3.npy.

A fresh machine has no ``pnet.pt``/``rnet.pt``/``onet.pt`` in the torch cache. Rather than stop
with "weights not found", the detector derives them from davidsandberg's own ``det*.npy`` in the
sha256-pinned ``facenet==1.0.5`` wheel (:mod:`third_party.wheels`): the safe npy reader, the MTCNN
mapping tables and the registry's layouts (the very path ``convert`` takes), written atomically
into the cache and announced with one line on stderr. The tensors equal facenet-pytorch 2.6.0's
published files bit for bit (its files were converted from the same npy). A configured mirror
(``$FACENET_CONVERT_WEIGHTS_URL``) takes precedence, see :func:`models.hub.ensure_weights`.
"""

from __future__ import annotations

import os
import sys
from collections import OrderedDict
from pathlib import Path

import torch

from facenet_convert.converter.core.atomic import atomic_output
from facenet_convert.converter.core.errors import ConverterError, WeightsNotFoundError
from facenet_convert.converter.mapping import materialize, plan
from facenet_convert.converter.registry import get_architecture
from facenet_convert.converter.sources.mtcnn_npy import MtcnnNpyReader
from facenet_convert.models.releases import OFFLINE_ENV, Release
from facenet_convert.third_party.wheels import FACENET, cache_dir, wheel_member

DET_FILES = {"pnet": "det1", "rnet": "det2", "onet": "det3"}


def det_npy(name: str) -> Path:
    """The pinned wheel's det*.npy for net ``name`` (the wheel is fetched and checked once)."""
    member = f"facenet/src/align/{DET_FILES[name]}.npy"
    wheel = cache_dir() / "wheels" / FACENET.filename
    extracted = cache_dir() / f"{FACENET.project}-{FACENET.version}" / member
    offline = os.environ.get(OFFLINE_ENV, "").strip() not in ("", "0")
    if offline and not extracted.is_file() and not wheel.is_file():
        raise WeightsNotFoundError(
            f"{name} weights are not cached and ${OFFLINE_ENV} forbids fetching "
            f"{FACENET.filename} to derive them; place the wheel in {wheel.parent} or run "
            "`facenet-convert regenerate`", path=wheel)
    return wheel_member(FACENET, member)


def state_from_npy(name: str, path: str | os.PathLike[str]) -> OrderedDict[str, torch.Tensor]:
    """The facenet-pytorch state dict of ``name`` mapped from a det*.npy by the MTCNN table."""
    record = get_architecture(name)
    reader = MtcnnNpyReader(Path(path))
    try:
        the_plan = plan(record.schemes[0].table, reader.tensors(), record.layout())
        done = materialize(the_plan, reader, strict=True)
    finally:
        reader.close()
    return OrderedDict((key, torch.from_numpy(array)) for key, array in done.arrays.items())


def derive_weights(release: Release, dest: Path) -> Path:
    """Write ``dest`` (the release's cache file) from the pinned det*.npy; say so on stderr."""
    if release.name not in DET_FILES:
        raise WeightsNotFoundError(f"release {release.name} is not an MTCNN net", path=dest)
    source = det_npy(release.name)
    state = state_from_npy(release.name, source)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(dest, force=True) as handle:
            torch.save(state, handle)
    except (OSError, ConverterError) as error:
        raise WeightsNotFoundError(f"cannot cache the derived {release.name} weights "
                                   f"({error}); check that the directory is writable",
                                   path=dest) from error
    print(f"facenet-convert: {release.name} weights not cached; derived {dest.name} from "
          f"facenet {FACENET.version}'s {source.name} (sha256-pinned wheel) into {dest.parent}",
          file=sys.stderr)
    return dest
