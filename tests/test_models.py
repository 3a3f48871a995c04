"""models/: architecture, layout parity with facenet-pytorch 2.6.0, weight loading, errors."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from facenet_convert.converter.core.errors import (
    ConverterError,
    MappingError,
    SourceError,
    UnknownReleaseError,
    WeightsNotFoundError,
)
from facenet_convert.models import InceptionResNetV1, InceptionResnetV1, ONet, PNet, RNet
from facenet_convert.models.embedding_net import BN_EPS, l2_normalize
from facenet_convert.models.inception_resnet_v1 import Block8
from facenet_convert.models.releases import RELEASES, get_release

ROOT = Path(__file__).resolve().parent.parent
LAYOUTS = json.loads((ROOT / "tests" / "data" / "facenet_pytorch_layouts.json").read_text())
MTCNN = {"pnet": (PNet, 30), "rnet": (RNet, 24), "onet": (ONet, 48)}


def layout(module: nn.Module) -> list[list[object]]:
    return [[key, list(value.shape)] for key, value in module.state_dict().items()]


def randomize_(module: nn.Module, seed: int) -> nn.Module:
    """Random weights that keep activations sane, and non-trivial BatchNorm statistics."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in module.state_dict().items():
            if not value.is_floating_point():
                continue
            if key.endswith(("running_var", "bn.weight")):
                value.copy_(torch.rand(value.shape, generator=generator) + 0.5)
            elif key.endswith(("running_mean", "bn.bias")):
                value.copy_(torch.randn(value.shape, generator=generator) * 0.1)
            else:
                value.copy_(torch.randn(value.shape, generator=generator)
                            * (value.std() if value.numel() > 1 else 0.1))
    return module


def images(n: int = 2, size: int = 160, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def upstream() -> types.ModuleType:
    """facenet-pytorch's own model modules, loaded from the pinned wheel by the record script."""
    spec = importlib.util.spec_from_file_location("record_layouts",
                                                  ROOT / "scripts" / "record_layouts.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return types.SimpleNamespace(irv1=script.import_upstream_module("inception_resnet_v1"),
                                 mtcnn=script.import_upstream_module("mtcnn"))


@pytest.fixture(scope="module")
def trained() -> InceptionResNetV1:
    """A 10-class model with random weights and BN statistics, in eval mode."""
    torch.manual_seed(0)
    return randomize_(InceptionResNetV1(num_classes=10), seed=1).eval()


# --- architecture -------------------------------------------------------------------------


@pytest.mark.parametrize("embedding_size", [512, 128])
def test_embeddings_have_the_right_shape_and_unit_norm(embedding_size: int) -> None:
    model = InceptionResNetV1(embedding_size=embedding_size).eval()
    with torch.no_grad():
        out = model(images())
    assert out.shape == (2, embedding_size)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))


def test_defaults() -> None:
    model = InceptionResNetV1()
    assert model.embedding_size == 512
    assert model.num_classes is None
    assert not model.classify
    assert "logits" not in model._modules
    assert InceptionResnetV1 is InceptionResNetV1


def test_upstream_architecture_constants() -> None:
    model = InceptionResNetV1()
    # the float32 graph's constants, exactly (float32-rounded, REFERENCE section 7)
    f32 = [float(np.float32(scale)) for scale in (0.17, 0.10, 0.20)]
    assert [block.scale for block in model.repeat_1] == [f32[0]] * 5
    assert [block.scale for block in model.repeat_2] == [f32[1]] * 10
    assert [block.scale for block in model.repeat_3] == [f32[2]] * 5
    assert all(block.activation for block in [*model.repeat_1, *model.repeat_2, *model.repeat_3])
    assert isinstance(model.block8, Block8) and not model.block8.activation
    assert model.block8.scale == 1.0
    # Only the residual 1x1 "up" convs carry a bias; every other conv is followed by BN.
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            assert (module.bias is not None) == name.endswith(".conv2d"), name
    assert model.last_linear.bias is None
    assert model.last_linear.in_features == 1792


def test_every_batchnorm_uses_eps_1e_3_in_eval_mode(trained: InceptionResNetV1) -> None:
    norms = [m for m in trained.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 1 + sum(1 for n, _ in trained.named_modules() if n.endswith(".bn"))
    assert all(m.eps == BN_EPS == float(np.float32(1e-3)) for m in norms)
    # Numerically: eval mode normalizes with the running statistics and eps 1e-3.
    bn = trained.last_bn
    x = torch.randn(4, bn.num_features)
    expected = ((x - bn.running_mean) / torch.sqrt(bn.running_var + BN_EPS) * bn.weight
                + bn.bias)
    with torch.no_grad():
        torch.testing.assert_close(bn(x), expected)


def test_l2_normalize_matches_tf_epsilon_semantics() -> None:
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0], [3e-6, 4e-6]])
    out = l2_normalize(x)
    torch.testing.assert_close(out[0], torch.tensor([0.6, 0.8]))
    assert torch.equal(out[1], torch.zeros(2))  # no NaN for a zero vector
    # sum of squares 2.5e-11 < 1e-10: TF divides by sqrt(1e-10) = 1e-5 instead of the norm.
    torch.testing.assert_close(out[2], torch.tensor([0.3, 0.4]))


# --- classify -----------------------------------------------------------------------------


def test_classify_returns_logits_of_the_prelogits(trained: InceptionResNetV1) -> None:
    x = images()
    with torch.no_grad():
        embeddings = trained(x)
        prelogits = trained.prelogits(x)
        trained.classify = True
        try:
            logits = trained(x)
        finally:
            trained.classify = False
    assert embeddings.shape == (2, 512)
    assert logits.shape == (2, 10)
    torch.testing.assert_close(logits, trained.logits(prelogits), rtol=0, atol=0)
    torch.testing.assert_close(embeddings, l2_normalize(prelogits), rtol=0, atol=0)


def test_classify_at_construction() -> None:
    model = InceptionResNetV1(classify=True, num_classes=3, embedding_size=128).eval()
    assert model.classify and model.num_classes == 3
    with torch.no_grad():
        assert model(images(1)).shape == (1, 3)


def test_classify_without_classes_is_a_clear_value_error() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        InceptionResNetV1(classify=True)
    model = InceptionResNetV1()
    with pytest.raises(ValueError, match="logits layer"):
        model.classify = True
    assert not model.classify


# --- layout parity with facenet-pytorch ----------------------------------------------------


def test_layout_json_was_recorded_from_the_pinned_wheel() -> None:
    from facenet_convert.third_party.wheels import FACENET_PYTORCH

    assert LAYOUTS["source"]["version"] == FACENET_PYTORCH.version
    assert LAYOUTS["source"]["sha256"] == FACENET_PYTORCH.sha256


def test_state_dict_layout_equals_facenet_pytorch() -> None:
    reference = LAYOUTS["layouts"]["inception_resnet_v1"]["state_dict"]
    assert len(reference) == 716
    assert layout(InceptionResNetV1(classify=True, num_classes=8631)) == reference
    assert layout(InceptionResNetV1(num_classes=8631)) == reference
    without_logits = [entry for entry in reference if not entry[0].startswith("logits.")]
    assert layout(InceptionResNetV1()) == without_logits


@pytest.mark.parametrize("name", sorted(MTCNN))
def test_mtcnn_layout_equals_published_files(name: str) -> None:
    assert layout(MTCNN[name][0]()) == LAYOUTS["layouts"][name]["state_dict"]


def test_outputs_equal_facenet_pytorch_on_identical_weights(
        upstream: types.SimpleNamespace, trained: InceptionResNetV1) -> None:
    theirs = upstream.irv1.InceptionResnetV1(classify=True, num_classes=10)
    theirs.load_state_dict(trained.state_dict())
    theirs.eval()
    x = images(2, seed=3)
    with torch.no_grad():
        their_logits = theirs(x)
        theirs.classify = False
        their_embeddings = theirs(x)
        trained.classify = True
        try:
            our_logits = trained(x)
        finally:
            trained.classify = False
        our_embeddings = trained(x)
    torch.testing.assert_close(our_logits, their_logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(our_embeddings, their_embeddings, rtol=0, atol=1e-6)


# --- MTCNN --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MTCNN))
def test_published_mtcnn_loads_strictly_and_runs(
        name: str, published_mtcnn: dict[str, Path], upstream: types.SimpleNamespace) -> None:
    cls, size = MTCNN[name]
    path = published_mtcnn[name]
    model = cls(pretrained=path)
    published = torch.load(path, map_location="cpu", weights_only=True)
    assert list(model.state_dict()) == list(published)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in published.items())
    assert cls(pretrained=str(path)).state_dict().keys() == published.keys()

    theirs = getattr(upstream.mtcnn, cls.__name__)(pretrained=False)
    theirs.load_state_dict(published)
    x = images(3, size, seed=4)
    with torch.no_grad():
        ours, reference = model(x), theirs(x)
    assert len(ours) == len(reference)
    for mine, their in zip(ours, reference, strict=True):
        torch.testing.assert_close(mine, their, rtol=0, atol=0)
    probs = ours[-1]
    torch.testing.assert_close(probs.sum(dim=1), torch.ones_like(probs.sum(dim=1)))
    if name == "pnet":
        assert ours[0].shape == (3, 4, 10, 10) and probs.shape == (3, 2, 10, 10)
    elif name == "rnet":
        assert ours[0].shape == (3, 4) and probs.shape == (3, 2)
    else:
        assert [tuple(t.shape) for t in ours] == [(3, 4), (3, 10), (3, 2)]


@pytest.mark.parametrize("name", sorted(MTCNN))
def test_mtcnn_pretrained_true_loads_the_shipped_weights(
        name: str, published_mtcnn: dict[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cls = MTCNN[name][0]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    loaded = cls(pretrained=True).state_dict()
    assert not (tmp_path / "checkpoints").exists()      # no cache involved
    reference = torch.load(published_mtcnn[name], map_location="cpu", weights_only=True)
    assert list(loaded) == list(reference)
    assert all(torch.equal(loaded[k], v) for k, v in reference.items())
    by_name = cls(pretrained=name).state_dict()
    assert all(torch.equal(by_name[k], v) for k, v in reference.items())


# --- pretrained loading -------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_pretrained_path_round_trips(suffix: str, tmp_path: Path) -> None:
    torch.manual_seed(5)
    source = randomize_(InceptionResNetV1(num_classes=7, embedding_size=128), seed=6).eval()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pt":
        torch.save(source.state_dict(), path)
    else:
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = InceptionResNetV1(pretrained=path).eval()
    assert loaded.embedding_size == 128 and loaded.num_classes == 7
    x = images(1, seed=7)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))
        loaded.classify = source.classify = True
        assert torch.equal(loaded(x), source(x))
    assert InceptionResNetV1(pretrained=str(path), classify=True).classify


def test_pretrained_with_other_num_classes_gets_a_fresh_head(tmp_path: Path) -> None:
    source = InceptionResNetV1(num_classes=7)
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)
    model = InceptionResNetV1(pretrained=path, num_classes=3, classify=True)
    assert model.num_classes == 3 and model.logits.weight.shape == (3, 512)
    assert torch.equal(model.last_linear.weight, source.last_linear.weight)


def test_explicit_embedding_size_must_match_the_file(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(InceptionResNetV1(embedding_size=128).state_dict(), path)
    with pytest.raises(MappingError, match="embedding_size=512 .* 128-d"):
        InceptionResNetV1(pretrained=path, embedding_size=512)


def test_wrong_keys_name_the_keys_on_one_line(tmp_path: Path) -> None:
    state = InceptionResNetV1().state_dict()
    del state["repeat_2.3.conv2d.bias"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "w.pt"
    torch.save(state, path)
    with pytest.raises(MappingError) as caught:
        InceptionResNetV1(pretrained=path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    assert "missing (1): repeat_2.3.conv2d.bias" in message
    assert "unexpected (1): extra.weight" in message


def test_unreadable_files_are_source_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a torch file")
    not_a_dict = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], not_a_dict)
    for path in (garbage, not_a_dict):
        with pytest.raises(SourceError) as caught:
            PNet(pretrained=path)
        assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_missing_path_is_a_clear_file_not_found(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.pt"
    with pytest.raises(FileNotFoundError) as caught:
        InceptionResNetV1(pretrained=path)
    assert isinstance(caught.value, ConverterError)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("name", ["vggface2", "20180402-114759", "20170511-185253"])
def test_release_without_cached_file_names_the_expected_path(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "checkpoints" / get_release(name).filename
    with pytest.raises(FileNotFoundError) as caught:
        InceptionResNetV1(pretrained=name)
    message = str(caught.value)
    assert isinstance(caught.value, WeightsNotFoundError)
    assert str(expected) in message
    assert "run `facenet-convert regenerate` or place the file there" in message
    assert "\n" not in message


def test_torch_home_defaults_like_torch_hub(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    from facenet_convert.models.releases import checkpoint_dir

    monkeypatch.delenv("TORCH_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert checkpoint_dir() == tmp_path / "torch" / "checkpoints"
    assert checkpoint_dir().parent == Path(torch.hub.get_dir()).parent


def test_release_loads_from_the_cache_and_is_checked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "checkpoints"
    cache.mkdir()
    release = get_release("20170512-110547")
    source = InceptionResNetV1(embedding_size=128)
    torch.save(source.state_dict(), cache / release.filename)
    model = InceptionResNetV1(pretrained=release.name)
    assert model.embedding_size == 128 and model.num_classes is None
    assert torch.equal(model.last_bn.bias, source.last_bn.bias)
    # A file that contradicts its release record is refused, not silently loaded.
    other = get_release("20170511-185253")
    torch.save(InceptionResNetV1().state_dict(), cache / other.filename)
    with pytest.raises(MappingError, match="embedding size 128, the file has 512"):
        InceptionResNetV1(pretrained=other.name)


def test_unknown_release_lists_the_known_ones() -> None:
    with pytest.raises(UnknownReleaseError) as caught:
        InceptionResNetV1(pretrained="vggface3")
    assert "vggface2" in str(caught.value) and "20170512-110547" in str(caught.value)
    with pytest.raises(UnknownReleaseError):
        InceptionResNetV1(pretrained="pnet")  # an MTCNN release is not a FaceNet one


def test_release_registry_records() -> None:
    by_name = {release.name: release for release in RELEASES}
    assert by_name["20180402-114759"].aliases == ("vggface2",)
    assert by_name["20180408-102900"].aliases == ("casia-webface",)
    assert [(r.embedding_size, r.num_classes, r.preprocessing) for r in RELEASES[:4]] == [
        (512, 8631, "fixed_standardization"), (512, 10575, "fixed_standardization"),
        (128, None, "prewhiten"), (128, None, "prewhiten")]
    assert [by_name[n].filename for n in ("pnet", "rnet", "onet")] == [
        "pnet.pt", "rnet.pt", "onet.pt"]
    names = [n for release in RELEASES for n in release.names]
    assert len(names) == len(set(names))


def test_releases_module_does_not_import_torch() -> None:
    code = "import sys, facenet_convert.models.releases; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == "False"


# --- misc ---------------------------------------------------------------------------------


def test_eval_forward_is_deterministic(trained: InceptionResNetV1) -> None:
    x = images(2, seed=8)
    with torch.no_grad():
        assert torch.equal(trained(x), trained(x))
    torch.manual_seed(9)
    first = InceptionResNetV1().state_dict()
    torch.manual_seed(9)
    second = InceptionResNetV1().state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_device_argument_moves_the_model() -> None:
    model = InceptionResNetV1(device="cpu")
    assert {p.device.type for p in model.parameters()} == {"cpu"}
