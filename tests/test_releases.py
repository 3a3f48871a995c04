"""The release registry: a schema check over every record, and its facts against real files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from facenet_convert.models.releases import (
    COSINE,
    EUCLIDEAN,
    FACENET_PYTORCH_RELEASE_URL,
    FIXED_STANDARDIZATION,
    MTCNN_STANDARDIZATION,
    PREWHITEN,
    RELEASES,
    WEIGHTS_URL_ENV,
    Release,
    download_url,
    find_published,
    get_release,
    weights_base_url,
)
from facenet_convert.third_party.wheels import sha256_file

SHA256 = re.compile(r"[0-9a-f]{64}")
IRV1 = [r for r in RELEASES if r.architecture == "inception_resnet_v1"]
MTCNN = [r for r in RELEASES if r.architecture in ("pnet", "rnet", "onet")]


@pytest.mark.parametrize("release", RELEASES, ids=lambda r: r.name)
def test_every_record_is_complete(release: Release) -> None:
    assert release.architecture in ("inception_resnet_v1", "pnet", "rnet", "onet")
    assert release.source_files, "every release names its original files"
    for item in release.source_files:
        assert SHA256.fullmatch(item.sha256), item
    published = [item.filename for item in release.published]
    assert release.filename in published and release.main_file.filename == release.filename
    for item in release.published:
        assert item.part in ("model", "features", "logits")
        assert item.filename.endswith(".pt")
        assert item.sha256 is None or SHA256.fullmatch(item.sha256)
        assert (item.size is None) == (item.sha256 is None)
    if release.architecture == "inception_resnet_v1":
        assert release.embedding_size in (128, 512) and release.image_size == 160
        assert release.lfw_accuracy is not None and 0.98 < release.lfw_accuracy < 1.0
        roles = [item.role for item in release.source_files]
        assert roles == ["checkpoint-index", "checkpoint-data", "meta-graph", "frozen-graph"]
        index, data, meta, pb = (item.name for item in release.source_files)
        prefix = index[:-len(".index")]
        assert re.fullmatch(rf"model-{release.name}\.ckpt-\d+", prefix)
        assert data == f"{prefix}.data-00000-of-00001"
        assert (meta, pb) == (f"model-{release.name}.meta", f"{release.name}.pb")


def test_registry_names_and_files_are_unique() -> None:
    names = [n for release in RELEASES for n in release.names]
    assert len(names) == len(set(names))
    files = [item.filename for release in RELEASES for item in release.published]
    assert len(files) == len(set(files))
    sources = [item.sha256 for release in RELEASES for item in release.source_files]
    assert len(sources) == len(set(sources))


def test_the_published_file_set_is_facenet_pytorchs() -> None:
    published = {item.filename: item.part for r in RELEASES for item in r.published}
    assert published == {
        "20180402-114759-vggface2.pt": "model",
        "20180402-114759-vggface2-features.pt": "features",
        "20180402-114759-vggface2-logits.pt": "logits",
        "20180408-102900-casia-webface.pt": "model",
        "20180408-102900-casia-webface-features.pt": "features",
        "20180408-102900-casia-webface-logits.pt": "logits",
        "20170512-110547.pt": "features",
        "20170511-185253.pt": "features",
        "pnet.pt": "model", "rnet.pt": "model", "onet.pt": "model",
    }


def test_release_facts() -> None:
    vgg, casia = get_release("vggface2"), get_release("casia-webface")
    assert (vgg.dataset, vgg.num_classes, vgg.lfw_accuracy) == ("VGGFace2", 8631, 0.9965)
    assert (casia.dataset, casia.num_classes, casia.lfw_accuracy) == (
        "CASIA-WebFace", 10575, 0.9905)
    for release in IRV1:
        year_2018 = release.name.startswith("2018")
        assert release.preprocessing == (FIXED_STANDARDIZATION if year_2018 else PREWHITEN)
        assert release.distance_metric == (COSINE if year_2018 else EUCLIDEAN)
        assert release.embedding_size == (512 if year_2018 else 128)
    steps = {r.name: r.source_file("checkpoint-index").name for r in IRV1}
    assert steps["20180402-114759"] == "model-20180402-114759.ckpt-275.index"
    assert steps["20170512-110547"] == "model-20170512-110547.ckpt-250000.index"
    for release in MTCNN:
        assert release.preprocessing == MTCNN_STANDARDIZATION
        assert release.source_file("checkpoint-index") is None


def test_mtcnn_hashes_are_those_of_the_pinned_wheels(det_npy: dict[str, Path],
                                                     published_mtcnn: dict[str, Path]) -> None:
    for release, det in zip(MTCNN, ("det1", "det2", "det3"), strict=True):
        source = release.source_files[0]
        assert source.name == f"{det}.npy"
        assert (source.sha256, source.size) == (sha256_file(det_npy[det]),
                                                det_npy[det].stat().st_size)
        main = release.main_file
        path = published_mtcnn[release.name]
        assert (main.sha256, main.size) == (sha256_file(path), path.stat().st_size)


def test_find_published() -> None:
    found = find_published("20180408-102900-casia-webface-logits.pt")
    assert found is not None and found[0].name == "20180408-102900" and found[1].part == "logits"
    assert find_published("nothing.pt") is None


def test_download_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WEIGHTS_URL_ENV, raising=False)
    assert weights_base_url() is None
    vgg = get_release("vggface2")
    assert download_url(vgg) == f"{FACENET_PYTORCH_RELEASE_URL}/20180402-114759-vggface2.pt"
    assert download_url(get_release("pnet")) is None  # shipped inside facenet-pytorch
    assert download_url(get_release("20170511-185253")) is None  # never published
    monkeypatch.setenv(WEIGHTS_URL_ENV, "http://mirror.example/facenet//")
    assert weights_base_url() == "http://mirror.example/facenet"
    assert download_url(get_release("20170511-185253")) == (
        "http://mirror.example/facenet/20170511-185253.pt")
    monkeypatch.setenv(WEIGHTS_URL_ENV, "  ")
    assert weights_base_url() is None
