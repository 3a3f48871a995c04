"""Registry of the published FaceNet / MTCNN weights, as plain data (no torch import here).

Each :class:`Release` says what a weights file holds (architecture, embedding size, classes,
training set, input preprocessing) and under which file name it is cached in
``$TORCH_HOME/checkpoints/`` (the directory torch.hub and facenet-pytorch use), plus the
provenance ``facenet-convert regenerate`` verifies and records: the original upstream files
with their sha256 (:class:`SourceFile`), the PyTorch files to publish with facenet-pytorch's
sha256 where known (:class:`PublishedFile`), LFW accuracy and distance metric. The registry
is data so that the CLI, docs and tests can list releases without loading torch;
:mod:`facenet_convert.models.hub` downloads and verifies the files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from facenet_convert.converter.core.errors import (
    UnknownReleaseError,
    WeightsNotFoundError,
)

FIXED_STANDARDIZATION = "fixed_standardization"
"""``(x - 127.5) / 128`` per pixel; what the 2018 releases were trained with."""

PREWHITEN = "prewhiten"
"""Per-image ``(x - mean) / max(std, 1 / sqrt(x.size))``; what the 2017 releases used."""

MTCNN_STANDARDIZATION = "mtcnn_standardization"
"""``(x - 127.5) * 0.0078125``, the scaling MTCNN's detector applies before each stage."""


@dataclass(frozen=True)
class SourceFile:
    """One original upstream file of a release, as its authors shipped it."""

    name: str
    sha256: str
    role: str  # checkpoint-index | checkpoint-data | meta-graph | frozen-graph | mtcnn-npy
    size: int | None = None


@dataclass(frozen=True)
class PublishedFile:
    """One PyTorch file we publish (and ``regenerate`` writes) for a release.

    ``part``: ``model`` (the whole state dict), ``features`` (everything but ``logits.*``) or
    ``logits`` (only ``logits.*``), the split facenet-pytorch publishes. ``sha256`` and
    ``size`` are those of the file facenet-pytorch publishes under this name, where known;
    the hub verifies downloads against them.
    """

    filename: str
    part: str
    sha256: str | None = None
    size: int | None = None


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
    lfw_accuracy: float | None = None
    distance_metric: str | None = None
    image_size: int | None = None
    source_files: tuple[SourceFile, ...] = ()
    published: tuple[PublishedFile, ...] = ()
    url: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """Every name the release answers to: its own, then its aliases."""
        return (self.name, *self.aliases)

    @property
    def main_file(self) -> PublishedFile:
        """The published record of :attr:`filename` (the file ``pretrained=`` loads)."""
        for item in self.published:
            if item.filename == self.filename:
                return item
        return PublishedFile(self.filename, "model")

    def source_file(self, role: str) -> SourceFile | None:
        """The original file with ``role``, if the release has one."""
        return next((item for item in self.source_files if item.role == role), None)


FACENET_PYTORCH_RELEASE_URL = ("https://github.com/timesler/facenet-pytorch/releases/download/"
                               "v2.2.9")
"""Where facenet-pytorch publishes the two 2018 state dicts (its ``load_weights`` URLs)."""

WEIGHTS_URL_ENV = "FACENET_CONVERT_WEIGHTS_URL"
"""Base URL of a mirror holding every published file by name (e.g. a served ``regenerate``
output folder); when set, every release is downloaded from ``$WEIGHTS_URL_ENV/<filename>``."""

WEIGHTS_MANIFEST_ENV = "FACENET_CONVERT_WEIGHTS_MANIFEST"
"""Path of a local, trusted JSON file listing ``sha256`` per published file name (a
``MANIFEST.json`` written by ``facenet-convert regenerate``, or ``{filename: sha256}``): the
hashes downloads from your own mirror are verified against. Only a local file is read."""

OFFLINE_ENV = "FACENET_CONVERT_OFFLINE"
"""Set to anything but empty or ``0`` to never download: a missing file is an error at once."""

COSINE = "cosine"
EUCLIDEAN = "euclidean"


def _checkpoint(name: str, step: int, data_sha: str, index_sha: str, meta_sha: str,
                pb_sha: str) -> tuple[SourceFile, ...]:
    """The four files of a davidsandberg release folder (sha256 as keras-facenet lists them)."""
    prefix = f"model-{name}.ckpt-{step}"
    return (SourceFile(f"{prefix}.index", index_sha, "checkpoint-index"),
            SourceFile(f"{prefix}.data-00000-of-00001", data_sha, "checkpoint-data"),
            SourceFile(f"model-{name}.meta", meta_sha, "meta-graph"),
            SourceFile(f"{name}.pb", pb_sha, "frozen-graph"))


def _split(stem: str, model_sha: str | None = None,
           model_size: int | None = None) -> tuple[PublishedFile, ...]:
    return (PublishedFile(f"{stem}.pt", "model", model_sha, model_size),
            PublishedFile(f"{stem}-features.pt", "features"),
            PublishedFile(f"{stem}-logits.pt", "logits"))


# Source file hashes: keras-facenet 0.3.2 ``keras_facenet/metadata.py`` (PyPI) for the
# Inception-ResNet-V1 releases; the pinned facenet 1.0.5 wheel for det1/2/3.npy.
# Published hashes: pnet/rnet/onet.pt as shipped in the pinned facenet-pytorch 2.6.0 wheel;
# 20180402-114759-vggface2.pt as recorded by several independent projects that pin
# facenet-pytorch's v2.2.9 release asset (111,898,327 bytes); the others are not known here.
RELEASES: tuple[Release, ...] = (
    Release(name="20180402-114759", architecture="inception_resnet_v1",
            filename="20180402-114759-vggface2.pt", aliases=("vggface2",),
            embedding_size=512, num_classes=8631, dataset="VGGFace2",
            preprocessing=FIXED_STANDARDIZATION,
            description="davidsandberg/facenet 2018 release trained on VGGFace2",
            lfw_accuracy=0.9965, distance_metric=COSINE, image_size=160,
            source_files=_checkpoint(
                "20180402-114759", 275,
                data_sha="5ccfbec36aa87074e96507d1b2957c739ddd1ce928cdc8f31b70fd3f7091f25a",
                index_sha="2f84bad893bc250af5a19dca9cf4690c13d0eb394ab09eb39a9f3480fedf3dce",
                meta_sha="b711e501998754794959573f0fbaa45da89cad3457b31c6de48ad53c87fce00c",
                pb_sha="bf2c12f31880aaa865fa5a9c168dcbd619f7a40b1633f6446d416fac2421ab99"),
            published=_split(
                "20180402-114759-vggface2",
                "281cebca8662831adb987a874bdcb36e73f5b1c6dc5ee5878f305e985625d99b", 111898327),
            url=f"{FACENET_PYTORCH_RELEASE_URL}/20180402-114759-vggface2.pt"),
    Release(name="20180408-102900", architecture="inception_resnet_v1",
            filename="20180408-102900-casia-webface.pt", aliases=("casia-webface",),
            embedding_size=512, num_classes=10575, dataset="CASIA-WebFace",
            preprocessing=FIXED_STANDARDIZATION,
            description="davidsandberg/facenet 2018 release trained on CASIA-WebFace",
            lfw_accuracy=0.9905, distance_metric=COSINE, image_size=160,
            source_files=_checkpoint(
                "20180408-102900", 90,
                data_sha="15d3109b99a6ca0d49843c183d4b417f7952f2948a1c246e2059813157b9d385",
                index_sha="548d743099cf13f598db8a660e9a8ad7f12148cb4206ab9cc480f0550edc17e9",
                meta_sha="238c98fc44fd0db79f61e719646b55c22b6a79944f806f8ee23e2d9f36c9ae7d",
                pb_sha="272568219fa6505371ceed76dca6b3925ef69b54962709cf76f763e9d8bf4cfb"),
            published=_split("20180408-102900-casia-webface"),
            url=f"{FACENET_PYTORCH_RELEASE_URL}/20180408-102900-casia-webface.pt"),
    Release(name="20170512-110547", architecture="inception_resnet_v1",
            filename="20170512-110547.pt", embedding_size=128, num_classes=None,
            dataset="MS-Celeb-1M", preprocessing=PREWHITEN,
            description="davidsandberg/facenet 2017 release trained on MS-Celeb-1M",
            lfw_accuracy=0.992, distance_metric=EUCLIDEAN, image_size=160,
            source_files=_checkpoint(
                "20170512-110547", 250000,
                data_sha="08bb31fc541d7cd2fcd2c499a1d90de45140828f0d08d23c34b65fab2d172ebb",
                index_sha="3dead9312945700df490239a1795fe0cd5f667984242a9203aa035d899c3e198",
                meta_sha="1f3bb46a87c0bcb822ae1624e7c018d81de36889acb0e5641b5580476553a8dc",
                pb_sha="8bdc3aed34e577113a656b8e5d0274346f8967fa7f0f9d6f3fdcd9608a29b9e4"),
            published=(PublishedFile("20170512-110547.pt", "features"),)),
    Release(name="20170511-185253", architecture="inception_resnet_v1",
            filename="20170511-185253.pt", embedding_size=128, num_classes=None,
            dataset="CASIA-WebFace", preprocessing=PREWHITEN,
            description="davidsandberg/facenet 2017 release trained on CASIA-WebFace",
            lfw_accuracy=0.987, distance_metric=EUCLIDEAN, image_size=160,
            source_files=_checkpoint(
                "20170511-185253", 80000,
                data_sha="8776a47ef7fd0a5848946295a763c2c10580c621f84f591d731f8c2b6d8eabf5",
                index_sha="e6fabc0cfe23470b878064d5692f6771c90d0cd4e1562d6785742feb5465c1cd",
                meta_sha="3b4c63501786e9a0a9354b6044d0dc8205b788c173de9a503df7e5793b4d3953",
                pb_sha="71fb49617aee7b007b66ed1e4474e749212ed9872ff3b47c25ee997c8262baa4"),
            published=(PublishedFile("20170511-185253.pt", "features"),)),
    Release(name="pnet", architecture="pnet", filename="pnet.pt",
            preprocessing=MTCNN_STANDARDIZATION,
            description="MTCNN proposal network (davidsandberg det1.npy)",
            source_files=(SourceFile(
                "det1.npy", "3285cf7a3de2651c5784cb9e32013f5919aae95fd1ed1bc371dd9691affb39af",
                "mtcnn-npy", 27368),),
            published=(PublishedFile(
                "pnet.pt", "model",
                "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f", 28570),)),
    Release(name="rnet", architecture="rnet", filename="rnet.pt",
            preprocessing=MTCNN_STANDARDIZATION,
            description="MTCNN refinement network (davidsandberg det2.npy)",
            source_files=(SourceFile(
                "det2.npy", "716b8b83e42476791c9096f14dbb09fefc88bf5c7ec876b1683f9acd52b3f39c",
                "mtcnn-npy", 401681),),
            published=(PublishedFile(
                "rnet.pt", "model",
                "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86", 403147),)),
    Release(name="onet", architecture="onet", filename="onet.pt",
            preprocessing=MTCNN_STANDARDIZATION,
            description="MTCNN output network (davidsandberg det3.npy)",
            source_files=(SourceFile(
                "det3.npy", "396ead803d85d3443307ff8f45fb6aed2536579b415a4f4d4cb8f93ea6b1476a",
                "mtcnn-npy", 1557360),),
            published=(PublishedFile(
                "onet.pt", "model",
                "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d", 1559269),)),
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
        raise unknown_release(name, architecture)
    return release


def unknown_release(name: str, architecture: str | None) -> UnknownReleaseError:
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


def find_published(filename: str) -> tuple[Release, PublishedFile] | None:
    """The release publishing ``filename`` (any part), or None."""
    for release in RELEASES:
        for item in release.published:
            if item.filename == filename:
                return release, item
    return None


def weights_base_url() -> str | None:
    """``$FACENET_CONVERT_WEIGHTS_URL`` without trailing slashes, or None when unset/empty."""
    value = os.environ.get(WEIGHTS_URL_ENV, "").strip().rstrip("/")
    return value or None


def download_url(release: Release) -> str | None:
    """Where :attr:`Release.filename` is downloaded from: the configured mirror, else the
    release's own published URL; None when neither exists (nothing to download)."""
    base = weights_base_url()
    if base is not None:
        return f"{base}/{release.filename}"
    return release.url


def cached_weights_path(release: Release) -> Path:
    """The cached file of ``release``; raises :class:`WeightsNotFoundError` when absent."""
    path = checkpoint_dir() / release.filename
    if not path.is_file():
        raise WeightsNotFoundError(
            f"weights of release {release.name} not found (expected file {release.filename} "
            f"in {path.parent}); run `facenet-convert regenerate` or place the file there",
            path=path)
    return path
