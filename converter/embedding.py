"""Embedding as a library: load a model, iterate images, write `.npz`/`.npy`/`.csv`.

Used by the ``embed`` and ``verify`` commands (and importable without click). Without detection
every image is taken as an aligned face crop (as upstream's ``align_dataset_mtcnn.py`` writes
them): resized to 160x160 if needed, standardized the way the weights were trained, embedded.
With detection every face MTCNN finds in each photo is cropped with a margin and embedded;
faces are named ``PATH#K`` (K = 0, 1, ... in detection order, best score first). With similarity
alignment (``load_detector(..., alignment="similarity")``) each face is rotated and scaled onto
a template from its landmarks instead; a face whose landmarks cannot be aligned is reported
(as ``PATH#K``) and skipped.

Output formats, chosen by the output's extension:

* ``.npz``: arrays ``names`` (unicode, N), ``embeddings`` (float32, N x D), and with
  detection also ``boxes`` (float64, N x 4, ``x1 y1 x2 y2``), ``probs`` (float32, N) and
  ``landmarks`` (float64, N x 5 x 2). Load with ``np.load(path)`` (no pickle needed).
* ``.npy``: the ``embeddings`` array, plus a sidecar ``<stem>.names.txt`` beside it holding one
  UTF-8 name per line, line i naming row i. Both files are written all-or-nothing.
* ``.csv``: a header ``name,e0,...,e{D-1}``, then one row per embedding (values as ``%.9g``,
  which round-trips float32).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facenet_convert.converter.core.errors import EmbedError, ImageReadError, OutputError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from facenet_convert.converter.engines import Engine
    from facenet_convert.models.inception_resnet_v1 import InceptionResNetV1
    from facenet_convert.models.mtcnn.detector import MTCNN

OUTPUT_SUFFIXES = (".npz", ".npy", ".csv")
NAMES_SIDECAR = ".names.txt"


#: verify's default: a value commonly used with the 2018 releases (see the verify command).
DEFAULT_THRESHOLD = 1.1


@dataclass
class LoadedModel:
    """An Inception-ResNet-V1 ready for inference and the input standardization it expects."""

    model: InceptionResNetV1
    preprocessing: str
    source: str
    note: str | None = None
    fuse: bool = True            # False: the plain model unless a backend/precision is asked
    backend: str = "auto"
    precision: str = "fp32"
    calibration: str | None = None   # int8: a folder of aligned crops (default: shipped faces)
    _engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        """The model on its checked inference engine (``converter/engines.py``); the plain
        model when ``fuse`` is False and neither ``backend`` nor ``precision`` was chosen."""
        if self._engine is None:
            from facenet_convert.converter.engines import make_engine, plain_engine

            if self.fuse or self.backend != "auto" or self.precision != "fp32":
                self._engine = make_engine(self.model, self.backend, self.precision,
                                           preprocessing=self.preprocessing,
                                           calibration=self.calibration)
            else:
                self._engine = plain_engine(self.model)
        return self._engine

    @property
    def embedding_size(self) -> int:
        return int(self.model.embedding_size)


def load_embedding_model(weights: str | os.PathLike[str] | None = None,
                         pretrained: str | None = None, preprocessing: str | None = None,
                         device: str = "cpu", fuse: bool = True, backend: str = "auto",
                         precision: str = "fp32",
                         calibration: str | None = None) -> LoadedModel:
    """Build the model from a weights file or a release name and pick its preprocessing.

    A release name gives the registry's preprocessing; a file takes the release whose file name
    it has, else the embedding size decides (128-d releases prewhiten, 512-d ones use fixed
    standardization) and ``note`` says so. ``preprocessing`` overrides either.
    """
    from facenet_convert.converter.building import load_model

    if (weights is None) == (pretrained is None):
        raise EmbedError("pass exactly one of weights (a converted file) or pretrained (a "
                         "release name)")
    built = load_model(weights, release=pretrained, preprocessing=preprocessing,
                       task="embedding", error=EmbedError)
    model, chosen, source, note = built.model, built.preprocessing, built.source, built.note
    model.eval()
    model.to(device)
    return LoadedModel(model, chosen, source, note, fuse, backend, precision, calibration)


def embed_batch(model: InceptionResNetV1 | Engine, images: torch.Tensor) -> torch.Tensor:
    """L2-normalized embeddings of a standardized float ``(N, 3, 160, 160)`` batch (on CPU);
    NaN or Inf in any row is an error."""
    import torch

    from facenet_convert.converter.engines import Engine, plain_engine

    runner = model if isinstance(model, Engine) else plain_engine(model)
    vectors = runner(images)
    if not bool(torch.isfinite(vectors).all()):
        # finite weights can still overflow: no NaN row is written or compared
        bad = int((~torch.isfinite(vectors).all(dim=1)).sum())
        raise EmbedError(f"the model gave NaN or Inf for {bad} of {vectors.shape[0]} images; "
                         "its weights overflow on these inputs, so no embedding of them "
                         "would mean anything; check the weights with `facenet-convert "
                         "parity`")
    return vectors


def expand_inputs(items: Sequence[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files named by IMAGES: files as given, folders' image files recursively (sorted).
    Entries that are not regular files (FIFOs, sockets, devices, dangling links) are skipped
    with their reason, never opened; a file named twice (by another path) is embedded once."""
    from facenet_convert.converter.core.inputs import regular_file_problem, unique_files
    from facenet_convert.models.data import is_image_file

    paths: list[Path] = []
    missing: list[tuple[str, str]] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if is_image_file(p) and not p.is_dir())
            if not found:
                missing.append((item, "folder holds no image files"))
            candidates = [(str(p), p) for p in found]
        else:
            candidates = [(item, path)]
        for name, candidate in candidates:
            problem = regular_file_problem(candidate)
            if problem is None:
                paths.append(candidate)
            else:
                missing.append((name, problem))
    paths, repeated = unique_files(paths)
    return paths, missing + repeated


@dataclass
class Embeddings:
    """What ``embed`` produced: one row per image or detected face, and what was skipped."""

    names: list[str] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    landmarks: list[np.ndarray] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def matrix(self, embedding_size: int) -> np.ndarray:
        import numpy as np

        if not self.rows:
            return np.zeros((0, embedding_size), dtype=np.float32)
        return np.concatenate(self.rows).astype(np.float32, copy=False)


def embed_files(loaded: LoadedModel, paths: Sequence[Path], *, batch_size: int = 32,
                workers: int = 0, fit: str = "resize",
                on_done: Any = None) -> Iterator[tuple[list[str], np.ndarray,
                                                       list[tuple[str, str]]]]:
    """Yield ``(names, embeddings, failures)`` per batch of aligned face images."""
    from facenet_convert.models.data import FaceImages, face_loader
    from facenet_convert.models.preprocessing import Preprocess

    dataset = FaceImages(paths, preprocess=Preprocess(loaded.preprocessing, fit=fit))
    for batch in face_loader(dataset, batch_size=batch_size, num_workers=workers):
        vectors = embed_batch(loaded.engine, batch.images).numpy()
        if on_done is not None:
            on_done(len(batch) + len(batch.failures))
        yield batch.paths, vectors, batch.failures


@dataclass
class DetectedFaces:
    """The faces of one image: names, standardized crops and their detections."""

    names: list[str]
    crops: torch.Tensor
    boxes: np.ndarray
    probs: np.ndarray
    landmarks: np.ndarray
    left_out: list[tuple[str, str]] = field(default_factory=list)   # (PATH#K, why)


def detect_faces(detector: MTCNN, path: Path, preprocessing: str) -> DetectedFaces:
    """Detect, crop and standardize every face of one image file (errors: ImageReadError);
    faces that cannot be aligned are in ``left_out``."""
    import numpy as np
    import torch

    from facenet_convert.converter.core.errors import LandmarkError
    from facenet_convert.models.preprocessing import load_image, standardization

    image = load_image(path)
    found = detector.detect_faces(image)[0]
    kept, crops, left_out = [], [], []
    for k, crop in enumerate(detector.face_crops(image, found)):
        if isinstance(crop, LandmarkError):
            left_out.append((f"{path}#{k}", f"{path}#{k}: face not aligned: {crop}"))
        else:
            kept.append(k)
            crops.append(crop)
    size = detector.image_size
    pixels = (torch.from_numpy(np.stack(crops).transpose(0, 3, 1, 2).copy()) if crops
              else torch.empty((0, 3, size, size), dtype=torch.uint8))
    return DetectedFaces(names=[f"{path}#{k}" for k in kept],
                         crops=standardization(preprocessing)(pixels),
                         boxes=found.boxes.numpy()[kept], probs=found.probs.numpy()[kept],
                         landmarks=found.landmarks.numpy()[kept], left_out=left_out)


def load_detector(mtcnn_dir: str | None, margin: float, min_face_size: float,
                  device: str, *, alignment: str = "box", template: str = "facenet") -> MTCNN:
    """MTCNN with weights from ``mtcnn_dir`` (pnet/rnet/onet .pt or .safetensors) or the cache,
    cropping faces by ``alignment`` (box | similarity onto ``template``)."""
    from facenet_convert.models.mtcnn.detector import MTCNN

    nets: dict[str, str | None] = {"pnet": None, "rnet": None, "onet": None}
    if mtcnn_dir is not None:
        folder = Path(mtcnn_dir)
        for name in nets:
            for suffix in (".pt", ".safetensors"):
                if (folder / f"{name}{suffix}").is_file():
                    nets[name] = str(folder / f"{name}{suffix}")
                    break
            else:
                raise EmbedError(f"no {name}.pt or {name}.safetensors in the --mtcnn folder; "
                                 "convert det1/2/3.npy with `facenet-convert convert`",
                                 path=folder)
    return MTCNN(margin=margin, min_face_size=min_face_size, device=device,
                 pnet=nets["pnet"], rnet=nets["rnet"], onet=nets["onet"],
                 alignment=alignment, template=template)


def _detect_or_unreadable(detector: MTCNN, path: Path, *, preprocessing: str
                          ) -> DetectedFaces | ImageReadError:
    """:func:`detect_faces`, an unreadable image returned (not raised), so that a stream of
    photos goes on past it in order."""
    try:
        return detect_faces(detector, path, preprocessing)
    except ImageReadError as error:
        return error


def embed_detected(loaded: LoadedModel, detector: MTCNN, paths: Sequence[Path], *,
                   batch_size: int = 32, on_done: Any = None) -> Embeddings:
    """Embeddings of every face MTCNN finds in each image, batched across images."""
    import numpy as np
    import torch

    out = Embeddings()
    pending: list[DetectedFaces] = []

    def flush() -> None:
        if not pending:
            return
        crops = torch.cat([faces.crops for faces in pending])
        vectors = embed_batch(loaded.engine, crops).numpy()
        out.rows.append(vectors)
        for faces in pending:
            out.names.extend(faces.names)
            out.boxes.extend(faces.boxes)
            out.probs.extend(float(p) for p in faces.probs)
            out.landmarks.extend(faces.landmarks)
        pending.clear()

    queued = 0
    detect = functools.partial(_detect_or_unreadable, detector,
                               preprocessing=loaded.preprocessing)
    # With ONNX Runtime, each photo is read, detected and cropped on one of the detector's
    # workers, several in flight, in order, while the finished batches are embedded here. A
    # torch engine's own OpenMP threads would fight the workers for the cores (slower, same
    # bits), so its photos come one after another (docs/performance.md).
    streamed = getattr(loaded.engine, "backend", None) == "onnxruntime"
    detected = (detector.each_photo(detect, paths) if streamed
                else (detect(path) for path in paths))
    for index, (path, faces) in enumerate(zip(paths, detected, strict=True)):
        if isinstance(faces, ImageReadError):
            out.skipped.append((str(path), str(faces)))
        else:
            out.skipped.extend(faces.left_out)
            if not faces.names:
                if not faces.left_out:
                    out.skipped.append((str(path), f"{path}: no face found"))
            else:
                pending.append(faces)
                queued += len(faces.names)
        # also every batch_size images: batches then never span a multiple of batch_size, so
        # shards of such a size (converter/scale.py) embed exactly the batches run here
        if queued >= batch_size or (index + 1) % batch_size == 0:
            flush()
            queued = 0
        if on_done is not None:
            on_done(1)
    flush()
    if out.rows:
        out.rows = [np.concatenate(out.rows)]
    return out


# --------------------------------------------------------------------------- output

def output_paths(output: str) -> list[Path]:
    """The file(s) an output name stands for (``.npy`` brings its names sidecar)."""
    path = Path(output)
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise OutputError(f"unknown output type {path.suffix or '(none)'}; expected one of "
                          f"{', '.join(OUTPUT_SUFFIXES)}", path=path)
    if suffix == ".npy":
        return [path, path.with_name(path.stem + NAMES_SIDECAR)]
    return [path]


def write_embeddings(output: str, result: Embeddings, embedding_size: int, *, force: bool,
                     inputs: Sequence[Path], detected: bool) -> list[Path]:
    """Write ``result`` in the format of ``output``'s extension, all or nothing."""
    import csv
    import io

    import numpy as np

    from facenet_convert.converter.core.atomic import staged_outputs

    targets = output_paths(output)
    matrix = result.matrix(embedding_size)
    suffix = targets[0].suffix.lower()
    if suffix == ".npy":
        bad = next((n for n in result.names if "\n" in n or "\r" in n), None)
        if bad is not None:
            raise OutputError(f"name {bad!r} contains a line break, which the .names.txt "
                              "sidecar cannot hold; write .npz or .csv instead",
                              path=targets[1])
    with staged_outputs(targets, force=force, inputs=inputs, final=True) as handles:
        main = handles[targets[0]]
        if suffix == ".npz":
            arrays: dict[str, Any] = {"names": np.array(result.names, dtype=str),
                                      "embeddings": matrix}
            if detected:
                arrays["boxes"] = np.array(result.boxes, dtype=np.float64).reshape(-1, 4)
                arrays["probs"] = np.array(result.probs, dtype=np.float32)
                arrays["landmarks"] = np.array(result.landmarks,
                                               dtype=np.float64).reshape(-1, 5, 2)
            np.savez(main, **arrays)
        elif suffix == ".npy":
            np.save(main, matrix, allow_pickle=False)
            handles[targets[1]].write("".join(f"{n}\n" for n in result.names).encode("utf-8"))
        else:
            text = io.StringIO(newline="")
            writer = csv.writer(text, lineterminator="\n")
            writer.writerow(["name", *(f"e{i}" for i in range(matrix.shape[1]))])
            for name, row in zip(result.names, matrix, strict=True):
                writer.writerow([name, *(f"{v:.9g}" for v in row.tolist())])
            main.write(text.getvalue().encode("utf-8"))
    return targets


def embed_images(loaded: LoadedModel, paths: Sequence[Path], *,
                 skipped: Sequence[tuple[str, str]] = (), detector: MTCNN | None = None,
                 batch_size: int = 32, workers: int = 0, fit: str = "resize",
                 on_done: Callable[[int], Any] | None = None) -> Embeddings:
    """Embeddings of image files: every image, or every face ``detector`` finds in each.

    ``skipped`` (inputs already refused, as ``expand_inputs`` reports them) leads the result's
    own skips; ``on_done(k)`` is called after each step (for a progress bar).
    """
    if detector is not None:
        result = embed_detected(loaded, detector, paths, batch_size=batch_size, on_done=on_done)
        result.skipped[:0] = skipped
        return result
    result = Embeddings(skipped=list(skipped))
    for batch_names, vectors, failures in embed_files(loaded, paths, batch_size=batch_size,
                                                      workers=workers, fit=fit,
                                                      on_done=on_done):
        result.names.extend(batch_names)
        result.rows.append(vectors)
        result.skipped.extend(failures)
    return result


def euclidean_distance(a: object, b: object) -> float:
    """Euclidean distance of two embedding vectors (upstream distance_metric 0)."""
    import numpy as np

    return float(np.sqrt(np.sum(np.square(np.subtract(a, b, dtype=np.float64)))))


def face_input(loaded: LoadedModel, path: Path, detector: MTCNN | None,
               fit: str = "resize") -> torch.Tensor:
    """Standardized (1, 3, 160, 160) input of one image (its best face with a detector)."""
    import torch

    from facenet_convert.models.preprocessing import Preprocess, load_image

    if detector is not None:
        faces = detect_faces(detector, path, loaded.preprocessing)
        if faces.left_out and faces.left_out[0][0] == f"{path}#0":   # the best face
            from facenet_convert.converter.core.errors import LandmarkError

            raise LandmarkError(faces.left_out[0][1])
        if not faces.names:
            raise EmbedError("no face found; try a smaller --min-face-size or omit --detect "
                             "for an already aligned face crop", path=path)
        return faces.crops[:1]
    return torch.stack([Preprocess(loaded.preprocessing, fit=fit)(load_image(path))])


def verify_pair(loaded: LoadedModel, image1: Path, image2: Path, *,
                detector: MTCNN | None = None, fit: str = "resize") -> float:
    """Euclidean distance of the two images' L2-normalized embeddings (best face each)."""
    import torch

    batch = torch.cat([face_input(loaded, image1, detector, fit),
                       face_input(loaded, image2, detector, fit)])
    vectors = embed_batch(loaded.engine, batch).numpy()
    return euclidean_distance(vectors[0], vectors[1])


@dataclass
class PathEmbeddings:
    """One row per embedded image (its best face with a detector), in the order of ``paths``.

    ``flipped`` holds the mirror images' embeddings (``--use-flipped-images``); ``reference``
    and ``reference_flipped`` what a second runner (e.g. the TF graph) gave on the very same
    standardized inputs.
    """

    paths: list[Path]
    embeddings: np.ndarray
    flipped: np.ndarray | None = None
    reference: np.ndarray | None = None
    reference_flipped: np.ndarray | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _input_batches(loaded: LoadedModel, paths: Sequence[Path], detector: MTCNN | None,
                   batch_size: int, workers: int, fit: str
                   ) -> Iterator[tuple[list[Path], torch.Tensor | None, list[tuple[str, str]]]]:
    """Standardized inputs per batch: (paths embedded, inputs, (path, why) skipped)."""
    import torch

    from facenet_convert.models.data import FaceImages, face_loader
    from facenet_convert.models.preprocessing import Preprocess

    if detector is None:
        dataset = FaceImages(paths, preprocess=Preprocess(loaded.preprocessing, fit=fit))
        for batch in face_loader(dataset, batch_size=batch_size, num_workers=workers):
            yield ([paths[i] for i in batch.indices], batch.images if len(batch) else None,
                   batch.failures)
        return
    done: list[Path] = []
    crops: list[torch.Tensor] = []
    failed: list[tuple[str, str]] = []
    for path in paths:
        try:
            crops.append(face_input(loaded, path, detector))
            done.append(path)
        except (ImageReadError, EmbedError) as error:
            failed.append((str(path), str(error)))
        if len(done) + len(failed) >= batch_size:
            yield done, torch.cat(crops) if crops else None, failed
            done, crops, failed = [], [], []
    if done or failed:
        yield done, torch.cat(crops) if crops else None, failed


def embed_paths(loaded: LoadedModel, paths: Sequence[Path], *, detector: MTCNN | None = None,
                flip: bool = False, batch_size: int = 32, workers: int = 0,
                fit: str = "resize", reference: Callable[[np.ndarray], np.ndarray] | None = None,
                on_done: Callable[[int], Any] | None = None) -> PathEmbeddings:
    """Embed each image once (and its left-right mirror with ``flip``, mirrored after
    standardization as upstream's ``FLIP`` control does); ``reference(nchw)`` runs on the same
    inputs. Unreadable images, or ones without a face, are skipped and listed."""
    import numpy as np

    size = loaded.embedding_size
    embedded: list[Path] = []
    skipped: list[tuple[str, str]] = []
    parts: dict[str, list[np.ndarray]] = {"ours": [], "ref": []}
    for done, images, failed in _input_batches(loaded, paths, detector, batch_size, workers,
                                               fit):
        skipped.extend(failed)
        if images is not None:
            import torch

            inputs = torch.cat([images, images.flip(-1)]) if flip else images
            parts["ours"].append(embed_batch(loaded.engine, inputs).numpy())
            if reference is not None:
                parts["ref"].append(np.asarray(reference(inputs.numpy()), dtype=np.float32))
            embedded.extend(done)
        if on_done is not None:
            on_done(len(done) + len(failed))

    def split(chunks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        if not chunks:
            empty = np.zeros((0, size), dtype=np.float32)
            return empty, (empty if flip else None)
        if not flip:
            return np.concatenate(chunks), None
        halves = [np.split(chunk, 2) for chunk in chunks]
        return (np.concatenate([h[0] for h in halves]),
                np.concatenate([h[1] for h in halves]))

    ours, ours_flipped = split(parts["ours"])
    result = PathEmbeddings(embedded, ours, ours_flipped, skipped=skipped)
    if reference is not None:
        result.reference, result.reference_flipped = split(parts["ref"])
    return result
