"""``facenet-convert align``: upstream align_dataset_mtcnn's layout and crops, bad input, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from facenet_convert.converter.align import AlignOptions, align_dataset
from facenet_convert.converter.commands.align import align_command
from facenet_convert.third_party.facenet.testing.photos import PHOTOS, resized

pytest.importorskip("cv2", reason="opencv-python-headless runs MTCNN's pyramid")

FACES = {"people/t1": resized(PHOTOS["t1"](), 640, 443), "people/astronaut": PHOTOS["astronaut"](),
         "solo/hanks": PHOTOS["hanks"](), "solo/camera_gray": PHOTOS["camera"]()[:, :, 0]}


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes with faces, an RGBA and a gray photo, and every kind of bad input."""
    root = tmp_path_factory.mktemp("photos") / "in"
    for name, pixels in FACES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / f"{name}.png")
    Image.fromarray(PHOTOS["astronaut"]()).convert("RGBA").save(root / "solo" / "rgba.png")
    Image.fromarray(PHOTOS["coffee"]()).save(root / "solo" / "coffee.jpg")          # no face
    (root / "solo" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(root / "solo" / "tiny.png")
    deep = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(deep).save(root / "solo" / "deep16.png")
    return root


def _options(published_mtcnn: dict[str, Path], **kwargs: object) -> AlignOptions:
    nets = tuple(str(published_mtcnn[n]) for n in ("pnet", "rnet", "onet"))
    return AlignOptions(nets=nets, **kwargs)  # type: ignore[arg-type]


def _upstream_crops(photo: np.ndarray) -> list[tuple[np.ndarray, list[int]]]:
    """align_dataset_mtcnn.py's single-face path on upstream detect_face's boxes (TF)."""
    from facenet_convert.third_party.facenet.testing.reference import align_crop
    from tests.upstream_detection import upstream_results

    rgb = np.repeat(photo[:, :, None], 3, axis=2) if photo.ndim == 2 else photo
    boxes, _ = upstream_results({"photo": rgb})["photo"]
    det = boxes[:, 0:4]
    if det.shape[0] > 1:                                  # upstream's lines, verbatim logic
        bounding_box_size = (det[:, 2] - det[:, 0]) * (det[:, 3] - det[:, 1])
        img_center = np.asarray(rgb.shape)[0:2] / 2
        offsets = np.vstack([(det[:, 0] + det[:, 2]) / 2 - img_center[1],
                             (det[:, 1] + det[:, 3]) / 2 - img_center[0]])
        offset_dist_squared = np.sum(np.power(offsets, 2.0), 0)
        det = det[[np.argmax(bounding_box_size - offset_dist_squared * 2.0)]]
    out = []
    for box in det:
        bb = [int(np.maximum(box[0] - 16, 0)), int(np.maximum(box[1] - 16, 0)),
              int(np.minimum(box[2] + 16, rgb.shape[1])), int(np.minimum(box[3] + 16,
                                                                         rgb.shape[0]))]
        out.append((align_crop(rgb, box), bb))
    return out


@pytest.mark.tf
def test_align_layout_and_crops_equal_upstream(photos: Path, tmp_path: Path,
                                               published_mtcnn: dict[str, Path]) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(align_command, [str(photos), str(out), "--mtcnn",
                                                str(published_mtcnn["pnet"].parent)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["images"] == 9 and summary["aligned"] == 5 and summary["faces"] == 5
    reasons = {Path(f["path"]).name: f["reason"] for f in summary["failed"]}
    assert set(reasons) == {"coffee.jpg", "broken.jpg", "tiny.png", "deep16.png"}
    assert "cannot read image" in reasons["broken.jpg"]
    assert "too small" in reasons["tiny.png"] and "no face" in reasons["coffee.jpg"]
    lines = Path(summary["bounding_boxes"]).read_text().splitlines()
    assert len(lines) == 9 and f"{out / 'solo' / 'coffee.png'}" in lines
    boxes = {line.split()[0]: [int(v) for v in line.split()[1:]] for line in lines
             if len(line.split()) == 5}
    for name, photo in FACES.items():
        target = out / f"{name}.png"
        ((want, bb),) = _upstream_crops(photo)
        np.testing.assert_array_equal(np.asarray(Image.open(target)), want, err_msg=name)
        assert boxes[str(target)] == bb
    rgba = np.asarray(Image.open(out / "solo" / "rgba.png"))
    np.testing.assert_array_equal(rgba, np.asarray(Image.open(out / "people" /
                                                              "astronaut.png")))
    assert not [p for p in out.rglob("*") if p.is_file() and not p.name.endswith((".png",
                                                                                 ".txt"))
                and p.name != ".facenet-convert-align.json"]


def test_multiple_faces_resume_and_interrupted_photo(photos: Path, tmp_path: Path,
                                                     published_mtcnn: dict[str, Path]) -> None:
    out = tmp_path / "multi"
    options = _options(published_mtcnn, detect_multiple_faces=True)
    first = align_dataset(photos, out, options=options)
    crops = sorted(p.name for p in (out / "people").iterdir())
    assert crops == ["astronaut_0.png", *(f"t1_{k}.png" for k in range(6))]
    assert first.faces == 10 and len(first.failed) == 4
    with pytest.raises(Exception, match="--resume"):
        align_dataset(photos, out, options=options)
    # a run killed while writing t1's crops: its marker (t1_0.png, written last) is missing
    (out / "people" / "t1_0.png").unlink()
    (out / "people" / "t1_3.png").unlink()
    before = (out / "people" / "astronaut_0.png").stat().st_mtime_ns
    again = align_dataset(photos, out, options=options, resume=True)
    assert again.skipped_existing == 4 and again.aligned == 1 and again.faces == 6
    assert (out / "people" / "astronaut_0.png").stat().st_mtime_ns == before
    assert sorted(p.name for p in (out / "people").iterdir()) == crops
    assert len(list(out.glob("bounding_boxes_*.txt"))) in (1, 2)   # one per run (random key)


def test_workers_give_the_same_crops(photos: Path, tmp_path: Path,
                                     published_mtcnn: dict[str, Path]) -> None:
    single = align_dataset(photos, tmp_path / "one", options=_options(published_mtcnn))
    pooled = align_dataset(photos, tmp_path / "two", options=_options(published_mtcnn),
                           workers=2)
    assert (single.aligned, single.faces) == (pooled.aligned, pooled.faces)
    for crop in (tmp_path / "one").rglob("*.png"):
        twin = tmp_path / "two" / crop.relative_to(tmp_path / "one")
        assert crop.read_bytes() == twin.read_bytes()


def test_bad_folders_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "flat").mkdir()
    result = CliRunner().invoke(align_command, [str(tmp_path / "flat"), str(tmp_path / "o")])
    assert result.exit_code != 0 and "class sub-folders" in str(result.exception)


def test_a_list_of_photos_aligns_as_their_folders(photos: Path, tmp_path: Path,
                                                  published_mtcnn: dict[str, Path]) -> None:
    """INPUT_DIR as a .txt list (shared storage): classes from parent folder names, the
    folder run's crops byte for byte; bad entries are reported, never fatal."""
    elsewhere = tmp_path / "elsewhere" / "people"
    elsewhere.mkdir(parents=True)
    Image.fromarray(PHOTOS["astronaut"]()).save(elsewhere / "t1.jpg")    # same crop name
    listed = sorted(str(p.relative_to(photos)) for p in photos.rglob("*") if p.is_file())
    entries = [str(photos / e) for e in listed]
    entries += [entries[0], str(photos / "solo" / "gone.png"), str(photos / "solo"),
                str(elsewhere / "t1.jpg"), ""]
    photo_list = tmp_path / "photos.txt"
    photo_list.write_text("\n".join(entries) + "\n")

    folder = align_dataset(photos, tmp_path / "by_folder", options=_options(published_mtcnn))
    listing = align_dataset(photo_list, tmp_path / "by_list", options=_options(published_mtcnn))
    crops = sorted(p.relative_to(tmp_path / "by_folder")
                   for p in (tmp_path / "by_folder").rglob("*.png"))
    assert crops and crops == sorted(p.relative_to(tmp_path / "by_list")
                                     for p in (tmp_path / "by_list").rglob("*.png"))
    for crop in crops:
        assert (tmp_path / "by_folder" / crop).read_bytes() == \
            (tmp_path / "by_list" / crop).read_bytes()
    assert (listing.aligned, listing.faces) == (folder.aligned, folder.faces)
    reasons = {f["path"]: f["reason"] for f in listing.failed}
    assert listing.images == folder.images + 4
    assert "listed again" in reasons[f"{entries[0]}@{len(listed) + 1}"]
    assert "no such file" in reasons[str(photos / "solo" / "gone.png")]
    assert "not a regular file" in reasons[str(photos / "solo")]
    assert "same crop people/t1.png" in reasons[str(elsewhere / "t1.jpg")]

    inside = CliRunner().invoke(align_command, [str(photo_list), str(photos / "solo")])
    assert inside.exit_code != 0 and "hold a listed photo" in str(inside.exception)
    empty = tmp_path / "empty.txt"
    empty.write_text(str(tmp_path / "nothing.png") + "\n")
    result = CliRunner().invoke(align_command, [str(empty), str(tmp_path / "o")])
    assert result.exit_code != 0 and "lists no photo" in str(result.exception)
