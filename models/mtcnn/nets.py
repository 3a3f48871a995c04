"""MTCNN's three face-detection networks (PNet, RNet, ONet) in PyTorch.

Keys, shapes, order and input layout are those of facenet-pytorch 2.6.0, whose published
``pnet.pt``/``rnet.pt``/``onet.pt`` equal davidsandberg's ``det1/2/3.npy``.

Input convention (as facenet-pytorch feeds them): float32 NCHW, RGB, scaled
``(x - 127.5) * 0.0078125``. The upstream TF nets work on width/height-swapped images; the
converted conv kernels are transposed accordingly, and RNet/ONet permute their last feature map
to ``(N, W, H, C)`` before flattening so that the dense weights line up.
PNet takes any size >= 12x12; RNet 24x24 crops; ONet 48x48 crops.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from facenet_convert.models.hub import resolve_pretrained
from facenet_convert.models.kernels import prelu_max_pool
from facenet_convert.models.pretrained_folder import PretrainedFolderMixin
from facenet_convert.models.shipped import shipped_weights
from facenet_convert.models.weights import load_strict, load_weights_file


def _load_pretrained(module: nn.Module, pretrained: bool | str | os.PathLike[str],
                     name: str) -> None:
    """True (or the net's own name): the weights shipped in the package
    (:mod:`facenet_convert.models.shipped`); another str/path: that file. Strict."""
    if pretrained is False or pretrained is None:
        return
    if pretrained is True or (pretrained == name and not os.path.exists(name)):
        path = shipped_weights(name)
    else:
        path, _ = resolve_pretrained(pretrained, name)
    load_strict(module, load_weights_file(path), path)


def prelu_pool(x: Tensor, prelu: nn.PReLU, pool: nn.MaxPool2d) -> Tensor:
    """``pool(prelu(x))`` bit for bit, in one pass over ``x`` when it is a CPU tensor
    (:func:`models.kernels.prelu_max_pool`); elsewhere, and for tensors that record
    gradients, the modules themselves. The result has the input's memory format.

    For detection only: torch's PReLU on PNet's 10-channel channels-last map took longer
    than the convolution before it, and its pooling kernel as long again."""
    if (x.device.type != "cpu" or x.requires_grad or pool.padding != 0 or pool.dilation != 1
            or not pool.ceil_mode):
        return pool(prelu(x))
    kernel, stride = pool.kernel_size, pool.stride
    if not isinstance(kernel, int) or not isinstance(stride, int):
        return pool(prelu(x))
    nhwc = x.permute(0, 2, 3, 1).contiguous()
    alpha = prelu.weight.detach().expand(nhwc.shape[3])     # one shared slope, or one each
    out = torch.from_numpy(prelu_max_pool(nhwc.numpy(), alpha.numpy(), kernel, stride))
    out = out.permute(0, 3, 1, 2)
    # the layout torch's pooling gives, so that the next convolution runs the same kernel
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    return out if channels_last else out.contiguous()


class PNet(PretrainedFolderMixin, nn.Module):
    """Proposal network: fully convolutional face probability + box regression maps.

    ``forward`` returns ``(boxes (N, 4, H', W'), probs (N, 2, H', W'))``; ``probs[:, 1]`` is
    the face probability (softmax over channels).
    """

    HUB_ARCHITECTURE = "pnet"

    def __init__(self, pretrained: bool | str | os.PathLike[str] = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.softmax4_1 = nn.Softmax(dim=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)
        _load_pretrained(self, pretrained, "pnet")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.prelu1(self.conv1(x))
        x = self.pool1(x)
        return self._heads(x)

    def detect_forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`forward`, bit for bit, with :func:`prelu_pool`: for eager detection only
        (an export keeps the plain modules)."""
        return self._heads(prelu_pool(self.conv1(x), self.prelu1, self.pool1))

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        probs = self.softmax4_1(self.conv4_1(x))
        boxes = self.conv4_2(x)
        return boxes, probs


class RNet(PretrainedFolderMixin, nn.Module):
    """Refinement network on 24x24 crops: ``forward`` returns ``(boxes (N, 4), probs (N, 2))``."""

    HUB_ARCHITECTURE = "rnet"
    HUB_INPUT_SIZE = (24, 24)

    def __init__(self, pretrained: bool | str | os.PathLike[str] = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.softmax5_1 = nn.Softmax(dim=1)
        self.dense5_2 = nn.Linear(128, 4)
        _load_pretrained(self, pretrained, "rnet")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        return self._heads(x)

    def detect_forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`forward`, bit for bit, with :func:`prelu_pool` (eager detection only)."""
        x = prelu_pool(self.conv1(x), self.prelu1, self.pool1)
        return self._heads(prelu_pool(self.conv2(x), self.prelu2, self.pool2))

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.prelu3(self.conv3(x))
        x = x.permute(0, 3, 2, 1).contiguous()  # to the TF nets' flatten order
        x = self.prelu4(self.dense4(x.flatten(1)))
        probs = self.softmax5_1(self.dense5_1(x))
        boxes = self.dense5_2(x)
        return boxes, probs


class ONet(PretrainedFolderMixin, nn.Module):
    """Output network on 48x48 crops.

    ``forward`` returns ``(boxes (N, 4), landmarks (N, 10), probs (N, 2))``.
    """

    HUB_ARCHITECTURE = "onet"
    HUB_INPUT_SIZE = (48, 48)

    def __init__(self, pretrained: bool | str | os.PathLike[str] = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.softmax6_1 = nn.Softmax(dim=1)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)
        _load_pretrained(self, pretrained, "onet")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        return self._heads(self.pool3(self.prelu3(self.conv3(x))))

    def detect_forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`forward`, bit for bit, with :func:`prelu_pool` (eager detection only)."""
        x = prelu_pool(self.conv1(x), self.prelu1, self.pool1)
        x = prelu_pool(self.conv2(x), self.prelu2, self.pool2)
        return self._heads(prelu_pool(self.conv3(x), self.prelu3, self.pool3))

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).contiguous()  # to the TF nets' flatten order
        x = self.prelu5(self.dense5(x.flatten(1)))
        probs = self.softmax6_1(self.dense6_1(x))
        boxes = self.dense6_2(x)
        landmarks = self.dense6_3(x)
        return boxes, landmarks, probs
