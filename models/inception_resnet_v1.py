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

import collections
import os
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, ClassVar

import torch
from torch import Tensor, nn

from facenet_convert.converter.core.errors import MappingError, SourceError
from facenet_convert.converter.core.inputs import open_regular, require_regular
from facenet_convert.models.hub import resolve_pretrained
from facenet_convert.models.releases import Release


def float32_value(value: float) -> float:
    """``value`` rounded to float32: the constant a float32 TF graph really holds. Kept as this
    Python float, a float64 cast of the model computes what the float32 graph means
    (REFERENCE §7: the literals would differ by 7.6e-10); float32 runs are unchanged."""
    return torch.tensor(value, dtype=torch.float32).item()


BN_EPS = float32_value(1e-3)
"""BatchNorm epsilon of the upstream graph (slim ``batch_norm_params['epsilon']``)."""

L2_EPS = float32_value(1e-10)
"""Epsilon of upstream's ``tf.nn.l2_normalize(prelogits, 1, 1e-10)`` (on the squared norm)."""

PRELOGITS_CHANNELS = 1792
DEFAULT_EMBEDDING_SIZE = 512


def l2_normalize(x: Tensor, eps: float = L2_EPS) -> Tensor:
    """``x / sqrt(max(sum(x**2), eps))`` over dim 1, exactly as ``tf.nn.l2_normalize``."""
    square_sum = x.pow(2).sum(dim=1, keepdim=True)
    return x * torch.rsqrt(torch.clamp(square_sum, min=eps))


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


class InceptionResNetV1(nn.Module):
    """FaceNet's Inception-ResNet-V1 producing L2-normalized embeddings (or logits).

    Args:
        pretrained: a release name or alias from :mod:`models.releases` (cached under
            ``$TORCH_HOME/checkpoints``) or the path of a ``.pt``/``.safetensors`` state dict.
        classify: return logits instead of embeddings; needs a logits layer.
        num_classes: size of the logits layer. With ``pretrained`` it defaults to the file's
            (if it has one); a different value replaces the loaded layer by a fresh one
            (for fine-tuning on new identities).
        dropout_prob: dropout before the bottleneck (upstream keep_probability = 1 - this).
        embedding_size: bottleneck width; defaults to the pretrained file's, else 512.
        device: where to move the model after building (and loading) it.
    """

    __jit_unused_properties__: ClassVar[list[str]] = ["num_classes", "classify"]   # jit skips

    def __init__(self, pretrained: str | os.PathLike[str] | None = None, classify: bool = False,
                 num_classes: int | None = None, dropout_prob: float = 0.6,
                 embedding_size: int | None = None,
                 device: str | torch.device | None = None) -> None:
        super().__init__()
        self._classify = False
        state: dict[str, Tensor] | None = None
        source: Path | None = None
        file_classes: int | None = None
        if pretrained is not None:
            source, release = resolve_pretrained(pretrained, "inception_resnet_v1")
            state = load_weights_file(source)
            file_embedding, file_classes = _head_sizes(state, source, release)
            if embedding_size is not None and embedding_size != file_embedding:
                raise MappingError(f"embedding_size={embedding_size} was asked for but the "
                                   f"weights hold {file_embedding}-d embeddings; leave "
                                   "embedding_size unset to use the file's",
                                   path=source, key="last_linear.weight")
            embedding_size = file_embedding
        if embedding_size is None:
            embedding_size = DEFAULT_EMBEDDING_SIZE
        if classify and num_classes is None and file_classes is None:
            raise ValueError("classify=True needs a logits layer: pass num_classes, or "
                             "pretrained weights that include one")

        self.pretrained = pretrained
        self.embedding_size = embedding_size

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
        self.last_linear = nn.Linear(PRELOGITS_CHANNELS, embedding_size, bias=False)
        self.last_bn = nn.BatchNorm1d(embedding_size, eps=BN_EPS, momentum=0.1, affine=True)

        logits_classes = file_classes if file_classes is not None else num_classes
        if logits_classes is not None:
            self.logits = nn.Linear(embedding_size, logits_classes)
        if state is not None and source is not None:
            load_strict(self, state, source)
        if num_classes is not None and num_classes != logits_classes:
            self.logits = nn.Linear(embedding_size, num_classes)

        self.classify = classify
        if device is not None:
            self.to(device)

    @property
    def num_classes(self) -> int | None:
        """Width of the logits layer, or None when the model has none."""
        logits = self._modules.get("logits")
        return None if logits is None else logits.out_features

    @property
    def classify(self) -> bool:
        """Whether :meth:`forward` returns logits (True) or embeddings (False)."""
        return self._classify

    @classify.setter
    def classify(self, value: bool) -> None:
        if value and "logits" not in self._modules:
            raise ValueError("classify=True needs a logits layer, and this model has none: "
                             "build it with num_classes")
        self._classify = bool(value)

    def prelogits(self, x: Tensor) -> Tensor:
        """The BatchNorm'd bottleneck output (upstream "prelogits"), before normalization."""
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
        x = self.avgpool_1a(x)
        x = self.dropout(x)
        x = self.last_linear(torch.flatten(x, 1))
        return self.last_bn(x)

    def forward(self, x: Tensor) -> Tensor:
        """Embeddings ``(N, embedding_size)`` of unit L2 norm, or logits when classifying."""
        x = self.prelogits(x)
        # hasattr is resolved when scripting (a model may have no logits): keep it its own `if`
        if hasattr(self, "logits"):  # noqa: SIM102
            if self._classify:
                return self.logits(x)
        return l2_normalize(x)


InceptionResnetV1 = InceptionResNetV1
"""facenet-pytorch's spelling."""


def _head_sizes(state: Mapping[str, Tensor], source: Path,
                release: Release | None) -> tuple[int, int | None]:
    """Embedding size and logits classes a state dict holds (checked against its release)."""
    weight = state.get("last_linear.weight")
    if weight is None or weight.dim() != 2:
        raise MappingError("not an InceptionResNetV1 state dict: expected a 2-d "
                           "last_linear.weight", path=source, key="last_linear.weight")
    embedding_size = int(weight.shape[0])
    logits = state.get("logits.weight")
    num_classes = None if logits is None or logits.dim() != 2 else int(logits.shape[0])
    if release is not None:
        for what, expected, found in (("embedding size", release.embedding_size, embedding_size),
                                      ("logits classes", release.num_classes, num_classes)):
            if expected != found:
                raise MappingError(f"release {release.name} should have {what} {expected}, "
                                   f"the file has {found}; re-create it with "
                                   "`facenet-convert regenerate`", path=source)
    return embedding_size, num_classes


def load_weights_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a flat ``{name: tensor}`` state dict from ``.safetensors`` or a torch file.

    Torch files are read with ``weights_only=True`` (no arbitrary unpickling).
    """
    path = Path(path)
    size = require_regular(path, "weights file").st_size
    if path.suffix != ".safetensors":
        _dry_run_torch_file(path, size)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded: object = load_file(str(path), device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch/safetensors raise many types, with multi-line text
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise SourceError(f"cannot read weights ({type(error).__name__}: {first_line}); "
                          "expected a state dict saved by torch.save or safetensors",
                          path=path) from error
    if not isinstance(loaded, Mapping) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in loaded.items()):
        raise SourceError(f"expected a flat state dict of tensors, found {type(loaded).__name__}",
                          path=path)
    return dict(loaded)


# ------------------------------------------------------------- untrusted torch files, dry run

_ELEMENT_BYTES = {"Double": 8, "Float": 4, "Half": 2, "BFloat16": 2, "Long": 8, "Int": 4,
                  "Short": 2, "Char": 1, "Byte": 1, "Bool": 1, "ComplexFloat": 8,
                  "ComplexDouble": 16}


class _StorageType:
    def __init__(self, name: str) -> None:
        self.itemsize = _ELEMENT_BYTES.get(name.removesuffix("Storage"), 16)


class _DryTensor:
    """What ``_rebuild_tensor_v2`` would build, as numbers only."""

    def __init__(self, storage: tuple[int, int], offset: int, shape: tuple, stride: tuple,
                 *_: object) -> None:
        numel, itemsize = storage
        if not (isinstance(shape, tuple) and isinstance(stride, tuple)
                and len(shape) == len(stride) and isinstance(offset, int)
                and all(isinstance(v, int) and v >= 0 for v in (*shape, *stride, offset))):
            raise pickle.UnpicklingError("a tensor with a malformed shape or stride")
        count = 1
        reach = offset
        for dim, step in zip(shape, stride, strict=True):
            count *= dim
            reach += (dim - 1) * step if dim else 0
        if count and reach >= numel:
            raise pickle.UnpicklingError(f"a tensor of shape {list(shape)} reaches past its "
                                         f"storage of {numel} elements")
        self.nbytes = count * itemsize


def _dry_parameter(data: object, *_: object) -> object:
    return data


class _DryUnpickler(pickle.Unpickler):
    """Unpickles a torch file's structure without allocating: storages become (numel, size)."""

    GLOBALS: ClassVar[dict[tuple[str, str], object]] = {
        ("torch._utils", "_rebuild_tensor_v2"): _DryTensor,
        ("torch._utils", "_rebuild_parameter"): _dry_parameter,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }

    def __init__(self, handle: BinaryIO, records: dict[str, int] | None) -> None:
        super().__init__(handle)
        self.records = records
        self.storage_bytes = 0
        self.largest = 0

    def find_class(self, module: str, name: str) -> object:
        found = self.GLOBALS.get((module, name))
        if found is not None:
            return found
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a state dict")

    def persistent_load(self, pid: object) -> tuple[int, int]:
        if (not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage"
                or not isinstance(pid[1], _StorageType) or not isinstance(pid[4], int)
                or pid[4] < 0):
            raise pickle.UnpicklingError("a storage reference that torch.save never writes")
        numel, itemsize = pid[4], pid[1].itemsize
        if self.records is not None:
            held = self.records.get(str(pid[2]))
            if held is None or numel * itemsize > held:
                raise pickle.UnpicklingError(f"storage {pid[2]!r} declares {numel * itemsize} "
                                             f"bytes, its record holds {held or 0}")
        self.storage_bytes += numel * itemsize
        return numel, itemsize

    def check_tensors(self, loaded: object) -> int:
        tensors = loaded.values() if isinstance(loaded, Mapping) else ()
        return max((t.nbytes for t in tensors if isinstance(t, _DryTensor)), default=0)


def _dry_run_torch_file(path: Path, size: int) -> None:
    """Refuse a torch file whose storages or tensors claim more bytes than the file holds.

    torch allocates a storage's declared size before reading it (and builds models from
    tensor shapes), so a 1 KB file could ask for gigabytes; this reads only structure.
    """
    try:
        with open_regular(path, "weights file") as handle:
            if zipfile.is_zipfile(handle):
                with zipfile.ZipFile(handle) as archive:
                    records: dict[str, int] = {}
                    pickled = None
                    for info in archive.infolist():
                        if (info.compress_type != zipfile.ZIP_STORED
                                or info.file_size != info.compress_size
                                or info.header_offset + info.file_size > size):
                            raise pickle.UnpicklingError(
                                f"zip record {info.filename!r} is compressed or lies outside "
                                "the file; torch.save never writes that")
                        parts = info.filename.split("/")
                        if len(parts) >= 3 and parts[-2] == "data":
                            records[parts[-1]] = info.file_size
                        elif parts[-1] == "data.pkl":
                            pickled = info
                    if pickled is None:
                        raise pickle.UnpicklingError("no data.pkl record")
                    with archive.open(pickled) as stream:
                        dry = _DryUnpickler(stream, records)
                        largest = dry.check_tensors(dry.load())
            else:
                handle.seek(0)
                for _ in range(3):  # magic number, protocol version, system info
                    _DryUnpickler(handle, None).load()
                dry = _DryUnpickler(handle, None)
                largest = dry.check_tensors(dry.load())
                if dry.storage_bytes > size - handle.tell():
                    raise pickle.UnpicklingError(
                        f"storages declare {dry.storage_bytes} bytes, the file holds "
                        f"{size - handle.tell()} after its header")
    except (pickle.UnpicklingError, ValueError, TypeError, EOFError, KeyError, IndexError,
            AttributeError, RecursionError, OSError, zipfile.BadZipFile) as error:
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise SourceError(f"not a plain state dict ({type(error).__name__}: {first_line}); "
                          "expected a state dict saved by torch.save or safetensors",
                          path=path) from None
    if largest > size:
        raise SourceError(f"a tensor declares {largest} bytes, more than the {size}-byte file; "
                          "refusing it before anything is allocated", path=path)


def load_strict(module: nn.Module, state: Mapping[str, Tensor],
                source: str | os.PathLike[str]) -> None:
    """Load ``state`` into ``module`` only if keys and shapes match exactly (else MappingError)."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{key} expected {tuple(value.shape)} found {tuple(state[key].shape)}"
                  for key, value in expected.items()
                  if key in state and tuple(state[key].shape) != tuple(value.shape)]
    if missing or unexpected or mismatched:
        parts = [f"{label} ({len(items)}): {', '.join(items[:5])}"
                 f"{', ...' if len(items) > 5 else ''}"
                 for label, items in (("missing", missing), ("unexpected", unexpected),
                                      ("shape mismatch", mismatched)) if items]
        raise MappingError(f"weights do not fit {type(module).__name__}: {'; '.join(parts)}",
                           path=source)
    module.load_state_dict(state, strict=True)
