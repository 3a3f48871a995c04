"""What MTCNN accepts as images: PIL images, numpy arrays and HWC tensors, as uint8 RGB, with
the pixel cap checked from the shape before any conversion allocates."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor

from facenet_convert.converter.core.errors import DetectionInputError
from facenet_convert.models.preprocessing import MAX_PIXELS_ENV, max_pixels, to_rgb_array


def check_pixels(image: Any) -> None:
    """The pixel cap of decoded files holds for images passed in memory too, checked before
    any conversion allocates (a 20000x20000 array would take gigabytes and minutes)."""
    if isinstance(image, (np.ndarray, Tensor)) and image.ndim >= 2:
        height, width = int(image.shape[0]), int(image.shape[1])
    elif hasattr(image, "size") and isinstance(getattr(image, "size", None), tuple):
        width, height = (int(v) for v in image.size[:2])
    else:
        return
    cap = max_pixels()
    if height * width > cap:
        raise DetectionInputError(f"image of {width}x{height} = {height * width:,} pixels is "
                                  f"over the {cap:,} allowed; resize it, or set "
                                  f"{MAX_PIXELS_ENV} to raise the cap")


def to_uint8_rgb(image: Any) -> np.ndarray:
    """uint8 ``(H, W, 3)`` from PIL, numpy or an HWC torch tensor (floats: 0..255, rounded)."""
    check_pixels(image)
    if isinstance(image, Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray) and image.dtype != np.uint8:
        if image.dtype.kind != "f":
            raise DetectionInputError(f"expected uint8 pixels or floats in 0..255, got dtype "
                                      f"{image.dtype} (convert 16-bit images to 8 bits)")
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    try:
        return to_rgb_array(image)
    except TypeError as error:
        raise DetectionInputError(str(error)) from None


def as_batch(images: Any) -> tuple[list[np.ndarray], bool]:
    """The images of a call and whether it was a batch (list/tuple or a 4-d array/tensor)."""
    if isinstance(images, (list, tuple)):
        return [to_uint8_rgb(image) for image in images], True
    if isinstance(images, (np.ndarray, Tensor)) and images.ndim == 4:
        return [to_uint8_rgb(image) for image in images], True
    return [to_uint8_rgb(images)], False


def object_array(items: list[Any]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    for index, item in enumerate(items):
        out[index] = item
    return out
