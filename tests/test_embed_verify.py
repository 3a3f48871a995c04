"""``facenet-convert embed`` and ``verify``: outputs, failures, and the proof against TF.

The TF proof converts a real upstream-graph checkpoint with ``facenet-convert convert``, embeds
real photographs (scikit-image's, insightface's ``t1.jpg``) with ``facenet-convert embed`` and
compares with the upstream graph's ``embeddings`` on the same preprocessed images, computed by
upstream's own code: its prewhiten / fixed standardization, and with ``--detect`` the whole
upstream chain (TF ``detect_face`` boxes, align_dataset_mtcnn's margin crop and bilinear resize).
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from facenet_convert.converter.cli import main
from facenet_convert.third_party.facenet.testing.photos import PHOTOS, insightface_image
from facenet_convert.third_party.facenet.testing.upstream_code import upstream_functions

# the session fixtures (module-level names are how pytest finds them)
from tests.tf_fixtures import fixtures_dir, upstream_ckpt_128, upstream_ckpt_512  # noqa: F401

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

TOL = 1e-5


def _run(*args: str) -> Any:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def faces_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real photo crops (aligned-face stand-ins) plus one broken file and one non-image."""
    folder = tmp_path_factory.mktemp("faces")
    astronaut = PHOTOS["astronaut"]()
    Image.fromarray(astronaut[40:200, 170:330]).save(folder / "a_face.png")       # 160x160
    Image.fromarray(astronaut[20:240, 150:370]).save(folder / "b_face.jpg")       # resized
    Image.fromarray(PHOTOS["camera"]()[90:250, 150:310, 0]).save(folder / "c_gray.png")
    (folder / "d_broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    return folder


def _images(folder: Path) -> list[Path]:
    return sorted(folder.iterdir())


def _expected(weights: Path, paths: list[Path], preprocessing: str) -> np.ndarray:
    from facenet_convert.models.inception_resnet_v1 import InceptionResNetV1
    from facenet_convert.models.preprocessing import Preprocess, load_image

    model = InceptionResNetV1(pretrained=str(weights)).eval()
    batch = torch.stack([Preprocess(preprocessing)(load_image(p)) for p in paths])
    with torch.inference_mode():
        return model(batch).numpy()


def test_embed_npz_reports_broken_and_matches_model(faces_dir: Path, weights: Path,
                                                    tmp_path: Path) -> None:
    out = tmp_path / "emb.npz"
    result = _run("embed", *_images(faces_dir), "--weights", weights, "-o", out)
    assert result.exit_code == 0, result.output
    assert "d_broken.jpg: cannot read image" in result.stderr
    assert "unknown release, assuming fixed_standardization" in result.stderr
    assert "wrote 3 embeddings (512-d, fixed_standardization)" in result.stdout
    saved = np.load(out)
    good = [p for p in _images(faces_dir) if "broken" not in p.name]
    assert saved["names"].tolist() == [str(p) for p in good]
    assert saved["embeddings"].dtype == np.float32 and saved["embeddings"].shape == (3, 512)
    want = _expected(weights, good, "fixed_standardization")
    assert float(np.abs(saved["embeddings"] - want).max()) <= TOL
    assert "boxes" not in saved


def test_embed_folder_npy_and_csv_agree(faces_dir: Path, weights: Path, tmp_path: Path) -> None:
    npy, csv_path = tmp_path / "emb.npy", tmp_path / "emb.csv"
    for out in (npy, csv_path):
        result = _run("embed", faces_dir, "--weights", weights, "--preprocessing", "prewhiten",
                      "--batch-size", "2", "-o", out)
        assert result.exit_code == 0, result.output
        assert "assuming" not in result.stderr
    matrix = np.load(npy, allow_pickle=False)
    names = (tmp_path / "emb.names.txt").read_text(encoding="utf-8").splitlines()
    with open(csv_path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["name", *(f"e{i}" for i in range(512))]
    assert [row[0] for row in rows[1:]] == names == [
        str(p) for p in _images(faces_dir) if "broken" not in p.name]
    np.testing.assert_array_equal(np.array([[np.float32(v) for v in row[1:]]
                                            for row in rows[1:]]), matrix)
    want = _expected(weights, [Path(n) for n in names], "prewhiten")
    assert float(np.abs(matrix - want).max()) <= TOL


def test_embed_output_rules(faces_dir: Path, weights: Path, tmp_path: Path) -> None:
    image = faces_dir / "a_face.png"
    out = tmp_path / "one.npz"
    out.write_bytes(b"keep me")
    refused = _run("embed", image, "--weights", weights, "-o", out)
    assert refused.exit_code != 0 and "pass --force" in refused.stderr
    assert out.read_bytes() == b"keep me"
    assert _run("embed", image, "--weights", weights, "-o", out, "--force").exit_code == 0
    assert np.load(out)["embeddings"].shape == (1, 512)
    bad_suffix = _run("embed", image, "--weights", weights, "-o", tmp_path / "x.txt")
    assert bad_suffix.exit_code != 0 and "unknown output type .txt" in bad_suffix.stderr
    disguised = tmp_path / "face.npz"                  # an image with an output's extension
    shutil.copy(image, disguised)
    same = _run("embed", disguised, "--weights", weights, "-o", disguised, "--force")
    assert same.exit_code != 0 and "same file as input" in same.stderr


def test_embed_nothing_usable_writes_nothing(faces_dir: Path, weights: Path,
                                            tmp_path: Path) -> None:
    out = tmp_path / "none.csv"
    result = _run("embed", faces_dir / "d_broken.jpg", tmp_path / "missing.png",
                  "--weights", weights, "-o", out)
    assert result.exit_code != 0
    assert "missing.png: no such file" in result.stderr
    assert "no embeddings: all 2 inputs were skipped" in result.stderr
    assert list(tmp_path.iterdir()) == []
    assert "Traceback" not in result.output


def test_embed_model_choice_errors(faces_dir: Path, weights: Path, tmp_path: Path) -> None:
    image = faces_dir / "a_face.png"
    neither = _run("embed", image, "-o", tmp_path / "e.npz")
    assert neither.exit_code != 0 and "exactly one of --weights" in neither.stderr
    both = _run("embed", image, "--weights", weights, "--pretrained", "vggface2",
                "-o", tmp_path / "e.npz")
    assert both.exit_code != 0 and "exactly one of --weights" in both.stderr
    unknown = _run("embed", image, "--pretrained", "nope", "-o", tmp_path / "e.npz")
    assert unknown.exit_code != 0 and "unknown release 'nope'" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def mtcnn_dir(published_mtcnn: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
              ) -> Path:
    folder = tmp_path_factory.mktemp("mtcnn")
    for name, path in published_mtcnn.items():
        shutil.copy(path, folder / f"{name}.pt")
    return folder


@pytest.fixture(scope="module")
def photos_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(insightface_image("t1.jpg")).save(folder / "t1.png")
    Image.fromarray(PHOTOS["coffee"]()).save(folder / "coffee.png")
    Image.fromarray(PHOTOS["astronaut"]()).save(folder / "astronaut.png")
    return folder


def test_embed_detect_names_boxes_and_no_face(photos_dir: Path, mtcnn_dir: Path,
                                              weights: Path, tmp_path: Path) -> None:
    from facenet_convert.models.mtcnn.detector import MTCNN
    from facenet_convert.models.preprocessing import load_image

    out = tmp_path / "faces.npz"
    result = _run("embed", photos_dir, "--detect", "--mtcnn", mtcnn_dir, "--weights", weights,
                  "--batch-size", "4", "-o", out)
    assert result.exit_code == 0, result.output
    assert "coffee.png: no face found" in result.stderr
    saved = np.load(out)
    t1 = str(photos_dir / "t1.png")
    assert saved["names"].tolist() == [f"{photos_dir / 'astronaut.png'}#0",
                                       *(f"{t1}#{k}" for k in range(6))]
    assert saved["embeddings"].shape == (7, 512) and saved["landmarks"].shape == (7, 5, 2)
    detector = MTCNN(margin=32, **{n: mtcnn_dir / f"{n}.pt" for n in ("pnet", "rnet", "onet")})
    found = detector.detect_faces(load_image(photos_dir / "t1.png"))[0]
    np.testing.assert_array_equal(saved["boxes"][1:], found.boxes.numpy())
    np.testing.assert_array_equal(saved["probs"][1:], found.probs.numpy())


def test_verify_same_and_different(faces_dir: Path, weights: Path, tmp_path: Path) -> None:
    a, b = faces_dir / "a_face.png", faces_dir / "c_gray.png"
    same = _run("verify", a, a, "--weights", weights)
    assert same.exit_code == 0, same.output
    assert same.stdout.startswith("distance 0.0000") and "same person" in same.stdout
    out = tmp_path / "pair.npz"
    assert _run("embed", a, b, "--weights", weights, "-o", out).exit_code == 0
    vectors = np.load(out)["embeddings"]
    distance = float(np.linalg.norm(vectors[0].astype(np.float64) - vectors[1]))
    pair = _run("verify", a, b, "--weights", weights, "--threshold", "0")
    assert pair.exit_code == 0, pair.output
    assert f"distance {distance:.4f}" in pair.stdout and "different people" in pair.stdout
    loose = _run("verify", a, b, "--weights", weights, "--threshold", "2.1")
    assert "same person" in loose.stdout
    broken = _run("verify", a, faces_dir / "d_broken.jpg", "--weights", weights)
    assert broken.exit_code != 0 and "cannot read image" in broken.stderr


def test_verify_detect_no_face(photos_dir: Path, mtcnn_dir: Path, weights: Path) -> None:
    result = _run("verify", photos_dir / "astronaut.png", photos_dir / "coffee.png",
                  "--detect", "--mtcnn", mtcnn_dir, "--weights", weights)
    assert result.exit_code != 0 and "coffee.png: no face found" in result.stderr


# --------------------------------------------------------------------------- proof against TF

def _tf_embedder(ckpt: Any) -> tuple[Any, Any]:
    """Upstream inference graph restored from ``ckpt``: (NHWC float -> embeddings, session)."""
    from facenet_convert.third_party.facenet.compat import load_upstream, upstream_mode
    from facenet_convert.third_party.facenet.graphs import build_inference

    up = load_upstream()
    tf = up.tf
    graph = tf.Graph()
    with upstream_mode(), graph.as_default():
        net = build_inference(up, embedding_size=ckpt.embedding_size,
                              num_classes=ckpt.num_classes)
        session = tf.Session(graph=graph)
        tf.train.Saver(tf.global_variables()).restore(session, str(ckpt.prefix))

    def run(nhwc: np.ndarray) -> np.ndarray:
        with upstream_mode():
            return session.run(net.embeddings, feed_dict={net.images: nhwc})

    return run, session


@pytest.fixture(scope="module", params=["upstream_ckpt_512", "upstream_ckpt_128"])
def upstream(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[tuple[Any, Path, Any]]:
    """(checkpoint, its conversion by ``facenet-convert convert``, its TF embedder)."""
    ckpt = request.getfixturevalue(request.param)
    out = tmp_path_factory.mktemp("converted") / f"{request.param}.pt"
    result = _run("convert", ckpt.prefix, "-o", out)
    assert result.exit_code == 0, result.output
    run, session = _tf_embedder(ckpt)
    yield ckpt, out, run
    session.close()


@pytest.mark.tf
def test_embed_equals_tf_graph(upstream: tuple[Any, Path, Any], faces_dir: Path,
                               tmp_path: Path) -> None:
    """512-d: fixed standardization (2018 releases); 128-d: prewhiten (2017), both guessed."""
    ckpt, converted, tf_embed = upstream
    prewhiten = upstream_functions("facenet/src/facenet.py", ("prewhiten",))["prewhiten"]
    out = tmp_path / "emb.npz"
    result = _run("embed", faces_dir, "--weights", converted, "-o", out)
    assert result.exit_code == 0, result.output
    expected = "prewhiten" if ckpt.embedding_size == 128 else "fixed_standardization"
    assert f"assuming {expected}" in result.stderr
    saved = np.load(out)
    inputs = []
    for name in saved["names"]:
        with Image.open(name) as image:
            rgb = np.asarray(image.convert("RGB").resize((160, 160), Image.BILINEAR))
        if expected == "prewhiten":
            inputs.append(prewhiten(rgb))
        else:                                           # upstream's fixed standardization
            inputs.append((rgb.astype(np.float32) - 127.5) / 128.0)
    want = tf_embed(np.stack(inputs).astype(np.float32))
    assert saved["embeddings"].shape == want.shape == (3, ckpt.embedding_size)
    assert float(np.abs(saved["embeddings"] - want).max()) <= TOL


@pytest.mark.tf
@pytest.mark.parametrize("upstream", ["upstream_ckpt_512"], indirect=True)
def test_embed_detect_equals_upstream_pipeline(photos_dir: Path, mtcnn_dir: Path,
                                               upstream: tuple[Any, Path, Any],
                                               tmp_path: Path) -> None:
    """Upstream's whole chain: TF detect_face boxes, align_dataset_mtcnn crops, TF graph."""
    _, converted, tf_embed = upstream
    pytest.importorskip("cv2", reason="upstream detect_face resizes with OpenCV")
    from facenet_convert.third_party.facenet.testing.reference import UpstreamDetector, align_crop

    photo = np.asarray(Image.open(photos_dir / "t1.png").convert("RGB"))
    with UpstreamDetector() as detector:
        boxes, _ = detector.detect(photo)
    inputs = []
    for det in boxes:                                   # align_dataset_mtcnn.py, margin 32
        scaled = align_crop(photo, det)
        inputs.append((scaled.astype(np.float32) - 127.5) / 128.0)
    want = tf_embed(np.stack(inputs))

    out = tmp_path / "t1.npz"
    result = _run("embed", photos_dir / "t1.png", "--detect", "--mtcnn", mtcnn_dir,
                  "--weights", converted, "--preprocessing", "fixed_standardization", "-o", out)
    assert result.exit_code == 0, result.output
    saved = np.load(out)
    assert saved["embeddings"].shape == want.shape == (6, 512)
    assert float(np.abs(saved["embeddings"] - want).max()) <= TOL
