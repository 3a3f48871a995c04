"""Face image datasets and loaders: a folder (flat, or one sub-folder per identity) or a list.

Items are decoded and standardized in the loader's workers. An image that cannot be read does
not stop the run: its item carries the error instead of a tensor, :func:`collate_faces` drops
it from the batch and lists it in ``FaceBatch.failures``, so the caller can report it.

Layouts (as upstream ``facenet.get_dataset``): "identities" takes the image files of each
sub-folder, labelled by the sub-folder's index in sorted order; "flat" takes the image files
directly in the folder, labelled -1; "auto" is "identities" when any sub-folder holds images.
Files are sorted by name so that runs are reproducible.

The other end of the pipeline, standardized batches in and embeddings out, is
:class:`facenet_convert.models.inference.Embedder`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from facenet_convert.converter.core.errors import DatasetError, ImageReadError
from facenet_convert.models.preprocessing import IMAGE_SIZE, Preprocess, load_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                    ".pgm")
LAYOUTS = ("auto", "flat", "identities")


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """Whether the name has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _image_files(folder: Path) -> list[Path]:
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as error:
        raise DatasetError(f"cannot list folder ({error.strerror or error})",
                           path=folder) from None
    # A FIFO, socket or device with an image name is kept, so that load_image refuses it by
    # name (never opening it for reading) and the run reports it instead of skipping silently.
    return [p for p in entries if is_image_file(p) and _is_file_like(p)]


def _is_file_like(path: Path) -> bool:
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return not stat.S_ISDIR(mode)


def scan_folder(root: str | os.PathLike[str], layout: str = "auto"
                ) -> tuple[list[Path], list[int], list[str]]:
    """Image paths, labels and class names of a dataset folder (see the module doc)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError("not a folder; give a folder of face images", path=root)
    subfolders = []
    if layout != "flat":
        try:
            subfolders = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name)
        except OSError as error:
            raise DatasetError(f"cannot list folder ({error.strerror or error})",
                               path=root) from None
    per_class = [(sub.name, _image_files(sub)) for sub in subfolders]
    per_class = [(name, files) for name, files in per_class if files]
    if layout == "identities" or (layout == "auto" and per_class):
        paths = [p for _, files in per_class for p in files]
        labels = [label for label, (_, files) in enumerate(per_class) for _ in files]
        classes = [name for name, _ in per_class]
    else:
        paths = _image_files(root)
        labels = [-1] * len(paths)
        classes = []
    if not paths:
        raise DatasetError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found "
                           f"(layout {layout})", path=root)
    return paths, labels, classes


@dataclass
class FaceItem:
    """One dataset item: the standardized image, or the reason it could not be read."""

    index: int
    path: str
    label: int
    image: Tensor | None
    error: str | None = None


@dataclass
class FaceBatch:
    """A collated batch: the images that could be read, and the failures of this batch."""

    images: Tensor
    labels: Tensor
    indices: list[int]
    paths: list[str]
    failures: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.indices)

    def pin_memory(self) -> FaceBatch:
        """Called by DataLoader(pin_memory=True) for custom batch types."""
        self.images = self.images.pin_memory()
        self.labels = self.labels.pin_memory()
        return self


class FaceImages(Dataset):
    """A list of face image files (already aligned crops), preprocessed for Inception-ResNet-V1.

    Args:
        paths: image files.
        labels: one int per file (default -1).
        preprocess: uint8 image -> float tensor; default fixed standardization at 160x160.
    """

    def __init__(self, paths: Sequence[str | os.PathLike[str]],
                 labels: Sequence[int] | None = None,
                 preprocess: Preprocess | None = None, classes: Sequence[str] = ()) -> None:
        self.paths = [Path(p) for p in paths]
        self.labels = list(labels) if labels is not None else [-1] * len(self.paths)
        if len(self.labels) != len(self.paths):
            raise ValueError(f"{len(self.labels)} labels for {len(self.paths)} paths")
        self.preprocess = preprocess if preprocess is not None else Preprocess()
        self.classes = list(classes)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> FaceItem:
        path = self.paths[index]
        try:
            image = self.preprocess(load_image(path))
        except ImageReadError as error:
            return FaceItem(index, str(path), self.labels[index], None, str(error))
        except ValueError as error:   # e.g. smaller than a center crop
            return FaceItem(index, str(path), self.labels[index], None, f"{path}: {error}")
        return FaceItem(index, str(path), self.labels[index], image)


class FaceFolder(FaceImages):
    """The images of a folder, flat or one sub-folder per identity (labels, ``classes``)."""

    def __init__(self, root: str | os.PathLike[str], preprocess: Preprocess | None = None,
                 layout: str = "auto") -> None:
        paths, labels, classes = scan_folder(root, layout)
        super().__init__(paths, labels, preprocess, classes)
        self.root = Path(root)


def collate_faces(items: Iterable[FaceItem]) -> FaceBatch:
    """Stack the readable items; list the unreadable ones as ``(path, message)`` failures."""
    items = list(items)
    good = [item for item in items if item.image is not None]
    failures = [(item.path, item.error or "unreadable") for item in items if item.image is None]
    if good:
        images = torch.stack([item.image for item in good])  # type: ignore[misc]
    else:
        images = torch.empty((0, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.float32)
    return FaceBatch(images=images,
                     labels=torch.tensor([item.label for item in good], dtype=torch.long),
                     indices=[item.index for item in good], paths=[item.path for item in good],
                     failures=failures)


def face_loader(dataset: Dataset, batch_size: int = 32, num_workers: int = 0,
                pin_memory: bool | None = None, shuffle: bool = False,
                **kwargs: Any) -> DataLoader:
    """A DataLoader of :class:`FaceBatch` es.

    ``pin_memory`` defaults to whether CUDA is available: pinning only helps host-to-GPU copies
    and costs time and memory on a CPU-only machine.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      pin_memory=pin_memory, collate_fn=collate_faces,
                      persistent_workers=False, **kwargs)
