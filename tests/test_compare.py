"""``facenet-convert compare``: upstream compare.py's distance matrix, printed as it prints it.

Upstream's ``main`` is compiled from the pinned facenet 1.0.5 wheel and run with its TF session,
model loading and MTCNN alignment replaced by our embeddings of the same images (those parts
need TF 1 and the long-removed ``scipy.misc.imread``); what it prints must equal our table
character for character. The images are real photographs shipped by PyPI packages.
"""

from __future__ import annotations

import contextlib
import io
import json
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from facenet_convert.converter.cli import main
from facenet_convert.converter.comparison import distance_matrix
from facenet_convert.converter.embedding import embed_paths, load_embedding_model
from facenet_convert.third_party.facenet.testing.photos import PHOTOS, insightface_image
from facenet_convert.third_party.facenet.testing.upstream_code import upstream_functions

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")


def _run(*args: Any) -> Any:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("compare")
    crops = {"astronaut.png": PHOTOS["astronaut"]()[40:200, 170:330],
             "astronaut_mirror.png": PHOTOS["astronaut"]()[40:200, 170:330][:, ::-1],
             "camera.png": PHOTOS["camera"]()[90:250, 150:310],
             "hanks.png": insightface_image("Tom_Hanks_54745.png")}
    for name, array in crops.items():
        Image.fromarray(np.ascontiguousarray(array)).save(folder / name)
    return [folder / name for name in crops]


def upstream_compare_output(image_files: list[str], emb: np.ndarray) -> str:
    """What upstream compare.py's ``main`` prints for ``emb`` (its TF parts stubbed)."""
    session = types.SimpleNamespace(run=lambda fetch, feed_dict: emb)
    graph = types.SimpleNamespace(get_tensor_by_name=lambda name: name,
                                  as_default=contextlib.nullcontext)
    tf = types.SimpleNamespace(Graph=lambda: graph,
                               Session=lambda: contextlib.nullcontext(session),
                               get_default_graph=lambda: graph)
    namespace: dict[str, Any] = {
        "np": np, "tf": tf, "facenet": types.SimpleNamespace(load_model=lambda model: None),
        "load_and_align_data": lambda paths, size, margin, fraction: np.zeros((len(paths),))}
    upstream_functions("facenet/src/compare.py", ("main",), namespace)
    args = types.SimpleNamespace(image_files=list(image_files), image_size=160, margin=44,
                                 gpu_memory_fraction=1.0, model="model")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        namespace["main"](args)
    return out.getvalue()


def test_compare_prints_upstream_table(faces: list[Path], weights: Path) -> None:
    loaded = load_embedding_model(weights, fuse=False)
    emb = embed_paths(loaded, faces).embeddings
    result = _run("compare", *faces, "--weights", weights)
    assert result.exit_code == 0, result.output
    assert result.stdout == upstream_compare_output([str(p) for p in faces], emb)


def test_compare_json_csv_and_skips(faces: list[Path], weights: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    out_json, out_csv = tmp_path / "m.json", tmp_path / "m.csv"
    result = _run("compare", *faces, broken, "--weights", weights, "--json", out_json,
                  "--csv", out_csv)
    assert result.exit_code == 0, result.output
    assert "broken.jpg" in result.stderr
    body = json.loads(out_json.read_text())
    assert body["images"] == [str(p) for p in faces]
    emb = embed_paths(load_embedding_model(weights, fuse=False), faces).embeddings
    matrix = np.asarray(body["distance"])
    np.testing.assert_array_equal(matrix, distance_matrix(emb))
    for i in range(len(faces)):          # compare.py's formula, float32 as TF returned them
        for j in range(len(faces)):
            assert matrix[i, j] == np.sqrt(np.sum(np.square(np.subtract(emb[i, :], emb[j, :]))))
    assert np.all(np.diag(matrix) == 0) and matrix[0, 1] > 0
    rows = out_csv.read_text().splitlines()
    assert rows[0] == "," + ",".join(str(p) for p in faces) and len(rows) == 5
    stdout = _run("compare", *faces[:2], "--weights", weights, "--csv", "-")
    assert stdout.exit_code == 0 and stdout.stdout.splitlines()[0].startswith(",")
    again = _run("compare", *faces, "--weights", weights, "--json", out_json)
    assert again.exit_code != 0 and "exists" in again.stderr


def test_flipped_embedding_is_the_mirror_images(faces: list[Path], weights: Path) -> None:
    """--use-flipped-images mirrors after standardization; a mirrored file gives the same."""
    result = embed_paths(load_embedding_model(weights, fuse=False), faces[:2], flip=True)
    assert result.flipped is not None
    np.testing.assert_allclose(result.flipped[0], result.embeddings[1], atol=1e-5)
    np.testing.assert_allclose(result.flipped[1], result.embeddings[0], atol=1e-5)


def test_compare_nothing_embeddable(tmp_path: Path, weights: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"nope")
    result = _run("compare", broken, "--weights", weights)
    assert result.exit_code != 0 and "nothing to compare" in result.stderr
