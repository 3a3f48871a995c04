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

With ``alignment="similarity"`` the crops are rotated and scaled instead, so that the five
landmarks land on a template (:mod:`models.face_alignment`: Umeyama's least-squares similarity,
``cv2.warpAffine``); a tilted face then reaches the embedding net upright. The default
``"box"`` crops as above, bit for bit.

The class offers facenet-pytorch's API (``MTCNN(image_size=160, margin=0, ...)``,
``mtcnn(img)``, ``mtcnn.detect(img, landmarks)``) and the internal one the toolkit uses
(:meth:`MTCNN.detect_faces`, :meth:`MTCNN.extract`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from facenet_convert.converter.core.errors import LandmarkError
from facenet_convert.models.face_alignment import ALIGNMENTS, TEMPLATES, align_face
from facenet_convert.models.mtcnn.api import SELECTION_METHODS, FacenetPytorchAPI
from facenet_convert.models.mtcnn.cascade import (
    Cascade,
    FaceDetections,
    detect,
    pyramid_scales,
)
from facenet_convert.models.mtcnn.inputs import as_batch, to_uint8_rgb
from facenet_convert.models.mtcnn.nets import ONet, PNet, RNet
from facenet_convert.models.mtcnn.schedule import single_threaded_opencv
from facenet_convert.models.preprocessing import (
    ImageLike,
    resize_uint8,
)
from facenet_convert.models.pretrained_folder import Layout, PretrainedFolderMixin
from facenet_convert.models.workers import TorchWorkers

MIN_FACE_SIZE = 20
THRESHOLDS = (0.6, 0.7, 0.7)
FACTOR = 0.709
#: The pyramid's bounds: a factor near 1 makes levels without end (a level per 1e-9 of
#: shrinking), and a face size near 0 scales the first level up without end.
MAX_FACTOR = 0.95
MIN_FACE_SIZE_FLOOR = 1.0
MARGIN = 0
IMAGE_SIZE = 160
Item = TypeVar("Item")
Result = TypeVar("Result")
_SIDE_BY_SIDE = 500_000
"""Mean pixels per photo from which a list is detected photo by photo side by side on the
workers rather than as one cascade: large photos gain from it, small ones spend more of their
time in Python, where two photo pipelines would wait on the GIL (docs/performance.md)."""


def _detect_forward(net: nn.Module) -> Callable[[Tensor], Any]:
    """Our own nets' bit-identical detection path (fused PReLU + pooling on CPU); a net
    passed in by the caller is called as it is."""
    return net.detect_forward if type(net) in (PNet, RNet, ONet) else net


def _as_net(net: nn.Module | str | os.PathLike[str] | None, cls: type[nn.Module]) -> nn.Module:
    if isinstance(net, nn.Module):
        return net
    return cls(pretrained=True if net is None else net)


class MTCNN(PretrainedFolderMixin, FacenetPytorchAPI, nn.Module):
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
        alignment: "box" (upstream's crop of the margin-grown box) or "similarity" (rotated
            and scaled onto ``template`` from the five landmarks; ``margin`` does not apply).
        template: "facenet" (where upstream's 160 px / margin 32 box crop puts an upright
            face) or "arcface" (insightface's), scaled to ``image_size``.

    ``from_pretrained(folder_or_repo_id, **settings)`` / ``save_pretrained(folder)``: a Hub
    folder holds the three nets (``pnet.*``, ``rnet.*``, ``onet.*``) and the detector
    settings, which ``settings`` override (:mod:`facenet_convert.models.pretrained_folder`).
    """

    HUB_ARCHITECTURE = "mtcnn"
    HUB_FIXED_ARGUMENTS: ClassVar[tuple[str, ...]] = ("pnet", "rnet", "onet")

    def __init__(self, image_size: int = IMAGE_SIZE, margin: float = MARGIN,
                 min_face_size: float = MIN_FACE_SIZE,
                 thresholds: Sequence[float] = THRESHOLDS, factor: float = FACTOR,
                 post_process: bool = True, select_largest: bool = True,
                 selection_method: str | None = None, keep_all: bool = False,
                 device: str | torch.device | None = None, *,
                 pnet: nn.Module | str | os.PathLike[str] | None = None,
                 rnet: nn.Module | str | os.PathLike[str] | None = None,
                 onet: nn.Module | str | os.PathLike[str] | None = None,
                 alignment: str = "box", template: str = "facenet") -> None:
        super().__init__()
        if len(thresholds) != 3:
            raise ValueError(f"thresholds needs 3 values (PNet, RNet, ONet), got {thresholds!r}")
        if not 0 < factor <= MAX_FACTOR:
            raise ValueError(f"factor must be in (0, {MAX_FACTOR}], got {factor}")
        if not min_face_size >= MIN_FACE_SIZE_FLOOR or image_size <= 0 or not margin >= 0:
            raise ValueError(f"min_face_size must be >= {MIN_FACE_SIZE_FLOOR:g}, image_size "
                             "positive and margin >= 0")
        if selection_method is not None and selection_method not in SELECTION_METHODS:
            raise ValueError(f"selection_method must be one of {', '.join(SELECTION_METHODS)}, "
                             f"not {selection_method!r}")
        if alignment not in ALIGNMENTS:
            raise ValueError(f"alignment must be one of {', '.join(ALIGNMENTS)}, "
                             f"not {alignment!r}")
        if template not in TEMPLATES:
            raise ValueError(f"template must be one of {', '.join(TEMPLATES)}, not {template!r}")
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
        self.alignment = alignment
        self.template = template
        for net in (self.pnet, self.rnet, self.onet):     # oneDNN's faster CPU convolutions
            net.to(memory_format=torch.channels_last)
        # every detection task on one intra-op thread, alone or side by side: results do not
        # depend on the core count, nor on how many photos are in flight (detect_each)
        self._workers = TorchWorkers(torch.get_num_threads(), "mtcnn", pin_single=True)
        self.eval()
        if device is not None:
            self.to(device)

    def hub_facts(self) -> dict[str, Any]:
        return {"detector": {
            "image_size": self.image_size, "margin": self.margin,
            "min_face_size": self.min_face_size, "thresholds": list(self.thresholds),
            "factor": self.factor, "post_process": self.post_process,
            "select_largest": self.select_largest, "selection_method": self.selection_method,
            "keep_all": self.keep_all, "alignment": self.alignment, "template": self.template}}

    @classmethod
    def hub_build(cls, config: Any, **kwargs: Any) -> nn.Module:
        """Unloaded nets (no shipped weights read) under the folder's settings, ``kwargs``
        overriding them."""
        return cls(**{**config["detector"], **kwargs}, pnet=PNet(), rnet=RNet(), onet=ONet())

    @classmethod
    def hub_layout(cls, config: Any) -> Layout:
        return {f"{name}.{key}": value for name, net in (("pnet", PNet), ("rnet", RNet),
                                                           ("onet", ONet))
                for key, value in net.hub_layout(config).items()}

    @property
    def device(self) -> torch.device:
        return next(self.pnet.parameters()).device

    def scales(self, height: int, width: int) -> list[float]:
        """Upstream's pyramid scales for an image of this size (may be empty)."""
        return pyramid_scales(height, width, self.min_face_size, self.factor)

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

    def detect_each(self, images: Sequence[ImageLike]) -> list[FaceDetections]:
        """Faces of each image, every image detected as if alone (the same bits as one
        ``detect_faces`` call per image), several in flight on the workers."""
        arrays = [to_uint8_rgb(image) for image in images]
        return list(self.each_photo(self._detect_one, arrays, window=len(arrays)))

    def each_photo(self, function: Callable[[Item], Result], items: Iterable[Item],
                   window: int | None = None) -> Iterator[Result]:
        """``function(item)`` for each item as it comes, in order, ``window`` items (twice
        the workers by default) in flight on the detector's CPU workers, for a stream of
        photos: ``function`` reads one photo, calls :meth:`detect_faces` on it and crops
        it. A photo detected inside a worker stays on that worker, so every photo gets the
        same bits as alone, and a folder of photos keeps every core busy without the
        barriers inside one small photo or after a group of them. Off the CPU, one item
        after another."""
        if self.device.type != "cpu":
            for item in items:
                with torch.inference_mode():
                    result = function(item)
                yield result
            return
        with single_threaded_opencv():
            yield from self._workers.imap(function, items, window or 2 * self._workers.count)

    def _detect_one(self, array: np.ndarray) -> FaceDetections:
        return self._cascade([array])[0]

    def _cascade_of(self) -> Cascade:
        return Cascade(_detect_forward(self.pnet), _detect_forward(self.rnet),
                       _detect_forward(self.onet), self.thresholds, self.min_face_size,
                       self.factor, self.device, self._parallel)

    def _cascade(self, arrays: list[np.ndarray]) -> list[FaceDetections]:
        return detect(arrays, self._cascade_of())

    def _parallel(self, function: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """``function`` over ``items`` on CPU worker threads with one intra-op thread each
        (:class:`models.workers.TorchWorkers`): pyramid levels, bands and net parts are
        independent."""
        if self.device.type != "cpu":
            with torch.inference_mode():
                return [function(item) for item in items]
        return self._workers.map(function, items)

    def crop_box(self, box: Sequence[float], height: int, width: int) -> tuple[int, int, int, int]:
        """The margin-grown, clipped, truncated crop ``(x0, y0, x1, y1)`` of one box."""
        half = self.margin / 2
        x0 = int(max(box[0] - half, 0))
        y0 = int(max(box[1] - half, 0))
        x1 = int(min(box[2] + half, width))
        y1 = int(min(box[3] + half, height))
        return x0, y0, x1, y1

    def face_crops(self, image: ImageLike, detections: FaceDetections | np.ndarray | Tensor,
                   landmarks: np.ndarray | Tensor | None = None
                   ) -> list[np.ndarray | LandmarkError]:
        """Each face's uint8 ``(image_size, image_size, 3)`` RGB crop, or the
        :class:`LandmarkError` that says why it cannot be aligned (``alignment="similarity"``
        only), so that a batch can report the face and go on.

        ``detections`` are a :class:`FaceDetections` or ``(n, 4)`` boxes; similarity alignment
        takes the landmarks from the detections or from ``landmarks`` (``(n, 5, 2)``)."""
        array = to_uint8_rgb(image)
        height, width = array.shape[:2]
        boxes = detections.boxes if isinstance(detections, FaceDetections) else detections
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if self.alignment == "similarity":
            if landmarks is None and isinstance(detections, FaceDetections):
                landmarks = detections.landmarks
            if landmarks is None:
                raise ValueError("similarity alignment needs each face's landmarks: pass the "
                                 "FaceDetections, or landmarks=(n, 5, 2) points")
            points = np.asarray(landmarks, dtype=np.float64)
            if points.ndim != 3 or points.shape[0] != len(boxes):
                raise ValueError(f"landmarks must be ({len(boxes)}, 5, 2) for {len(boxes)} "
                                 f"faces, found shape {tuple(points.shape)}")
            return [self._aligned(array, face) for face in points]
        crops: list[np.ndarray | LandmarkError] = []
        for box in boxes.tolist():
            x0, y0, x1, y1 = self.crop_box(box, height, width)
            if x1 <= x0 or y1 <= y0:
                crops.append(np.zeros((self.image_size, self.image_size, 3), dtype=np.uint8))
                continue
            crops.append(resize_uint8(array[y0:y1, x0:x1], self.image_size))
        return crops

    def _aligned(self, array: np.ndarray, points: np.ndarray) -> np.ndarray | LandmarkError:
        try:
            return align_face(array, points, self.image_size, self.template)
        except LandmarkError as error:
            return error

    def extract(self, image: ImageLike, detections: FaceDetections | np.ndarray | Tensor,
                landmarks: np.ndarray | Tensor | None = None) -> Tensor:
        """uint8 ``(n, 3, image_size, image_size)`` RGB face crops, as align_dataset_mtcnn
        (``alignment="box"``) or aligned to the template (``"similarity"``: the
        :class:`LandmarkError` of the first face that cannot be aligned is raised)."""
        crops = self.face_crops(image, detections, landmarks)
        for crop in crops:
            if isinstance(crop, LandmarkError):
                raise crop
        if not crops:
            return torch.empty((0, 3, self.image_size, self.image_size), dtype=torch.uint8)
        return torch.from_numpy(np.stack(crops).transpose(0, 3, 1, 2).copy())

    # ----------------------------------------------------------------------- facenet-pytorch API
