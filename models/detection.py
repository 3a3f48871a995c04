"""MTCNN face detection on the converted PNet/RNet/ONet, step for step as upstream's detect_face.

The cascade is davidsandberg's ``align/detect_face.py::detect_face`` (the one
``align_dataset_mtcnn.py`` and ``compare.py`` call), with its arithmetic reproduced operation for
operation so that boxes, probabilities and landmarks equal upstream's (tests compare against the
real upstream code on TensorFlow):

* pyramid: scales ``12 / minsize * factor ** k`` while the shorter side stays >= 12 px, each level
  resized by OpenCV itself (``cv2.resize(..., INTER_AREA)`` on the uint8 image, as upstream);
* PNet candidates in upstream's order (column-major over the score map), including its
  ``generateBoundingBox`` quirk: when exactly one cell of a level passes, the regression is read
  from the horizontally mirrored cell (``np.flipud``), as upstream does;
* every NMS visits boxes in the order of ``np.argsort`` on the very score array upstream sorts
  (so equal scores are broken as upstream breaks them) and keeps a box when
  ``overlap <= threshold`` against every kept earlier one, as upstream; the greedy picks are
  a compiled loop (:func:`models.kernels.greedy_nms`) with upstream's overlap arithmetic;
* float64 box arithmetic with upstream's widths (``x2 - x1`` for PNet, ``+ 1`` in ``bbreg``),
  ``rerec``, ``np.fix`` truncation and ``pad``; thresholds compared in float32 (numpy 2 compares
  a float32 array with a Python float in float32); landmarks rounded to float32 as upstream
  stores them in its float32 ``points`` array;
* RNet/ONet crops: upstream's zero-padded float64 crop resized with INTER_AREA, computed for all
  boxes at once by :mod:`models.area_resize` (equal to OpenCV's to ~1e-9 of a pixel level).

What is left are the nets' own float32 rounding differences (TF vs PyTorch, ~1e-6).

On CPU the work runs on worker threads with one intra-op thread each
(:class:`models.workers.TorchWorkers`): the pyramid resizes, PNet levels and bands with each
level's candidates and NMS, and for RNet/ONet the candidate crops together with the net, part
by part (the crops are planned in the calling thread). Bands and parts are cut by the input
alone, so results do not depend on the number of workers. Compiled loops
(:mod:`models.kernels`) plan and make the crops and run every NMS; speed-ups that change no
bit: the crops' summed-area table comes from ``cv2.integral``, each PReLU and the pooling
after it are one compiled pass (the nets' ``detect_forward``), and small pyramids run in
whole levels rather than bands.

Face crops follow ``align_dataset_mtcnn.py``: the box grown by ``margin / 2`` pixels *of the
original image* on each side, clipped, truncated to integers, resized to ``image_size`` with
Pillow's bilinear filter (upstream's ``scipy.misc.imresize(..., interp='bilinear')``).
facenet-pytorch's margin is in pixels of the *output* crop instead (``margin * box_size /
(image_size - margin)``) and it resizes with area interpolation: pass
``margin=32, image_size=160`` here for upstream's LFW alignment.

The class offers facenet-pytorch's API (``MTCNN(image_size=160, margin=0, ...)``,
``mtcnn(img)``, ``mtcnn.detect(img, landmarks)``) and the internal one the toolkit uses
(:meth:`MTCNN.detect_faces`, :meth:`MTCNN.extract`).
"""

from __future__ import annotations

import functools
import itertools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from facenet_convert.models.area_resize import CropPlan, CropSource
from facenet_convert.models.mtcnn import ONet, PNet, RNet
from facenet_convert.models.mtcnn_api import SELECTION_METHODS, FacenetPytorchAPI
from facenet_convert.models.mtcnn_boxes import (
    batched_nms,
    regress,
    rerec,
    valid_boxes,
)
from facenet_convert.models.mtcnn_inputs import as_batch, to_uint8_rgb
from facenet_convert.models.mtcnn_schedule import call, part_count, single_threaded_opencv
from facenet_convert.models.preprocessing import (
    ImageLike,
    resize_uint8,
)
from facenet_convert.models.workers import TorchWorkers

MIN_FACE_SIZE = 20
THRESHOLDS = (0.6, 0.7, 0.7)
FACTOR = 0.709
MARGIN = 0
IMAGE_SIZE = 160
_CELL = 12      # PNet's receptive field
_STRIDE = 2     # PNet's output stride
_MTCNN_SCALE = 0.0078125
_MIN_BAND = 150_000   # uint8 values (~220x220 RGB) per PNet band at least
_SIDE_BY_SIDE = 500_000
"""Mean pixels per photo from which a list is detected photo by photo side by side on the
workers rather than as one cascade: large photos gain from it, small ones spend more of their
time in Python, where two photo pipelines would wait on the GIL (docs/performance.md)."""


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


# --------------------------------------------------------------------------- the detector

class _IntegralSource(CropSource):
    """A :class:`CropSource` whose summed-area table comes from ``cv2.integral``: the same
    exact int32 sums (tested equal), far faster than numpy's two cumsums."""

    @property
    def table(self) -> np.ndarray:
        if self._table is None:
            height, width, channels = self.image.shape
            if channels != 3 or height * width * 255 >= 2**31:
                return super().table          # int64 sums (or odd channel counts): numpy
            import cv2

            self._table = cv2.integral(np.ascontiguousarray(self.image), sdepth=cv2.CV_32S)
        return self._table


def _detect_forward(net: nn.Module) -> Callable[[Tensor], Any]:
    """Our own nets' bit-identical detection path (fused PReLU + pooling on CPU); a net
    passed in by the caller is called as it is."""
    return net.detect_forward if type(net) in (PNet, RNet, ONet) else net


def _as_net(net: nn.Module | str | os.PathLike[str] | None, cls: type[nn.Module]) -> nn.Module:
    if isinstance(net, nn.Module):
        return net
    return cls(pretrained=True if net is None else net)


class MTCNN(FacenetPytorchAPI, nn.Module):
    """davidsandberg's MTCNN detection and alignment on PyTorch nets, with facenet-pytorch's API.

    Args (facenet-pytorch's, same defaults):
        image_size: side of the face crops.
        margin: pixels *of the original image* added around each box before cropping
            (upstream align_dataset_mtcnn semantics; facenet-pytorch measures it in the output).
        min_face_size, thresholds, factor: upstream's ``minsize``, ``threshold``, ``factor``.
        post_process: crops standardized as ``(x - 127.5) / 128`` (else float 0..255).
        select_largest: order faces largest first (else by probability); picks the face kept
            when ``keep_all`` is False and no ``selection_method`` is given.
        selection_method: "probability", "largest", "largest_over_threshold" (largest with
            probability > 0.9), "center_weighted_size" (facenet-pytorch's), or "upstream"
            (align_dataset_mtcnn's: argmax of area minus twice the squared centre offset).
        keep_all: return every face instead of one.
        device: where the nets run.
        pnet, rnet, onet: a net, a weights file, or None for the weights shipped in the
            package (see :mod:`facenet_convert.models.shipped`).
    """

    def __init__(self, image_size: int = IMAGE_SIZE, margin: float = MARGIN,
                 min_face_size: float = MIN_FACE_SIZE,
                 thresholds: Sequence[float] = THRESHOLDS, factor: float = FACTOR,
                 post_process: bool = True, select_largest: bool = True,
                 selection_method: str | None = None, keep_all: bool = False,
                 device: str | torch.device | None = None, *,
                 pnet: nn.Module | str | os.PathLike[str] | None = None,
                 rnet: nn.Module | str | os.PathLike[str] | None = None,
                 onet: nn.Module | str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        if len(thresholds) != 3:
            raise ValueError(f"thresholds needs 3 values (PNet, RNet, ONet), got {thresholds!r}")
        if not 0 < factor < 1:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        if min_face_size <= 0 or image_size <= 0 or margin < 0:
            raise ValueError("min_face_size and image_size must be positive, margin >= 0")
        if selection_method is not None and selection_method not in SELECTION_METHODS:
            raise ValueError(f"selection_method must be one of {', '.join(SELECTION_METHODS)}, "
                             f"not {selection_method!r}")
        self.pnet = _as_net(pnet, PNet)
        self.rnet = _as_net(rnet, RNet)
        self.onet = _as_net(onet, ONet)
        self.image_size = int(image_size)
        self.margin = float(margin)
        self.min_face_size = float(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = float(factor)
        self.post_process = bool(post_process)
        self.select_largest = bool(select_largest)
        self.selection_method = selection_method or (
            "largest" if select_largest else "probability")
        self.keep_all = bool(keep_all)
        for net in (self.pnet, self.rnet, self.onet):     # oneDNN's faster CPU convolutions
            net.to(memory_format=torch.channels_last)
        self._workers = TorchWorkers(torch.get_num_threads(), "mtcnn")
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
            scales.append(float(m * np.power(self.factor, count)))
            shortest *= self.factor
            count += 1
        return scales

    # ----------------------------------------------------------------------- internal API

    @torch.inference_mode()
    def detect_faces(self, images: ImageLike | Sequence[ImageLike]) -> list[FaceDetections]:
        """Faces of each image (uint8 RGB arrays, PIL images, HWC tensors, or a list).

        A list is one cascade: equal-sized levels share a PNet forward, RNet/ONet see all
        candidates of all photos. Except on CPU with several workers for large photos (see
        :data:`_SIDE_BY_SIDE`): there each photo is detected on one worker from start to end,
        side by side, and gets exactly its result alone.
        """
        arrays, _ = as_batch(images)
        side_by_side = (len(arrays) > 1 and self.device.type == "cpu" and self._workers.count > 1
                        and np.mean([a.shape[0] * a.shape[1] for a in arrays]) >= _SIDE_BY_SIDE)
        with single_threaded_opencv():
            if side_by_side:
                return [found for one in self._workers.map(self._cascade, [[a] for a in arrays])
                        for found in one]
            return self._cascade(arrays)

    @torch.inference_mode()
    def _cascade(self, arrays: list[np.ndarray]) -> list[FaceDetections]:
        """Upstream's three stages over the images at once."""
        sources: dict[int, CropSource] = {index: _IntegralSource(array)
                                          for index, array in enumerate(arrays)}
        # the crops' tables are built on the workers while PNet runs
        boxes, image_of = self._stage_one(arrays, [source.prepare for source in sources.values()])
        boxes, image_of = self._stage_two(sources, boxes, image_of)
        boxes, probs, marks, image_of = self._stage_three(sources, boxes, image_of)
        results = []
        for index in range(len(arrays)):
            mask = image_of == index
            results.append(FaceDetections(
                boxes=torch.from_numpy(np.ascontiguousarray(boxes[mask])),
                probs=torch.from_numpy(np.ascontiguousarray(probs[mask])),
                landmarks=torch.from_numpy(np.ascontiguousarray(marks[mask]))))
        return results

    def _parallel(self, function: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """``function`` over ``items`` on CPU worker threads with one intra-op thread each
        (:class:`models.workers.TorchWorkers`): pyramid levels, bands and net parts are
        independent."""
        if self.device.type != "cpu":
            with torch.inference_mode():
                return [function(item) for item in items]
        return self._workers.map(function, items)

    def _pnet_candidates(self, arrays: list[np.ndarray],
                         prepare: Sequence[Callable[[], object]] = ()
                         ) -> list[tuple[int, np.ndarray]]:
        """(image, candidates) per pyramid level, per image in upstream's scale order; the
        candidates are :meth:`_level_candidates` rows. Equal level sizes share a forward.

        Small levels are one task each: resize, forward and candidates, so that the
        pyramid and PNet run without a barrier between them. Large levels are resized
        first (side by side with the small levels) and then cut into bands of output rows
        (output row r sees input rows 2r .. 2r + 11), so that every worker gets a similar
        share; their candidates follow. ``prepare`` runs on the workers in the longest
        phase (the crop sources' tables for the next stages).
        """
        import cv2

        levels: dict[tuple[int, int], list[tuple[int, float]]] = {}
        for index, image in enumerate(arrays):
            height, width = image.shape[:2]
            for scale in self.scales(height, width):
                shape = (math.ceil(height * scale), math.ceil(width * scale))
                levels.setdefault(shape, []).append((index, scale))
        groups = list(levels.items())
        sizes = [len(members) * hs * ws * 3 for (hs, ws), members in groups]   # uint8 values
        # not by thread count: same bands, same numbers; small pyramids in whole levels (a
        # band costs a dozen op dispatches and 10 recomputed input rows)
        target = max(sum(sizes) // 8, _MIN_BAND)
        device = self.device
        pnet = _detect_forward(self.pnet)

        def resize(number: int) -> np.ndarray:
            (hs, ws), members = groups[number]
            return np.stack([cv2.resize(arrays[index], (ws, hs), interpolation=cv2.INTER_AREA)
                             for index, _ in members])

        def forward(band: np.ndarray) -> tuple[Tensor, Tensor]:
            x = torch.from_numpy(np.ascontiguousarray(band)).to(device)
            x = x.permute(0, 3, 1, 2).to(torch.float32)
            x = ((x - 127.5) * _MTCNN_SCALE).contiguous(memory_format=torch.channels_last)
            reg, prob = pnet(x)
            return reg.cpu().contiguous(), prob[:, 1].cpu().contiguous()

        def candidates(number: int, face: Tensor, reg: Tensor) -> list[np.ndarray]:
            return [self._level_candidates(scale, face[k], reg[k])
                    for k, (_, scale) in enumerate(groups[number][1])]

        def whole(number: int) -> list[np.ndarray]:
            reg, face = forward(resize(number))
            return candidates(number, face, reg)

        band_edges: dict[int, list[int]] = {}
        for number, ((hs, _), _) in enumerate(groups):
            rows = math.ceil((hs - 2) / 2) - 4                         # PNet's output rows
            bands = max(1, min(rows // 8, math.ceil(sizes[number] / target)))
            if bands > 1:
                band_edges[number] = np.linspace(0, rows, bands + 1).round().astype(int).tolist()
        first: list[Callable[[], object]] = [
            functools.partial(resize if number in band_edges else whole, number)
            for number in range(len(groups))]
        side = list(prepare)          # first: a long task last would leave a worker idle
        results = self._parallel(call, ([] if band_edges else side) + first)
        results = results[len(results) - len(groups):]
        found = {number: result for number, result in enumerate(results)
                 if number not in band_edges}
        if band_edges:
            bands_of: list[tuple[int, Callable[[], object]]] = []
            for number, edges in band_edges.items():
                batch = results[number]
                rows = edges[-1]
                for low, high in itertools.pairwise(edges):
                    stop = batch.shape[1] if high == rows else 2 * high + 10
                    bands_of.append((number, functools.partial(forward,
                                                               batch[:, 2 * low:stop])))
            parts: dict[int, list[Any]] = {}
            done = self._parallel(call, side + [job for _, job in bands_of])
            for (number, _), result in zip(bands_of, done[len(side):], strict=True):
                parts.setdefault(number, []).append(result)
            jobs = [functools.partial(candidates, number,
                                      torch.cat([f for _, f in pieces], dim=1),
                                      torch.cat([r for r, _ in pieces], dim=2))
                    for number, pieces in parts.items()]
            found.update(zip(parts, self._parallel(call, jobs), strict=True))
        keyed = [(groups[number][1][k][0], -groups[number][1][k][1], number, k)
                 for number in found for k in range(len(groups[number][1]))]
        return [(index, found[number][k]) for index, _, number, k in sorted(keyed)]

    def _level_candidates(self, scale: float, face: Tensor, reg: Tensor) -> np.ndarray:
        """One level's PNet candidates as upstream's ``generateBoundingBox`` + ``nms(0.5)``:
        rows ``[q1 (2), q2 (2), score, regression (4)]`` in picking order."""
        # upstream's order: np.where over the transposed map, i.e. column-major
        cols, rows = torch.nonzero(face.T >= self.thresholds[0], as_tuple=True)
        if cols.numel() == 0:
            return np.empty((0, 9))
        cols_np, rows_np = cols.numpy(), rows.numpy()
        reg_cols = cols_np
        if cols_np.size == 1:             # upstream's np.flipud on a single candidate
            reg_cols = face.shape[1] - 1 - cols_np
        cells = np.stack([cols_np, rows_np], axis=1).astype(np.int64)
        q1 = np.fix((_STRIDE * cells + 1) / scale)
        q2 = np.fix((_STRIDE * cells + _CELL - 1 + 1) / scale)
        score = face.numpy()[rows_np, cols_np].astype(np.float64)
        regs = reg.numpy()[:, rows_np, reg_cols].T.astype(np.float64)
        boxes = np.hstack([q1, q2, score[:, None], regs])
        keep = batched_nms(boxes[:, :4], boxes[:, 4], np.zeros(len(boxes), dtype=np.int64),
                           0.5, "union")
        return boxes[keep]

    def _stage_one(self, arrays: list[np.ndarray], prepare: Sequence[Callable[[], object]] = ()
                   ) -> tuple[np.ndarray, np.ndarray]:
        levels = self._pnet_candidates(arrays, prepare)
        if not any(len(boxes) for _, boxes in levels):
            return np.empty((0, 4)), np.empty(0, dtype=np.int64)
        boxes = np.concatenate([found for _, found in levels])
        image_of = np.concatenate([np.full(len(found), index, dtype=np.int64)
                                   for index, found in levels])
        keep = batched_nms(boxes[:, :4], boxes[:, 4], image_of, 0.7, "union")
        boxes, image_of = boxes[keep], image_of[keep]
        boxes = rerec(regress(boxes[:, :4], boxes[:, 5:9], plus_one=False))
        return np.fix(boxes).astype(np.int32).astype(np.float64), image_of

    def _classify(self, net: Callable[[Tensor], Any], sources: dict[int, CropSource],
                  boxes: np.ndarray, image_of: np.ndarray, size: int) -> list[np.ndarray]:
        """``net`` over upstream's candidate crops of ``boxes``: its outputs in box order.

        Crops are planned here for all boxes (:class:`CropPlan`); each worker then makes one
        part's crops, already scaled for the net (one compiled loop that releases the GIL),
        and runs the net on them, so crops and nets of different parts proceed side by side.
        Parts depend on the boxes alone, not on the thread count.
        """
        tasks = []
        for index in np.unique(image_of).tolist():
            chosen = np.flatnonzero(image_of == index)
            plan = CropPlan(sources[index], boxes[chosen], size)
            tasks.extend((chosen, plan, part) for part in plan.parts(part_count(chosen.size,
                                                                                size)))
        device = self.device

        def forward(task: tuple[np.ndarray, CropPlan, slice]) -> tuple[np.ndarray, list[Tensor]]:
            chosen, plan, part = task
            crops = plan.compute(part, 127.5, _MTCNN_SCALE, np.float32).permute(0, 3, 1, 2)
            return chosen[part], [t.cpu() for t in net(crops.to(device))]

        results = self._parallel(forward, tasks)
        order = np.concatenate([positions for positions, _ in results])
        outputs = [torch.cat(parts).numpy() for parts in zip(*(o for _, o in results),
                                                             strict=True)]
        placed = []
        for output in outputs:
            out = np.empty_like(output)
            out[order] = output
            placed.append(out)
        return placed

    def _stage_two(self, sources: dict[int, CropSource], boxes: np.ndarray,
                   image_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        valid = valid_boxes(boxes)
        boxes, image_of = boxes[valid], image_of[valid]
        if boxes.shape[0] == 0:
            return boxes, image_of
        reg, prob = self._classify(_detect_forward(self.rnet), sources, boxes, image_of, 24)
        score = prob[:, 1]
        passed = score > np.float32(self.thresholds[1])
        boxes, score, reg, image_of = boxes[passed], score[passed].astype(np.float64), \
            reg[passed], image_of[passed]
        keep = batched_nms(boxes, score, image_of, 0.7, "union")
        boxes = rerec(regress(boxes[keep], reg[keep].astype(np.float64), plus_one=True))
        return boxes, image_of[keep]

    def _stage_three(self, sources: dict[int, CropSource], boxes: np.ndarray,
                     image_of: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        boxes = np.fix(boxes).astype(np.int32).astype(np.float64)
        valid = valid_boxes(boxes)
        boxes, image_of = boxes[valid], image_of[valid]
        if boxes.shape[0] == 0:
            return (np.empty((0, 4)), np.empty(0, dtype=np.float32), np.empty((0, 5, 2)),
                    image_of)
        reg, marks, prob = self._classify(_detect_forward(self.onet), sources, boxes, image_of,
                                          48)
        score = prob[:, 1]
        passed = score > np.float32(self.thresholds[2])
        boxes, score, reg, marks, image_of = boxes[passed], score[passed], reg[passed], \
            marks[passed], image_of[passed]
        w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        xs = (w * marks[:, 0:5] + boxes[:, 0:1] - 1).astype(np.float32)
        ys = (h * marks[:, 5:10] + boxes[:, 1:2] - 1).astype(np.float32)
        landmarks = np.stack([xs, ys], axis=2).astype(np.float64)
        boxes = regress(boxes, reg.astype(np.float64), plus_one=True)
        keep = batched_nms(boxes, score.astype(np.float64), image_of, 0.7, "min")
        return boxes[keep], score[keep], landmarks[keep], image_of[keep]

    def crop_box(self, box: Sequence[float], height: int, width: int) -> tuple[int, int, int, int]:
        """The margin-grown, clipped, truncated crop ``(x0, y0, x1, y1)`` of one box."""
        half = self.margin / 2
        x0 = int(max(box[0] - half, 0))
        y0 = int(max(box[1] - half, 0))
        x1 = int(min(box[2] + half, width))
        y1 = int(min(box[3] + half, height))
        return x0, y0, x1, y1

    def extract(self, image: ImageLike, detections: FaceDetections | np.ndarray | Tensor
                ) -> Tensor:
        """uint8 ``(n, 3, image_size, image_size)`` RGB face crops, as align_dataset_mtcnn."""
        array = to_uint8_rgb(image)
        height, width = array.shape[:2]
        boxes = detections.boxes if isinstance(detections, FaceDetections) else detections
        crops = []
        for box in np.asarray(boxes, dtype=np.float64).reshape(-1, 4).tolist():
            x0, y0, x1, y1 = self.crop_box(box, height, width)
            if x1 <= x0 or y1 <= y0:
                crops.append(np.zeros((self.image_size, self.image_size, 3), dtype=np.uint8))
                continue
            crops.append(resize_uint8(array[y0:y1, x0:x1], self.image_size))
        if not crops:
            return torch.empty((0, 3, self.image_size, self.image_size), dtype=torch.uint8)
        return torch.from_numpy(np.stack(crops).transpose(0, 3, 1, 2).copy())

    # ----------------------------------------------------------------------- facenet-pytorch API
