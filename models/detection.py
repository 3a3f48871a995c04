"""MTCNN face detection on the converted PNet/RNet/ONet, step for step as upstream's detect_face.

The cascade is davidsandberg's ``align/detect_face.py::detect_face`` (the one
``align_dataset_mtcnn.py`` and ``compare.py`` call): an image pyramid (scale ``12 / minsize``
times ``factor ** k`` while the shorter side stays >= 12 px), PNet proposals (score >= t1) with a
0.5 union NMS per scale and a 0.7 union NMS over all scales, box regression with widths
``x2 - x1``, squaring (``rerec``), truncation to integers, zero-padded crops resized to 24x24 for
RNet (score > t2, 0.7 union NMS, regression with widths ``x2 - x1 + 1``, squaring), crops resized
to 48x48 for ONet (score > t3, landmarks, regression, 0.7 *min* NMS). Boxes are in upstream's
coordinates: ``[x1, y1, x2, y2]`` floats in pixels, used as 0-based slice bounds by upstream's
alignment, as here.

Resampling matches the upstream's ``cv2.resize(..., interpolation=INTER_AREA)`` without OpenCV:
the same per-axis weights (pixel-area coverage when shrinking on both axes, OpenCV's area-linear
weights otherwise) applied as two small matrix products, with the pyramid levels rounded to
uint8 as OpenCV does for uint8 images. NMS is batched in torch over all (image, scale) groups at
once, no torchvision.

Known differences from upstream, both only for ties or one-candidate corner cases: equal scores
are ordered stably here (numpy's unstable argsort picks an arbitrary one), and upstream's
``generateBoundingBox`` reads the regression of a *mirrored* cell when exactly one cell of a
pyramid level passes t1 (an ``np.flipud`` bug); we read the cell's own regression.

Face crops follow ``align_dataset_mtcnn.py`` (``--margin 32 --image_size 160`` as in the LFW
guide): the box grown by ``margin / 2`` on each side, clipped to the image, truncated to
integers, and resized to ``image_size`` with Pillow's bilinear filter (upstream's
``scipy.misc.imresize(..., interp='bilinear')`` is Pillow's ``BILINEAR``). Crops are uint8 RGB
``(n, 3, size, size)``; standardize them with :mod:`models.preprocessing` before embedding.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from facenet_convert.models.mtcnn import ONet, PNet, RNet
from facenet_convert.models.preprocessing import ImageLike, resize_uint8, to_rgb_array

MIN_FACE_SIZE = 20
THRESHOLDS = (0.6, 0.7, 0.7)
FACTOR = 0.709
MARGIN = 32
IMAGE_SIZE = 160
_CELL = 12      # PNet's receptive field
_STRIDE = 2     # PNet's output stride
_MTCNN_SCALE = 0.0078125


@dataclass
class FaceDetections:
    """The faces found in one image, in upstream's order (final NMS order: best score first).

    boxes: ``(n, 4)`` float64 ``[x1, y1, x2, y2]``; probs: ``(n,)`` float32 ONet face
    probabilities; landmarks: ``(n, 5, 2)`` float64 ``(x, y)`` of left eye, right eye, nose,
    left and right mouth corners.
    """

    boxes: Tensor
    probs: Tensor
    landmarks: Tensor

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


# --------------------------------------------------------------------------- resampling

@functools.lru_cache(maxsize=1024)
def _area_weights(src: int, dst: int) -> np.ndarray:
    """OpenCV's INTER_AREA shrink weights (``computeResizeAreaTab``) as a ``(dst, src)`` matrix."""
    scale = 1.0 / (dst / src)
    weights = np.zeros((dst, src), dtype=np.float64)
    for d in range(dst):
        fs1 = d * scale
        fs2 = fs1 + scale
        cell = min(scale, src - fs1)
        s2 = min(math.floor(fs2), src - 1)
        s1 = min(math.ceil(fs1), s2)
        if s1 - fs1 > 1e-3:
            weights[d, s1 - 1] += np.float32((s1 - fs1) / cell)
        for s in range(s1, s2):
            weights[d, s] += np.float32(1.0 / cell)
        if fs2 - s2 > 1e-3:
            weights[d, s2] += np.float32(min(fs2 - s2, 1.0, cell) / cell)
    return weights


@functools.lru_cache(maxsize=1024)
def _area_linear_weights(src: int, dst: int) -> np.ndarray:
    """OpenCV's INTER_AREA weights when either axis grows: two taps per output pixel."""
    inv_scale = dst / src
    scale = 1.0 / inv_scale
    weights = np.zeros((dst, src), dtype=np.float64)
    for d in range(dst):
        s = math.floor(d * scale)
        f = (d + 1) - (s + 1) * inv_scale
        f = 0.0 if f <= 0 else f - math.floor(f)
        f = float(np.float32(f))
        if s < 0:
            s, f = 0, 0.0
        if s >= src - 1:
            s, f = src - 1, 0.0
        weights[d, s] += 1.0 - f
        if f > 0:
            weights[d, s + 1] += f
    return weights


def _resize_matrices(height: int, width: int, out_h: int, out_w: int,
                     device: torch.device) -> tuple[Tensor, Tensor]:
    if height >= out_h and width >= out_w:
        wy, wx = _area_weights(height, out_h), _area_weights(width, out_w)
    else:
        wy, wx = _area_linear_weights(height, out_h), _area_linear_weights(width, out_w)
    return (torch.from_numpy(wy).to(device, torch.float32),
            torch.from_numpy(wx).to(device, torch.float32))


def area_resize(image: Tensor, out_h: int, out_w: int) -> Tensor:
    """Resize ``(..., H, W)`` float images like ``cv2.resize(..., INTER_AREA)`` (no rounding)."""
    height, width = int(image.shape[-2]), int(image.shape[-1])
    wy, wx = _resize_matrices(height, width, out_h, out_w, image.device)
    return torch.matmul(torch.matmul(wy, image), wx.T)


# --------------------------------------------------------------------------- NMS

def box_overlap(boxes: Tensor, others: Tensor, mode: str = "union") -> Tensor:
    """Pairwise-aligned overlap of ``boxes[i]`` with ``others[i]``, upstream's +1 pixel areas.

    ``mode`` "union" is IoU, "min" is intersection over the smaller area (upstream 'Min').
    """
    area_a = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    area_b = (others[:, 2] - others[:, 0] + 1) * (others[:, 3] - others[:, 1] + 1)
    inter_w = (torch.minimum(boxes[:, 2], others[:, 2])
               - torch.maximum(boxes[:, 0], others[:, 0]) + 1).clamp(min=0)
    inter_h = (torch.minimum(boxes[:, 3], others[:, 3])
               - torch.maximum(boxes[:, 1], others[:, 1]) + 1).clamp(min=0)
    inter = inter_w * inter_h
    if mode == "min":
        return inter / torch.minimum(area_a, area_b)
    if mode == "union":
        return inter / (area_a + area_b - inter)
    raise ValueError(f"NMS mode must be 'union' or 'min', not {mode!r}")


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, threshold: float,
                mode: str = "union") -> Tensor:
    """Greedy NMS run independently within each group, all groups at once.

    Each round keeps the best remaining box of every group and drops the boxes of its group
    that overlap it by more than ``threshold`` (upstream keeps ``overlap <= threshold``), so the
    number of rounds is the largest number of boxes kept in one group. Returns indices into
    ``boxes``, ordered by group, then by descending score (equal scores: input order).
    """
    count = int(boxes.shape[0])
    if count == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    by_score = torch.argsort(scores, descending=True, stable=True)
    order = by_score[torch.argsort(groups[by_score], stable=True)]
    sorted_boxes = boxes[order]
    sorted_groups = groups[order]
    alive = torch.ones(count, dtype=torch.bool, device=boxes.device)
    kept = []
    while True:
        positions = alive.nonzero().squeeze(1)
        if positions.numel() == 0:
            break
        group_of = sorted_groups[positions]
        first = torch.ones_like(group_of, dtype=torch.bool)
        first[1:] = group_of[1:] != group_of[:-1]
        heads = positions[first]
        kept.append(heads)
        head_of = heads[torch.cumsum(first.to(torch.long), 0) - 1]
        overlap = box_overlap(sorted_boxes[positions], sorted_boxes[head_of], mode)
        alive[positions[(overlap > threshold) | first]] = False
    keep = torch.sort(torch.cat(kept)).values
    return order[keep]


# --------------------------------------------------------------------------- box helpers

def _regress(boxes: Tensor, reg: Tensor, plus_one: bool) -> Tensor:
    """Upstream's box calibration; PNet's uses widths ``x2 - x1``, bbreg ``x2 - x1 + 1``."""
    extra = 1.0 if plus_one else 0.0
    w = boxes[:, 2] - boxes[:, 0] + extra
    h = boxes[:, 3] - boxes[:, 1] + extra
    return torch.stack([boxes[:, 0] + reg[:, 0] * w, boxes[:, 1] + reg[:, 1] * h,
                        boxes[:, 2] + reg[:, 2] * w, boxes[:, 3] + reg[:, 3] * h], dim=1)


def _rerec(boxes: Tensor) -> Tensor:
    """Square boxes around their centers with side ``max(w, h)`` (upstream ``rerec``)."""
    h = boxes[:, 3] - boxes[:, 1]
    w = boxes[:, 2] - boxes[:, 0]
    side = torch.maximum(w, h)
    x1 = boxes[:, 0] + w * 0.5 - side * 0.5
    y1 = boxes[:, 1] + h * 0.5 - side * 0.5
    return torch.stack([x1, y1, x1 + side, y1 + side], dim=1)


def _crop_resized(image: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Zero-padded crops of integer boxes (1-based inclusive, as upstream ``pad``), resized.

    ``image`` is ``(3, H, W)`` float; returns ``(n, 3, size, size)`` float. The padding is
    never materialized: resize weights that fall outside the image multiply zeros, so only the
    columns of the weight matrices inside the image are used.
    """
    _, height, width = image.shape
    out = torch.zeros((boxes.shape[0], 3, size, size), dtype=image.dtype, device=image.device)
    for k, (x1, y1, x2, y2) in enumerate(boxes.to(torch.int64).tolist()):
        wy, wx = _resize_matrices(y2 - y1 + 1, x2 - x1 + 1, size, size, image.device)
        sy0, sy1 = max(y1 - 1, 0), min(y2, height)
        sx0, sx1 = max(x1 - 1, 0), min(x2, width)
        if sy1 <= sy0 or sx1 <= sx0:
            continue
        wy = wy[:, sy0 - (y1 - 1):sy1 - (y1 - 1)]
        wx = wx[:, sx0 - (x1 - 1):sx1 - (x1 - 1)]
        out[k] = torch.matmul(torch.matmul(wy, image[:, sy0:sy1, sx0:sx1]), wx.T)
    return out


def _valid(boxes: Tensor) -> Tensor:
    """Boxes with a positive integer size (upstream would crash on the others)."""
    return ((boxes[:, 2] - boxes[:, 0] + 1) >= 1) & ((boxes[:, 3] - boxes[:, 1] + 1) >= 1)


# --------------------------------------------------------------------------- the detector

def _as_net(net: nn.Module | str | os.PathLike[str] | None, cls: type[nn.Module]) -> nn.Module:
    if isinstance(net, nn.Module):
        return net
    return cls(pretrained=True if net is None else net)


class MTCNN(nn.Module):
    """Upstream davidsandberg MTCNN face detection and alignment on PyTorch nets.

    Args:
        pnet, rnet, onet: a net instance, the path of its weights file (or release name), or
            None for the cached release (``pnet``/``rnet``/``onet`` in ``$TORCH_HOME``).
        min_face_size, thresholds, factor: upstream's ``minsize``, ``threshold``, ``factor``
            (defaults 20, [0.6, 0.7, 0.7], 0.709 as in ``align_dataset_mtcnn.py``).
        image_size, margin: face crop size and the margin (pixels in the original image) added
            around each box before cropping (160 and 32 as upstream's LFW alignment).
        device: where the nets run.
    """

    def __init__(self, pnet: nn.Module | str | os.PathLike[str] | None = None,
                 rnet: nn.Module | str | os.PathLike[str] | None = None,
                 onet: nn.Module | str | os.PathLike[str] | None = None, *,
                 min_face_size: float = MIN_FACE_SIZE,
                 thresholds: Sequence[float] = THRESHOLDS, factor: float = FACTOR,
                 image_size: int = IMAGE_SIZE, margin: float = MARGIN,
                 device: str | torch.device | None = None) -> None:
        super().__init__()
        if len(thresholds) != 3:
            raise ValueError(f"thresholds needs 3 values (PNet, RNet, ONet), got {thresholds!r}")
        if not 0 < factor < 1:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        if min_face_size <= 0 or image_size <= 0 or margin < 0:
            raise ValueError("min_face_size and image_size must be positive, margin >= 0")
        self.pnet = _as_net(pnet, PNet)
        self.rnet = _as_net(rnet, RNet)
        self.onet = _as_net(onet, ONet)
        self.min_face_size = float(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = float(factor)
        self.image_size = int(image_size)
        self.margin = float(margin)
        self.eval()
        if device is not None:
            self.to(device)

    @property
    def device(self) -> torch.device:
        return next(self.pnet.parameters()).device

    def scales(self, height: int, width: int) -> list[float]:
        """Upstream's pyramid scales for an image of this size (may be empty)."""
        m = 12.0 / self.min_face_size
        shortest = min(height, width) * m
        scales = []
        count = 0
        while shortest >= 12:
            scales.append(m * self.factor ** count)
            shortest *= self.factor
            count += 1
        return scales

    @torch.inference_mode()
    def detect(self, images: ImageLike | Sequence[ImageLike]) -> list[FaceDetections]:
        """Faces of each image (a uint8 RGB HxWx3 array, a PIL image, or a list of them)."""
        if isinstance(images, (list, tuple)):
            arrays = [to_rgb_array(image) for image in images]
        else:
            arrays = [to_rgb_array(images)]
        device = self.device
        tensors = [torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).to(device)
                   for a in arrays]
        floats = [t.to(torch.float32) for t in tensors]
        boxes, image_of = self._stage_one(floats)
        boxes, image_of = self._stage_two(floats, boxes, image_of)
        boxes, probs, landmarks, image_of = self._stage_three(floats, boxes, image_of)
        results = []
        for index in range(len(arrays)):
            mask = image_of == index
            results.append(FaceDetections(boxes=boxes[mask].cpu(), probs=probs[mask].cpu(),
                                          landmarks=landmarks[mask].cpu()))
        return results

    def _stage_one(self, images: list[Tensor]) -> tuple[Tensor, Tensor]:
        device = self.device
        candidates, scores, regs, groups = [], [], [], []
        group_image = []
        for index, image in enumerate(images):
            height, width = int(image.shape[1]), int(image.shape[2])
            for scale in self.scales(height, width):
                hs, ws = math.ceil(height * scale), math.ceil(width * scale)
                level = torch.round(area_resize(image, hs, ws)).clamp(0, 255)
                reg, prob = self.pnet(((level - 127.5) * _MTCNN_SCALE).unsqueeze(0))
                face = prob[0, 1]
                rows, cols = torch.nonzero(face >= self.thresholds[0], as_tuple=True)
                if rows.numel() == 0:
                    continue
                cells = torch.stack([cols, rows], dim=1).to(torch.float64)
                q1 = torch.trunc((_STRIDE * cells + 1) / scale)
                q2 = torch.trunc((_STRIDE * cells + _CELL) / scale)
                candidates.append(torch.cat([q1, q2], dim=1))
                scores.append(face[rows, cols].to(torch.float64))
                regs.append(reg[0][:, rows, cols].T.to(torch.float64))
                groups.append(torch.full((rows.numel(),), len(group_image), dtype=torch.long,
                                         device=device))
                group_image.append(index)
        if not candidates:
            return torch.empty((0, 5), dtype=torch.float64, device=device), \
                torch.empty(0, dtype=torch.long, device=device)
        boxes = torch.cat(candidates)
        score = torch.cat(scores)
        reg = torch.cat(regs)
        group = torch.cat(groups)
        keep = batched_nms(boxes, score, group, 0.5, "union")
        boxes, score, reg = boxes[keep], score[keep], reg[keep]
        image_of = torch.tensor(group_image, dtype=torch.long, device=device)[group[keep]]
        keep = batched_nms(boxes, score, image_of, 0.7, "union")
        boxes, score, reg, image_of = boxes[keep], score[keep], reg[keep], image_of[keep]
        boxes = torch.trunc(_rerec(_regress(boxes, reg, plus_one=False)))
        return torch.cat([boxes, score.unsqueeze(1)], dim=1), image_of

    def _crops(self, images: list[Tensor], boxes: Tensor, image_of: Tensor,
               size: int) -> Tensor:
        crops = torch.empty((boxes.shape[0], 3, size, size), dtype=torch.float32,
                            device=self.device)
        for index, image in enumerate(images):
            mask = image_of == index
            if bool(mask.any()):
                crops[mask] = _crop_resized(image, boxes[mask, :4], size)
        return (crops - 127.5) * _MTCNN_SCALE

    def _stage_two(self, images: list[Tensor], boxes: Tensor,
                   image_of: Tensor) -> tuple[Tensor, Tensor]:
        valid = _valid(boxes)
        boxes, image_of = boxes[valid], image_of[valid]
        if boxes.shape[0] == 0:
            return boxes, image_of
        reg, prob = self.rnet(self._crops(images, boxes, image_of, 24))
        score = prob[:, 1].to(torch.float64)
        passed = score > self.thresholds[1]
        boxes, score, reg, image_of = boxes[passed, :4], score[passed], reg[passed], \
            image_of[passed]
        keep = batched_nms(boxes, score, image_of, 0.7, "union")
        boxes = _rerec(_regress(boxes[keep], reg[keep].to(torch.float64), plus_one=True))
        return torch.cat([boxes, score[keep].unsqueeze(1)], dim=1), image_of[keep]

    def _stage_three(self, images: list[Tensor], boxes: Tensor, image_of: Tensor
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        boxes = torch.trunc(boxes[:, :4])
        valid = _valid(boxes)
        boxes, image_of = boxes[valid], image_of[valid]
        if boxes.shape[0] == 0:
            return (boxes, torch.empty(0, dtype=torch.float32, device=boxes.device),
                    torch.empty((0, 5, 2), dtype=torch.float64, device=boxes.device), image_of)
        reg, marks, prob = self.onet(self._crops(images, boxes, image_of, 48))
        score = prob[:, 1]
        passed = score > self.thresholds[2]
        boxes, score, reg, marks, image_of = boxes[passed], score[passed], \
            reg[passed].to(torch.float64), marks[passed].to(torch.float64), image_of[passed]
        w = (boxes[:, 2] - boxes[:, 0] + 1).unsqueeze(1)
        h = (boxes[:, 3] - boxes[:, 1] + 1).unsqueeze(1)
        xs = w * marks[:, 0:5] + boxes[:, 0:1] - 1
        ys = h * marks[:, 5:10] + boxes[:, 1:2] - 1
        landmarks = torch.stack([xs, ys], dim=2)
        boxes = _regress(boxes, reg, plus_one=True)
        keep = batched_nms(boxes, score.to(torch.float64), image_of, 0.7, "min")
        return boxes[keep], score[keep], landmarks[keep], image_of[keep]

    def crop_box(self, box: Sequence[float], height: int, width: int) -> tuple[int, int, int, int]:
        """The margin-grown, clipped, truncated crop ``(x0, y0, x1, y1)`` of one box."""
        half = self.margin / 2
        x0 = int(max(box[0] - half, 0))
        y0 = int(max(box[1] - half, 0))
        x1 = int(min(box[2] + half, width))
        y1 = int(min(box[3] + half, height))
        return x0, y0, x1, y1

    def extract(self, image: ImageLike, detections: FaceDetections) -> Tensor:
        """uint8 ``(n, 3, image_size, image_size)`` RGB face crops, as align_dataset_mtcnn."""
        array = to_rgb_array(image)
        height, width = array.shape[:2]
        crops = []
        for box in detections.boxes.tolist():
            x0, y0, x1, y1 = self.crop_box(box, height, width)
            if x1 <= x0 or y1 <= y0:
                crops.append(np.zeros((self.image_size, self.image_size, 3), dtype=np.uint8))
                continue
            crops.append(resize_uint8(array[y0:y1, x0:x1], self.image_size))
        if not crops:
            return torch.empty((0, 3, self.image_size, self.image_size), dtype=torch.uint8)
        return torch.from_numpy(np.stack(crops).transpose(0, 3, 1, 2).copy())

    def forward(self, images: ImageLike | Sequence[ImageLike]
                ) -> list[tuple[Tensor, FaceDetections]]:
        """For each image, its uint8 face crops and detections."""
        many = isinstance(images, (list, tuple))
        items = list(images) if many else [images]
        detections = self.detect(items)
        return [(self.extract(image, found), found)
                for image, found in zip(items, detections, strict=True)]
