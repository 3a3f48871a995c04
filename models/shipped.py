"""MTCNN's PNet/RNet/ONet weights shipped inside the package, as facenet-pytorch ships its own.

``models/pretrained/{pnet,rnet,onet}.safetensors`` and the ``MANIFEST.json`` beside them are
written by ``facenet-convert regenerate`` from davidsandberg's sha256-pinned ``det1/2/3.npy``
(``scripts/ship_mtcnn_weights.sh``); a test regenerates them and compares the bytes, so the
shipped files cannot drift from their source. Their tensors equal facenet-pytorch 2.6.0's
published ``pnet.pt``/``rnet.pt``/``onet.pt``. Loading them needs no network, no cache and no
converter: each file is checked against the manifest's sha256 before it is used.
"""

from __future__ import annotations

import json
from pathlib import Path

from facenet_convert.converter.core.errors import ChecksumMismatchError, WeightsNotFoundError
from facenet_convert.converter.core.hashing import sha256_file

SHIPPED_DIR = Path(__file__).resolve().with_name("pretrained")
MANIFEST = "MANIFEST.json"
NETS = ("pnet", "rnet", "onet")
_REINSTALL = "the installed package is damaged: reinstall facenet-convert"


def _manifest_sha256(filename: str) -> str:
    path = SHIPPED_DIR / MANIFEST
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        entries = {item["file"]: item["sha256"] for item in document["outputs"]}
        return str(entries[filename])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise WeightsNotFoundError(f"cannot read the sha256 of {filename} ({error!r}); "
                                   f"{_REINSTALL}", path=path) from error


def shipped_weights(name: str) -> Path:
    """The verified shipped weights file of MTCNN net ``name`` (pnet, rnet or onet)."""
    if name not in NETS:
        raise WeightsNotFoundError(f"no shipped weights for {name!r}; expected one of "
                                   f"{', '.join(NETS)}")
    path = SHIPPED_DIR / f"{name}.safetensors"
    want = _manifest_sha256(path.name)
    if not path.is_file():
        raise WeightsNotFoundError(f"the shipped {name} weights are missing; {_REINSTALL}",
                                   path=path)
    found = sha256_file(path)
    if found != want:
        raise ChecksumMismatchError(f"sha256 mismatch: expected {want} ({MANIFEST}), found "
                                    f"{found}; {_REINSTALL}", path=path)
    return path
