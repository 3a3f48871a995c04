"""Parity's inputs (seeded batches or a folder of images) and the model under test."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facenet_convert.converter.core.errors import ParityError
from facenet_convert.converter.registry import (
    get_architecture,
    match_state,
    names,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: (height, width) of the random inputs of a model that takes any size (PNet).
ANY_SIZE_INPUT = (160, 160)


def input_size(model: str) -> tuple[int, int]:
    """(height, width) of the inputs ``model`` gets."""
    return get_architecture(model).input_size or ANY_SIZE_INPUT


def random_batches(shape_hw: tuple[int, int], *, batches: int, batch_size: int,
                   seed: int) -> Iterator[np.ndarray]:
    """Seeded N(0, 1) float32 batches, NCHW."""
    rng = np.random.default_rng(seed)
    height, width = shape_hw
    for _ in range(batches):
        yield rng.standard_normal((batch_size, 3, height, width), dtype=np.float32)


def image_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    path = Path(folder)
    if not path.is_dir():
        raise ParityError("--images expects a folder of face images", path=path)
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ParityError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder",
                          path=path)
    return files


def image_batches(files: Sequence[Path], model: str, *, batch_size: int) -> Iterator[np.ndarray]:
    """Real images, RGB, resized to the model's input and standardized as the model expects:
    ``(x - 127.5) / 128`` (facenet 2018 releases' fixed standardization) or MTCNN's
    ``(x - 127.5) * 0.0078125`` (the same numbers). NCHW float32."""
    try:
        from PIL import Image
    except ImportError as error:
        raise ParityError("--images needs Pillow to read images: pip install pillow") from error
    height, width = input_size(model)
    for start in range(0, len(files), batch_size):
        arrays = []
        for file in files[start:start + batch_size]:
            try:
                with Image.open(file) as image:
                    rgb = image.convert("RGB")
                    if rgb.size != (width, height):
                        rgb = rgb.resize((width, height), Image.BILINEAR)
                    arrays.append(np.asarray(rgb, dtype=np.float32))
            except (OSError, ValueError) as error:
                raise ParityError(f"cannot read image ({error})", path=file) from error
        batch = (np.stack(arrays) - 127.5) / 128.0
        yield np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)


# --------------------------------------------------------------------------------- model


def weights_choice(choice: str, weights: str | os.PathLike[str]) -> str:
    """``raw``/``ema`` as given; ``auto``: the ``weights`` metadata of a .safetensors file
    written by ``convert``, else ``raw``."""
    if choice != "auto":
        return choice
    path = Path(weights)
    if path.suffix != ".safetensors" or not path.is_file():
        return "raw"
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
    except Exception:  # noqa: BLE001 - unreadable here: load_weights_file reports it later
        return "raw"
    return "ema" if metadata.get("weights") == "ema" else "raw"


def detect_model(state: Mapping[str, Any], path: str | os.PathLike[str]) -> str:
    """Which model a converted state dict is for: the record whose layout has its keys."""
    record = match_state({key: tuple(value.shape) for key, value in state.items()})
    if record is None:
        raise ParityError("these weights fit no known model's layout (expected the keys of "
                          f"one of {', '.join(names())}); pass --model", path=path)
    return record.name


def build_torch_model(model: str, state: Mapping[str, Any], path: Path) -> Any:
    """Our model for ``model`` with ``state`` loaded strictly, in eval mode."""
    from facenet_convert.converter.building import build_model

    return build_model(get_architecture(model), state, path)
