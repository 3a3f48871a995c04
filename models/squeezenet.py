"""SqueezeNet as trained by davidsandberg/facenet, in PyTorch.

The architecture is the upstream TF graph (``facenet/src/models/squeezenet.py``, what
``train_softmax.py --model_def models.squeezenet`` trains) layer for layer, under upstream's
embedding head (:class:`~facenet_convert.models.embedding_net.EmbeddingNet`): every conv but
``conv10`` has BatchNorm and ReLU (upstream's arg_scope), ``conv10`` (1000 channels, with bias,
no activation) is average-pooled and fed to the bottleneck.

Input: float32 ``(N, 3, 160, 160)`` NCHW RGB, standardized as trained.

Padding: slim's convs default to 'SAME', its pools to 'VALID'. ``conv1`` is a 'SAME' 7x7 conv
with stride 2, which TF pads asymmetrically (``(2, 3)`` at 160 px: the extra pixel goes
bottom/right); :class:`SameConv2d` computes that per input size. The other 'SAME' convs have
stride 1 and odd kernels (symmetric ``k // 2``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional

from facenet_convert.models.embedding_net import EmbeddingNet
from facenet_convert.models.inception_resnet_v1 import BasicConv2d


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) of one spatial dimension."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(BasicConv2d):
    """A square-kernel :class:`BasicConv2d` with TF 'SAME' padding for any input size."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 stride: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride)
        self.kernel_size = kernel_size
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        top, bottom = same_padding(x.shape[-2], self.kernel_size, self.stride)
        left, right = same_padding(x.shape[-1], self.kernel_size, self.stride)
        # written out, not super().forward(): torch.jit.script compiles no super() calls
        return self.relu(self.bn(self.conv(functional.pad(x, (left, right, top, bottom)))))


class Fire(nn.Module):
    """Upstream ``fire_module``: 1x1 squeeze, then 1x1 and 3x3 expand concatenated."""

    def __init__(self, in_channels: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = BasicConv2d(in_channels, squeeze, 1)
        self.expand1x1 = BasicConv2d(squeeze, expand, 1)
        self.expand3x3 = BasicConv2d(squeeze, expand, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.squeeze(x)
        return torch.cat([self.expand1x1(x), self.expand3x3(x)], dim=1)


class SqueezeNet(EmbeddingNet):
    """FaceNet-trained SqueezeNet producing L2-normalized embeddings (or logits).

    Arguments as :class:`~facenet_convert.models.embedding_net.EmbeddingNet`; the dropout is
    upstream's before ``conv10``.
    """

    ARCHITECTURE = "squeezenet"
    FEATURES = 1000

    def build_backbone(self, dropout_prob: float) -> None:
        self.conv1 = SameConv2d(3, 96, 7, stride=2)
        self.maxpool1 = nn.MaxPool2d(3, stride=2)
        self.fire2 = Fire(96, 16, 64)
        self.fire3 = Fire(128, 16, 64)
        self.fire4 = Fire(128, 32, 128)
        self.maxpool4 = nn.MaxPool2d(2, stride=2)
        self.fire5 = Fire(256, 32, 128)
        self.fire6 = Fire(256, 48, 192)
        self.fire7 = Fire(384, 48, 192)
        self.fire8 = Fire(384, 64, 256)
        self.maxpool8 = nn.MaxPool2d(3, stride=2)
        self.fire9 = Fire(512, 64, 256)
        self.dropout = nn.Dropout(dropout_prob)
        self.conv10 = nn.Conv2d(512, 1000, kernel_size=1, bias=True)
        self.avgpool10 = nn.AdaptiveAvgPool2d(1)

    def backbone(self, x: Tensor) -> Tensor:
        x = self.maxpool1(self.conv1(x))
        x = self.fire4(self.fire3(self.fire2(x)))
        x = self.maxpool4(x)
        x = self.fire8(self.fire7(self.fire6(self.fire5(x))))
        x = self.maxpool8(x)
        x = self.fire9(x)
        return self.avgpool10(self.conv10(self.dropout(x)))
