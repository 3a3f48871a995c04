"""Registry of the published FaceNet / MTCNN weights, as plain data (no torch import here).

Each :class:`Release` says what a weights file holds (architecture, embedding size, classes,
training set, input preprocessing) and under which file name it is cached in
``$TORCH_HOME/checkpoints/`` (the directory torch.hub and facenet-pytorch use). The registry
is data so that the CLI, docs and tests can list releases without loading torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from converter.errors import ConverterError

FIXED_STANDARDIZATION = "fixed_standardization"
"""``(x - 127.5) / 128`` per pixel; what the 2018 releases were trained with."""

PREWHITEN = "prewhiten"
"""Per-image ``(x - mean) / max(std, 1 / sqrt(x.size))``; what the 2017 releases used."""

MTCNN_STANDARDIZATION = "mtcnn_standardization"
"""``(x - 127.5) * 0.0078125``, the scaling MTCNN's detector applies before each stage."""


class UnknownReleaseError(ConverterError, ValueError):
    """A ``pretrained`` name is neither a registered release nor an existing file."""


class WeightsNotFoundError(ConverterError, FileNotFoundError):
    """The weights file of a release (or a given path) is not on disk."""


@dataclass(frozen=True)
class Release:
    """One published weights file and the facts needed to build and feed its model."""

    name: str
    architecture: str
    filename: str
    aliases: tuple[str, ...] = ()
    embedding_size: int | None = None
    num_classes: int | None = None
    dataset: str | None = None
    preprocessing: str | None = None
    description: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        """Every name the release answers to: its own, then its aliases."""
        return (self.name, *self.aliases)


RELEASES: tuple[Release, ...] = (
    Release(name="20180402-114759", architecture="inception_resnet_v1",
            filename="20180402-114759-vggface2.pt", aliases=("vggface2",),
            embedding_size=512, num_classes=8631, dataset="VGGFace2",
            preprocessing=FIXED_STANDARDIZATION,
            description="davidsandberg/facenet 2018 release trained on VGGFace2"),
    Release(name="20180408-102900", architecture="inception_resnet_v1",
            filename="20180408-102900-casia-webface.pt", aliases=("casia-webface",),
            embedding_size=512, num_classes=10575, dataset="CASIA-WebFace",
            preprocessing=FIXED_STANDARDIZATION,
            description="davidsandberg/facenet 2018 release trained on CASIA-WebFace"),
    Release(name="20170512-110547", architecture="inception_resnet_v1",
            filename="20170512-110547.pt", embedding_size=128, num_classes=None,
            dataset="MS-Celeb-1M", preprocessing=PREWHITEN,
            description="davidsandberg/facenet 2017 release trained on MS-Celeb-1M"),
    Release(name="20170511-185253", architecture="inception_resnet_v1",
            filename="20170511-185253.pt", embedding_size=128, num_classes=None,
            dataset="CASIA-WebFace", preprocessing=PREWHITEN,
            description="davidsandberg/facenet 2017 release trained on CASIA-WebFace"),
    Release(name="pnet", architecture="pnet", filename="pnet.pt",
            preprocessing=MTCNN_STANDARDIZATION,
            description="MTCNN proposal network (davidsandberg det1.npy)"),
    Release(name="rnet", architecture="rnet", filename="rnet.pt",
            preprocessing=MTCNN_STANDARDIZATION,
            description="MTCNN refinement network (davidsandberg det2.npy)"),
    Release(name="onet", architecture="onet", filename="onet.pt",
            preprocessing=MTCNN_STANDARDIZATION,
            description="MTCNN output network (davidsandberg det3.npy)"),
)


def release_names(architecture: str | None = None) -> list[str]:
    """Canonical names of the registered releases, optionally of one architecture only."""
    return [r.name for r in RELEASES if architecture is None or r.architecture == architecture]


def find_release(name: str) -> Release | None:
    """The release called ``name`` (canonical name or alias), or None."""
    for release in RELEASES:
        if name in release.names:
            return release
    return None


def get_release(name: str, architecture: str | None = None) -> Release:
    """The release called ``name``; raises :class:`UnknownReleaseError` naming the choices."""
    release = find_release(name)
    if release is None or (architecture is not None and release.architecture != architecture):
        raise _unknown_release(name, architecture)
    return release


def _unknown_release(name: str, architecture: str | None) -> UnknownReleaseError:
    choices = ", ".join(n for r in RELEASES
                        if architecture is None or r.architecture == architecture
                        for n in r.names)
    return UnknownReleaseError(f"unknown release {name!r}; known: {choices}; "
                               "or pass the path of a .pt/.safetensors weights file")


def torch_home() -> Path:
    """``$TORCH_HOME``, else ``$XDG_CACHE_HOME/torch``, else ``~/.cache/torch`` (as torch.hub)."""
    default = os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(os.path.expanduser(os.getenv("TORCH_HOME", default)))


def checkpoint_dir() -> Path:
    """Where release weights are cached: ``torch_home() / "checkpoints"``."""
    return torch_home() / "checkpoints"


def cached_weights_path(release: Release) -> Path:
    """The cached file of ``release``; raises :class:`WeightsNotFoundError` when absent."""
    path = checkpoint_dir() / release.filename
    if not path.is_file():
        raise WeightsNotFoundError(
            f"weights of release {release.name} not found (expected file {release.filename} "
            f"in {path.parent}); run `facenet-convert regenerate` or place the file there",
            path=path)
    return path


def resolve_pretrained(pretrained: str | os.PathLike[str],
                       architecture: str) -> tuple[Path, Release | None]:
    """Turn a ``pretrained`` argument into the weights file to load (and its release, if any).

    A registered name or alias of ``architecture`` means the cached release file; any other
    string or path-like is a file path. Raises :class:`WeightsNotFoundError` for a missing
    file and :class:`UnknownReleaseError` for a string that is neither.
    """
    if isinstance(pretrained, str) and not os.path.exists(pretrained):
        release = find_release(pretrained)
        if release is not None and release.architecture == architecture:
            return cached_weights_path(release), release
        looks_like_path = os.sep in pretrained or "/" in pretrained or Path(pretrained).suffix
        if not looks_like_path:
            raise _unknown_release(pretrained, architecture)
    path = Path(os.fspath(pretrained)).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(
            "no such weights file; pass an existing .pt/.safetensors file or one of the "
            f"releases {', '.join(release_names(architecture))}", path=path)
    return path, None
