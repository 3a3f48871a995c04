"""The MTCNN cascade as functions of the nets, thresholds and a parallel map: upstream
``detect_face``'s three stages, step for step (see :mod:`facenet_convert.models.mtcnn.detector` for
what "step for step" covers), on many images at once.

:class:`Cascade` holds what every stage needs; :func:`detect` runs the stages. Bands of PNet
levels and parts of RNet/ONet crops are cut by the input alone, so results never depend on the
map (one thread, many threads, or a GPU's plain loop).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from facenet_convert.models.area_resize import CropPlan, CropSource
from facenet_convert.models.mtcnn.boxes import batched_nms, regress, rerec, valid_boxes
from facenet_convert.models.mtcnn.schedule import call, part_count

CELL = 12      # PNet's receptive field
STRIDE = 2     # PNet's output stride
MTCNN_SCALE = 0.0078125
MIN_BAND = 150_000   # uint8 values (~220x220 RGB) per PNet band at least

ParallelMap = Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]]


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


class IntegralSource(CropSource):
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


@dataclass(frozen=True)
class Cascade:
    """What the stages need: each net's detection forward, upstream's thresholds, the
    pyramid's settings, where the nets run, and the parallel map the work is spread with."""

    pnet: Callable[[Tensor], Any]
    rnet: Callable[[Tensor], Any]
    onet: Callable[[Tensor], Any]
    thresholds: tuple[float, float, float]
    min_face_size: float
    factor: float
    device: torch.device
    pmap: ParallelMap


def pyramid_scales(height: int, width: int, min_face_size: float, factor: float) -> list[float]:
    """Upstream's pyramid scales for an image of this size (may be empty)."""
    m = 12.0 / min_face_size
    shortest = min(height, width) * m
    scales = []
    count = 0
    while shortest >= 12:
        scales.append(float(m * np.power(factor, count)))
        shortest *= factor
        count += 1
    return scales


@torch.inference_mode()
def detect(arrays: list[np.ndarray], cascade: Cascade) -> list[FaceDetections]:
    """Upstream's three stages over the images at once."""
    sources: dict[int, CropSource] = {index: IntegralSource(array)
                                      for index, array in enumerate(arrays)}
    # the crops' tables are built on the workers while PNet runs
    boxes, image_of = stage_one(arrays, cascade, [source.prepare for source in sources.values()])
    boxes, image_of = stage_two(sources, boxes, image_of, cascade)
    boxes, probs, marks, image_of = stage_three(sources, boxes, image_of, cascade)
    results = []
    for index in range(len(arrays)):
        mask = image_of == index
        results.append(FaceDetections(
            boxes=torch.from_numpy(np.ascontiguousarray(boxes[mask])),
            probs=torch.from_numpy(np.ascontiguousarray(probs[mask])),
            landmarks=torch.from_numpy(np.ascontiguousarray(marks[mask]))))
    return results


# ----------------------------------------------------------------------------- stage one

Groups = list[tuple[tuple[int, int], list[tuple[int, float]]]]


def _resize(arrays: list[np.ndarray], groups: Groups, number: int) -> np.ndarray:
    """One pyramid level of every image that has it, resized as upstream (INTER_AREA)."""
    import cv2

    (hs, ws), members = groups[number]
    return np.stack([cv2.resize(arrays[index], (ws, hs), interpolation=cv2.INTER_AREA)
                     for index, _ in members])


def _pnet_forward(cascade: Cascade, band: np.ndarray) -> tuple[Tensor, Tensor]:
    """PNet on a batch of uint8 levels (or bands of them): regression and face maps."""
    x = torch.from_numpy(np.ascontiguousarray(band)).to(cascade.device)
    x = x.permute(0, 3, 1, 2).to(torch.float32)
    x = ((x - 127.5) * MTCNN_SCALE).contiguous(memory_format=torch.channels_last)
    reg, prob = cascade.pnet(x)
    return reg.cpu().contiguous(), prob[:, 1].cpu().contiguous()


def _group_candidates(cascade: Cascade, groups: Groups, number: int, face: Tensor,
                      reg: Tensor) -> list[np.ndarray]:
    return [level_candidates(scale, face[k], reg[k], cascade.thresholds[0])
            for k, (_, scale) in enumerate(groups[number][1])]


def _joined_candidates(cascade: Cascade, groups: Groups, number: int,
                       pieces: list[tuple[Tensor, Tensor]]) -> list[np.ndarray]:
    """A banded level's candidates, its bands joined on the worker (a copy of every map)."""
    face = torch.cat([f for _, f in pieces], dim=1)
    reg = torch.cat([r for r, _ in pieces], dim=2)
    return _group_candidates(cascade, groups, number, face, reg)


def _whole_level(arrays: list[np.ndarray], cascade: Cascade, groups: Groups,
                 number: int) -> list[np.ndarray]:
    """A small level in one task: resize, forward, candidates."""
    reg, face = _pnet_forward(cascade, _resize(arrays, groups, number))
    return _group_candidates(cascade, groups, number, face, reg)


def _band_edges(groups: Groups, sizes: list[int]) -> dict[int, list[int]]:
    """Output-row edges of the bands each large level is cut into (by the input alone, not
    the thread count: same bands, same numbers; small pyramids in whole levels, since a band
    costs a dozen op dispatches and 10 recomputed input rows)."""
    target = max(sum(sizes) // 8, MIN_BAND)
    edges: dict[int, list[int]] = {}
    for number, ((hs, _), _) in enumerate(groups):
        rows = math.ceil((hs - 2) / 2) - 4                         # PNet's output rows
        bands = max(1, min(rows // 8, math.ceil(sizes[number] / target)))
        if bands > 1:
            edges[number] = np.linspace(0, rows, bands + 1).round().astype(int).tolist()
    return edges


def pnet_candidates(arrays: list[np.ndarray], cascade: Cascade,
                    prepare: Sequence[Callable[[], object]] = ()
                    ) -> list[tuple[int, np.ndarray]]:
    """(image, candidates) per pyramid level, per image in upstream's scale order; the
    candidates are :func:`level_candidates` rows. Equal level sizes share a forward.

    Small levels are one task each (resize, forward, candidates), so that the pyramid and
    PNet run without a barrier between them. Large levels are resized first (side by side
    with the small levels), then cut into bands of output rows (output row r sees input rows
    2r .. 2r + 11) so that every worker gets a similar share; their candidates follow.
    ``prepare`` runs on the workers in the longest phase (the crop sources' tables).
    """
    levels: dict[tuple[int, int], list[tuple[int, float]]] = {}
    for index, image in enumerate(arrays):
        height, width = image.shape[:2]
        for scale in pyramid_scales(height, width, cascade.min_face_size, cascade.factor):
            shape = (math.ceil(height * scale), math.ceil(width * scale))
            levels.setdefault(shape, []).append((index, scale))
    groups = list(levels.items())
    sizes = [len(members) * hs * ws * 3 for (hs, ws), members in groups]   # uint8 values
    band_edges = _band_edges(groups, sizes)
    first: list[Callable[[], object]] = [
        functools.partial(_resize, arrays, groups, number) if number in band_edges
        else functools.partial(_whole_level, arrays, cascade, groups, number)
        for number in range(len(groups))]
    side = list(prepare)          # first: a long task last would leave a worker idle
    results = cascade.pmap(call, ([] if band_edges else side) + first)
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
                bands_of.append((number, functools.partial(_pnet_forward, cascade,
                                                           batch[:, 2 * low:stop])))
        parts: dict[int, list[Any]] = {}
        done = cascade.pmap(call, side + [job for _, job in bands_of])
        for (number, _), result in zip(bands_of, done[len(side):], strict=True):
            parts.setdefault(number, []).append(result)
        jobs = [functools.partial(_joined_candidates, cascade, groups, number, pieces)
                for number, pieces in parts.items()]
        found.update(zip(parts, cascade.pmap(call, jobs), strict=True))
    keyed = [(groups[number][1][k][0], -groups[number][1][k][1], number, k)
             for number in found for k in range(len(groups[number][1]))]
    return [(index, found[number][k]) for index, _, number, k in sorted(keyed)]


def level_candidates(scale: float, face: Tensor, reg: Tensor, threshold: float) -> np.ndarray:
    """One level's PNet candidates as upstream's ``generateBoundingBox`` + ``nms(0.5)``:
    rows ``[q1 (2), q2 (2), score, regression (4)]`` in picking order."""
    # upstream's order: np.where over the transposed map, i.e. column-major
    cols, rows = torch.nonzero(face.T >= threshold, as_tuple=True)
    if cols.numel() == 0:
        return np.empty((0, 9))
    cols_np, rows_np = cols.numpy(), rows.numpy()
    reg_cols = cols_np
    if cols_np.size == 1:             # upstream's np.flipud on a single candidate
        reg_cols = face.shape[1] - 1 - cols_np
    cells = np.stack([cols_np, rows_np], axis=1).astype(np.int64)
    q1 = np.fix((STRIDE * cells + 1) / scale)
    q2 = np.fix((STRIDE * cells + CELL - 1 + 1) / scale)
    score = face.numpy()[rows_np, cols_np].astype(np.float64)
    regs = reg.numpy()[:, rows_np, reg_cols].T.astype(np.float64)
    boxes = np.hstack([q1, q2, score[:, None], regs])
    keep = batched_nms(boxes[:, :4], boxes[:, 4], np.zeros(len(boxes), dtype=np.int64),
                       0.5, "union")
    return boxes[keep]


def stage_one(arrays: list[np.ndarray], cascade: Cascade,
              prepare: Sequence[Callable[[], object]] = ()) -> tuple[np.ndarray, np.ndarray]:
    """PNet over the pyramids, then upstream's cross-level NMS, regression and squaring."""
    levels = pnet_candidates(arrays, cascade, prepare)
    if not any(len(boxes) for _, boxes in levels):
        return np.empty((0, 4)), np.empty(0, dtype=np.int64)
    boxes = np.concatenate([found for _, found in levels])
    image_of = np.concatenate([np.full(len(found), index, dtype=np.int64)
                               for index, found in levels])
    keep = batched_nms(boxes[:, :4], boxes[:, 4], image_of, 0.7, "union")
    boxes, image_of = boxes[keep], image_of[keep]
    boxes = rerec(regress(boxes[:, :4], boxes[:, 5:9], plus_one=False))
    return np.fix(boxes).astype(np.int32).astype(np.float64), image_of


# ----------------------------------------------------------------------- stages two, three

def _classify_part(net: Callable[[Tensor], Any], device: torch.device,
                   task: tuple[np.ndarray, CropPlan, slice]) -> tuple[np.ndarray, list[Tensor]]:
    chosen, plan, part = task
    crops = plan.compute(part, 127.5, MTCNN_SCALE, np.float32).permute(0, 3, 1, 2)
    return chosen[part], [t.cpu() for t in net(crops.to(device))]


def classify(net: Callable[[Tensor], Any], sources: dict[int, CropSource], boxes: np.ndarray,
             image_of: np.ndarray, size: int, cascade: Cascade) -> list[np.ndarray]:
    """``net`` over upstream's candidate crops of ``boxes``: its outputs in box order.

    Crops are planned here for all boxes (:class:`CropPlan`); each worker then makes one
    part's crops, already scaled for the net (one compiled loop that releases the GIL), and
    runs the net on them, so crops and nets of different parts proceed side by side. Parts
    depend on the boxes alone, not on the thread count.
    """
    tasks = []
    for index in np.unique(image_of).tolist():
        chosen = np.flatnonzero(image_of == index)
        plan = CropPlan(sources[index], boxes[chosen], size)
        tasks.extend((chosen, plan, part) for part in plan.parts(part_count(chosen.size, size)))
    results = cascade.pmap(functools.partial(_classify_part, net, cascade.device), tasks)
    order = np.concatenate([positions for positions, _ in results])
    outputs = [torch.cat(parts).numpy() for parts in zip(*(o for _, o in results),
                                                         strict=True)]
    placed = []
    for output in outputs:
        out = np.empty_like(output)
        out[order] = output
        placed.append(out)
    return placed


def stage_two(sources: dict[int, CropSource], boxes: np.ndarray, image_of: np.ndarray,
              cascade: Cascade) -> tuple[np.ndarray, np.ndarray]:
    """RNet on 24x24 crops, its threshold, NMS, regression and squaring."""
    valid = valid_boxes(boxes)
    boxes, image_of = boxes[valid], image_of[valid]
    if boxes.shape[0] == 0:
        return boxes, image_of
    reg, prob = classify(cascade.rnet, sources, boxes, image_of, 24, cascade)
    score = prob[:, 1]
    passed = score > np.float32(cascade.thresholds[1])
    boxes, score, reg, image_of = boxes[passed], score[passed].astype(np.float64), \
        reg[passed], image_of[passed]
    keep = batched_nms(boxes, score, image_of, 0.7, "union")
    boxes = rerec(regress(boxes[keep], reg[keep].astype(np.float64), plus_one=True))
    return boxes, image_of[keep]


def stage_three(sources: dict[int, CropSource], boxes: np.ndarray, image_of: np.ndarray,
                cascade: Cascade) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ONet on 48x48 crops: its threshold, the landmarks, regression and the final NMS."""
    boxes = np.fix(boxes).astype(np.int32).astype(np.float64)
    valid = valid_boxes(boxes)
    boxes, image_of = boxes[valid], image_of[valid]
    if boxes.shape[0] == 0:
        return (np.empty((0, 4)), np.empty(0, dtype=np.float32), np.empty((0, 5, 2)),
                image_of)
    reg, marks, prob = classify(cascade.onet, sources, boxes, image_of, 48, cascade)
    score = prob[:, 1]
    passed = score > np.float32(cascade.thresholds[2])
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
