"""``facenet-convert embed``: FaceNet embeddings of face images, or of the faces MTCNN finds.

Without ``--detect`` every image is taken as an aligned face crop (as upstream's
``align_dataset_mtcnn.py`` writes them): resized to 160x160 if needed, standardized the way the
weights were trained, embedded. With ``--detect`` every face MTCNN finds in each photo is
cropped with a margin (upstream's alignment, see :mod:`models.detection`) and embedded; faces are
named ``PATH#K`` (K = 0, 1, ... in detection order, best score first).

Output formats, chosen by the extension of ``-o``:

* ``.npz``: arrays ``names`` (unicode, N), ``embeddings`` (float32, N x D), and with
  ``--detect`` also ``boxes`` (float64, N x 4, ``x1 y1 x2 y2``), ``probs`` (float32, N) and
  ``landmarks`` (float64, N x 5 x 2). Load with ``np.load(path)`` (no pickle needed).
* ``.npy``: the ``embeddings`` array, plus a sidecar ``<stem>.names.txt`` beside it holding one
  UTF-8 name per line, line i naming row i. Both files are written all-or-nothing.
* ``.csv``: a header ``name,e0,...,e{D-1}``, then one row per embedding (values as ``%.9g``,
  which round-trips float32).

Images that cannot be read, or hold no face with ``--detect``, are reported on stderr and
skipped; the run fails (and writes nothing) only when no embedding at all was produced.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from converter.errors import ConverterError, OutputError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from models.detection import MTCNN
    from models.inception_resnet_v1 import InceptionResNetV1
    from models.inference import Embedder

OUTPUT_SUFFIXES = (".npz", ".npy", ".csv")
NAMES_SIDECAR = ".names.txt"


class EmbedError(ConverterError):
    """Embedding cannot proceed (bad options, no usable image)."""


# --------------------------------------------------------------------------- library helpers

@dataclass
class LoadedModel:
    """An Inception-ResNet-V1 ready for inference and the input standardization it expects."""

    model: InceptionResNetV1
    preprocessing: str
    source: str
    note: str | None = None
    fuse: bool = True
    _embedder: Embedder | None = None

    @property
    def embedder(self) -> Embedder:
        """The model wrapped for inference (fused on CPU unless ``fuse`` is False)."""
        if self._embedder is None:
            from models.inference import Embedder

            self._embedder = Embedder(self.model, fuse=self.fuse)
        return self._embedder

    @property
    def embedding_size(self) -> int:
        return int(self.model.embedding_size)


def load_embedding_model(weights: str | os.PathLike[str] | None = None,
                         pretrained: str | None = None, preprocessing: str | None = None,
                         device: str = "cpu", fuse: bool = True) -> LoadedModel:
    """Build the model from a weights file or a release name and pick its preprocessing.

    A release name gives the registry's preprocessing; a file takes the release whose file name
    it has, else the embedding size decides (128-d releases prewhiten, 512-d ones use fixed
    standardization) and ``note`` says so. ``preprocessing`` overrides either.
    """
    from models.inception_resnet_v1 import InceptionResNetV1
    from models.preprocessing import (
        guess_preprocessing,
        preprocessing_for,
        standardization,
    )
    from models.releases import RELEASES, get_release

    if (weights is None) == (pretrained is None):
        raise EmbedError("pass exactly one of --weights FILE or --pretrained NAME")
    if preprocessing is not None:
        try:
            standardization(preprocessing)
        except ValueError as error:
            raise EmbedError(str(error)) from None
    note = None
    if pretrained is not None:
        release = get_release(pretrained, "inception_resnet_v1")
        model = InceptionResNetV1(pretrained=release.name)
        chosen = preprocessing or preprocessing_for(release)
        source = release.name
    else:
        path = Path(os.fspath(weights))  # type: ignore[arg-type]
        if not path.is_file():
            raise EmbedError("no such weights file; give a .pt or .safetensors state dict "
                             "written by `facenet-convert convert`", path=path)
        model = InceptionResNetV1(pretrained=str(path))
        source = str(path)
        chosen = preprocessing
        if chosen is None:
            named = next((r for r in RELEASES if r.architecture == "inception_resnet_v1"
                          and r.filename == path.name), None)
            if named is not None:
                chosen = preprocessing_for(named)
            else:
                chosen = guess_preprocessing(int(model.embedding_size))
                note = (f"{path.name}: unknown release, assuming {chosen} for "
                        f"{model.embedding_size}-d embeddings; pass --preprocessing to choose")
    model.eval()
    model.to(device)
    return LoadedModel(model, chosen, source, note, fuse)


def embed_batch(model: InceptionResNetV1 | Embedder, images: torch.Tensor) -> torch.Tensor:
    """L2-normalized embeddings of a standardized float ``(N, 3, 160, 160)`` batch (on CPU)."""
    from models.inference import Embedder

    runner = model if isinstance(model, Embedder) else Embedder(model, fuse=False)
    return runner(images)


def expand_inputs(items: Sequence[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files named by IMAGES: files as given, folders' image files recursively (sorted)."""
    from models.data import is_image_file

    paths: list[Path] = []
    missing: list[tuple[str, str]] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
            if not found:
                missing.append((item, "folder holds no image files"))
            paths.extend(found)
        elif path.exists():
            paths.append(path)
        else:
            missing.append((item, "no such file"))
    return paths, missing


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
    from models.data import FaceImages, face_loader
    from models.preprocessing import Preprocess

    dataset = FaceImages(paths, preprocess=Preprocess(loaded.preprocessing, fit=fit))
    for batch in face_loader(dataset, batch_size=batch_size, num_workers=workers):
        vectors = embed_batch(loaded.embedder, batch.images).numpy()
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


def detect_faces(detector: MTCNN, path: Path, preprocessing: str) -> DetectedFaces:
    """Detect, crop and standardize every face of one image file (errors: ImageReadError)."""
    from models.preprocessing import load_image, standardization

    image = load_image(path)
    found = detector.detect(image)[0]
    crops = detector.extract(image, found)
    return DetectedFaces(names=[f"{path}#{k}" for k in range(len(found))],
                         crops=standardization(preprocessing)(crops),
                         boxes=found.boxes.numpy(), probs=found.probs.numpy(),
                         landmarks=found.landmarks.numpy())


def load_detector(mtcnn_dir: str | None, margin: float, min_face_size: float,
                  device: str) -> MTCNN:
    """MTCNN with weights from ``mtcnn_dir`` (pnet/rnet/onet .pt or .safetensors) or the cache."""
    from models.detection import MTCNN

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
    return MTCNN(nets["pnet"], nets["rnet"], nets["onet"], margin=margin,
                 min_face_size=min_face_size, device=device)


def embed_detected(loaded: LoadedModel, detector: MTCNN, paths: Sequence[Path], *,
                   batch_size: int = 32, on_done: Any = None) -> Embeddings:
    """Embeddings of every face MTCNN finds in each image, batched across images."""
    import numpy as np
    import torch

    from models.preprocessing import ImageReadError

    out = Embeddings()
    pending: list[DetectedFaces] = []

    def flush() -> None:
        if not pending:
            return
        crops = torch.cat([faces.crops for faces in pending])
        vectors = embed_batch(loaded.embedder, crops).numpy()
        out.rows.append(vectors)
        for faces in pending:
            out.names.extend(faces.names)
            out.boxes.extend(faces.boxes)
            out.probs.extend(float(p) for p in faces.probs)
            out.landmarks.extend(faces.landmarks)
        pending.clear()

    queued = 0
    for path in paths:
        try:
            faces = detect_faces(detector, path, loaded.preprocessing)
        except ImageReadError as error:
            out.skipped.append((str(path), str(error)))
        else:
            if not faces.names:
                out.skipped.append((str(path), f"{path}: no face found"))
            else:
                pending.append(faces)
                queued += len(faces.names)
                if queued >= batch_size:
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

    from converter.atomic import staged_outputs

    targets = output_paths(output)
    matrix = result.matrix(embedding_size)
    suffix = targets[0].suffix.lower()
    if suffix == ".npy":
        bad = next((n for n in result.names if "\n" in n or "\r" in n), None)
        if bad is not None:
            raise OutputError(f"name {bad!r} contains a line break, which the .names.txt "
                              "sidecar cannot hold; write .npz or .csv instead",
                              path=targets[1])
    with staged_outputs(targets, force=force, inputs=inputs) as handles:
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


# --------------------------------------------------------------------------- shared options

def model_options(func: Any) -> Any:
    """--weights / --pretrained / --preprocessing / --device, shared with ``verify``."""
    from models.releases import release_names

    names = release_names("inception_resnet_v1")
    func = click.option("--device", default="cpu", show_default=True,
                        help="torch device to run on.")(func)
    func = click.option("--preprocessing", type=click.Choice(["fixed_standardization",
                                                              "prewhiten"]),
                        default=None, help="Input standardization (default: the release's; "
                        "for an unknown file, by embedding size).")(func)
    func = click.option("--pretrained", default=None, metavar="NAME",
                        help=f"A cached release ({', '.join(names)}) or alias.")(func)
    func = click.option("--weights", type=click.Path(path_type=str), default=None,
                        help="Converted Inception-ResNet-V1 weights (.pt/.safetensors).")(func)
    return func


def detect_options(func: Any) -> Any:
    """--detect and the MTCNN settings, shared with ``verify``."""
    func = click.option("--min-face-size", type=click.FloatRange(min=1), default=20.0,
                        show_default=True, help="Smallest face MTCNN looks for (pixels).")(func)
    func = click.option("--margin", type=click.FloatRange(min=0), default=32.0,
                        show_default=True,
                        help="Pixels added around each box before cropping.")(func)
    func = click.option("--mtcnn", "mtcnn_dir", type=click.Path(path_type=str, file_okay=False),
                        default=None, help="Folder with pnet/rnet/onet weights (default: the "
                        "cached pnet, rnet, onet releases).")(func)
    func = click.option("--detect", is_flag=True,
                        help="Find faces with MTCNN and embed each (default: every image is "
                        "an aligned face crop).")(func)
    return func


def warn(message: str) -> None:
    click.echo(f"facenet-convert: warning: {message}", err=True)


@click.command("embed")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(path_type=str),
              help="Output file: .npz (names + embeddings), .npy (+ .names.txt) or .csv.")
@model_options
@detect_options
@click.option("--fit", type=click.Choice(["resize", "center_crop"]), default="resize",
              show_default=True, help="Without --detect: how images that are not 160x160 "
              "are fitted (bilinear resize, or upstream's central crop).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="DataLoader worker processes for decoding (without --detect).")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
def embed_command(images: tuple[str, ...], output: str, weights: str | None,
                  pretrained: str | None, preprocessing: str | None, device: str,
                  detect: bool, mtcnn_dir: str | None, margin: float, min_face_size: float,
                  fit: str, batch_size: int, workers: int, force: bool) -> None:
    """Write FaceNet embeddings of IMAGES (files or folders) to OUTPUT."""
    from converter.atomic import check_output_path

    targets = output_paths(output)
    paths, missing = expand_inputs(images)
    for target in targets:
        check_output_path(target, force=force, inputs=paths)
    loaded = load_embedding_model(weights, pretrained, preprocessing, device)
    if loaded.note:
        warn(loaded.note)
    detector = load_detector(mtcnn_dir, margin, min_face_size, device) if detect else None

    result = Embeddings(skipped=list(missing))
    bar: Any = None
    if sys.stderr.isatty() and paths:
        bar = click.progressbar(length=len(paths), label="embedding", file=sys.stderr)
        bar.__enter__()
    try:
        step = bar.update if bar is not None else None
        if detector is not None:
            found = embed_detected(loaded, detector, paths, batch_size=batch_size, on_done=step)
            found.skipped[:0] = result.skipped
            result = found
        else:
            for names, vectors, failures in embed_files(loaded, paths, batch_size=batch_size,
                                                        workers=workers, fit=fit, on_done=step):
                result.names.extend(names)
                result.rows.append(vectors)
                result.skipped.extend(failures)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    for path, message in result.skipped:
        warn(message if message.startswith(path) else f"{path}: {message}")
    if not result.names:
        raise EmbedError(f"no embeddings: all {len(paths) + len(missing)} inputs were skipped; "
                         "nothing written", path=output)
    write_embeddings(output, result, loaded.embedding_size, force=force, inputs=paths,
                     detected=detector is not None)
    what = "faces" if detector is not None else "images"
    click.echo(f"wrote {len(result.names)} embeddings ({loaded.embedding_size}-d, "
               f"{loaded.preprocessing}) of {what} from {len(paths)} images to {output}; "
               f"{len(result.skipped)} skipped")
