"""Image preprocessing exactly as upstream facenet feeds its graphs: RGB, 160x160, standardized.

* 2018 releases: fixed image standardization ``(x - 127.5) / 128`` (upstream's
  ``--use_fixed_image_standardization``, i.e. ``(tf.cast(image, tf.float32) - 127.5) / 128``);
* 2017 releases: per-image prewhitening as upstream ``facenet.prewhiten``:
  ``(x - mean) / max(std, 1 / sqrt(x.size))`` with the population std over all pixels and
  channels of one image.

:func:`preprocessing_for` picks the right one from :mod:`models.releases`. Images are decoded
with Pillow into uint8 RGB (grayscale is replicated to three channels as ``facenet.to_rgb``,
alpha is dropped as upstream's ``img[:, :, 0:3]``). Resizing uses Pillow's bilinear filter,
which is what upstream's ``scipy.misc.imresize(..., interp='bilinear')`` ran.

:func:`load_image` reads files as a photo viewer shows them: the EXIF orientation is applied
(a phone photo stored sideways comes out upright; upstream's ``misc.imread`` ignored it),
16-bit images are scaled to 8 bits (``round(v / 257)``), palette images (with or without
transparency) and CMYK are converted to RGB. The pixel count is checked from the header
before anything is decoded: at most :data:`MAX_PIXELS` (``FACENET_CONVERT_MAX_PIXELS``).
Pillow's warnings never reach the terminal; a decompression-bomb warning is an error.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Union

import numpy as np

from facenet_convert.converter.core.errors import ImageReadError
from facenet_convert.converter.core.inputs import open_regular
from facenet_convert.models.releases import FIXED_STANDARDIZATION, PREWHITEN, Release, get_release

if TYPE_CHECKING:
    from PIL import Image
    from torch import Tensor

ImageLike = Union[np.ndarray, "Image.Image"]

IMAGE_SIZE = 160
#: Largest image (width x height) decoded; ``FACENET_CONVERT_MAX_PIXELS`` changes it.
MAX_PIXELS = 50_000_000
MAX_PIXELS_ENV = "FACENET_CONVERT_MAX_PIXELS"
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
STANDARDIZATIONS = (FIXED_STANDARDIZATION, PREWHITEN)


def fixed_image_standardization(x: Tensor) -> Tensor:
    """``(x - 127.5) / 128`` on 0..255 pixel values (float32 result)."""
    import torch

    return (x.to(torch.float32) - 127.5) / 128.0


def prewhiten(x: Tensor) -> Tensor:
    """Upstream ``facenet.prewhiten`` per image over the last three dims (C, H, W or H, W, C).

    Accepts one image (3 dims) or a batch (4 dims); the mean and population std are taken over
    each image's pixels and channels, and std is floored at ``1 / sqrt(pixels * channels)``.
    """
    import torch

    x = x.to(torch.float32)
    if x.dim() not in (3, 4):
        raise ValueError(f"prewhiten expects an image (3 dims) or a batch (4 dims), "
                         f"got shape {tuple(x.shape)}")
    dims = (-3, -2, -1)
    size = x.shape[-3] * x.shape[-2] * x.shape[-1]
    # float64 statistics: numpy's float64 mean/std of upstream, not a float32 approximation
    x64 = x.to(torch.float64)
    mean = x64.mean(dim=dims, keepdim=True)
    std = x64.std(dim=dims, keepdim=True, unbiased=False)
    std_adj = torch.clamp(std, min=1.0 / float(np.sqrt(size)))
    return ((x64 - mean) / std_adj).to(torch.float32)


_FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    FIXED_STANDARDIZATION: fixed_image_standardization,
    PREWHITEN: prewhiten,
}


def standardization(name: str) -> Callable[[Tensor], Tensor]:
    """The function called ``name`` ("fixed_standardization" or "prewhiten")."""
    try:
        return _FUNCTIONS[name]
    except KeyError:
        raise ValueError(f"unknown preprocessing {name!r}; known: "
                         f"{', '.join(STANDARDIZATIONS)}") from None


def preprocessing_for(release: Release | str) -> str:
    """The standardization name a FaceNet release was trained with (from the registry)."""
    if isinstance(release, str):
        release = get_release(release, "inception_resnet_v1")
    if release.preprocessing not in _FUNCTIONS:
        raise ValueError(f"release {release.name} has no FaceNet input preprocessing "
                         f"(found {release.preprocessing!r})")
    return release.preprocessing


def guess_preprocessing(embedding_size: int) -> str:
    """For a weights file of unknown release: every 128-d release prewhitens, 512-d ones don't."""
    return PREWHITEN if embedding_size == 128 else FIXED_STANDARDIZATION


# --------------------------------------------------------------------------- image I/O

def to_rgb_array(image: ImageLike) -> np.ndarray:
    """uint8 ``(H, W, 3)`` RGB from a PIL image or a uint8 array (gray, RGB or RGBA)."""
    if not isinstance(image, np.ndarray):
        from PIL import Image

        if not isinstance(image, Image.Image):
            raise TypeError(f"expected a PIL image or a uint8 numpy array, got "
                            f"{type(image).__name__}")
        return _pil_to_rgb(image)
    if image.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels (0..255), got dtype {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.ndim == 3 and image.shape[2] >= 3:
        image = image[:, :, :3]
    else:
        raise TypeError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape "
                        f"{image.shape}")
    return np.ascontiguousarray(image)


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    """Pillow's RGB conversion replicates gray and drops alpha, as upstream did.

    16-bit gray is scaled to 8 bits as a viewer shows it; palette images with transparency go
    through RGBA (same RGB values, no Pillow warning).
    """
    if image.mode in _SIXTEEN_BIT:
        wide = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        gray = ((wide + 128) // 257).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "F":
        raise ImageReadError("floating-point images are not supported; save it as 8- or "
                             "16-bit RGB or grayscale")
    if image.mode in ("P", "PA") and "transparency" in image.info:
        image = image.convert("RGBA")
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def max_pixels() -> int:
    """The pixel cap: ``FACENET_CONVERT_MAX_PIXELS`` when set, else :data:`MAX_PIXELS`."""
    raw = os.environ.get(MAX_PIXELS_ENV)
    if raw is None:
        return MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ImageReadError(f"{MAX_PIXELS_ENV}={raw!r} is not a positive whole number")
    return value


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode an image file into uint8 ``(H, W, 3)`` RGB; ImageReadError if it cannot be read."""
    import warnings

    from PIL import Image, ImageOps

    cap = max_pixels()
    with open_regular(path, "image", ImageReadError) as handle:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                Image.MAX_IMAGE_PIXELS = max(cap, 1)  # Pillow's own check agrees with ours
                with Image.open(handle) as image:
                    width, height = image.size
                    if width * height > cap:
                        raise ImageReadError(
                            f"image is {width}x{height} = {width * height} pixels, more than "
                            f"the {cap} allowed; set {MAX_PIXELS_ENV} to raise the cap")
                    image.load()
                    upright = ImageOps.exif_transpose(image)
                    result = _pil_to_rgb(upright)
            for warning in caught:
                if issubclass(warning.category, Image.DecompressionBombWarning):
                    raise ImageReadError(f"decompression bomb ({warning.message}); set "
                                         f"{MAX_PIXELS_ENV} to raise the cap")
            return result
        except ImageReadError as error:
            raise ImageReadError(str(error), path=path) from None
        except MemoryError:
            raise ImageReadError("out of memory decoding the image", path=path) from None
        except Exception as error:  # noqa: BLE001 - decoders of malformed files raise many
            message = " ".join(str(error).split()) or type(error).__name__
            raise ImageReadError(f"cannot read image ({message})", path=path) from None


def resize_uint8(image: np.ndarray, size: int) -> np.ndarray:
    """``size`` x ``size`` bilinear resize of a uint8 RGB array (upstream ``misc.imresize``)."""
    from PIL import Image

    if image.shape[0] == size and image.shape[1] == size:
        return image
    resized = Image.fromarray(image).resize((size, size), resample=Image.BILINEAR)
    return np.asarray(resized, dtype=np.uint8).copy()


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Central ``size`` square crop as upstream ``facenet.crop`` without random offsets."""
    if image.shape[0] < size or image.shape[1] < size:
        raise ValueError(f"image {image.shape[1]}x{image.shape[0]} is smaller than the "
                         f"{size}x{size} crop")
    half_w, half_h, half = image.shape[1] // 2, image.shape[0] // 2, size // 2
    return image[half_h - half:half_h - half + size, half_w - half:half_w - half + size]


FIT_MODES = ("resize", "center_crop")


class Preprocess:
    """uint8 RGB image -> standardized float32 ``(3, size, size)`` tensor.

    ``fit`` says what to do with images that are not ``size`` x ``size``: "resize" (bilinear,
    as upstream alignment produced them) or "center_crop" (upstream ``facenet.load_data`` on
    larger aligned images; prewhitening is then computed on the whole image first, as there).
    """

    def __init__(self, standardize: str = FIXED_STANDARDIZATION, size: int = IMAGE_SIZE,
                 fit: str = "resize") -> None:
        if fit not in FIT_MODES:
            raise ValueError(f"fit must be one of {', '.join(FIT_MODES)}, not {fit!r}")
        self.standardize_name = standardize
        self.standardize = standardization(standardize)
        self.size = int(size)
        self.fit = fit

    def __call__(self, image: ImageLike) -> Tensor:
        import torch

        array = to_rgb_array(image)
        if self.fit == "center_crop" and array.shape[:2] != (self.size, self.size):
            whole = self.standardize(torch.from_numpy(array.transpose(2, 0, 1).copy()))
            top = (array.shape[0] // 2) - self.size // 2
            left = (array.shape[1] // 2) - self.size // 2
            center_crop(array, self.size)  # size check with a clear message
            return whole[:, top:top + self.size, left:left + self.size].contiguous()
        array = resize_uint8(array, self.size)
        return self.standardize(torch.from_numpy(array.transpose(2, 0, 1).copy()))

    def __repr__(self) -> str:
        return f"Preprocess({self.standardize_name!r}, size={self.size}, fit={self.fit!r})"


def standardize_batch(crops: Tensor, name: str) -> Tensor:
    """Standardize a uint8 ``(N, 3, H, W)`` batch (e.g. MTCNN crops) with ``name``."""
    return standardization(name)(crops)

