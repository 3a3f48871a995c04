"""Inception-ResNet-V1 as trained by davidsandberg/facenet, in PyTorch.

The architecture is the upstream TF graph (``facenet/src/models/inception_resnet_v1.py``) layer
for layer, and the state-dict keys, shapes and order are those of facenet-pytorch's
``InceptionResnetV1`` so that weight files are interchangeable.

Input convention: a float32 tensor ``(N, 3, 160, 160)`` (NCHW), RGB channel order, already
standardized the way the weights were trained:

* 2018 releases (20180402-114759, 20180408-102900): fixed standardization
  ``(x - 127.5) / 128`` on 0..255 pixels;
* 2017 releases (20170512-110547, 20170511-185253): per-image prewhitening
  ``(x - mean) / max(std, 1 / sqrt(x.numel()))``.

Other sizes work (the pooling is global) but the releases were trained on 160x160 crops.

Padding: every stride-2 conv and pool of the upstream graph is 'VALID' (no padding); every
'SAME' conv has stride 1 and an odd kernel, so TF pads it symmetrically by ``k // 2`` for any
input size, which is what the explicit paddings below do.

Output: L2-normalized embeddings ``(N, embedding_size)`` (``tf.nn.l2_normalize`` with epsilon
1e-10, as upstream), or with ``classify`` the logits of the BatchNorm'd bottleneck
("prelogits"), as upstream's ``train_softmax.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from facenet_convert.models.embedding_net import BN_EPS, EmbeddingNet, float32_value

PRELOGITS_CHANNELS = 1792
DEFAULT_EMBEDDING_SIZE = 512


class BasicConv2d(nn.Module):
    """Bias-free conv, BatchNorm (eps 1e-3), ReLU: slim.conv2d under upstream's arg_scope."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int = 1, padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, stride=stride,
                              padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=0.1, affine=True)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class _Branches(nn.Module):
    """Modules ``branch0..branchK`` run on the same input and concatenated on channels."""

    def __init__(self, branches: Sequence[nn.Module]) -> None:
        super().__init__()
        if not 1 <= len(branches) <= 4:
            raise ValueError(f"_Branches takes 1 to 4 branches (mixed() names them), "
                             f"got {len(branches)}")
        self._branch_names = tuple(f"branch{index}" for index in range(len(branches)))
        for index, branch in enumerate(branches):
            self.add_module(f"branch{index}", branch)

    def mixed(self, x: Tensor) -> Tensor:
        # Written out (not a loop over ``self._modules``) so that ``torch.jit.script`` compiles
        # it: ``hasattr`` on a submodule is resolved when scripting.
        outputs = [self.branch0(x)]
        if hasattr(self, "branch1"):
            outputs.append(self.branch1(x))
        if hasattr(self, "branch2"):
            outputs.append(self.branch2(x))
        if hasattr(self, "branch3"):
            outputs.append(self.branch3(x))
        return torch.cat(outputs, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.mixed(x)


class _ResidualBlock(_Branches):
    """``x + scale * conv2d(concat(branches(x)))``, then ReLU unless ``activation`` is False.

    ``conv2d`` is upstream's 1x1 "up" projection: it has a bias and no BatchNorm.
    """

    def __init__(self, channels: int, branches: Sequence[nn.Module], mixed_channels: int,
                 scale: float, activation: bool) -> None:
        super().__init__(branches)
        self.scale = float32_value(scale)
        self.activation = activation
        self.conv2d = nn.Conv2d(mixed_channels, channels, kernel_size=1, stride=1, bias=True)
        if activation:
            self.relu = nn.ReLU(inplace=False)

    def forward(self, x: Tensor) -> Tensor:
        out = x + self.scale * self.conv2d(self.mixed(x))
        return self.relu(out) if hasattr(self, "relu") else out   # hasattr: scriptable


class Block35(_ResidualBlock):
    """Inception-ResNet-A on 256 channels (35x35 in the paper, 17x17 at 160 px input)."""

    def __init__(self, scale: float = 1.0, activation: bool = True) -> None:
        super().__init__(256, [
            BasicConv2d(256, 32, 1),
            nn.Sequential(BasicConv2d(256, 32, 1), BasicConv2d(32, 32, 3, padding=1)),
            nn.Sequential(BasicConv2d(256, 32, 1), BasicConv2d(32, 32, 3, padding=1),
                          BasicConv2d(32, 32, 3, padding=1)),
        ], mixed_channels=96, scale=scale, activation=activation)


class Block17(_ResidualBlock):
    """Inception-ResNet-B on 896 channels, factorized 1x7 / 7x1 convs."""

    def __init__(self, scale: float = 1.0, activation: bool = True) -> None:
        super().__init__(896, [
            BasicConv2d(896, 128, 1),
            nn.Sequential(BasicConv2d(896, 128, 1),
                          BasicConv2d(128, 128, (1, 7), padding=(0, 3)),
                          BasicConv2d(128, 128, (7, 1), padding=(3, 0))),
        ], mixed_channels=256, scale=scale, activation=activation)


class Block8(_ResidualBlock):
    """Inception-ResNet-C on 1792 channels, factorized 1x3 / 3x1 convs."""

    def __init__(self, scale: float = 1.0, activation: bool = True) -> None:
        super().__init__(1792, [
            BasicConv2d(1792, 192, 1),
            nn.Sequential(BasicConv2d(1792, 192, 1),
                          BasicConv2d(192, 192, (1, 3), padding=(0, 1)),
                          BasicConv2d(192, 192, (3, 1), padding=(1, 0))),
        ], mixed_channels=384, scale=scale, activation=activation)


class Mixed6a(_Branches):
    """Reduction-A (k, l, m, n = 192, 192, 256, 384): 256 -> 896 channels, stride 2 VALID."""

    def __init__(self) -> None:
        super().__init__([
            BasicConv2d(256, 384, 3, stride=2),
            nn.Sequential(BasicConv2d(256, 192, 1), BasicConv2d(192, 192, 3, padding=1),
                          BasicConv2d(192, 256, 3, stride=2)),
            nn.MaxPool2d(3, stride=2),
        ])


class Mixed7a(_Branches):
    """Reduction-B: 896 -> 1792 channels, stride 2 VALID."""

    def __init__(self) -> None:
        super().__init__([
            nn.Sequential(BasicConv2d(896, 256, 1), BasicConv2d(256, 384, 3, stride=2)),
            nn.Sequential(BasicConv2d(896, 256, 1), BasicConv2d(256, 256, 3, stride=2)),
            nn.Sequential(BasicConv2d(896, 256, 1), BasicConv2d(256, 256, 3, padding=1),
                          BasicConv2d(256, 256, 3, stride=2)),
            nn.MaxPool2d(3, stride=2),
        ])


class InceptionResNetV1(EmbeddingNet):
    """FaceNet's Inception-ResNet-V1 producing L2-normalized embeddings (or logits).

    Arguments as :class:`~facenet_convert.models.embedding_net.EmbeddingNet`: ``pretrained`` is
    a release name or alias from :mod:`models.releases` (cached under
    ``$TORCH_HOME/checkpoints``) or the path of a ``.pt``/``.safetensors`` state dict;
    ``embedding_size`` defaults to the pretrained file's, else 512; a ``num_classes`` other
    than the file's replaces the loaded logits layer by a fresh one (for fine-tuning).
    """

    ARCHITECTURE = "inception_resnet_v1"
    FEATURES = PRELOGITS_CHANNELS
    DEFAULT_EMBEDDING_SIZE = DEFAULT_EMBEDDING_SIZE

    def build_backbone(self, dropout_prob: float) -> None:
        self.conv2d_1a = BasicConv2d(3, 32, 3, stride=2)
        self.conv2d_2a = BasicConv2d(32, 32, 3)
        self.conv2d_2b = BasicConv2d(32, 64, 3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = BasicConv2d(64, 80, 1)
        self.conv2d_4a = BasicConv2d(80, 192, 3)
        self.conv2d_4b = BasicConv2d(192, 256, 3, stride=2)
        self.repeat_1 = nn.Sequential(*(Block35(scale=0.17) for _ in range(5)))
        self.mixed_6a = Mixed6a()
        self.repeat_2 = nn.Sequential(*(Block17(scale=0.10) for _ in range(10)))
        self.mixed_7a = Mixed7a()
        self.repeat_3 = nn.Sequential(*(Block8(scale=0.20) for _ in range(5)))
        self.block8 = Block8(scale=1.0, activation=False)
        self.avgpool_1a = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout_prob)

    def backbone(self, x: Tensor) -> Tensor:
        x = self.conv2d_1a(x)
        x = self.conv2d_2a(x)
        x = self.conv2d_2b(x)
        x = self.maxpool_3a(x)
        x = self.conv2d_3b(x)
        x = self.conv2d_4a(x)
        x = self.conv2d_4b(x)
        x = self.repeat_1(x)
        x = self.mixed_6a(x)
        x = self.repeat_2(x)
        x = self.mixed_7a(x)
        x = self.repeat_3(x)
        x = self.block8(x)
        return self.dropout(self.avgpool_1a(x))


InceptionResnetV1 = InceptionResNetV1
"""facenet-pytorch's spelling."""
