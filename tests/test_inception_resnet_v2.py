"""Inception-ResNet-V2 (upstream ``models/inception_resnet_v2.py``): checkpoints and frozen
graphs written by the upstream graph code convert, load strictly and pass parity.

The TF fixture is a training-style checkpoint (EMA shadows, Momentum slots, 128-d embeddings,
5 classes) and its frozen ``.pb``, built once and cached under ``cache_dir()``. The network has
54M parameters, so each TF run counts: parity's own comparisons (embeddings and logits against
TF's, per layer) are the TF checks here, and the EMA path is checked against the checkpoint's
shadows (TF's EMA restore is compared on SqueezeNet and V1; the code path is shared).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from facenet_convert.models.inception_resnet_v2 import InceptionResNetV2, Mixed5b
from tests import upstream_architecture as arch

NAME = "inception_resnet_v2"


@pytest.fixture(scope="module")
def irv2_ckpt():
    """128-d, 5-class Logits, EMA, Momentum slots, frozen .pb."""
    return arch.build(NAME, "irv2_128", embedding_size=128, num_classes=5, ema=True,
                      optimizer="MOM", centers=False, freeze=True)


# ---------------------------------------------------------------------- no TensorFlow needed


def test_mixed_5b_average_pool_counts_valid_pixels_only():
    # TF's 'SAME' average pool divides by the pixels inside the image: a constant stays
    # constant at the border (count_include_pad=True would shrink it to 4/9 in the corners).
    pool = Mixed5b().branch3[0]
    out = pool(torch.full((1, 1, 5, 5), 3.0))
    np.testing.assert_allclose(out.numpy(), 3.0)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_scripts_with_torch_jit():
    # converter.engines scripts models for `embed`
    model = InceptionResNetV2(embedding_size=8).eval()
    images = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.allclose(torch.jit.script(model)(images), model(images), atol=1e-6)


# --------------------------------------------------------------- files written by upstream


@pytest.fixture(scope="module")
def irv2_raw(irv2_ckpt, tmp_path_factory) -> Path:
    """The checkpoint converted by the CLI (``--model auto``, raw weights)."""
    out = tmp_path_factory.mktemp("irv2") / "raw.pt"
    arch.convert_auto(irv2_ckpt, NAME, out)
    return out


@pytest.mark.tf
def test_inspect_detects_checkpoint_and_frozen_pb(irv2_ckpt):
    arch.check_inspect(irv2_ckpt, NAME)


@pytest.mark.tf
def test_ema_conversion_reads_the_shadows(irv2_ckpt, irv2_raw):
    import tensorflow as tf

    from facenet_convert.converter.conversion import convert

    raw = arch.state_arrays(InceptionResNetV2(pretrained=irv2_raw))
    ema = convert(irv2_ckpt.directory, weights="ema")
    assert ema.architecture == NAME and ema.plan.ema_missing == []
    assert not np.array_equal(ema.arrays["conv2d_1a.conv.weight"], raw["conv2d_1a.conv.weight"])
    reader = tf.train.load_checkpoint(str(irv2_ckpt.prefix))
    for key, name in (("last_linear.weight", "Bottleneck/weights"),
                      ("repeat_2.19.conv2d.weight", "Repeat_1/block17_20/Conv2d_1x1/weights")):
        shadow = reader.get_tensor(f"InceptionResnetV2/{name}/ExponentialMovingAverage")
        want = shadow.T if shadow.ndim == 2 else shadow.transpose(3, 2, 0, 1)
        np.testing.assert_array_equal(ema.arrays[key], want)


@pytest.mark.tf
def test_frozen_pb_converts_to_the_checkpoint_weights_and_passes_parity(irv2_ckpt, irv2_raw,
                                                                        tmp_path: Path):
    # parity compares the embeddings with TF's on the .pb (max abs <= 1e-5)
    checkpoint_state = arch.state_arrays(InceptionResNetV2(pretrained=irv2_raw))
    weights = tmp_path / "frozen.safetensors"
    arch.convert_frozen(irv2_ckpt, NAME, weights, checkpoint_state)
    arch.check_parity_cli(irv2_ckpt.frozen_pb, weights, NAME, tmp_path)


@pytest.mark.tf
def test_checkpoint_parity_passes_per_layer(irv2_ckpt, irv2_raw):
    # embeddings and logits against TF's restored metagraph, and all 55 end points
    arch.check_parity_per_layer(irv2_ckpt, NAME, irv2_raw)
