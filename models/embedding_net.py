"""Upstream's embedding head on any backbone, with V1's constructor conventions.

davidsandberg/facenet's ``train_softmax.py`` / ``train_tripletloss.py`` put the same head on
every ``--model_def``: a bias-free ``Bottleneck`` fully connected layer with BatchNorm (the
"prelogits"), L2 normalisation for the embeddings, and an optional ``Logits`` layer. The
architectures added after Inception-ResNet-V1 (``models/inception_resnet_v2.py``,
``models/squeezenet.py``) subclass :class:`EmbeddingNet` and only build their backbone, so
``pretrained`` loading, head-size checks and ``classify`` behave exactly like
:class:`~facenet_convert.models.inception_resnet_v1.InceptionResNetV1`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from facenet_convert.converter.core.errors import MappingError
from facenet_convert.models.hub import resolve_pretrained
from facenet_convert.models.pretrained_folder import PretrainedFolderMixin
from facenet_convert.models.releases import Release, find_release
from facenet_convert.models.weights import load_strict, load_weights_file


def float32_value(value: float) -> float:
    """``value`` rounded to float32: the constant a float32 TF graph really holds. Kept as this
    Python float, a float64 cast of the model computes what the float32 graph means
    (REFERENCE §7: the literals would differ by 7.6e-10); float32 runs are unchanged."""
    return torch.tensor(value, dtype=torch.float32, device="cpu").item()  # also under meta


BN_EPS = float32_value(1e-3)
"""BatchNorm epsilon of the upstream graph (slim ``batch_norm_params['epsilon']``)."""

L2_EPS = float32_value(1e-10)
"""Epsilon of upstream's ``tf.nn.l2_normalize(prelogits, 1, 1e-10)`` (on the squared norm)."""

def l2_normalize(x: Tensor, eps: float = L2_EPS) -> Tensor:
    """``x / sqrt(max(sum(x**2), eps))`` over dim 1, exactly as ``tf.nn.l2_normalize``."""
    square_sum = x.pow(2).sum(dim=1, keepdim=True)
    return x * torch.rsqrt(torch.clamp(square_sum, min=eps))


class EmbeddingNet(PretrainedFolderMixin, nn.Module):
    """A backbone (built by :meth:`build_backbone`) under upstream's embedding head.

    ``from_pretrained(folder_or_repo_id)`` / ``save_pretrained(folder)``: Hub-style folders
    (:mod:`facenet_convert.models.pretrained_folder`).

    Args:
        pretrained: a release name of this architecture or the path of a
            ``.pt``/``.safetensors`` state dict.
        classify: return logits instead of embeddings; needs a logits layer.
        num_classes: size of the logits layer. With ``pretrained`` it defaults to the file's
            (if it has one); a different value replaces the loaded layer by a fresh one.
        dropout_prob: the backbone's dropout (upstream keep_probability = 1 - this).
        embedding_size: bottleneck width; defaults to the pretrained file's, else
            ``DEFAULT_EMBEDDING_SIZE`` (train_softmax.py's ``--embedding_size`` default).
        device: where to move the model after building (and loading) it.
    """

    __jit_unused_properties__: ClassVar[list[str]] = ["num_classes", "classify"]   # jit skips
    ARCHITECTURE: ClassVar[str]          # registry / release name
    FEATURES: ClassVar[int]              # channels of the pooled backbone output
    DEFAULT_EMBEDDING_SIZE: ClassVar[int] = 128
    HUB_INPUT_SIZE: ClassVar[tuple[int, int] | None] = (160, 160)   # the releases' crops

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
            source, release = resolve_pretrained(pretrained, self.ARCHITECTURE)
            state = load_weights_file(source)
            file_embedding, file_classes = self._head_sizes(state, source, release)
            if embedding_size is not None and embedding_size != file_embedding:
                raise MappingError(f"embedding_size={embedding_size} was asked for but the "
                                   f"weights hold {file_embedding}-d embeddings; leave "
                                   "embedding_size unset to use the file's",
                                   path=source, key="last_linear.weight")
            embedding_size = file_embedding
        if embedding_size is None:
            embedding_size = self.DEFAULT_EMBEDDING_SIZE
        if classify and num_classes is None and file_classes is None:
            raise ValueError("classify=True needs a logits layer: pass num_classes, or "
                             "pretrained weights that include one")

        self.pretrained = pretrained
        self.embedding_size = embedding_size
        self.build_backbone(dropout_prob)
        self.last_linear = nn.Linear(self.FEATURES, embedding_size, bias=False)
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

    @classmethod
    def hub_architecture(cls) -> str:
        return cls.ARCHITECTURE

    def hub_facts(self) -> dict[str, Any]:
        return {"embedding_size": int(self.embedding_size), "num_classes": self.num_classes}

    def hub_provenance(self) -> dict[str, Any]:
        """A model built from a release name knows the release and its preprocessing."""
        release = (find_release(self.pretrained) if isinstance(self.pretrained, str)
                   and not os.path.exists(self.pretrained) else None)
        if release is None or release.architecture != self.ARCHITECTURE:
            return {"preprocessing": None}
        return {"preprocessing": release.preprocessing, "release": release.name}

    @classmethod
    def hub_build(cls, config: Mapping[str, Any], **kwargs: Any) -> nn.Module:
        return cls(embedding_size=config["embedding_size"], num_classes=config["num_classes"],
                   **kwargs)

    def build_backbone(self, dropout_prob: float) -> None:
        """Register the backbone's modules (in upstream order: it is the state_dict order)."""
        raise NotImplementedError

    def backbone(self, x: Tensor) -> Tensor:
        """Images ``(N, 3, H, W)`` -> pooled features ``(N, FEATURES, 1, 1)``."""
        raise NotImplementedError

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
        return self.last_bn(self.last_linear(torch.flatten(self.backbone(x), 1)))

    def forward(self, x: Tensor) -> Tensor:
        """Embeddings ``(N, embedding_size)`` of unit L2 norm, or logits when classifying."""
        x = self.prelogits(x)
        # hasattr is resolved when scripting (a model may have no logits): keep it its own `if`
        if hasattr(self, "logits"):  # noqa: SIM102
            if self._classify:
                return self.logits(x)
        return l2_normalize(x)

    @classmethod
    def _head_sizes(cls, state: Mapping[str, Tensor], source: Path,
                    release: Release | None) -> tuple[int, int | None]:
        """Embedding size and logits classes a state dict holds (checked against its release)."""
        weight = state.get("last_linear.weight")
        if weight is None or weight.dim() != 2:
            raise MappingError(f"not a {cls.__name__} state dict: expected a 2-d "
                               "last_linear.weight", path=source, key="last_linear.weight")
        embedding_size = int(weight.shape[0])
        logits = state.get("logits.weight")
        num_classes = None if logits is None or logits.dim() != 2 else int(logits.shape[0])
        if release is not None:
            for what, expected, found in (("embedding size", release.embedding_size,
                                           embedding_size),
                                          ("logits classes", release.num_classes, num_classes)):
                if expected != found:
                    raise MappingError(f"release {release.name} should have {what} {expected}, "
                                       f"the file has {found}; re-create it with "
                                       "`facenet-convert regenerate`", path=source)
        return embedding_size, num_classes
