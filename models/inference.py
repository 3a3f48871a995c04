"""Fast CPU inference: standardized batches in, embeddings out.

:class:`Embedder` runs an inference-only fused copy of :class:`InceptionResNetV1` (BatchNorm
folded into the convolutions, ReLU and residual adds fused by oneDNN, channels-last): what
``facenet-convert embed`` and ``scripts/bench_embed.py`` run. It checks itself against the
plain model on a small batch and falls back to the plain model when they disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from facenet_convert.models.preprocessing import IMAGE_SIZE


class _FusedConv(nn.Module):
    """Conv with BatchNorm folded in and ReLU (or a residual add + ReLU) fused by oneDNN.

    The weight is reordered into oneDNN's blocked layout once, at the first call (for that
    input size; other sizes still compute correctly), instead of at every call.
    """

    def __init__(self, weight: Tensor, bias: Tensor, stride: Sequence[int],
                 padding: Sequence[int], relu: bool) -> None:
        super().__init__()
        self.register_buffer("weight", weight.contiguous(memory_format=torch.channels_last))
        self.register_buffer("bias", bias.contiguous())
        self.stride = [int(s) for s in stride]
        self.padding = [int(p) for p in padding]
        self.unary = "relu" if relu else "none"
        self._packed: Tensor | None = None

    def _weight(self, x: Tensor) -> Tensor:
        packed = self._packed
        if packed is None:
            try:
                packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
                    self.weight.contiguous().to_mkldnn(), self.padding, self.stride, [1, 1], 1,
                    list(x.shape))
            except (RuntimeError, AttributeError):
                packed = self.weight
            self._packed = packed
        return packed

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        ops = torch.ops.mkldnn
        weight = self._weight(x)
        if residual is None:
            return ops._convolution_pointwise(x, weight, self.bias, self.padding, self.stride,
                                              [1, 1], 1, self.unary, [], "")
        unary = None if self.unary == "none" else self.unary   # binary form: None, not "none"
        return ops._convolution_pointwise(x, residual, weight, self.bias, self.padding,
                                          self.stride, [1, 1], 1, "add", 1.0, unary, [], "")


def _fold_basic(basic: nn.Module) -> _FusedConv:
    """BasicConv2d (bias-free conv, eval BatchNorm, ReLU) as one fused conv."""
    conv, bn = basic.conv, basic.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale[:, None, None, None]
    bias = bn.bias - bn.running_mean * scale
    return _FusedConv(weight.detach(), bias.detach(), conv.stride, conv.padding, relu=True)


def _leading_pointwise(branch: nn.Module) -> tuple[_FusedConv | None, nn.Module | None]:
    """A branch's first op if it is a fused 1x1 stride-1 conv, and what follows it."""
    head: _FusedConv | None = None
    rest: nn.Module | None = None
    if isinstance(branch, _FusedConv):
        head = branch
    elif isinstance(branch, nn.Sequential) and isinstance(branch[0], _FusedConv):
        head, rest = branch[0], nn.Sequential(*list(branch)[1:])
    if head is None or tuple(head.weight.shape[2:]) != (1, 1) or head.stride != [1, 1] \
            or head.padding != [0, 0]:
        return None, None
    return head, rest


class _FusedBranches(nn.Module):
    """Inception branches on one input; their leading 1x1 convs run as one wider conv.

    The input is read once for all 1x1 heads instead of once per branch; the wide output is
    split by channels and each branch goes on from its slice.
    """

    def __init__(self, branches: Sequence[nn.Module]) -> None:
        super().__init__()
        heads = [_leading_pointwise(branch) for branch in branches]
        merged = [k for k, (head, _) in enumerate(heads) if head is not None]
        self.merged = merged if len(merged) >= 2 else []
        self.branches = nn.ModuleList(branches)
        self.rests = nn.ModuleList(heads[k][1] or nn.Identity() for k in self.merged)
        chosen = [heads[k][0] for k in self.merged]
        self.sizes = [int(head.weight.shape[0]) for head in chosen if head is not None]
        self.head: _FusedConv | None = None
        if chosen:
            self.head = _FusedConv(torch.cat([h.weight for h in chosen if h is not None]),
                                   torch.cat([h.bias for h in chosen if h is not None]),
                                   [1, 1], [0, 0], relu=True)

    def forward(self, x: Tensor) -> Tensor:
        outputs: dict[int, Tensor] = {}
        if self.head is not None:
            parts = self.head(x).split(self.sizes, dim=1)
            for k, part, rest in zip(self.merged, parts, self.rests, strict=True):
                if isinstance(rest, nn.Identity):
                    outputs[k] = part
                else:
                    outputs[k] = rest(part.contiguous(memory_format=torch.channels_last))
        for k, branch in enumerate(self.branches):
            if k not in outputs:
                outputs[k] = branch(x)
        return torch.cat([outputs[k] for k in range(len(self.branches))], dim=1)


def _branches_of(block: nn.Module) -> list[nn.Module]:
    return [block._modules[name] for name in block._branch_names]


class _FusedResidual(nn.Module):
    """``relu?(x + scale * conv(cat(branches(x))))`` with the scale folded into the conv."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.mixed = _FusedBranches(_branches_of(block))
        conv = block.conv2d
        self.conv = _FusedConv((conv.weight * block.scale).detach(),
                               (conv.bias * block.scale).detach(), conv.stride, conv.padding,
                               relu=block.activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.mixed(x), residual=x)


def _swap(module: nn.Module) -> None:
    from facenet_convert.models.inception_resnet_v1 import BasicConv2d, _Branches, _ResidualBlock

    for name, child in list(module.named_children()):
        _swap(child)
        if isinstance(child, BasicConv2d):
            setattr(module, name, _fold_basic(child))
        elif isinstance(child, _ResidualBlock):
            setattr(module, name, _FusedResidual(child))
        elif isinstance(child, _Branches):
            setattr(module, name, _FusedBranches(_branches_of(child)))


def fusion_available() -> bool:
    """Whether this torch build has oneDNN's fused conv + pointwise op (CPU builds do)."""
    return bool(torch.backends.mkldnn.is_available()
                and hasattr(torch.ops.mkldnn, "_convolution_pointwise"))


class Embedder:
    """Batches of standardized faces in, L2-normalized embeddings out (CPU float32).

    On CPU with ``fuse`` (default) the model runs as an inference-only copy: every BatchNorm
    folded into its conv, ReLUs and residual adds fused into oneDNN convolutions, channels-last
    activations. Same function, fewer passes over memory; a self-check against the plain model
    on a small batch falls back to the plain model if the two disagree by more than 1e-5.

    On CPU a batch is split into ``threads`` slices (default ``torch.get_num_threads()``) run
    by as many Python threads with one intra-op thread each: images are independent, so the
    result is the same as one call, and no OpenMP barrier waits between layers (spinning
    OpenMP threads lose most of their time when the machine is busy with other work).
    """

    def __init__(self, model: nn.Module, fuse: bool = True, check: bool = True,
                 threads: int | None = None) -> None:
        import copy

        self.model = model.eval()
        self.runner: nn.Module = self.model
        self.fused = False
        self.device = next(model.parameters()).device
        cpu = self.device.type == "cpu"
        self.threads = max(1, int(threads if threads is not None else torch.get_num_threads()))
        if not cpu:
            self.threads = 1
        self._pool: Any = None
        if fuse and cpu and fusion_available() and not getattr(model, "classify", False):
            fused = copy.deepcopy(self.model)
            with torch.no_grad():
                _swap(fused)
            fused.eval()
            if not check or self._agrees(fused):
                self.runner, self.fused = fused, True

    def _agrees(self, fused: nn.Module) -> bool:
        generator = torch.Generator().manual_seed(0)
        probe = torch.rand((2, 3, IMAGE_SIZE, IMAGE_SIZE), generator=generator) * 2 - 1
        with torch.inference_mode():
            try:
                got = fused(probe.contiguous(memory_format=torch.channels_last))
            except RuntimeError:
                return False
            want = self.model(probe)
        return bool((got - want).abs().max() <= 1e-5)

    def _run(self, images: Tensor) -> Tensor:
        with torch.inference_mode():
            if self.fused:
                images = images.contiguous(memory_format=torch.channels_last)
            return self.runner(images).float().cpu()

    def __call__(self, images: Tensor) -> Tensor:
        """``(N, 3, H, W)`` float standardized images -> ``(N, D)`` float32 CPU embeddings."""
        if images.shape[0] == 0:
            return torch.empty((0, int(self.model.embedding_size)), dtype=torch.float32)
        images = images.to(self.device, torch.float32)
        parts = min(self.threads, int(images.shape[0]))
        if parts <= 1:
            return self._run(images)
        main_threads = torch.get_num_threads()
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="embed",
                                            initializer=torch.set_num_threads, initargs=(1,))
        try:
            return torch.cat(list(self._pool.map(self._run, images.chunk(parts))))
        finally:
            # OpenMP's setting is per thread, MKL's is process-wide: give the caller its own back
            torch.set_num_threads(main_threads)

    def close(self) -> None:
        """Stop the worker threads (also done at interpreter exit)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
