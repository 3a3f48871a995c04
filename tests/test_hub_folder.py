"""Hub-style folders (model.safetensors + config.json + README.md): ``export --hub-folder``,
``from_pretrained`` / ``save_pretrained`` of every zoo model, folders that lie, Hub repo ids
through a cache that huggingface_hub itself filled from a loopback server, and hubconf.py
through ``torch.hub.load(..., source="local")``.

Nothing here reaches another host: the Hub is a loopback HTTP server, the vggface2 release a
file placed in ``$TORCH_HOME/checkpoints`` with ``$FACENET_CONVERT_OFFLINE`` set.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from facenet_convert.converter.cli import main
from facenet_convert.converter.core.errors import ConverterError, OutputError
from facenet_convert.converter.core.hashing import sha256_file
from facenet_convert.models import MTCNN, InceptionResNetV1, ONet, PNet, RNet
from facenet_convert.models.pretrained_folder import (
    CARD_NAME,
    CONFIG_NAME,
    MAX_CONFIG_BYTES,
    WEIGHTS_NAME,
    HubFolderError,
)
from facenet_convert.models.releases import get_release
from facenet_convert.models.shipped import SHIPPED_DIR
from facenet_convert.models.squeezenet import SqueezeNet
from facenet_convert.third_party.facenet.testing.photos import PHOTOS, insightface_image
from tests.synthetic_models import seed_batchnorm

ROOT = Path(__file__).resolve().parents[1]
FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)


def _run(*args: object) -> Any:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _batch(seed: int = 3) -> torch.Tensor:
    return torch.randn(3, 3, 160, 160, generator=torch.Generator().manual_seed(seed))


def _embed(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.eval()(batch)


def _same_files(a: Path, b: Path, names: tuple[str, ...] = FILES) -> None:
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


# ------------------------------------------------------------------ export --hub-folder


@pytest.fixture(scope="module")
def pairs_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Three real faces, three images each (as is, mirrored, brighter), and 8 pairs that
    alternate same / different person (so that every fold of two holds both)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("pairs")
    faces = {"astronaut": PHOTOS["astronaut"]()[40:200, 170:330],
             "camera": PHOTOS["camera"]()[90:250, 150:310],
             "hanks": insightface_image("Tom_Hanks_54745.png")}
    for name, face in faces.items():
        (root / name).mkdir()
        for number, image in enumerate((face, face[:, ::-1],
                                        np.clip(face * 1.2 + 8, 0, 255).astype(np.uint8)), 1):
            Image.fromarray(np.ascontiguousarray(image)).save(root / name /
                                                              f"{name}_{number:04d}.png")
    lines = ["2\t4", "astronaut\t1\t2", "astronaut\t1\tcamera\t1", "camera\t2\t3",
             "camera\t2\thanks\t3", "hanks\t1\t3", "hanks\t2\tastronaut\t3", "astronaut\t2\t3",
             "camera\t3\thanks\t1"]
    pairs = root / "pairs.txt"
    pairs.write_text("\n".join(lines) + "\n")
    return pairs, root


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, weights: Path,
             pairs_set: tuple[Path, Path]) -> Path:
    """``export WEIGHTS --hub-folder DIR --evaluate PAIRS --evaluate-images DIR`` of a seeded
    512-d model saved as a .pt (no parity source: the card must say so)."""
    folder = tmp_path_factory.mktemp("exported") / "hub"
    pairs, images = pairs_set
    done = _run("export", weights, "--hub-folder", folder, "--evaluate", pairs,
                "--evaluate-images", images)
    assert done.exit_code == 0, done.output
    assert f"wrote {folder}" in done.stdout and "no parity figures" in done.stdout
    return folder


def test_export_writes_a_folder_that_loads_to_the_same_model(exported: Path, weights: Path,
                                                             pairs_set: tuple[Path, Path]
                                                             ) -> None:
    assert sorted(p.name for p in exported.iterdir()) == sorted(FILES)
    config = json.loads((exported / CONFIG_NAME).read_text())
    assert config["architecture"] == "inception_resnet_v1" and config["task"] == "embedding"
    assert config["embedding_size"] == 512 and config["num_classes"] is None
    assert config["input_size"] == [160, 160]
    assert config["preprocessing"] == "fixed_standardization"     # a 512-d file of no release
    assert config["weights_sha256"] == sha256_file(exported / WEIGHTS_NAME)
    assert config["source_sha256"] == {} and config["release"] is None   # a .pt records none

    model = InceptionResNetV1.from_pretrained(exported)
    reference = InceptionResNetV1(pretrained=str(weights))
    batch = _batch()
    assert torch.equal(_embed(model, batch), _embed(reference, batch))

    card = (exported / CARD_NAME).read_text()
    assert card.startswith("---\nlibrary_name: facenet-convert\nlicense: other\n")
    assert "Not measured when this folder was written" in card       # no --parity-source
    assert f"`{weights.name}` (sha256 `{sha256_file(weights)}`)" in card
    assert "fixed standardization, `(x - 127.5) / 128`" in card
    pairs, images = pairs_set
    assert f"`pairs.txt` (sha256 `{sha256_file(pairs)}`): 8 of 8 pairs over 9 images, 4 folds"\
        in card
    assert "| accuracy | VAL @ FAR | AUC | EER | best threshold |" in card
    assert str(images) not in card and str(weights.parent) not in card   # no paths


def test_save_pretrained_round_trips_bit_for_bit(exported: Path, tmp_path: Path) -> None:
    model = InceptionResNetV1.from_pretrained(exported)
    model.save_pretrained(tmp_path / "again")
    _same_files(exported, tmp_path / "again")          # the card too: the weights are its
    InceptionResNetV1.from_pretrained(tmp_path / "again").save_pretrained(tmp_path / "third")
    _same_files(exported, tmp_path / "third")

    again = tmp_path / "again"
    done = _run("export", exported / WEIGHTS_NAME, "--hub-folder", again)
    assert done.exit_code != 0 and "--force" in done.stderr          # never overwritten
    assert len(done.stderr.strip().splitlines()) == 1
    _same_files(exported, again)

    with torch.no_grad():                                # changed weights: no card, no claim
        model.last_bn.bias.add_(0.5)
    model.save_pretrained(tmp_path / "tuned")
    assert not (tmp_path / "tuned" / CARD_NAME).exists()
    tuned = InceptionResNetV1.from_pretrained(tmp_path / "tuned")
    assert torch.equal(tuned.last_bn.bias, model.last_bn.bias)
    with pytest.raises(ConverterError, match="output exists"):
        model.save_pretrained(tmp_path / "tuned")


@pytest.mark.tf
def test_export_from_a_real_checkpoint_carries_float64_parity(
        upstream_ckpt_128: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from facenet_convert.converter import model_card
    from facenet_convert.converter.conversion import convert

    # two seeded inputs instead of four: the same gate, half the TF and torch runs
    monkeypatch.setattr(model_card, "PARITY_BATCH_SIZE", 2)
    monkeypatch.setattr(model_card, "PARITY_FLOAT64_INPUTS", 2)

    converted = tmp_path / "irv1.safetensors"
    convert(upstream_ckpt_128.prefix, output=converted)
    folder = tmp_path / "hub"
    # the frozen graph of the same checkpoint: the quickest TF reference to build
    done = _run("export", converted, "--hub-folder", folder, "--parity-source",
                upstream_ckpt_128.frozen_pb)
    assert done.exit_code == 0, done.output
    assert "float64 parity passed" in done.stdout

    config = json.loads((folder / CONFIG_NAME).read_text())
    prefix = Path(upstream_ckpt_128.prefix)
    sources = {p.name: sha256_file(p) for p in prefix.parent.iterdir()
               if p.name.startswith(prefix.name + ".")}
    assert config["source_sha256"] == sources and len(sources) == 2     # .index and .data
    assert config["embedding_size"] == 128 and config["preprocessing"] == "prewhiten"

    card = (folder / CARD_NAME).read_text()
    assert "Verdict: **passed**" in card and "(2 inputs)" in card and "| embeddings | " in card
    row = next(line for line in card.splitlines() if line.startswith("| embeddings | "))
    assert float(row.split("|")[3]) <= 1e-10                        # float64 relative
    assert "frozen" in card and upstream_ckpt_128.frozen_pb.name in card
    assert str(prefix.parent) not in card and str(tmp_path) not in card

    model = InceptionResNetV1.from_pretrained(folder)
    reference = InceptionResNetV1(pretrained=str(converted))
    batch = _batch(5)
    assert torch.equal(_embed(model, batch), _embed(reference, batch))
    model.save_pretrained(tmp_path / "again")
    _same_files(folder, tmp_path / "again")


def test_export_of_a_detection_net_with_onnx_verifies_its_release(
        det_npy: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from facenet_convert.converter.conversion import convert

    converted = tmp_path / "pnet.safetensors"
    convert(det_npy["det1"], output=converted)
    folder = tmp_path / "hub"
    done = _run("export", converted, "-o", tmp_path / "pnet.onnx", "--hub-folder", folder)
    assert done.exit_code == 0, done.output
    assert (tmp_path / "pnet.onnx").is_file() and (tmp_path / "pnet.onnx.json").is_file()
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["release"] == "pnet" and config["preprocessing"] == "mtcnn"
    assert config["source_sha256"] == {"det1.npy": get_release("pnet").source_files[0].sha256}
    card = (folder / CARD_NAME).read_text()
    assert "license: mit" in card and "Release: `pnet`" in card
    net = PNet.from_pretrained(folder)
    shipped = PNet(pretrained=True)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in shipped.state_dict().items())


def test_export_refuses_options_that_have_no_folder(weights: Path, tmp_path: Path,
                                                    pairs_set: tuple[Path, Path]) -> None:
    for args, words in (((), "nothing to write"),
                        (("-o", tmp_path / "m.onnx", "--evaluate", pairs_set[0]),
                         "give --hub-folder"),
                        (("--hub-folder", tmp_path / "hub", "--evaluate", pairs_set[0]),
                         "go together")):
        done = _run("export", weights, *args)
        assert done.exit_code != 0 and words in done.stderr, done.output
        assert len(done.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []                 # not even the folder


# ------------------------------------------------------------------- every zoo model


@pytest.mark.parametrize("make", [
    lambda: seed_batchnorm(SqueezeNet(num_classes=7), 2),
    lambda: PNet(pretrained=True), lambda: RNet(pretrained=True), lambda: ONet(pretrained=True),
    lambda: MTCNN(keep_all=True, margin=14, thresholds=(0.5, 0.6, 0.7),
                  alignment="similarity", template="arcface"),
], ids=["squeezenet", "pnet", "rnet", "onet", "mtcnn"])
def test_every_model_round_trips(make: Callable[[], torch.nn.Module], tmp_path: Path) -> None:
    model = make()
    model.save_pretrained(tmp_path / "a")
    loaded = type(model).from_pretrained(tmp_path / "a")
    assert list(loaded.state_dict()) == list(model.state_dict())
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    loaded.save_pretrained(tmp_path / "b")
    _same_files(tmp_path / "a", tmp_path / "b", (WEIGHTS_NAME, CONFIG_NAME))
    if isinstance(model, MTCNN):
        assert loaded.keep_all and loaded.margin == 14 and loaded.thresholds == (0.5, 0.6, 0.7)
        assert (loaded.alignment, loaded.template) == ("similarity", "arcface")
        assert type(model).from_pretrained(tmp_path / "a", keep_all=False).keep_all is False
        config = _config(tmp_path / "a")
        config["detector"]["alignment"] = "rotate"
        _write_config(tmp_path / "a", config)
        with pytest.raises(HubFolderError, match="cannot build MTCNN from the folder "
                           r"\(ValueError: alignment must be one of box, similarity"):
            MTCNN.from_pretrained(tmp_path / "a")


# ------------------------------------------------------------------------ lying folders


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("honest") / "squeezenet"
    seed_batchnorm(SqueezeNet(embedding_size=16), 4).save_pretrained(folder)
    return folder


def _config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / CONFIG_NAME).read_text())


def _write_config(folder: Path, config: dict[str, Any]) -> None:
    (folder / CONFIG_NAME).write_text(json.dumps(config))


def _rewrite_weights(folder: Path, change: Callable[[dict[str, Any], bytearray], None]) -> None:
    """Change the header and/or data of model.safetensors, and re-sign the config with the
    new bytes' sha256 (a liar that knows the format)."""
    raw = (folder / WEIGHTS_NAME).read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + length])
    data = bytearray(raw[8 + length:])
    change(header, data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    blob = len(text).to_bytes(8, "little") + text + bytes(data)
    (folder / WEIGHTS_NAME).write_bytes(blob)
    config = _config(folder)
    config["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    _write_config(folder, config)


def _set(key: str, value: Any) -> Callable[[Path], None]:
    def lie(folder: Path) -> None:
        config = _config(folder)
        config[key] = value
        _write_config(folder, config)
    return lie


def _swap_shape(folder: Path) -> None:
    def change(header: dict[str, Any], _data: bytearray) -> None:
        header["last_linear.weight"]["shape"] = header["last_linear.weight"]["shape"][::-1]
    _rewrite_weights(folder, change)


def _other_architecture_in_header(folder: Path) -> None:
    def change(header: dict[str, Any], _data: bytearray) -> None:
        header["__metadata__"]["facenet_convert.architecture"] = "pnet"
    _rewrite_weights(folder, change)


def _overlap(folder: Path) -> None:
    def change(header: dict[str, Any], _data: bytearray) -> None:
        begin, end = header["last_bn.bias"]["data_offsets"]
        header["last_bn.bias"]["data_offsets"] = [begin - 4, end - 4]
    _rewrite_weights(folder, change)


def _nan(folder: Path) -> None:
    def change(header: dict[str, Any], data: bytearray) -> None:
        begin = header["last_bn.weight"]["data_offsets"][0]
        data[begin:begin + 4] = np.array([np.nan], dtype="<f4").tobytes()
    _rewrite_weights(folder, change)


def _link_out(folder: Path) -> None:
    outside = folder.parent / "elsewhere.safetensors"
    shutil.move(folder / WEIGHTS_NAME, outside)
    (folder / WEIGHTS_NAME).symlink_to(outside)


def _oversized(folder: Path) -> None:
    text = (folder / CONFIG_NAME).read_text()
    (folder / CONFIG_NAME).write_text(text + " " * (MAX_CONFIG_BYTES + 1 - len(text)))


def _other_weights(folder: Path) -> None:
    seed_batchnorm(SqueezeNet(embedding_size=16), 5).save_pretrained(folder.parent / "other")
    shutil.copyfile(folder.parent / "other" / WEIGHTS_NAME, folder / WEIGHTS_NAME)


def _duplicate_key(folder: Path) -> None:
    text = (folder / CONFIG_NAME).read_text()
    (folder / CONFIG_NAME).write_text(text.replace('"architecture"',
                                                   '"architecture": "pnet", "architecture"', 1))


def _pickle_only(folder: Path) -> None:
    torch.save(SqueezeNet(embedding_size=16).state_dict(), folder / "pytorch_model.bin")
    (folder / WEIGHTS_NAME).unlink()


def _fifo(folder: Path) -> None:
    (folder / CONFIG_NAME).unlink()
    os.mkfifo(folder / CONFIG_NAME)


LIES: dict[str, tuple[Callable[[Path], None], str]] = {
    "wrong embedding size": (_set("embedding_size", 32), "last_linear.weight expected [32,"),
    "huge sizes": (_set("embedding_size", 65536), "does not hold the squeezenet"),
    "unknown architecture": (_set("architecture", "resnet50"), "unknown architecture"),
    "release that it is not": (_set("release", "vggface2"), "is no squeezenet release"),
    "unknown key": (_set("trust_remote_code", True), "unknown keys trust_remote_code"),
    "NaN constant": (lambda f: (f / CONFIG_NAME).write_text(
        (f / CONFIG_NAME).read_text().replace('"num_classes": null', '"num_classes": NaN')),
        "not valid JSON"),
    "duplicate key": (_duplicate_key, "duplicate keys ['architecture']"),
    "header shape mismatch": (_swap_shape, "last_linear.weight expected [16, 1000]"),
    "header names another architecture": (_other_architecture_in_header,
                                          "header says architecture 'pnet'"),
    "overlapping spans": (_overlap, "overlaps"),
    "NaN in a tensor": (_nan, "[last_bn.weight]: model.safetensors holds NaN or Inf"),
    "weights of another model": (_other_weights, "not the weights the config describes"),
    "symlink out of the folder": (_link_out, "outside the folder"),
    "oversized config": (_oversized, f"more than the {MAX_CONFIG_BYTES} allowed"),
    "a pickle instead": (_pickle_only, "no model.safetensors in the folder"),
    "a FIFO as config": (_fifo, "FIFO"),
}


@pytest.mark.parametrize("lie", sorted(LIES))
def test_a_lying_folder_is_refused_in_one_line(lie: str, honest: Path, tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    shutil.copytree(honest, folder)
    SqueezeNet.from_pretrained(folder)                     # the copy itself is fine
    make_lie, words = LIES[lie]
    make_lie(folder)
    with pytest.raises(HubFolderError) as caught:
        SqueezeNet.from_pretrained(folder)
    message = str(caught.value)
    assert words in message, message
    assert "\n" not in message and message.isprintable()


@pytest.mark.parametrize("given", [None, 5, b"/tmp", "a" * 256], ids=repr)
def test_what_is_no_folder_name_is_one_line(given: Any) -> None:
    with pytest.raises(HubFolderError) as caught:
        SqueezeNet.from_pretrained(given)
    assert "\n" not in str(caught.value)


def test_save_pretrained_refuses_what_from_pretrained_would(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="holds torch.float64"):
        SqueezeNet(embedding_size=16).double().save_pretrained(tmp_path / "f64")
    assert not (tmp_path / "f64").exists()
    with pytest.raises(OutputError, match="cannot create the folder"):
        SqueezeNet(embedding_size=16).save_pretrained(tmp_path / ("a" * 300))


def test_detector_settings_that_never_end_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "mtcnn"
    MTCNN().save_pretrained(folder)
    config = _config(folder)
    config["detector"]["factor"] = 0.999999999          # a pyramid level per 1e-9
    _write_config(folder, config)
    with pytest.raises(HubFolderError, match="factor must be in"):
        MTCNN.from_pretrained(folder)


def test_a_header_of_many_keys_is_read_in_linear_time(honest: Path, tmp_path: Path) -> None:
    """600k metadata keys (6.5 MB, under the header cap) once took about an hour to check for
    duplicates; a fresh process under a time limit must finish either way."""
    folder = tmp_path / "folder"
    shutil.copytree(honest, folder)
    _rewrite_weights(folder, lambda header, _: header["__metadata__"].update(
        {f"{i:x}": "" for i in range(600_000)}))
    load = ("import sys\n"
            "from facenet_convert.models.squeezenet import SqueezeNet\n"
            "from facenet_convert.models.pretrained_folder import HubFolderError\n"
            "try:\n    SqueezeNet.from_pretrained(sys.argv[1])\n"
            "except HubFolderError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", load, str(folder)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(done.stdout.strip().splitlines()) <= 1


def test_the_wrong_class_and_fixed_arguments_are_refused(honest: Path) -> None:
    with pytest.raises(HubFolderError, match="holds a squeezenet model, not a "
                       "inception_resnet_v1; load it with SqueezeNet.from_pretrained"):
        InceptionResNetV1.from_pretrained(honest)
    with pytest.raises(HubFolderError, match="embedding_size come from the folder"):
        SqueezeNet.from_pretrained(honest, embedding_size=16)
    with pytest.raises(HubFolderError, match="not a Hub repo id"):
        SqueezeNet.from_pretrained(honest / "missing")


def test_nothing_in_the_folder_runs(honest: Path, tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    shutil.copytree(honest, folder)
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').write('ran')\n"
    for name in ("hubconf.py", "__init__.py", "modeling_facenet.py", "sitecustomize.py"):
        (folder / name).write_text(code)
    config = _config(folder)
    SqueezeNet.from_pretrained(folder)
    assert not marker.exists()
    config["auto_map"] = {"AutoModel": "modeling_facenet.Model"}
    _write_config(folder, config)
    with pytest.raises(HubFolderError, match="unknown keys auto_map"):
        SqueezeNet.from_pretrained(folder)
    assert not marker.exists()


# ------------------------------------------------------------- Hub repo ids, offline


class _HubHandler(BaseHTTPRequestHandler):
    """``/{owner}/{name}/resolve/{revision}/{file}`` as the Hub answers it: the commit and
    the file's sha256 (its ETag) in the headers."""

    files: dict[str, dict[str, bytes]]
    requests: list[str]
    COMMIT = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c"

    def _answer(self, body: bool) -> None:
        self.requests.append(f"{self.command} {self.path}")
        parts = self.path.split("/")
        repo = "/".join(parts[1:3])
        data = self.files.get(repo, {}).get(parts[-1]) if len(parts) == 6 else None
        if data is None or parts[3] != "resolve":
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", self.COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self) -> None:
        self._answer(False)

    def do_GET(self) -> None:
        self._answer(True)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture()
def hub_server() -> Iterator[tuple[str, type[_HubHandler]]]:
    handler = type("Handler", (_HubHandler,), {"files": {}, "requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()
    thread.join()


def test_a_repo_id_resolves_from_a_cache_filled_by_huggingface_hub_offline(
        hub_server: tuple[str, type[_HubHandler]], honest: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    huggingface_hub = pytest.importorskip("huggingface_hub")
    url, handler = hub_server
    repo = "acme/facenet-squeezenet"
    card = "---\nlibrary_name: facenet-convert\n---\n# a card\n"
    handler.files[repo] = {**{name: (honest / name).read_bytes()
                              for name in (CONFIG_NAME, WEIGHTS_NAME)},
                           CARD_NAME: card.encode()}
    cache = tmp_path / "hf-cache"
    for name in handler.files[repo]:                   # huggingface_hub's own cache layout
        huggingface_hub.hf_hub_download(repo, name, cache_dir=cache, endpoint=url)
    assert (cache / "models--acme--facenet-squeezenet" / "refs" / "main").is_file()
    seen = len(handler.requests)

    monkeypatch.delenv("FACENET_CONVERT_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub read HF_HUB_OFFLINE and its endpoint when it was imported: pointed at
    # the loopback server, a request that slipped through would be counted here, and could
    # never reach another host
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", url)
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        url + "/{repo_id}/resolve/{revision}/{filename}")
    model = SqueezeNet.from_pretrained(repo, cache_dir=cache)
    assert len(handler.requests) == seen
    reference = SqueezeNet.from_pretrained(honest)
    assert all(torch.equal(model.state_dict()[k], v)
               for k, v in reference.state_dict().items())
    model.save_pretrained(tmp_path / "saved")
    _same_files(honest, tmp_path / "saved", (WEIGHTS_NAME, CONFIG_NAME))
    assert (tmp_path / "saved" / CARD_NAME).read_text() == card

    with pytest.raises(HubFolderError) as caught:
        SqueezeNet.from_pretrained("acme/not-cached", cache_dir=cache)
    assert "HF_HUB_OFFLINE" in str(caught.value) and "\n" not in str(caught.value)
    assert len(handler.requests) == seen

    monkeypatch.delenv("HF_HUB_OFFLINE")              # this package's own switch does too
    monkeypatch.setenv("FACENET_CONVERT_OFFLINE", "1")
    SqueezeNet.from_pretrained(repo, cache_dir=cache)
    assert len(handler.requests) == seen

    repo_folder = cache / "models--acme--facenet-squeezenet"   # the repo's folder a link
    repo_folder.rename(tmp_path / "outside-repo")
    repo_folder.symlink_to(tmp_path / "outside-repo")
    with pytest.raises(HubFolderError, match="refusing to read outside the cache"):
        SqueezeNet.from_pretrained(repo, cache_dir=cache)

    monkeypatch.delenv("FACENET_CONVERT_OFFLINE")     # online: through huggingface_hub
    fresh = SqueezeNet.from_pretrained(repo, cache_dir=tmp_path / "fresh-cache")
    assert f"GET /{repo}/resolve/main/{WEIGHTS_NAME}" in handler.requests[seen:]
    assert all(request.split()[1].startswith(f"/{repo}/") for request in handler.requests)
    assert torch.equal(fresh.last_linear.weight, reference.last_linear.weight)


# ----------------------------------------------------------------------------- hubconf


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """``$TORCH_HOME`` holding a vggface2-shaped release file (seeded, 512-d, 8631 classes),
    and the sha256 of its logits weight."""
    home = tmp_path_factory.mktemp("torch-home")
    release = get_release("vggface2")
    torch.manual_seed(0)
    model = InceptionResNetV1(num_classes=release.num_classes)
    (home / "checkpoints").mkdir()
    torch.save(model.state_dict(), home / "checkpoints" / release.filename)
    digest = hashlib.sha256(model.logits.weight.detach().numpy().tobytes()).hexdigest()
    return home, {"logits": digest}


def test_hubconf_entry_points_load_locally(torch_home: tuple[Path, dict[str, str]],
                                           exported: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    home, digests = torch_home
    monkeypatch.setenv("TORCH_HOME", str(home))
    model = torch.hub.load(str(ROOT), "inception_resnet_v1", pretrained="vggface2",
                           source="local")
    assert isinstance(model, InceptionResNetV1) and model.num_classes == 8631
    found = hashlib.sha256(model.logits.weight.detach().numpy().tobytes()).hexdigest()
    assert found == digests["logits"]
    folder_model = torch.hub.load(str(ROOT), "inception_resnet_v1", pretrained=str(exported),
                                  source="local")
    assert folder_model.embedding_size == 512
    for name, cls in (("pnet", PNet), ("rnet", RNet), ("onet", ONet)):
        net = torch.hub.load(str(ROOT), name, source="local")
        assert type(net) is cls
        shipped = load_file(SHIPPED_DIR / f"{name}.safetensors")
        assert all(torch.equal(net.state_dict()[k], v) for k, v in shipped.items())
    detector = torch.hub.load(str(ROOT), "mtcnn", keep_all=True, source="local")
    assert isinstance(detector, MTCNN) and detector.keep_all


def test_hubconf_loads_the_package_from_a_checkout_with_another_name(
        torch_home: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """torch.hub's cache folder is ``owner_repo_branch``: hubconf.py makes the package
    importable as facenet_convert from there (the installed one lives elsewhere)."""
    home, digests = torch_home
    checkout = tmp_path / "acme_facenet-convert_main"
    checkout.mkdir()
    for name in ("__init__.py", "hubconf.py"):
        shutil.copy2(ROOT / name, checkout / name)
    for name in ("converter", "models", "third_party"):
        shutil.copytree(ROOT / name, checkout / name,
                        ignore=shutil.ignore_patterns("__pycache__", "testing"))
    code = (
        "import hashlib, sys, torch\n"
        "m = torch.hub.load(sys.argv[1], 'inception_resnet_v1', pretrained='vggface2', "
        "source='local')\n"
        "import facenet_convert\n"
        "print(facenet_convert.__file__)\n"
        "print(hashlib.sha256(m.logits.weight.detach().numpy().tobytes()).hexdigest())\n")
    env = {**os.environ, "TORCH_HOME": str(home), "FACENET_CONVERT_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code, str(checkout)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    where, digest = done.stdout.split()[-2:]
    assert Path(where) == checkout / "__init__.py"
    assert digest == digests["logits"]
