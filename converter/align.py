"""Align a dataset of photos into face crops, as upstream ``align_dataset_mtcnn.py`` does.

Layout (upstream's): ``INPUT_DIR/<class>/<image>`` -> ``OUTPUT_DIR/<class>/<stem>.png``
(``<stem>_<i>.png`` per face with ``detect_multiple_faces``), and a
``bounding_boxes_<NNNNN>.txt`` per run listing ``<crop path> x0 y0 x1 y1`` for each crop and
the would-be crop path alone for an image without a usable face. Classes are the sorted
sub-folders of ``INPUT_DIR``, images the sorted files of each (``facenet.get_dataset``).

Detection, face selection and the crop arithmetic are upstream's (see
:mod:`models.detection`): the single face kept by default is ``argmax(area - 2 * offset**2)``,
the crop is the box grown by ``margin / 2`` pixels of the photo on each side, clipped,
truncated and resized bilinearly to ``image_size``. With ``alignment="similarity"`` the face is
rotated and scaled onto a template from its five landmarks instead
(:mod:`models.face_alignment`); a face whose landmarks cannot be aligned is reported and
skipped (the photo's other faces are still written, numbered on), and the batch goes on.

Safe to interrupt and rerun: every crop is written atomically (temp file, fsync, rename), the
crops of one photo in reverse order so that ``<stem>.png`` / ``<stem>_0.png``, written last,
marks a finished photo; ``resume`` skips finished photos. A photo that cannot be read, holds no
face, is too small for the pyramid, or is 16-bit is reported in the summary and the batch goes
on.
"""

from __future__ import annotations

import functools
import io
import json
import os
import random
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from facenet_convert.converter.core.atomic import atomic_output, sweep_stale_temps
from facenet_convert.converter.core.checks import require_choice
from facenet_convert.converter.core.errors import AlignError, LandmarkError
from facenet_convert.converter.core.inputs import (
    LIST_SUFFIXES,
    describe_os_error,
    input_inside,
    kind_of,
    read_input_list,
)
from facenet_convert.converter.core.locks import exclusive_folder
from facenet_convert.models.face_alignment import ALIGNMENTS, TEMPLATES

SELECTIONS = ("upstream", "probability", "largest", "largest_over_threshold",
              "center_weighted_size")


@dataclass(frozen=True)
class AlignOptions:
    """What ``align`` does to every photo (picklable: sent to worker processes)."""

    image_size: int = 160           # upstream's script defaults to 182 / 44; its LFW guide
    margin: float = 32              # (and embed --detect) use 160 / 32
    detect_multiple_faces: bool = False
    selection: str = "upstream"
    min_face_size: float = 20
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    factor: float = 0.709
    device: str = "cpu"
    nets: tuple[str | None, str | None, str | None] = (None, None, None)
    alignment: str = "box"          # or "similarity" (models/face_alignment.py)
    template: str = "facenet"       # similarity's template: facenet | arcface


#: settings added after 0.2.0: a settings file without them was made with these values
ADDED_SETTINGS = {"alignment": "box", "template": "facenet"}


@dataclass
class PhotoResult:
    """One photo's outcome: crops as (output name, uint8 HWC array, integer box), or why not;
    ``left_out`` says why faces that could not be aligned were skipped."""

    source: str
    target: str
    crops: list[tuple[str, Any, tuple[int, int, int, int]]] = field(default_factory=list)
    problem: str | None = None
    left_out: list[str] = field(default_factory=list)


@dataclass
class AlignSummary:
    """What a run did; ``as_dict`` is the JSON summary the command prints."""

    input_dir: str
    output_dir: str
    bounding_boxes: str
    images: int = 0
    aligned: int = 0
    faces: int = 0
    skipped_existing: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


Classes = list[tuple[str, list[Path]]]


def photo_classes(source: Path) -> tuple[Classes, list[tuple[str, str]]]:
    """The photos to align by class, and list entries skipped with their reasons.

    ``source`` is a folder (:func:`dataset`) or a ``.txt`` / ``.parquet`` list of photo paths
    (for shared storage): there each photo's class is its parent folder's name, classes come
    sorted, photos in list order. Entries that are missing, not regular files, repeated, or
    would write the same crop as an earlier one (``<class>/<stem>.png``) are skipped.
    """
    if not (source.is_file() and source.suffix.lower() in LIST_SUFFIXES):
        return dataset(source)
    paths, skipped = read_input_list(source, AlignError)
    groups: dict[str, list[Path]] = {}
    taken: dict[tuple[str, str], Path] = {}
    for path in paths:
        name = path.parent.name
        if not name:
            skipped.append((str(path), f"{path}: no parent folder to name its class"))
            continue
        _add_photo(groups.setdefault(name, []), taken, name, path, skipped)
    groups = {name: photos for name, photos in groups.items() if photos}
    if not groups:
        raise AlignError("lists no photo that can be aligned", path=source)
    return sorted(groups.items()), skipped


def _add_photo(photos: list[Path], taken: dict[tuple[str, str], Path], name: str, path: Path,
               skipped: list[tuple[str, str]]) -> None:
    """Add ``path`` to its class unless it would write the same crop as an earlier photo
    (``a.jpg`` and ``a.png`` both make ``a.png``): that one is skipped with the reason."""
    if (name, path.stem) in taken:
        reason = f"{path}: same crop {name}/{path.stem}.png as {taken[name, path.stem]}"
        skipped.append((str(path), reason))
        return
    taken[name, path.stem] = path
    photos.append(path)


def check_output_outside(source: Path, out: Path, classes: Classes) -> None:
    """The output folder is neither the input folder nor inside it, and holds no listed photo
    (a rerun would read its own crops)."""
    inputs = [source] if source.is_dir() else [p for _, photos in classes for p in photos]
    inside_input = source.is_dir() and source.resolve() in out.resolve().parents
    if inside_input or input_inside(out, inputs) is not None:
        raise AlignError("the output folder must not be (inside) the input folder, nor "
                         "hold a listed photo", path=out)


def plan_alignment(input_dir: str | os.PathLike[str], output_dir: str | os.PathLike[str],
                   options: AlignOptions) -> tuple[Classes, list[tuple[str, str]], Path]:
    """A run's checked inputs, shared by the local and the Ray engine: the photos by class,
    skipped list entries with their reasons, and the output folder."""
    require_choice(options.selection, SELECTIONS, "selection", AlignError)
    require_choice(options.alignment, ALIGNMENTS, "alignment", AlignError)
    require_choice(options.template, TEMPLATES, "template", AlignError)
    source, out = Path(input_dir), Path(output_dir)
    classes, skipped = photo_classes(source)
    check_output_outside(source, out, classes)
    return classes, skipped, out


def dataset(input_dir: Path) -> tuple[Classes, list[tuple[str, str]]]:
    """``(class name, sorted image paths)`` per sorted sub-folder (upstream ``get_dataset``),
    and the entries skipped with their reasons: FIFOs, sockets, devices and dangling links
    (never opened), and photos whose crop name an earlier photo of the class takes."""
    if not input_dir.is_dir():
        raise AlignError("not a folder (nor a .txt / .parquet list of photos); expected "
                         "INPUT_DIR/<class>/<images>", path=input_dir)
    classes = sorted(p for p in input_dir.iterdir() if p.is_dir())
    if not classes:
        raise AlignError("holds no class sub-folders; expected INPUT_DIR/<class>/<images> as "
                         "align_dataset_mtcnn.py reads it", path=input_dir)
    skipped: list[tuple[str, str]] = []
    result: Classes = []
    taken: dict[tuple[str, str], Path] = {}
    for folder in classes:
        photos: list[Path] = []
        for path in sorted(folder.iterdir()):
            try:
                info = path.stat()
            except OSError as error:
                reason = f"{path}: {describe_os_error(error)} (a dangling link?)"
                skipped.append((str(path), reason))
                continue
            if stat.S_ISDIR(info.st_mode):
                continue                      # nested folders are not photos (as upstream)
            if not stat.S_ISREG(info.st_mode):
                reason = f"{path}: {kind_of(info.st_mode)}, not a regular file; not read"
                skipped.append((str(path), reason))
                continue
            _add_photo(photos, taken, folder.name, path, skipped)
        result.append((folder.name, photos))
    return result, skipped


def crop_names(target: Path, count: int, multiple: bool) -> list[Path]:
    """Upstream's crop file names: ``stem.png``, or ``stem_<i>.png`` per face."""
    if not multiple:
        return [target][:count]
    return [target.with_name(f"{target.stem}_{i}{target.suffix}") for i in range(count)]


def finished_marker(target: Path, multiple: bool) -> Path:
    """The crop written last for a photo: its presence means the photo is done."""
    return crop_names(target, 1, multiple)[0]


_DETECTOR: tuple[AlignOptions, Any] | None = None


def _detector(options: AlignOptions) -> Any:
    """One MTCNN per process and options (worker processes build theirs once)."""
    global _DETECTOR
    if _DETECTOR is None or _DETECTOR[0] != options:
        from facenet_convert.models.mtcnn.detector import MTCNN

        pnet, rnet, onet = options.nets
        _DETECTOR = (options, MTCNN(
            image_size=options.image_size, margin=options.margin,
            min_face_size=options.min_face_size, thresholds=options.thresholds,
            factor=options.factor, selection_method=options.selection, device=options.device,
            pnet=pnet, rnet=rnet, onet=onet, alignment=options.alignment,
            template=options.template))
    return _DETECTOR[1]


def mtcnn_nets(mtcnn_dir: str | os.PathLike[str] | None
               ) -> tuple[str | None, str | None, str | None]:
    """pnet/rnet/onet ``.pt`` or ``.safetensors`` of a folder (None: the shipped weights)."""
    if mtcnn_dir is None:
        return (None, None, None)
    folder = Path(mtcnn_dir)
    found = []
    for name in ("pnet", "rnet", "onet"):
        match = next((folder / f"{name}{suffix}" for suffix in (".pt", ".safetensors")
                      if (folder / f"{name}{suffix}").is_file()), None)
        if match is None:
            raise AlignError(f"no {name}.pt or {name}.safetensors in the --mtcnn folder; "
                             "convert det1/2/3.npy with `facenet-convert convert`", path=folder)
        found.append(str(match))
    return (found[0], found[1], found[2])


def _init_worker(options: AlignOptions) -> None:
    import torch

    torch.set_num_threads(1)
    _detector(options)


def _read_photo(task: tuple[str, str], options: AlignOptions) -> tuple[PhotoResult, Any]:
    """The photo's pixels, or None with the result saying why it cannot be detected."""
    from facenet_convert.converter.core.errors import ImageReadError
    from facenet_convert.models.preprocessing import load_image

    source, target = task
    result = PhotoResult(source, target)
    try:
        image = load_image(source)
    except ImageReadError as error:
        result.problem = str(error)
        return result, None
    height, width = image.shape[:2]
    if not _detector(options).scales(height, width):
        result.problem = (f"{source}: image {width}x{height} is too small for the detector "
                          f"(shorter side below {options.min_face_size:g} px)")
        return result, None
    return result, image


def align_photo(task: tuple[str, str], options: AlignOptions) -> PhotoResult:
    """Detect, select and crop the faces of one photo (no file is written here)."""
    result, image = _read_photo(task, options)
    if image is None:
        return result
    return _crop_faces(result, image, _detector(options).detect_faces(image)[0], options)


def _crop_faces(result: PhotoResult, image: Any, found: Any,
                options: AlignOptions) -> PhotoResult:
    """Select and crop the detected faces of one photo into ``result``."""
    import numpy as np

    source, target = result.source, result.target
    detector = _detector(options)
    height, width = image.shape[:2]
    if len(found) == 0:
        result.problem = f"{source}: no face found"
        return result
    boxes, points = found.boxes.numpy(), found.landmarks.numpy()
    if not options.detect_multiple_faces and len(found) > 1:
        chosen, _, chosen_points = detector.select_boxes(boxes, found.probs.numpy(), points,
                                                         image, method=options.selection)
        if chosen is None:
            result.problem = f"{source}: no face passes the {options.selection} selection"
            return result
        boxes, points = chosen, chosen_points
    kept = []
    for index, (crop, box) in enumerate(zip(detector.face_crops(image, boxes, points), boxes,
                                            strict=True)):
        if isinstance(crop, LandmarkError):          # report the face, go on
            result.left_out.append(f"{source}: face {index} not aligned: {crop}")
        else:
            kept.append((crop, box))
    if not kept:
        result.problem = "; ".join(result.left_out)
        result.left_out = []
        return result
    names = crop_names(Path(target), len(kept), options.detect_multiple_faces)
    for name, (crop, box) in zip(names, kept, strict=True):
        bb = detector.crop_box(box, height, width)
        result.crops.append((str(name), _png(np.ascontiguousarray(crop)), bb))
    return result


def _png(pixels: Any) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_png(path: Path, data: bytes) -> None:
    with atomic_output(path, force=True, part=True) as handle:
        handle.write(data)


def make_folders(out: Path, classes: Sequence[tuple[str, list[Path]]]) -> None:
    """``out`` and one sub-folder per class (also for classes that get no crop, as upstream)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, _ in classes:
            (out / name).mkdir(exist_ok=True)
    except OSError as error:
        raise AlignError(f"cannot create the output folders ({error.strerror or error})",
                         path=out) from error


def photo_lines(result: PhotoResult) -> list[str]:
    """One photo's bounding_boxes lines (its crops, in face order)."""
    if result.problem is not None:
        return [f"{result.target}\n"]
    return [f"{name} {bb[0]} {bb[1]} {bb[2]} {bb[3]}\n" for name, _, bb in result.crops]


def write_crops(result: PhotoResult) -> None:
    """Write one photo's crops, the marker crop last: once the marker exists, the photo is
    finished."""
    if result.problem is None:
        for name, data, _ in reversed(result.crops):
            _write_png(Path(name), data)


def write_photo(result: PhotoResult) -> list[str]:
    """Write one photo's crops and return its bounding_boxes lines; shared by the local and
    the Ray engine (``converter/scale.py``)."""
    write_crops(result)
    return photo_lines(result)


def _tasks(classes: Sequence[tuple[str, list[Path]]], output_dir: Path, options: AlignOptions,
           resume: bool, force: bool, summary: AlignSummary,
           earlier: dict[str, list[str]]) -> list[tuple[str, str]]:
    tasks = []
    for name, images in classes:
        for image in images:
            summary.images += 1
            target = output_dir / name / f"{image.stem}.png"
            marker = finished_marker(target, options.detect_multiple_faces)
            if marker.exists():
                # a finished photo whose lines no run recorded is done again, so that the
                # bounding_boxes file lists every crop
                if resume and _recovered(target, options.detect_multiple_faces, earlier):
                    summary.skipped_existing += 1
                    continue
                if not force and not resume:
                    raise AlignError("a crop exists already; pass --resume to skip finished "
                                     "photos or --force to redo them", path=marker)
            tasks.append((str(image), str(target)))
    return tasks


def _results(tasks: list[tuple[str, str]], options: AlignOptions, workers: int
             ) -> Iterator[PhotoResult]:
    if workers <= 0 or len(tasks) <= 1:
        # each photo read, detected, cropped and PNG-encoded on one of the detector's
        # workers, several in flight, results in task order (docs/performance.md)
        yield from _detector(options).each_photo(
            functools.partial(align_photo, options=options), tasks)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: a forked child of a process whose OpenMP pool already ran can hang
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(options,),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(functools.partial(align_photo, options=options), tasks)


JOURNAL_GLOB = ".bounding_boxes_*.journal"
SETTINGS = ".facenet-convert-align.json"


def _check_settings(out: Path, options: AlignOptions, force: bool) -> None:
    """Crops of one folder come from one set of options: a rerun with others (another margin,
    size, selection) is refused unless ``force`` redoes every photo."""
    path = out / SETTINGS
    wanted = {key: value for key, value in asdict(options).items() if key not in ("device",)}
    wanted = json.loads(json.dumps(wanted))          # tuples as lists, as read back
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        recorded = None
    except (OSError, ValueError):
        recorded = {}
    if isinstance(recorded, dict) and recorded:
        recorded = {**ADDED_SETTINGS, **recorded}
    if recorded is not None and recorded != wanted and not force:
        changed = sorted(key for key in wanted if recorded.get(key) != wanted[key])
        raise AlignError(f"the crops here were made with other settings ({', '.join(changed)} "
                         "differ); choose another folder, or pass --force to redo every photo",
                         path=out)
    if recorded != wanted:
        with atomic_output(path, force=True) as handle:
            handle.write((json.dumps(wanted, indent=2, sort_keys=True) + "\n").encode())


def _earlier_lines(out: Path) -> tuple[dict[str, list[str]], list[Path]]:
    """bounding_boxes lines of earlier runs by crop path (complete files first, then the
    journals of runs that did not finish), and those journals."""
    lines: dict[str, list[str]] = {}
    journals = sorted(out.glob(JOURNAL_GLOB))
    for path in [*sorted(out.glob("bounding_boxes_*.txt")), *journals]:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for line in text.splitlines(keepends=True):
            if line.endswith("\n") and line.strip():      # a killed run's last line may be cut
                lines.setdefault(line.split(" ")[0].rstrip("\n"), []).append(line)
    return {key: [value[-1]] for key, value in lines.items()}, journals


def _recovered(target: Path, multiple: bool, earlier: dict[str, list[str]]) -> list[str]:
    """The lines an earlier run wrote for a finished photo (its crops, in face order)."""
    if not multiple:
        return earlier.get(str(target), [])
    found = []
    for i in range(10_000):
        name = str(crop_names(target, i + 1, True)[i])
        if name not in earlier:
            break
        found += earlier[name]
    return found


def align_dataset(input_dir: str | os.PathLike[str], output_dir: str | os.PathLike[str], *,
                  options: AlignOptions | None = None, workers: int = 0, resume: bool = False,
                  force: bool = False, on_done: Callable[[int], Any] | None = None,
                  on_total: Callable[[int], Any] | None = None) -> AlignSummary:
    """Align every photo of ``input_dir`` into ``output_dir`` (see the module docstring)."""
    options = options or AlignOptions()
    classes, listed_skips, out = plan_alignment(input_dir, output_dir, options)
    _detector(options)        # bad --mtcnn weights fail here, before anything is created
    make_folders(out, classes)
    with exclusive_folder(out, "this output folder"):
        return _align_locked(classes, listed_skips, out, input_dir, options, workers, resume,
                             force, on_done, on_total)


def _align_locked(classes: Classes, listed_skips: list[tuple[str, str]], out: Path,
                  input_dir: str | os.PathLike[str], options: AlignOptions, workers: int,
                  resume: bool, force: bool, on_done: Callable[[int], Any] | None,
                  on_total: Callable[[int], Any] | None) -> AlignSummary:
    _check_settings(out, options, force)
    for folder in [out, *(out / name for name, _ in classes)]:
        sweep_stale_temps(folder)
    earlier, journals = _earlier_lines(out) if resume else ({}, [])
    key = random.randint(0, 99999)                      # as upstream: one file per run
    boxes_file = out / f"bounding_boxes_{key:05d}.txt"
    summary = AlignSummary(str(Path(input_dir)), str(out), str(boxes_file))
    summary.images += len(listed_skips)
    summary.failed += [{"path": path, "reason": reason} for path, reason in listed_skips]
    tasks = _tasks(classes, out, options, resume, force, summary, earlier)
    if on_total is not None:
        on_total(len(tasks))
    by_target: dict[str, list[str]] = {}
    journal = out / f".bounding_boxes_{key:05d}.journal"
    with open(journal, "a", encoding="utf-8") as log:
        for result in _results(tasks, options, workers):
            by_target[result.target] = photo_lines(result)
            # the journal line goes first: a kill between it and the marker crop leaves an
            # unfinished photo that --resume redoes, never a finished one without its line
            log.write("".join(by_target[result.target]))
            log.flush()
            write_crops(result)
            if result.problem is not None:
                summary.failed.append({"path": result.source, "reason": result.problem})
            else:
                summary.aligned += 1
                summary.faces += len(result.crops)
            summary.failed += [{"path": result.source, "reason": reason}
                               for reason in result.left_out]
            if on_done is not None:
                on_done(1)
    lines: list[str] = []
    for name, images in classes:                        # photo order, finished ones included
        for image in images:
            target = out / name / f"{image.stem}.png"
            lines += by_target.get(str(target)) or _recovered(
                target, options.detect_multiple_faces, earlier)
    with atomic_output(boxes_file, force=True, final=True) as handle:
        handle.write("".join(lines).encode("utf-8"))
    for path in [journal, *journals]:
        path.unlink(missing_ok=True)
    return summary
