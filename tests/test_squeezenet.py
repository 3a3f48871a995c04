"""SqueezeNet (upstream ``models/squeezenet.py``): model conventions, and checkpoints and frozen
graphs written by the upstream graph code that convert, load strictly and pass parity.

The TF fixture is a training-style checkpoint (EMA shadows, ADAM slots, center loss, 16-d
embeddings, 5 classes) and its frozen ``.pb``, built once and cached under ``cache_dir()``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from facenet_convert.converter.core.errors import MappingError
from facenet_convert.models.squeezenet import SqueezeNet, same_padding
from tests import upstream_architecture as arch

NAME = "squeezenet"


@pytest.fixture(scope="module")
def squeezenet_ckpt():
    """16-d, 5-class Logits, EMA, ADAM slots, centers, frozen .pb."""
    return arch.build(NAME, "squeezenet_16", embedding_size=16, num_classes=5, ema=True,
                      optimizer="ADAM", centers=True, freeze=True)


# ---------------------------------------------------------------------- no TensorFlow needed


def test_same_padding_is_tf_same():
    assert same_padding(160, 7, 2) == (2, 3)  # the extra pixel goes after, as in TF
    assert same_padding(161, 7, 2) == (3, 3)
    assert same_padding(9, 3, 1) == (1, 1)
    assert same_padding(4, 1, 2) == (0, 0)


@pytest.mark.parametrize("size", [160, 161, 128])
def test_any_input_size_gives_unit_embeddings(size: int):
    net = SqueezeNet(embedding_size=8).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, size, size))
    assert out.shape == (2, 8)
    np.testing.assert_allclose(out.norm(dim=1).numpy(), 1.0, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_scripts_with_torch_jit():
    # converter.engines scripts models for `embed`; 'SAME' padding must survive scripting
    model = SqueezeNet(embedding_size=8, num_classes=3, classify=True).eval()
    images = torch.randn(2, 3, 161, 160, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.allclose(torch.jit.script(model)(images), model(images), atol=1e-6)
        model.classify = False
        assert torch.allclose(torch.jit.script(model)(images), model(images), atol=1e-6)


def test_constructor_conventions_match_v1(tmp_path: Path):
    net = SqueezeNet(num_classes=5)
    assert (net.embedding_size, net.num_classes, net.classify) == (128, 5, False)
    with pytest.raises(ValueError, match="classify=True needs a logits layer"):
        SqueezeNet(classify=True)
    path = tmp_path / "sq.pt"
    torch.save(SqueezeNet(embedding_size=16, num_classes=5).state_dict(), path)
    loaded = SqueezeNet(pretrained=path, classify=True)
    assert (loaded.embedding_size, loaded.num_classes, loaded.classify) == (16, 5, True)
    assert SqueezeNet(pretrained=path, num_classes=7).num_classes == 7  # fresh logits layer
    with pytest.raises(MappingError, match="embedding_size=32 was asked for"):
        SqueezeNet(pretrained=path, embedding_size=32)
    state = torch.load(path, weights_only=True)
    del state["conv10.bias"]
    torch.save(state, path)
    with pytest.raises(MappingError, match=r"missing \(1\): conv10.bias"):
        SqueezeNet(pretrained=path)


def test_builder_refuses_a_model_def_no_record_describes(tmp_path: Path):
    from facenet_convert.third_party.facenet.testing.build import BuildError, build_checkpoint

    with pytest.raises(BuildError, match="model_def 'resnet50': no architecture record"):
        build_checkpoint(tmp_path / "a", model_def="resnet50")
    assert not (tmp_path / "a").exists()


# --------------------------------------------------------------- files written by upstream


@pytest.fixture(scope="module")
def squeezenet_raw(squeezenet_ckpt, tmp_path_factory) -> Path:
    """The checkpoint converted by the CLI (``--model auto``, raw weights)."""
    out = tmp_path_factory.mktemp("squeezenet") / "raw.pt"
    arch.convert_auto(squeezenet_ckpt, NAME, out)
    return out


@pytest.mark.tf
def test_inspect_detects_checkpoint_and_frozen_pb(squeezenet_ckpt):
    arch.check_inspect(squeezenet_ckpt, NAME)


@pytest.mark.tf
def test_convert_auto_equals_tf_raw_and_ema(squeezenet_ckpt, squeezenet_raw, tmp_path: Path):
    import tensorflow as tf

    raw = SqueezeNet(pretrained=squeezenet_raw).eval()
    arch.check_checkpoint_outputs(squeezenet_ckpt, raw)
    ema = arch.convert_auto(squeezenet_ckpt, NAME, tmp_path / "ema.pt", weights="ema")
    arch.check_checkpoint_outputs(squeezenet_ckpt, ema, weights="ema")
    assert not torch.equal(raw.conv1.conv.weight, ema.conv1.conv.weight)
    reader = tf.train.load_checkpoint(str(squeezenet_ckpt.prefix))
    shadow = reader.get_tensor("squeezenet/Bottleneck/weights/ExponentialMovingAverage")
    np.testing.assert_array_equal(ema.last_linear.weight.detach().numpy(), shadow.T)


@pytest.mark.tf
def test_frozen_pb_converts_equals_tf_and_passes_parity(squeezenet_ckpt, squeezenet_raw,
                                                        tmp_path: Path):
    checkpoint_state = arch.state_arrays(SqueezeNet(pretrained=squeezenet_raw))
    weights = tmp_path / "frozen.safetensors"
    net = arch.convert_frozen(squeezenet_ckpt, NAME, weights, checkpoint_state)
    arch.check_frozen_outputs(squeezenet_ckpt, net)
    arch.check_parity_cli(squeezenet_ckpt.frozen_pb, weights, NAME, tmp_path)


@pytest.mark.tf
def test_checkpoint_parity_passes_per_layer(squeezenet_ckpt, squeezenet_raw):
    arch.check_parity_per_layer(squeezenet_ckpt, NAME, squeezenet_raw)
