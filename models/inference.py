"""CPU inference of the plain model: standardized batches in, embeddings out, on all cores.

:class:`Embedder` runs the model as it is (public torch ops only) and splits a batch over
Python threads. The faster engines (ONNX Runtime, torch frozen for inference, bf16) are in
``converter/engines.py``, which falls back to this one. Only public torch ops are used here:
private fused oneDNN ops change between torch releases, and the maintained fast path is ONNX
Runtime.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from facenet_convert.models.workers import TorchWorkers


class Embedder:
    """Batches of standardized faces in, L2-normalized embeddings out (CPU float32).

    On CPU a batch is split into ``threads`` slices (default ``torch.get_num_threads()``) run
    by as many Python threads with one intra-op thread each: images are independent, so the
    result is the same as one call, and no OpenMP barrier waits between layers (spinning
    OpenMP threads lose most of their time when the machine is busy with other work).
    """

    def __init__(self, model: nn.Module, threads: int | None = None) -> None:
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.threads = max(1, int(threads if threads is not None else torch.get_num_threads()))
        if self.device.type != "cpu":
            self.threads = 1
        self._workers = TorchWorkers(self.threads, "embed")

    def _run(self, images: Tensor) -> Tensor:
        with torch.inference_mode():
            return self.model(images).float().cpu()

    def __call__(self, images: Tensor) -> Tensor:
        """``(N, 3, H, W)`` float standardized images -> ``(N, D)`` float32 CPU embeddings."""
        if images.shape[0] == 0:
            return torch.empty((0, int(self.model.embedding_size)), dtype=torch.float32)
        images = images.to(self.device, torch.float32)
        parts = min(self.threads, int(images.shape[0]))
        if parts <= 1:
            return self._run(images)
        return torch.cat(self._workers.map(self._run, images.chunk(parts)))

    def close(self) -> None:
        """Stop the worker threads (also done at interpreter exit)."""
        self._workers.close()
