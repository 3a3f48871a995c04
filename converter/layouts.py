"""Target state_dict layouts (ordered key, shape, dtype) computed without torch.

``.safetensors`` conversion must never import torch, so the layouts of facenet-pytorch's
``InceptionResnetV1`` (any embedding size / class count) and ``PNet``/``RNet``/``ONet`` are
written here as data that mirrors the modules' registration order; a test checks them equal
to ``models``' ``state_dict()`` and to the layouts recorded from the real facenet-pytorch.
"""

from __future__ import annotations

from facenet_convert.converter.core.errors import MappingError
from facenet_convert.converter.mapping import TargetEntry

#: The architectures :func:`layout_for` knows.
ARCHITECTURES = ("inception_resnet_v1", "pnet", "rnet", "onet")


def _bn(prefix: str, channels: int) -> list[TargetEntry]:
    return [TargetEntry(f"{prefix}.weight", (channels,)),
            TargetEntry(f"{prefix}.bias", (channels,)),
            TargetEntry(f"{prefix}.running_mean", (channels,)),
            TargetEntry(f"{prefix}.running_var", (channels,)),
            TargetEntry(f"{prefix}.num_batches_tracked", (), "int64")]


def _basic(prefix: str, cin: int, cout: int, kh: int, kw: int | None = None) -> list[TargetEntry]:
    """facenet-pytorch ``BasicConv2d``: conv without bias, then BatchNorm2d."""
    return [TargetEntry(f"{prefix}.conv.weight", (cout, cin, kh, kh if kw is None else kw)),
            *_bn(f"{prefix}.bn", cout)]


def _conv(prefix: str, cin: int, cout: int, kh: int, kw: int | None = None) -> list[TargetEntry]:
    return [TargetEntry(f"{prefix}.weight", (cout, cin, kh, kh if kw is None else kw)),
            TargetEntry(f"{prefix}.bias", (cout,))]


def _linear(prefix: str, cin: int, cout: int, bias: bool = True) -> list[TargetEntry]:
    entries = [TargetEntry(f"{prefix}.weight", (cout, cin))]
    if bias:
        entries.append(TargetEntry(f"{prefix}.bias", (cout,)))
    return entries


def _block35(p: str) -> list[TargetEntry]:
    return [*_basic(f"{p}.branch0", 256, 32, 1),
            *_basic(f"{p}.branch1.0", 256, 32, 1), *_basic(f"{p}.branch1.1", 32, 32, 3),
            *_basic(f"{p}.branch2.0", 256, 32, 1), *_basic(f"{p}.branch2.1", 32, 32, 3),
            *_basic(f"{p}.branch2.2", 32, 32, 3), *_conv(f"{p}.conv2d", 96, 256, 1)]


def _block17(p: str) -> list[TargetEntry]:
    return [*_basic(f"{p}.branch0", 896, 128, 1),
            *_basic(f"{p}.branch1.0", 896, 128, 1), *_basic(f"{p}.branch1.1", 128, 128, 1, 7),
            *_basic(f"{p}.branch1.2", 128, 128, 7, 1), *_conv(f"{p}.conv2d", 256, 896, 1)]


def _block8(p: str) -> list[TargetEntry]:
    return [*_basic(f"{p}.branch0", 1792, 192, 1),
            *_basic(f"{p}.branch1.0", 1792, 192, 1), *_basic(f"{p}.branch1.1", 192, 192, 1, 3),
            *_basic(f"{p}.branch1.2", 192, 192, 3, 1), *_conv(f"{p}.conv2d", 384, 1792, 1)]


def inception_resnet_v1(embedding_size: int = 512,
                        num_classes: int | None = None) -> list[TargetEntry]:
    """facenet-pytorch ``InceptionResnetV1`` state_dict layout, logits only with classes."""
    if embedding_size < 1 or (num_classes is not None and num_classes < 1):
        raise MappingError(f"embedding_size and num_classes must be positive, got "
                           f"{embedding_size} and {num_classes}")
    entries = [*_basic("conv2d_1a", 3, 32, 3), *_basic("conv2d_2a", 32, 32, 3),
               *_basic("conv2d_2b", 32, 64, 3), *_basic("conv2d_3b", 64, 80, 1),
               *_basic("conv2d_4a", 80, 192, 3), *_basic("conv2d_4b", 192, 256, 3)]
    for index in range(5):
        entries += _block35(f"repeat_1.{index}")
    entries += [*_basic("mixed_6a.branch0", 256, 384, 3),
                *_basic("mixed_6a.branch1.0", 256, 192, 1),
                *_basic("mixed_6a.branch1.1", 192, 192, 3),
                *_basic("mixed_6a.branch1.2", 192, 256, 3)]
    for index in range(10):
        entries += _block17(f"repeat_2.{index}")
    entries += [*_basic("mixed_7a.branch0.0", 896, 256, 1),
                *_basic("mixed_7a.branch0.1", 256, 384, 3),
                *_basic("mixed_7a.branch1.0", 896, 256, 1),
                *_basic("mixed_7a.branch1.1", 256, 256, 3),
                *_basic("mixed_7a.branch2.0", 896, 256, 1),
                *_basic("mixed_7a.branch2.1", 256, 256, 3),
                *_basic("mixed_7a.branch2.2", 256, 256, 3)]
    for index in range(5):
        entries += _block8(f"repeat_3.{index}")
    entries += _block8("block8")
    entries += _linear("last_linear", 1792, embedding_size, bias=False)
    entries += _bn("last_bn", embedding_size)
    if num_classes is not None:
        entries += _linear("logits", embedding_size, num_classes)
    return entries


def pnet() -> list[TargetEntry]:
    """facenet-pytorch ``PNet``."""
    return [*_conv("conv1", 3, 10, 3), TargetEntry("prelu1.weight", (10,)),
            *_conv("conv2", 10, 16, 3), TargetEntry("prelu2.weight", (16,)),
            *_conv("conv3", 16, 32, 3), TargetEntry("prelu3.weight", (32,)),
            *_conv("conv4_1", 32, 2, 1), *_conv("conv4_2", 32, 4, 1)]


def rnet() -> list[TargetEntry]:
    """facenet-pytorch ``RNet``."""
    return [*_conv("conv1", 3, 28, 3), TargetEntry("prelu1.weight", (28,)),
            *_conv("conv2", 28, 48, 3), TargetEntry("prelu2.weight", (48,)),
            *_conv("conv3", 48, 64, 2), TargetEntry("prelu3.weight", (64,)),
            *_linear("dense4", 576, 128), TargetEntry("prelu4.weight", (128,)),
            *_linear("dense5_1", 128, 2), *_linear("dense5_2", 128, 4)]


def onet() -> list[TargetEntry]:
    """facenet-pytorch ``ONet``."""
    return [*_conv("conv1", 3, 32, 3), TargetEntry("prelu1.weight", (32,)),
            *_conv("conv2", 32, 64, 3), TargetEntry("prelu2.weight", (64,)),
            *_conv("conv3", 64, 64, 3), TargetEntry("prelu3.weight", (64,)),
            *_conv("conv4", 64, 128, 2), TargetEntry("prelu4.weight", (128,)),
            *_linear("dense5", 1152, 256), TargetEntry("prelu5.weight", (256,)),
            *_linear("dense6_1", 256, 2), *_linear("dense6_2", 256, 4),
            *_linear("dense6_3", 256, 10)]


def layout_for(architecture: str, *, embedding_size: int | None = None,
               num_classes: int | None = None) -> list[TargetEntry]:
    """The target layout of ``architecture`` (Inception sizes from detection or the user)."""
    if architecture == "inception_resnet_v1":
        return inception_resnet_v1(512 if embedding_size is None else embedding_size,
                                   num_classes)
    builders = {"pnet": pnet, "rnet": rnet, "onet": onet}
    if architecture not in builders:
        raise MappingError(f"unknown model {architecture!r}; known: {list(ARCHITECTURES)}")
    return builders[architecture]()
