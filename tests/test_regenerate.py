"""``facenet-convert regenerate``: verified inputs, facenet-pytorch's file set, MANIFEST.json,
all or nothing, byte-identical run after run.

MTCNN tests use the real det1/2/3.npy of the pinned facenet wheel and compare with the real
pnet/rnet/onet.pt of the pinned facenet-pytorch wheel. The Inception-ResNet-V1 tests build a
release-like folder named ``20180402-114759`` with the upstream graph (cached under the
toolkit's cache dir): its hashes are not the published ones, which is what the mismatch test
needs, and ``--allow-unverified`` converts it anyway.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from facenet_convert.converter.core.errors import (
    ChecksumMismatchError,
    ConverterError,
    MappingError,
    OutputError,
)
from facenet_convert.converter.regenerate import MANIFEST, Job, _check_sizes, regenerate
from facenet_convert.models import InceptionResNetV1, ONet, PNet, RNet
from facenet_convert.models.hub import ensure_weights
from facenet_convert.models.releases import get_release
from facenet_convert.third_party.wheels import cache_dir

MTCNN_FILES = ["MANIFEST.json", "onet.pt", "pnet.pt", "rnet.pt"]
VGG_FILES = ["20180402-114759-vggface2-features.pt", "20180402-114759-vggface2-logits.pt",
             "20180402-114759-vggface2.pt"]
MODELS = {"pnet": PNet, "rnet": RNet, "onet": ONet}


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cli(*args: str):
    from facenet_convert.converter.cli import main

    return CliRunner().invoke(main, ["regenerate", *map(str, args)])


# ------------------------------------------------------------------------------ MTCNN


def test_mtcnn_from_the_pinned_wheel_is_bit_identical_to_facenet_pytorch(
        tmp_path: Path, published_mtcnn: dict[str, Path], det_npy: dict[str, Path]) -> None:
    (tmp_path / "releases").mkdir()
    result = regenerate(tmp_path / "releases", tmp_path / "out", parity=False)
    out = tmp_path / "out"
    assert _files(out) == MTCNN_FILES
    for name, path in published_mtcnn.items():
        ours = torch.load(out / f"{name}.pt", map_location="cpu", weights_only=True)
        theirs = torch.load(path, map_location="cpu", weights_only=True)
        assert list(ours) == list(theirs)
        for key, value in theirs.items():
            assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key
        MODELS[name](pretrained=out / f"{name}.pt")  # loads strictly

    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest == result.manifest
    assert manifest["verified"] and manifest["parity"] == "skipped"
    assert [r["release"] for r in manifest["releases"]] == ["pnet", "rnet", "onet"]
    for entry, det in zip(manifest["releases"], ("det1", "det2", "det3"), strict=True):
        (item,) = entry["inputs"]
        assert item["file"] == f"{det}.npy" and item["verified"]
        assert item["sha256"] == _sha256(det_npy[det]) == item["expected_sha256"]
        assert entry["origin"].startswith("facenet==1.0.5 wheel")
    for record in manifest["outputs"]:
        path = out / record["file"]
        assert record["sha256"] == _sha256(path) and record["size"] == path.stat().st_size
        assert record["published_sha256"] == get_release(record["release"]).main_file.sha256
    assert manifest["converter_version"] and "timestamp" not in json.dumps(manifest)
    assert str(tmp_path) not in (out / MANIFEST).read_text()


def test_two_runs_are_byte_identical_and_outputs_are_refused_without_force(
        tmp_path: Path) -> None:
    releases = tmp_path / "releases"
    releases.mkdir()
    regenerate(releases, tmp_path / "a", parity=False)
    regenerate(releases, tmp_path / "b", parity=False)
    first = _bytes(tmp_path / "a")
    assert first == _bytes(tmp_path / "b")

    with pytest.raises(OutputError, match="exists; pass --force"):
        regenerate(releases, tmp_path / "a", parity=False)
    assert _bytes(tmp_path / "a") == first
    regenerate(releases, tmp_path / "a", parity=False, force=True)
    assert _bytes(tmp_path / "a") == first


def test_det_npy_in_releases_dir_is_used_and_verified(
        tmp_path: Path, det_npy: dict[str, Path]) -> None:
    releases = tmp_path / "releases"
    releases.mkdir()
    for name, path in det_npy.items():
        shutil.copyfile(path, releases / f"{name}.npy")
    result = regenerate(releases, tmp_path / "out", parity=False)
    assert [r["origin"] for r in result.manifest["releases"]] == [
        "RELEASES_DIR/det1.npy", "RELEASES_DIR/det2.npy", "RELEASES_DIR/det3.npy"]
    assert result.manifest["verified"]

    data = bytearray((releases / "det2.npy").read_bytes())
    data[-1] ^= 0x01
    (releases / "det2.npy").write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError) as caught:
        regenerate(releases, tmp_path / "out2", parity=False)
    message = str(caught.value)
    assert "\n" not in message and "det2.npy" in message
    assert get_release("rnet").source_files[0].sha256 in message
    assert hashlib.sha256(bytes(data)).hexdigest() in message
    assert "--allow-unverified" in message
    assert not (tmp_path / "out2").exists()


def test_safetensors_format(tmp_path: Path, published_mtcnn: dict[str, Path]) -> None:
    (tmp_path / "releases").mkdir()
    result = regenerate(tmp_path / "releases", tmp_path / "out", parity=False,
                        format="safetensors")
    assert _files(tmp_path / "out") == [
        "MANIFEST.json", "onet.safetensors", "pnet.safetensors", "rnet.safetensors"]
    assert all(o["published_sha256"] is None for o in result.manifest["outputs"])
    for name, cls in MODELS.items():
        model = cls(pretrained=tmp_path / "out" / f"{name}.safetensors")
        theirs = torch.load(published_mtcnn[name], map_location="cpu", weights_only=True)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in theirs.items())


def test_cli_errors_are_one_line_and_write_nothing(tmp_path: Path,
                                                   det_npy: dict[str, Path]) -> None:
    releases = tmp_path / "releases"
    releases.mkdir()
    (releases / "det1.npy").write_bytes(det_npy["det1"].read_bytes()[:-1] + b"\0")
    result = _cli(releases, "-o", tmp_path / "out", "--no-parity")
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "det1.npy" in result.output
    assert not (tmp_path / "out").exists()
    missing = _cli(tmp_path / "nowhere", "-o", tmp_path / "out", "--no-parity")
    assert missing.exit_code == 2 and "not a directory" in missing.output


def test_cli_summary_and_notes(tmp_path: Path) -> None:
    releases = tmp_path / "releases"
    (releases / "20990101-000000").mkdir(parents=True)  # looks like a release, is not one
    result = _cli(releases, "-o", tmp_path / "out", "--no-parity")
    assert result.exit_code == 0, result.output
    assert "regenerated 3 files" in result.output
    assert "skipped folder 20990101-000000: not a registered release" in result.output
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert any("20990101-000000" in note for note in manifest["notes"])


@pytest.mark.tf
def test_mtcnn_parity_figures_go_into_the_manifest(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    (tmp_path / "releases").mkdir()
    result = regenerate(tmp_path / "releases", tmp_path / "a", parity=True)
    again = regenerate(tmp_path / "releases", tmp_path / "b", parity=True)
    assert result.manifest["parity"] == "ran" and "tensorflow" in result.manifest["versions"]
    for entry in result.manifest["releases"]:
        figures = entry["parity"]
        assert figures["passed"] and figures["tf_side"] == "mtcnn"
        assert all(gate["passed"] for gate in figures["gates"])
        assert figures["outputs"] and figures["outputs"][0]["max_abs"] < 1e-5
    assert _bytes(tmp_path / "a") == _bytes(tmp_path / "b")
    assert result.manifest == again.manifest


# ------------------------------------------------------------------------------ a release


@pytest.fixture(scope="module")
def releases_dir() -> Path:
    """RELEASES_DIR with one upstream-graph folder named (and laid out) like 20180402-114759."""
    pytest.importorskip("tensorflow")
    from facenet_convert.third_party.facenet.testing.build import build_checkpoint

    root = cache_dir() / "test-releases" / "regenerate"
    build_checkpoint(root / "20180402-114759", name="20180402-114759", step=275,
                     embedding_size=512, num_classes=8631, ema=False, optimizer=None,
                     freeze=True)
    return root


@pytest.mark.tf
@pytest.mark.slow
def test_release_hash_mismatch_names_the_file_and_both_hashes(
        releases_dir: Path, tmp_path: Path) -> None:
    release = get_release("20180402-114759")
    index = release.source_file("checkpoint-index")
    assert index is not None
    with pytest.raises(ChecksumMismatchError) as caught:
        regenerate(releases_dir, tmp_path / "out", parity=False)
    message = str(caught.value)
    found = _sha256(releases_dir / "20180402-114759" / index.name)
    assert "\n" not in message
    assert f"20180402-114759/{index.name}" in message
    assert index.sha256 in message and found in message
    assert "(and 3 more)" in message and "--allow-unverified" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.tf
@pytest.mark.slow
def test_release_allow_unverified_writes_the_file_set(releases_dir: Path,
                                                      tmp_path: Path) -> None:
    result = regenerate(releases_dir, tmp_path / "a", parity=False, allow_unverified=True)
    out = tmp_path / "a"
    assert _files(out) == sorted(VGG_FILES + MTCNN_FILES)

    manifest = result.manifest
    assert not manifest["verified"] and manifest["allow_unverified"]
    assert len(manifest["unverified_inputs"]) == 4
    entry = manifest["releases"][0]
    assert (entry["release"], entry["embedding_size"], entry["num_classes"]) == (
        "20180402-114759", 512, 8631)
    assert (entry["dataset"], entry["lfw_accuracy"], entry["distance_metric"]) == (
        "VGGFace2", 0.9965, "cosine")
    assert entry["source"] == "model-20180402-114759.ckpt-275" and not entry["verified"]
    release = get_release("20180402-114759")
    folder = releases_dir / "20180402-114759"
    assert [(i["file"], i["sha256"], i["expected_sha256"]) for i in entry["inputs"]] == [
        (s.name, _sha256(folder / s.name), s.sha256) for s in release.source_files]
    by_file = {o["file"]: o for o in manifest["outputs"]}
    assert set(by_file) == set(VGG_FILES + MTCNN_FILES[1:])
    for name, record in by_file.items():
        assert record["sha256"] == _sha256(out / name)
        assert record["size"] == (out / name).stat().st_size
    assert by_file["20180402-114759-vggface2.pt"]["published_sha256"] == (
        release.main_file.sha256)

    full = InceptionResNetV1(pretrained=out / "20180402-114759-vggface2.pt")
    assert full.embedding_size == 512 and full.num_classes == 8631
    features = InceptionResNetV1(pretrained=out / "20180402-114759-vggface2-features.pt")
    assert features.embedding_size == 512 and features.num_classes is None
    logits = torch.load(out / "20180402-114759-vggface2-logits.pt", weights_only=True)
    assert list(logits) == ["logits.weight", "logits.bias"]
    assert torch.equal(logits["logits.weight"], full.logits.weight)
    assert all(torch.equal(v, full.state_dict()[k]) for k, v in features.state_dict().items())

    regenerate(releases_dir, tmp_path / "b", parity=False, allow_unverified=True)
    assert _bytes(tmp_path / "a") == _bytes(tmp_path / "b")


@pytest.mark.tf
@pytest.mark.slow
def test_release_parity_figures(releases_dir: Path, tmp_path: Path) -> None:
    result = regenerate(releases_dir, tmp_path / "out", parity=True, allow_unverified=True)
    figures = result.manifest["releases"][0]["parity"]
    assert figures["passed"] and figures["tf_side"] == "checkpoint"
    names = [output["name"] for output in figures["outputs"]]
    assert names[:2] == ["embeddings", "logits"]
    assert figures["outputs"][0]["max_abs"] < 1e-5


@pytest.mark.tf
@pytest.mark.slow
def test_regenerated_files_serve_pretrained_downloads(
        releases_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mirror of regenerate's output + its MANIFEST.json as the trusted hash list."""
    from tests.http_server import Server

    served = tmp_path / "served"
    regenerate(releases_dir, served / "weights", parity=False, allow_unverified=True)
    server = Server(served)
    try:
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
        monkeypatch.delenv("FACENET_CONVERT_OFFLINE", raising=False)
        monkeypatch.setenv("FACENET_CONVERT_WEIGHTS_URL", server.url)
        monkeypatch.setenv("FACENET_CONVERT_WEIGHTS_MANIFEST", str(served / "weights" / MANIFEST))
        model = InceptionResNetV1(pretrained="vggface2")
        assert model.num_classes == 8631
        PNet(pretrained=ensure_weights(get_release("pnet")))  # True: the shipped weights
        assert server.requests == ["/weights/20180402-114759-vggface2.pt", "/weights/pnet.pt"]
    finally:
        server.stop()


@pytest.mark.tf
@pytest.mark.slow
def test_a_failure_after_some_outputs_leaves_nothing(releases_dir: Path, tmp_path: Path) -> None:
    """20180402-114759 converts and is staged first; a corrupt 20180408-102900 then fails."""
    releases = tmp_path / "releases"
    releases.mkdir()
    (releases / "20180402-114759").symlink_to(releases_dir / "20180402-114759")
    broken = releases / "20180408-102900"
    broken.mkdir()
    source = releases_dir / "20180402-114759" / "model-20180402-114759.ckpt-275"
    prefix = broken / "model-20180408-102900.ckpt-90"
    shutil.copyfile(f"{source}.index", f"{prefix}.index")
    data = bytearray(Path(f"{source}.data-00000-of-00001").read_bytes())
    data[len(data) // 2] ^= 0xFF
    Path(f"{prefix}.data-00000-of-00001").write_bytes(bytes(data))
    out = tmp_path / "out"
    with pytest.raises(ConverterError) as caught:
        regenerate(releases, out, parity=False, allow_unverified=True)
    assert "20180408-102900" in str(caught.value)
    assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConverterError):
        regenerate(releases, out, parity=False, allow_unverified=True)
    assert _files(out) == ["keep.txt"]


@pytest.mark.tf
@pytest.mark.slow
def test_releases_dir_may_be_one_release_folder(releases_dir: Path, tmp_path: Path) -> None:
    result = regenerate(releases_dir / "20180402-114759", tmp_path / "out", parity=False,
                        allow_unverified=True)
    assert _files(tmp_path / "out") == sorted(VGG_FILES + MTCNN_FILES)
    assert result.manifest["releases"][0]["origin"] == "RELEASES_DIR (20180402-114759)"


# ------------------------------------------------------------------------------ size checks


def _job(name: str) -> Job:
    release = get_release(name)
    return Job(release, "RELEASES_DIR/x", Path("x"), Path("x"), [])


def test_sizes_must_match_the_release() -> None:
    _check_sizes(_job("vggface2"), 512, 8631, allow_unverified=False)
    with pytest.raises(MappingError, match="512-d embeddings but its checkpoint holds 128-d"):
        _check_sizes(_job("vggface2"), 128, 8631, allow_unverified=False)
    with pytest.raises(MappingError, match="8631 classes but its checkpoint holds 10"):
        _check_sizes(_job("vggface2"), 512, 10, allow_unverified=False)
    with pytest.raises(MappingError, match="publishes a logits layer"):
        _check_sizes(_job("vggface2"), 512, None, allow_unverified=True)
    lenient = _job("vggface2")
    _check_sizes(lenient, 128, 10, allow_unverified=True)
    assert len(lenient.notes) == 2
    features_only = _job("20170512-110547")
    _check_sizes(features_only, 128, 9000, allow_unverified=False)
    assert "logits layer (9000 classes) is not published" in features_only.notes[0]
