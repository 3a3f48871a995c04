"""Pretrained downloads for real: a loopback HTTP server, sha256 checks, the torch cache.

The server (``http.server`` in a thread on 127.0.0.1) serves files written here: the real
published ``pnet.pt`` (its registry hash is facenet-pytorch's, so no injection is needed) and
a generated ``20180402-114759-vggface2.pt`` whose sha256 is supplied the documented way, a
local trusted list named by ``$FACENET_CONVERT_WEIGHTS_MANIFEST``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from facenet_convert.converter.core.errors import (
    ChecksumMismatchError,
    ConverterError,
    ManifestError,
    WeightsNotFoundError,
)
from facenet_convert.models import InceptionResNetV1, PNet
from facenet_convert.models.hub import download_file, ensure_weights, load_manifest, trusted_sha256
from facenet_convert.models.releases import (
    OFFLINE_ENV,
    WEIGHTS_MANIFEST_ENV,
    WEIGHTS_URL_ENV,
    get_release,
)
from tests.http_server import Server


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "served"
    (root / "weights").mkdir(parents=True)
    running = Server(root)
    yield running
    running.stop()


@pytest.fixture()
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.delenv(WEIGHTS_URL_ENV, raising=False)
    monkeypatch.delenv(WEIGHTS_MANIFEST_ENV, raising=False)
    monkeypatch.delenv(OFFLINE_ENV, raising=False)
    return home / "checkpoints"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.is_dir() else []


# ------------------------------------------------------------------------------ downloads


def _pnet_from_mirror() -> PNet:
    """pnet.pt through the download path (``PNet(pretrained=True)`` uses the shipped file)."""
    return PNet(pretrained=ensure_weights(get_release("pnet")))


def test_mtcnn_pretrained_uses_the_shipped_weights_and_no_network(
        server: Server, torch_home: Path, published_mtcnn: dict[str, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copyfile(published_mtcnn["pnet"], server.root / "weights" / "pnet.pt")
    monkeypatch.setenv(WEIGHTS_URL_ENV, server.url)
    model = PNet(pretrained=True)
    assert server.requests == [] and _leftovers(torch_home) == []
    reference = torch.load(published_mtcnn["pnet"], map_location="cpu", weights_only=True)
    assert list(model.state_dict()) == list(reference)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in reference.items())


def test_pnet_downloads_verifies_and_then_uses_the_cache(
        server: Server, torch_home: Path, published_mtcnn: dict[str, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copyfile(published_mtcnn["pnet"], server.root / "weights" / "pnet.pt")
    monkeypatch.setenv(WEIGHTS_URL_ENV, server.url + "/")
    model = _pnet_from_mirror()
    cached = torch_home / "pnet.pt"
    assert server.requests == ["/weights/pnet.pt"]
    assert cached.read_bytes() == published_mtcnn["pnet"].read_bytes()
    assert _leftovers(torch_home) == ["pnet.pt"]
    reference = torch.load(published_mtcnn["pnet"], map_location="cpu", weights_only=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in reference.items())

    again = _pnet_from_mirror()  # from the cache: no second request
    assert server.requests == ["/weights/pnet.pt"]
    assert all(torch.equal(again.state_dict()[k], v) for k, v in reference.items())


def test_vggface2_downloads_with_a_trusted_manifest_hash(
        server: Server, torch_home: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    release = get_release("vggface2")
    torch.manual_seed(0)
    source = InceptionResNetV1(num_classes=release.num_classes)
    served = server.root / "weights" / release.filename
    torch.save(source.state_dict(), served)
    manifest = tmp_path / "trusted.json"
    manifest.write_text(json.dumps({release.filename: _sha256(served)}))
    monkeypatch.setenv(WEIGHTS_URL_ENV, server.url)
    monkeypatch.setenv(WEIGHTS_MANIFEST_ENV, str(manifest))

    model = InceptionResNetV1(pretrained="vggface2")
    assert server.requests == [f"/weights/{release.filename}"]
    assert model.embedding_size == 512 and model.num_classes == 8631
    assert torch.equal(model.logits.weight, source.logits.weight)
    assert (torch_home / release.filename).read_bytes() == served.read_bytes()
    InceptionResNetV1(pretrained="20180402-114759")
    assert len(server.requests) == 1


def test_hash_mismatch_is_refused_and_leaves_nothing(
        server: Server, torch_home: Path, published_mtcnn: dict[str, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytearray(published_mtcnn["pnet"].read_bytes())
    data[-100] ^= 0xFF  # same size, other bytes
    (server.root / "weights" / "pnet.pt").write_bytes(bytes(data))
    monkeypatch.setenv(WEIGHTS_URL_ENV, server.url)
    with pytest.raises(ChecksumMismatchError) as caught:
        _pnet_from_mirror()
    message = str(caught.value)
    expected = get_release("pnet").main_file.sha256
    assert expected is not None
    assert "\n" not in message and "pnet.pt" in message
    assert expected in message and hashlib.sha256(bytes(data)).hexdigest() in message
    assert str(torch_home / "pnet.pt") in message
    assert _leftovers(torch_home) == []


def test_manifest_hash_mismatch_is_refused_too(
        server: Server, torch_home: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    release = get_release("casia-webface")
    (server.root / "weights" / release.filename).write_bytes(b"not the weights")
    manifest = tmp_path / "MANIFEST.json"
    manifest.write_text(json.dumps({"outputs": [
        {"file": release.filename, "sha256": "0" * 64, "size": 15}]}))
    monkeypatch.setenv(WEIGHTS_URL_ENV, server.url)
    monkeypatch.setenv(WEIGHTS_MANIFEST_ENV, str(manifest))
    with pytest.raises(ChecksumMismatchError, match="0{64}") as caught:
        InceptionResNetV1(pretrained="casia-webface")
    assert WEIGHTS_MANIFEST_ENV in str(caught.value)
    assert _leftovers(torch_home) == []


def test_offline_names_the_file_the_place_and_the_command(
        server: Server, torch_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server.stop()  # connection refused from now on
    monkeypatch.setenv(WEIGHTS_URL_ENV, server.url)
    with pytest.raises(WeightsNotFoundError) as caught:
        _pnet_from_mirror()
    message = str(caught.value)
    assert "\n" not in message
    assert str(torch_home / "pnet.pt") in message
    assert f"{server.url}/pnet.pt" in message
    assert "facenet-convert regenerate" in message and "place the file there" in message
    assert _leftovers(torch_home) == []


def test_missing_file_on_the_server_is_a_clear_error(
        server: Server, torch_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WEIGHTS_URL_ENV, server.url)
    with pytest.raises(WeightsNotFoundError, match="HTTP 404") as caught:
        _pnet_from_mirror()
    assert "facenet-convert regenerate" in str(caught.value)
    assert _leftovers(torch_home) == []


def test_a_larger_file_than_registered_is_refused_before_reading(
        server: Server, torch_home: Path, published_mtcnn: dict[str, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    (server.root / "weights" / "pnet.pt").write_bytes(
        published_mtcnn["pnet"].read_bytes() + b"\0" * 10)
    monkeypatch.setenv(WEIGHTS_URL_ENV, server.url)
    with pytest.raises(ConverterError, match="announces 28580 bytes but pnet.pt has 28570"):
        _pnet_from_mirror()
    assert _leftovers(torch_home) == []


def test_no_known_hash_means_no_download(server: Server, torch_home: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    release = get_release("casia-webface")
    assert release.main_file.sha256 is None  # facenet-pytorch's hash is not known here
    (server.root / "weights" / release.filename).write_bytes(b"anything")
    monkeypatch.setenv(WEIGHTS_URL_ENV, server.url)
    with pytest.raises(WeightsNotFoundError, match="not downloaded unverified") as caught:
        InceptionResNetV1(pretrained="casia-webface")
    assert WEIGHTS_MANIFEST_ENV in str(caught.value)
    assert server.requests == []


def test_no_download_location_fails_without_network(torch_home: Path) -> None:
    release = get_release("20170512-110547")
    assert release.url is None
    with pytest.raises(WeightsNotFoundError, match=WEIGHTS_URL_ENV) as caught:
        ensure_weights(release)
    assert str(torch_home / release.filename) in str(caught.value)


def test_cache_hit_is_used_as_is(torch_home: Path) -> None:
    torch_home.mkdir(parents=True)
    (torch_home / "rnet.pt").write_bytes(b"placed by the user")
    assert ensure_weights(get_release("rnet")) == torch_home / "rnet.pt"


def test_progress_bar_on_request(server: Server, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    payload = b"x" * 3_000_000
    (server.root / "weights" / "blob.bin").write_bytes(payload)
    dest = tmp_path / "out" / "blob.bin"
    download_file(f"{server.url}/blob.bin", dest, sha256=hashlib.sha256(payload).hexdigest(),
                  size=len(payload), progress=True)
    assert dest.read_bytes() == payload
    err = capsys.readouterr().err
    assert "blob.bin" in err and "100%" in err and "3.0/3.0 MB" in err


def test_default_is_no_progress_off_a_terminal(server: Server, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    (server.root / "weights" / "a").write_bytes(b"abc")
    download_file(f"{server.url}/a", tmp_path / "a", sha256=hashlib.sha256(b"abc").hexdigest())
    assert capsys.readouterr().err == ""


def test_unreachable_host_is_quick_and_clear(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port that nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(WeightsNotFoundError, match="offline"):
        download_file(f"http://127.0.0.1:{port}/x.pt", tmp_path / "x.pt", sha256="0" * 64)
    assert not (tmp_path / "x.pt").exists()


# ------------------------------------------------------------------------------ trusted hashes


def test_trusted_hash_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WEIGHTS_MANIFEST_ENV, raising=False)
    sha, size, origin = trusted_sha256("pnet.pt")
    assert (sha, size, origin) == (get_release("pnet").main_file.sha256, 28570,
                                   "the release registry")
    assert trusted_sha256("20180408-102900-casia-webface.pt") == (None, None, "")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"pnet.pt": "a" * 64}))
    monkeypatch.setenv(WEIGHTS_MANIFEST_ENV, str(manifest))
    assert trusted_sha256("pnet.pt")[0] == "a" * 64  # a local list you trust wins
    assert trusted_sha256("rnet.pt")[0] == get_release("rnet").main_file.sha256


def test_load_manifest_formats_and_errors(tmp_path: Path) -> None:
    regenerate_style = tmp_path / "MANIFEST.json"
    regenerate_style.write_text(json.dumps({"outputs": [
        {"file": "pnet.pt", "sha256": "b" * 64, "size": 3}]}))
    assert load_manifest(regenerate_style) == {"pnet.pt": ("b" * 64, 3)}
    for text in ("{not json", json.dumps([1, 2]), json.dumps({"pnet.pt": "XYZ"}),
                 json.dumps({"outputs": [{"sha256": "c" * 64}]})):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(ManifestError) as caught:
            load_manifest(bad)
        assert "\n" not in str(caught.value) and str(bad) in str(caught.value)
    with pytest.raises(ManifestError):
        load_manifest(tmp_path / "missing.json")


def test_offline_mode_never_touches_the_network(server: Server, torch_home: Path,
                                                published_mtcnn: dict[str, Path],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copyfile(published_mtcnn["pnet"], server.root / "weights" / "pnet.pt")
    monkeypatch.setenv(WEIGHTS_URL_ENV, server.url)
    monkeypatch.setenv(OFFLINE_ENV, "1")
    with pytest.raises(WeightsNotFoundError, match=OFFLINE_ENV) as caught:
        _pnet_from_mirror()
    assert str(torch_home / "pnet.pt") in str(caught.value)
    assert server.requests == []
    monkeypatch.setenv(OFFLINE_ENV, "0")
    _pnet_from_mirror()
    assert server.requests == ["/weights/pnet.pt"]


class _Misbehaving(BaseHTTPRequestHandler):
    """``/drip``: a byte every 0.5 s; ``/cut``: a chunked body that stops mid-chunk."""

    def do_GET(self) -> None:
        if self.path.endswith("/drip"):
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.5)
        else:
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"400\r\n" + b"y" * 100)     # announces 1024 bytes, sends 100
            self.wfile.flush()
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture()
def misbehaving() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Misbehaving)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_a_dripping_mirror_hits_the_overall_deadline(misbehaving: str, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(WeightsNotFoundError, match="did not finish in time") as caught:
        download_file(f"{misbehaving}/drip", tmp_path / "w.pt", sha256="0" * 64, size=1000,
                      deadline=2.0)
    assert time.monotonic() - started < 10
    assert "\n" not in str(caught.value) and not list(tmp_path.iterdir())


def test_a_cut_chunked_download_is_one_error(misbehaving: str, tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="broke off") as caught:
        download_file(f"{misbehaving}/cut", tmp_path / "w.pt", sha256="0" * 64)
    assert "\n" not in str(caught.value) and not list(tmp_path.iterdir())
