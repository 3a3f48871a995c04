"""The convert API and CLI without TensorFlow: real MTCNN files, outputs, errors, determinism."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.numpy import load_file, safe_open

from facenet_convert.converter.architectures import inception_resnet_v1 as irv1
from facenet_convert.converter.cli import main
from facenet_convert.converter.conversion import convert
from facenet_convert.converter.core.errors import MappingError, OutputError
from tests.synthetic_models import synthetic

ROOT = Path(__file__).resolve().parents[1]
NETS = (("det1", "pnet"), ("det2", "rnet"), ("det3", "onet"))


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def save_mtcnn_npy(path: Path, layers: dict[str, dict[str, np.ndarray]]) -> None:
    """A det*.npy-shaped file: a 0-d object array holding {layer: {param: array}}."""
    holder = np.empty((), dtype=object)
    holder[()] = layers
    np.save(path, holder, allow_pickle=True)


def load_det(path: Path) -> dict[str, dict[str, np.ndarray]]:
    from facenet_convert.converter.sources import open_source

    with open_source(path) as reader:
        layers: dict[str, dict[str, np.ndarray]] = {}
        for name in reader.tensors():
            layer, param = name.split("/")
            layers.setdefault(layer, {})[param] = np.array(reader.read(name))
    return layers


@pytest.mark.parametrize("det, net", NETS)
@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_mtcnn_equals_published_bit_for_bit(tmp_path, det_npy, published_mtcnn, det, net, fmt):
    out = tmp_path / f"{net}.{fmt}"
    result = convert(det_npy[det], output=out)
    published = torch.load(published_mtcnn[net], weights_only=True)
    if fmt == "pt":
        ours = torch.load(out, weights_only=True)
    else:
        ours = {k: torch.from_numpy(v) for k, v in load_file(out).items()}
        ours = {k: ours[k] for k in published if k in ours}  # safetensors sorts its header
        assert set(load_file(out)) == set(published)
    assert list(ours) == list(published)
    for key, value in published.items():
        assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key
        if fmt == "pt":
            assert ours[key].is_contiguous()
    assert result.architecture == net
    assert len(result.plan.mapped) == len(published) and not result.plan.drops


def test_result_state_dict_loads_strict_into_models():
    models = pytest.importorskip("facenet_convert.models")
    entries = irv1.layout(128, 7)
    result = convert(synthetic("inception_resnet_v1.tf_slim", entries))
    net = models.InceptionResNetV1(embedding_size=128, num_classes=7)
    net.load_state_dict(result.state_dict, strict=True)
    assert (result.embedding_size, result.num_classes) == (128, 7)


def test_cli_summary_report_and_progressless_stderr(tmp_path, det_npy):
    out, report = tmp_path / "pnet.pt", tmp_path / "report.json"
    res = CliRunner().invoke(main, ["convert", str(det_npy["det1"]), "-o", str(out),
                                    "--report", str(report)])
    assert res.exit_code == 0, res.output
    line = res.output.strip()
    assert "\n" not in line and "13 tensors mapped, 0 dropped, 0 filled" in line
    digest = json.loads(report.read_text())["outputs"][0]["sha256"]
    assert digest in line
    doc = json.loads(report.read_text())
    assert doc["detection"]["scheme"] == "mtcnn-det1" and doc["table"] == "pnet.mtcnn_npy"
    assert {"source": "conv1/weights", "target": "conv1.weight", "transform": "mtcnn_conv",
            "rule": "conv(?P<n>[1-3])/weights", "shape": [10, 3, 3, 3],
            "dtype": "float32"} in doc["assignments"]
    assert len(doc["source_sha256"]) == 1


def test_existing_output_refused_unless_force(tmp_path, det_npy):
    out = tmp_path / "pnet.pt"
    out.write_bytes(b"keep me")
    res = cli("convert", str(det_npy["det1"]), "-o", str(out))
    assert res.exit_code != 0 and "output exists; pass --force" in res.output
    assert out.read_bytes() == b"keep me"
    assert cli("convert", str(det_npy["det1"]), "-o", str(out), "--force").exit_code == 0
    assert next(iter(torch.load(out, weights_only=True))) == "conv1.weight"


def test_symlink_output_refused(tmp_path, det_npy):
    target = tmp_path / "real.pt"
    target.write_bytes(b"x")
    link = tmp_path / "link.pt"
    link.symlink_to(target)
    res = cli("convert", str(det_npy["det1"]), "-o", str(link), "--force")
    assert res.exit_code != 0 and "symlink" in res.output
    assert target.read_bytes() == b"x"


def test_output_equal_to_input_refused(tmp_path, det_npy):
    src = tmp_path / "det1.npy"
    shutil.copy(det_npy["det1"], src)
    before = src.read_bytes()
    with pytest.raises(OutputError, match="same file as input"):
        convert(src, output=src, format="pt", force=True)
    assert src.read_bytes() == before


def test_errors_leave_nothing_behind(tmp_path, det_npy):
    # --split on a net without logits fails after conversion, before anything is renamed
    out = tmp_path / "out" / "pnet.pt"
    out.parent.mkdir()
    res = cli("convert", str(det_npy["det1"]), "-o", str(out), "--split",
              "--report", str(out.parent / "r.json"))
    assert res.exit_code != 0 and "split needs a model with a logits layer" in res.output
    assert list(out.parent.iterdir()) == []


def test_nan_reported_then_refused_with_strict(tmp_path, det_npy):
    layers = load_det(det_npy["det1"])
    layers["conv2"]["weights"][0, 0, 0, 0] = np.nan
    layers["PReLU1"]["alpha"][3] = np.inf
    src = tmp_path / "det1.npy"
    save_mtcnn_npy(src, layers)
    out = tmp_path / "pnet.pt"
    res = cli("convert", str(src), "-o", str(out), "--report", str(tmp_path / "r.json"))
    assert res.exit_code == 0, res.output
    assert "NaN/Inf in 2: PReLU1/alpha, conv2/weights" in res.output
    assert json.loads((tmp_path / "r.json").read_text())["nonfinite"] == ["PReLU1/alpha",
                                                                          "conv2/weights"]
    out2 = tmp_path / "strict.pt"
    res = cli("convert", str(src), "-o", str(out2), "--strict")
    assert res.exit_code != 0 and "NaN or Inf: PReLU1/alpha, conv2/weights" in res.output
    assert "\n" not in res.output.strip() and not out2.exists()


def test_unknown_architecture_and_wrong_model(tmp_path, det_npy):
    other = {"resnet/conv1/kernel": np.zeros((3, 3, 3, 8), np.float32),
             "resnet/fc/kernel": np.zeros((8, 2), np.float32)}
    with pytest.raises(MappingError, match="cannot tell which model.*pass --model"):
        convert(other)
    with pytest.raises(MappingError, match=r"2 source tensor\(s\) match no rule.*target "
                                           r"key\(s\) have no source"):
        convert(other, model="inception_resnet_v1")
    res = cli("convert", str(det_npy["det2"]), "-o", str(tmp_path / "x.pt"), "--model", "pnet")
    assert res.exit_code != 0
    assert "holds rnet weights (mtcnn-det2 names), not pnet; pass --model auto" in res.output
    assert not (tmp_path / "x.pt").exists()


def test_extra_unknown_variable_and_missing_layer(tmp_path, det_npy):
    layers = load_det(det_npy["det3"])
    layers["conv7"] = {"weights": np.zeros((3, 3, 3, 3), np.float32)}
    src = tmp_path / "det3.npy"
    save_mtcnn_npy(src, layers)
    res = cli("convert", str(src), "-o", str(tmp_path / "o.pt"))
    assert res.exit_code != 0 and "conv7/weights (nearest known: conv5/weights)" in res.output
    del layers["conv7"], layers["conv4"]
    save_mtcnn_npy(src, layers)
    res = cli("convert", str(src), "-o", str(tmp_path / "o.pt"))
    assert "target key(s) have no source: conv4.weight (expected source conv4/weights" \
        in res.output


def test_shape_mismatch(tmp_path, det_npy):
    layers = load_det(det_npy["det2"])
    layers["conv4"]["weights"] = layers["conv4"]["weights"].T.copy()
    src = tmp_path / "det2.npy"
    save_mtcnn_npy(src, layers)
    with pytest.raises(MappingError, match=r"source conv4/weights has shape \[128, 576\] but "
                                           r"target dense4\.weight \(dense_io_to_oi\) expects "
                                           r"\[576, 128\]"):
        convert(src, output=tmp_path / "o.pt")
    assert not (tmp_path / "o.pt").exists()


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_split_and_metadata(tmp_path, fmt):
    entries = irv1.layout(64, 5)
    arrays = synthetic("inception_resnet_v1.tf_slim", entries)
    out = tmp_path / f"model.{fmt}"
    result = convert(arrays, output=out, split=True)
    feats, logits = tmp_path / f"model-features.{fmt}", tmp_path / f"model-logits.{fmt}"
    assert [o.role for o in result.outputs] == ["model", "features", "logits"]
    if fmt == "pt":
        full = torch.load(out, weights_only=True)
        f, g = torch.load(feats, weights_only=True), torch.load(logits, weights_only=True)
    else:
        full, f, g = load_file(out), load_file(feats), load_file(logits)
        with safe_open(out, "np") as handle:
            meta = handle.metadata()
        assert meta["spec"] == "inception_resnet_v1.tf_slim" and meta["weights"] == "raw"
        assert meta["converter_version"] and meta["embedding_size"] == "64"
        assert json.loads(meta["source_sha256"]) == {}
    assert sorted(g) == ["logits.bias", "logits.weight"]
    assert not any(k.startswith("logits.") for k in f)
    assert set(f) | set(g) == set(full)
    if fmt == "pt":
        assert list(full) == [e.key for e in entries]
        assert list(f) == [e.key for e in entries if not e.key.startswith("logits.")]


def test_format_and_extension_must_agree(tmp_path, det_npy):
    with pytest.raises(OutputError, match="disagrees"):
        convert(det_npy["det1"], output=tmp_path / "a.safetensors", format="pt")
    with pytest.raises(OutputError, match="cannot tell the output format"):
        convert(det_npy["det1"], output=tmp_path / "a.bin")
    assert cli("convert", str(det_npy["det1"]), "-o", str(tmp_path / "a.bin"),
               "--format", "safetensors").exit_code == 0


_CONVERT_SCRIPT = """
import sys
from facenet_convert.converter.conversion import convert
convert(sys.argv[1], output=sys.argv[2])
bad = [m for m in ("torch", "tensorflow") if m in sys.modules]
print("imported:", bad)
"""


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_deterministic_bytes_across_processes(tmp_path, det_npy, fmt):
    outs = []
    for run in range(2):
        out = tmp_path / f"run{run}.{fmt}"
        proc = subprocess.run([sys.executable, "-c", _CONVERT_SCRIPT, str(det_npy["det3"]),
                               str(out)], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "PYTHONHASHSEED": str(run)}, check=False)
        assert proc.returncode == 0, proc.stderr
        outs.append(out.read_bytes())
        if fmt == "safetensors":
            assert "imported: []" in proc.stdout  # neither torch nor tensorflow
    assert outs[0] == outs[1]


def test_deterministic_bytes_in_process_with_logits(tmp_path):
    arrays = synthetic("inception_resnet_v1.tf_slim", irv1.layout(32, 3))
    for fmt in ("pt", "safetensors"):
        a, b = tmp_path / f"a.{fmt}", tmp_path / f"b.{fmt}"
        convert(arrays, output=a)
        convert(dict(reversed(list(arrays.items()))), output=b)
        assert a.read_bytes() == b.read_bytes()


def test_package_import_stays_light_and_exports_convert(det_npy, tmp_path):
    code = ("import sys, facenet_convert; assert 'numpy' not in sys.modules; "
            "r = facenet_convert.convert(sys.argv[1]); print(r.architecture)")
    proc = subprocess.run([sys.executable, "-c", code, str(det_npy["det1"])], cwd=tmp_path,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["pnet"]


def test_pickle_payload_never_reaches_the_engine(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    src = tmp_path / "det1.npy"
    holder = np.empty((), dtype=object)
    holder[()] = {"conv1": {"weights": Evil()}}
    with open(src, "wb") as handle:
        np.lib.format.write_array(handle, holder, allow_pickle=True)
    res = cli("convert", str(src), "-o", str(tmp_path / "o.pt"))
    assert res.exit_code != 0 and "pwned" not in res.output
    assert not (tmp_path / "o.pt").exists()


def test_progress_only_on_a_tty_stderr(tmp_path, det_npy):
    import pty

    master, slave = pty.openpty()
    out = tmp_path / "onet.pt"
    proc = subprocess.run([sys.executable, "-m", "converter", "convert",
                           str(det_npy["det3"]), "-o", str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=slave, text=True, timeout=120, check=False)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.returncode == 0
    assert "converting" in b"".join(chunks).decode(errors="replace")
    assert proc.stdout.count("\n") == 1 and "21 tensors mapped" in proc.stdout


def test_safetensors_metadata_names_the_source_hash(tmp_path, det_npy):
    from facenet_convert.third_party.wheels import sha256_file

    out = tmp_path / "onet.safetensors"
    result = convert(det_npy["det3"], output=out, weights="raw")
    with safe_open(out, "np") as handle:
        meta = handle.metadata()
    assert json.loads(meta["source_sha256"]) == {"det3.npy": sha256_file(det_npy["det3"])}
    assert (meta["spec"], meta["weights"], meta["architecture"]) == ("onet.mtcnn_npy", "raw",
                                                                     "onet")
    assert meta["converter_version"] == result.report["converter_version"]
    assert result.outputs[0].sha256 == sha256_file(out)


def _as_version(data: bytes, version: str) -> bytes:
    """A safetensors file's bytes with its ``converter_version`` metadata set to ``version``,
    re-serialised as our writer serialises headers."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    header["__metadata__"]["converter_version"] = version
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + length:]


def test_outputs_are_byte_for_byte_those_of_the_previous_release(det_npy, tmp_path):
    # sha256 of det3.npy -> onet.safetensors as written by facenet-convert 0.1.0 before the
    # package became facenet_convert (our own safetensors writer: no torch version involved).
    # Outputs record the converter's version (docs/api.md): apart from that field, the bytes
    # of every release are those of 0.1.0.
    import hashlib

    out = tmp_path / "onet.safetensors"
    convert(det_npy["det3"], output=out)
    assert hashlib.sha256(_as_version(out.read_bytes(), "0.1.0")).hexdigest() == (
        "20a3f0c60779ee0a9de801b5d8a7ece48e257eb0f00c68dae755a1c2141e46e9")
