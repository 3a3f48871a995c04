"""Inception-ResNet-V2 as trained by davidsandberg/facenet, in PyTorch.

The architecture is the upstream TF graph (``facenet/src/models/inception_resnet_v2.py``, what
``train_softmax.py --model_def models.inception_resnet_v2`` trains) layer for layer, under
upstream's embedding head (:class:`~facenet_convert.models.embedding_net.EmbeddingNet`).
State-dict keys follow ``InceptionResNetV1``'s naming (``conv2d_1a``, ``repeat_1``...).

Input: float32 ``(N, 3, 160, 160)`` NCHW RGB, standardized as trained (upstream's default is
fixed standardization ``(x - 127.5) / 128``). Other sizes work (the pooling is global).

Padding: as in V1, every stride-2 conv and pool of the upstream graph is 'VALID' and every
'SAME' conv or pool has stride 1 and an odd kernel, so TF pads it symmetrically by ``k // 2``.
The 3x3 average pool of ``Mixed_5b`` is 'SAME': TF averages over the valid pixels only
(``count_include_pad=False``).
"""

from __future__ import annotations

from torch import Tensor, nn

from facenet_convert.models.embedding_net import EmbeddingNet
from facenet_convert.models.inception_resnet_v1 import BasicConv2d, _Branches, _ResidualBlock


class Block35(_ResidualBlock):
    """Inception-ResNet-A on 320 channels."""

    def __init__(self, scale: float = 1.0, activation: bool = True) -> None:
        super().__init__(320, [
            BasicConv2d(320, 32, 1),
            nn.Sequential(BasicConv2d(320, 32, 1), BasicConv2d(32, 32, 3, padding=1)),
            nn.Sequential(BasicConv2d(320, 32, 1), BasicConv2d(32, 48, 3, padding=1),
                          BasicConv2d(48, 64, 3, padding=1)),
        ], mixed_channels=128, scale=scale, activation=activation)


class Block17(_ResidualBlock):
    """Inception-ResNet-B on 1088 channels, factorized 1x7 / 7x1 convs."""

    def __init__(self, scale: float = 1.0, activation: bool = True) -> None:
        super().__init__(1088, [
            BasicConv2d(1088, 192, 1),
            nn.Sequential(BasicConv2d(1088, 128, 1),
                          BasicConv2d(128, 160, (1, 7), padding=(0, 3)),
                          BasicConv2d(160, 192, (7, 1), padding=(3, 0))),
        ], mixed_channels=384, scale=scale, activation=activation)


class Block8(_ResidualBlock):
    """Inception-ResNet-C on 2080 channels, factorized 1x3 / 3x1 convs."""

    def __init__(self, scale: float = 1.0, activation: bool = True) -> None:
        super().__init__(2080, [
            BasicConv2d(2080, 192, 1),
            nn.Sequential(BasicConv2d(2080, 192, 1),
                          BasicConv2d(192, 224, (1, 3), padding=(0, 1)),
                          BasicConv2d(224, 256, (3, 1), padding=(1, 0))),
        ], mixed_channels=448, scale=scale, activation=activation)


class Mixed5b(_Branches):
    """192 -> 320 channels; branch 3 is a 'SAME' 3x3 average pool (padding not counted)."""

    def __init__(self) -> None:
        super().__init__([
            BasicConv2d(192, 96, 1),
            nn.Sequential(BasicConv2d(192, 48, 1), BasicConv2d(48, 64, 5, padding=2)),
            nn.Sequential(BasicConv2d(192, 64, 1), BasicConv2d(64, 96, 3, padding=1),
                          BasicConv2d(96, 96, 3, padding=1)),
            nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
                          BasicConv2d(192, 64, 1)),
        ])


class Mixed6a(_Branches):
    """Reduction-A: 320 -> 1088 channels, stride 2 VALID."""

    def __init__(self) -> None:
        super().__init__([
            BasicConv2d(320, 384, 3, stride=2),
            nn.Sequential(BasicConv2d(320, 256, 1), BasicConv2d(256, 256, 3, padding=1),
                          BasicConv2d(256, 384, 3, stride=2)),
            nn.MaxPool2d(3, stride=2),
        ])


class Mixed7a(_Branches):
    """Reduction-B: 1088 -> 2080 channels, stride 2 VALID."""

    def __init__(self) -> None:
        super().__init__([
            nn.Sequential(BasicConv2d(1088, 256, 1), BasicConv2d(256, 384, 3, stride=2)),
            nn.Sequential(BasicConv2d(1088, 256, 1), BasicConv2d(256, 288, 3, stride=2)),
            nn.Sequential(BasicConv2d(1088, 256, 1), BasicConv2d(256, 288, 3, padding=1),
                          BasicConv2d(288, 320, 3, stride=2)),
            nn.MaxPool2d(3, stride=2),
        ])


class InceptionResNetV2(EmbeddingNet):
    """FaceNet-trained Inception-ResNet-V2 producing L2-normalized embeddings (or logits).

    Arguments as :class:`~facenet_convert.models.embedding_net.EmbeddingNet`; the dropout is
    upstream's before the bottleneck.
    """

    ARCHITECTURE = "inception_resnet_v2"
    FEATURES = 1536

    def build_backbone(self, dropout_prob: float) -> None:
        self.conv2d_1a = BasicConv2d(3, 32, 3, stride=2)
        self.conv2d_2a = BasicConv2d(32, 32, 3)
        self.conv2d_2b = BasicConv2d(32, 64, 3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = BasicConv2d(64, 80, 1)
        self.conv2d_4a = BasicConv2d(80, 192, 3)
        self.maxpool_5a = nn.MaxPool2d(3, stride=2)
        self.mixed_5b = Mixed5b()
        self.repeat_1 = nn.Sequential(*(Block35(scale=0.17) for _ in range(10)))
        self.mixed_6a = Mixed6a()
        self.repeat_2 = nn.Sequential(*(Block17(scale=0.10) for _ in range(20)))
        self.mixed_7a = Mixed7a()
        self.repeat_3 = nn.Sequential(*(Block8(scale=0.20) for _ in range(9)))
        self.block8 = Block8(scale=1.0, activation=False)
        self.conv2d_7b = BasicConv2d(2080, 1536, 1)
        self.avgpool_1a = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout_prob)

    def backbone(self, x: Tensor) -> Tensor:
        x = self.conv2d_1a(x)
        x = self.conv2d_2a(x)
        x = self.conv2d_2b(x)
        x = self.maxpool_3a(x)
        x = self.conv2d_3b(x)
        x = self.conv2d_4a(x)
        x = self.maxpool_5a(x)
        x = self.mixed_5b(x)
        x = self.repeat_1(x)
        x = self.mixed_6a(x)
        x = self.repeat_2(x)
        x = self.mixed_7a(x)
        x = self.repeat_3(x)
        x = self.block8(x)
        x = self.conv2d_7b(x)
        return self.dropout(self.avgpool_1a(x))


InceptionResnetV2 = InceptionResNetV2
"""The spelling of facenet-pytorch's V1 class, for symmetry."""
