"""facenet-pytorch's MTCNN API (``detect``, ``select_boxes``, the call with ``save_path``) over
the detector's own results, as a mixin of :class:`facenet_convert.models.mtcnn.detector.MTCNN`.

Only what facenet-pytorch's users expect lives here: the order of the boxes, the face kept
when ``keep_all`` is False, crops standardized or not, crops saved under facenet-pytorch's
names. The detection itself is :meth:`MTCNN.detect_faces`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from facenet_convert.converter.core.errors import LandmarkError
from facenet_convert.models.face_alignment import AlignmentWarning
from facenet_convert.models.mtcnn.inputs import as_batch, object_array
from facenet_convert.models.preprocessing import fixed_image_standardization

SELECTION_METHODS = ("probability", "largest", "largest_over_threshold",
                     "center_weighted_size", "upstream")


class FacenetPytorchAPI:
    """facenet-pytorch's methods; the class using it provides ``detect_faces``, ``face_crops``
    and the settings ``select_largest``, ``selection_method``, ``keep_all``, ``post_process``."""

    select_largest: bool
    selection_method: str | None
    keep_all: bool
    post_process: bool
    detect_faces: Any
    face_crops: Any

    def detect(self, img: Any, landmarks: bool = False) -> tuple[Any, ...]:
        """facenet-pytorch's ``detect``: ``(boxes, probs[, points])`` as numpy, None per image
        without a face; boxes largest first when ``select_largest``, else by probability.
        A batch (list, or 4-d array/tensor; sizes may differ) gives object arrays per image."""
        arrays, batch = as_batch(img)
        found = self.detect_faces(arrays)
        boxes, probs, points = [], [], []
        for faces in found:
            if len(faces) == 0:
                boxes.append(None)
                probs.append(None)
                points.append(None)
                continue
            box = faces.boxes.numpy()
            order = np.arange(len(faces))
            if self.select_largest:
                area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
                order = np.argsort(area, kind="stable")[::-1]
            boxes.append(box[order])
            probs.append(faces.probs.numpy()[order])
            points.append(faces.landmarks.numpy()[order])
        if batch:
            result: tuple[Any, ...] = (object_array(boxes), object_array(probs),
                                       object_array(points))
        else:
            result = (boxes[0], probs[0], points[0])
        return result if landmarks else result[:2]

    def select_boxes(self, boxes: np.ndarray | None, probs: np.ndarray | None,
                     points: np.ndarray | None, image: np.ndarray, method: str | None = None,
                     threshold: float = 0.9, center_weight: float = 2.0
                     ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """One image's chosen face as ``(1, 4)``, ``(1,)``, ``(1, 5, 2)`` arrays (or Nones)."""
        method = method or self.selection_method
        if method not in SELECTION_METHODS:
            raise ValueError(f"selection method must be one of {', '.join(SELECTION_METHODS)}, "
                             f"not {method!r}")
        if boxes is None or probs is None or points is None or len(boxes) == 0:
            return None, None, None
        height, width = image.shape[:2]
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        if method == "largest":
            index = int(np.argsort(area)[::-1][0])
        elif method == "probability":
            index = int(np.argsort(probs)[::-1][0])
        elif method == "largest_over_threshold":
            over = np.flatnonzero(probs > threshold)
            if over.size == 0:
                return None, None, None
            index = int(over[np.argsort(area[over])[::-1][0]])
        else:
            centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2 - width / 2,
                                (boxes[:, 1] + boxes[:, 3]) / 2 - height / 2])
            offset_squared = np.sum(np.power(centres, 2.0), 0)
            rank = area - offset_squared * center_weight
            if method == "center_weighted_size":
                index = int(np.argsort(rank)[::-1][0])
            else:                                 # align_dataset_mtcnn: first maximum
                index = int(np.argmax(area - offset_squared * 2.0))
        return boxes[[index]], probs[[index]], points[[index]]

    def forward(self, img: Any, save_path: str | os.PathLike[str] | Sequence[Any] | None = None,
                return_prob: bool = False) -> Any:
        """facenet-pytorch's call: the face crop ``(3, S, S)`` (a stack with ``keep_all``), or
        None without a face; a list per image for a batch. ``save_path`` writes the uint8 crops
        as images (``name_2.png``... for further faces); ``return_prob`` adds probabilities.

        With similarity alignment a face whose landmarks cannot be aligned raises its
        :class:`LandmarkError` when the call asks for one face of one image; in a batch or
        with ``keep_all`` it is left out with an :class:`AlignmentWarning` (one line) and the
        call goes on (an image left with no face gives None)."""
        arrays, batch = as_batch(img)
        boxes, probs, points = self.detect(arrays, landmarks=True)
        paths = _save_paths(save_path, len(arrays), batch)
        faces_out: list[Tensor | None] = []
        probs_out: list[Any] = []
        for index, array in enumerate(arrays):
            box, prob, point = boxes[index], probs[index], points[index]
            if not self.keep_all:
                box, prob, point = self.select_boxes(box, prob, point, array)
            crops = None
            if box is not None:
                crops, prob = self._crops(array, box, prob, point, index, single=not (
                    batch or self.keep_all))
            if crops is None:
                faces_out.append(None)
                probs_out.append(None)
                continue
            if paths[index] is not None:
                _save_crops(crops, paths[index])
            faces = (fixed_image_standardization(crops) if self.post_process
                     else crops.to(torch.float32))
            faces_out.append(faces if self.keep_all else faces[0])
            probs_out.append(prob if self.keep_all else float(prob[0]))
        if not batch:
            return (faces_out[0], probs_out[0]) if return_prob else faces_out[0]
        return (faces_out, probs_out) if return_prob else faces_out

    def _crops(self, array: np.ndarray, box: np.ndarray, prob: np.ndarray, point: np.ndarray,
               image: int, single: bool) -> tuple[Tensor | None, np.ndarray]:
        """uint8 ``(n, 3, S, S)`` crops of the faces that could be cropped, and their
        probabilities; a face that cannot be aligned raises when it is the only one asked for
        (``single``), else it is reported and left out (None when none is left)."""
        crops, kept = [], []
        for k, crop in enumerate(self.face_crops(array, box, point)):
            if isinstance(crop, LandmarkError):
                if single:
                    raise crop
                warnings.warn(f"image {image}, face {k} left out: {crop}", AlignmentWarning,
                              stacklevel=3)
                continue
            crops.append(crop)
            kept.append(k)
        if not crops:
            return None, prob
        stack = torch.from_numpy(np.stack(crops).transpose(0, 3, 1, 2).copy())
        return stack, prob[kept]


def _save_paths(save_path: Any, count: int, batch: bool) -> list[Any]:
    if save_path is None:
        return [None] * count
    if isinstance(save_path, (str, os.PathLike)):
        if batch and count != 1:
            raise ValueError("a batch needs one save_path per image (a list)")
        return [save_path]
    paths = list(save_path)
    if len(paths) != count:
        raise ValueError(f"save_path lists {len(paths)} paths for {count} images")
    return paths


def _save_crops(crops: Tensor, path: str | os.PathLike[str]) -> None:
    """facenet-pytorch's naming: the first face at ``path``, then ``stem_2.ext``, ..."""
    import io

    from PIL import Image

    from facenet_convert.converter.core.atomic import atomic_output

    stem, ext = os.path.splitext(os.fspath(path))
    for k, crop in enumerate(crops):
        target = path if k == 0 else f"{stem}_{k + 1}{ext}"
        buffer = io.BytesIO()
        Image.fromarray(crop.permute(1, 2, 0).numpy()).save(buffer, format=_image_format(ext))
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        with atomic_output(target, force=True) as handle:
            handle.write(buffer.getvalue())


def _image_format(ext: str) -> str:
    from PIL import Image

    Image.init()
    return Image.EXTENSION.get(ext.lower(), "PNG")
