"""``evaluate``: the LFW protocol equals upstream's own functions to the last digit.

Upstream is davidsandberg's code from the pinned facenet 1.0.5 wheel: ``facenet.distance``,
``calculate_roc``, ``calculate_accuracy``, ``calculate_val``, ``calculate_val_far`` and
``lfw.evaluate`` are compiled from the wheel's files with their module imports bound to the
real numpy, scikit-learn ``KFold`` and scipy ``interpolate`` (the modules themselves import
TensorFlow and the long-gone ``scipy.misc``, which these functions never use).

``calculate_val`` calls ``interp1d(far_train, thresholds, kind='slinear')``, which scipy >= 1.9
refuses when FARs repeat. Two proofs: (1) a set built so that no training FAR repeats runs
upstream unmodified on today's scipy; (2) elsewhere upstream runs with ``interpolate`` bound to
scipy <= 1.8's slinear path (``make_interp_spline`` k=1, i.e. ``BSpline`` on knots
``r_[x0, x, xn]``), built and evaluated by today's scipy ``BSpline`` without the duplicate check.

Real data: photographs shipped by PyPI packages (scikit-image, insightface), laid out as LFW
(``name/name_NNNN.png``) with augmented copies for same-person pairs, embedded by the CLI.
"""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from facenet_convert.converter import evaluation as ev
from facenet_convert.converter.cli import main
from facenet_convert.converter.core.errors import EvaluationError
from facenet_convert.converter.embedding import (
    embed_images,
    expand_inputs,
    load_embedding_model,
    write_embeddings,
)
from facenet_convert.third_party.facenet.testing.photos import PHOTOS, insightface_image
from facenet_convert.third_party.facenet.testing.upstream_code import (
    OldScipyInterpolate,
    lfw_evaluation,
    lfw_like,
)

# the session fixtures (module-level names are how pytest finds them)
from tests.tf_fixtures import fixtures_dir, upstream_ckpt_512  # noqa: F401

sklearn_model_selection = pytest.importorskip("sklearn.model_selection")
sklearn_metrics = pytest.importorskip("sklearn.metrics")
interpolate = pytest.importorskip("scipy.interpolate")
optimize = pytest.importorskip("scipy.optimize")

def upstream(interp: Any = interpolate) -> types.SimpleNamespace:
    """facenet's functions and lfw.evaluate, with ``interpolate`` bound to ``interp``."""
    return lfw_evaluation(interp, sklearn_model_selection.KFold)


@pytest.fixture(scope="module")
def up() -> types.SimpleNamespace:
    return upstream()


@pytest.fixture(scope="module")
def up_old() -> types.SimpleNamespace:
    return upstream(OldScipyInterpolate)


def _assert_same_roc(ours: ev.Roc, tpr: np.ndarray, fpr: np.ndarray, acc: np.ndarray) -> None:
    np.testing.assert_array_equal(ours.tpr, tpr)
    np.testing.assert_array_equal(ours.fpr, fpr)
    np.testing.assert_array_equal(ours.accuracy, acc)


# ------------------------------------------------------------------------ exact equality

@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("subtract_mean", [False, True])
def test_evaluate_equals_upstream_on_seeded_embeddings(up_old: Any, metric: str,
                                                       subtract_mean: bool) -> None:
    emb, issame = lfw_like(seed=len(metric) + subtract_mean, pairs=3000)
    got = ev.evaluate(emb, issame, distance_metric=metric, subtract_mean=subtract_mean)
    tpr, fpr, acc, val, val_std, far = up_old.evaluate(
        emb, issame, nrof_folds=10, distance_metric=ev.METRICS[metric],
        subtract_mean=subtract_mean)
    _assert_same_roc(got.roc, tpr, fpr, acc)
    assert (got.val.val, got.val.val_std, got.val.far) == (val, val_std, far)
    assert got.accuracy_mean == np.mean(acc) and got.accuracy_std == np.std(acc)
    assert got.auc == sklearn_metrics.auc(fpr, tpr)
    eer = optimize.brentq(lambda x: 1. - x - interpolate.interp1d(fpr, tpr)(x), 0., 1.)
    assert got.eer == pytest.approx(eer, abs=1e-9)


def test_float32_embeddings_and_odd_folds(up_old: Any) -> None:
    """float32 rows (distances in float32, as upstream computes them) and 7 uneven folds."""
    emb, issame = lfw_like(seed=7, pairs=1001, dtype=np.float32)
    thresholds = ev.roc_thresholds()
    e1, e2 = emb[0::2], emb[1::2]
    for mean in (False, True):
        roc = ev.calculate_roc(thresholds, e1, e2, issame, 7, 0, mean)
        _assert_same_roc(roc, *up_old.calculate_roc(thresholds, e1, e2, issame, 7, 0, mean))
        val = ev.calculate_val(ev.val_thresholds(), e1, e2, issame, 1e-2, 7, 1, mean)
        assert (val.val, val.val_std, val.far) == up_old.calculate_val(
            ev.val_thresholds(), e1, e2, issame, 1e-2, 7, 1, mean)


def test_modern_scipy_agrees_where_fars_do_not_repeat(up: Any) -> None:
    """Unmodified upstream on today's scipy: every 0.001 bin of [0, 3.999) holds a
    different-pair squared distance in every training set, so no training FAR repeats."""
    bins = 3999
    squared = (np.arange(bins) + 0.5) * 0.001
    rng = np.random.default_rng(3)
    # two copies of every bin, 3999 different pairs apart: a test fold (~800 of them) can hold
    # at most one copy, so every training set keeps one of each
    diff = np.concatenate([rng.permutation(squared) for _ in range(2)])
    issame = np.tile([True, False, False, False], diff.size // 3 + 1)[:diff.size * 4 // 3]
    issame = np.r_[issame, np.zeros(diff.size - int(np.sum(~issame)), bool)]
    same = rng.uniform(0.0, 1.5, int(np.sum(issame)))
    dist = np.empty(issame.size)
    dist[issame], dist[~issame] = same, diff
    angle = np.arccos(1.0 - dist / 2.0)                                   # |a - b|^2 = d
    e1 = np.zeros((issame.size, 2))
    e1[:, 0] = 1.0
    e2 = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    thresholds = ev.val_thresholds()
    for train, _ in ev.kfold(issame.size, 10):
        d = np.sum(np.square(e1[train] - e2[train]), 1)[~issame[train]]
        far = np.array([np.mean(d < t) for t in thresholds[:200]])
        assert np.all(np.diff(far) > 0)                    # spot check: strictly increasing
    got = ev.calculate_val(thresholds, e1, e2, issame, 1e-3, 10)
    assert (got.val, got.val_std, got.far) == up.calculate_val(thresholds, e1, e2, issame, 1e-3)
    with pytest.raises(ValueError, match="duplicates"):       # and the usual case on new scipy
        emb, labels = lfw_like(seed=1, pairs=600)
        up.evaluate(emb, labels)


def test_slinear_rule_equals_scipy() -> None:
    rng = np.random.default_rng(5)
    x = np.sort(rng.uniform(0, 1, 50))
    y = np.arange(50) * 0.001
    for x0 in (*x[:3], *rng.uniform(x[0], x[-1], 20), x[-1]):
        assert ev.slinear_at(x, y, x0) == float(interpolate.interp1d(x, y, kind="slinear")(x0))
    repeated = np.r_[0, 0, 0, 0.1, 0.1, 0.2, 0.5, 0.5, 1, 1]
    old = OldScipyInterpolate.interp1d(repeated, np.arange(10.0), "slinear")
    for x0 in (0, 0.05, 0.1, 0.15, 0.2, 0.4, 0.5, 0.7, 1.0):
        assert ev.slinear_at(repeated, np.arange(10.0), x0) == float(old(x0))


def test_kfold_equals_sklearn() -> None:
    for n, k in ((6000, 10), (1001, 7), (10, 10), (23, 4)):
        theirs = list(sklearn_model_selection.KFold(n_splits=k, shuffle=False)
                      .split(np.arange(n)))
        ours = ev.kfold(n, k)
        assert len(ours) == len(theirs)
        for (a, b), (c, d) in zip(ours, theirs, strict=True):
            np.testing.assert_array_equal(a, c)
            np.testing.assert_array_equal(b, d)
    with pytest.raises(EvaluationError, match="more than the 3 pairs"):
        ev.kfold(3, 10)


def test_empty_side_is_an_error_not_a_division_by_zero(up_old: Any) -> None:
    emb, issame = lfw_like(seed=2, pairs=40)
    issame = np.r_[np.ones(20, bool), np.zeros(20, bool)]   # sorted: fold 1 has no different
    with pytest.raises(ZeroDivisionError):
        up_old.evaluate(emb, issame, nrof_folds=2)
    with pytest.raises(EvaluationError, match="fold 1 has no same-person pairs.*fewer --folds"):
        ev.evaluate(emb, issame, nrof_folds=2)


def test_flipped_rows_are_concatenated_in_float64() -> None:
    rng = np.random.default_rng(0)
    plain = rng.standard_normal((4, 3)).astype(np.float32)
    flipped = rng.standard_normal((4, 3)).astype(np.float32)
    both = ev.combine_flipped(plain, flipped)
    assert both.dtype == np.float64 and both.shape == (4, 6)
    np.testing.assert_array_equal(both[:, :3], plain)
    np.testing.assert_array_equal(both[:, 3:], flipped)


def test_calibration_reaches_the_far() -> None:
    emb, issame = lfw_like(seed=11, pairs=6000)
    result = ev.evaluate(emb, issame, far_target=1e-2)
    cal = result.calibration
    assert cal.far <= 1e-2 + 1 / 3000 and cal.verify_threshold == pytest.approx(
        cal.threshold ** 0.5)
    dist = ev.distance(emb[0::2], emb[1::2])
    assert np.mean(dist[~issame] < cal.threshold) == cal.far


# ------------------------------------------------------------------ real photographs, CLI

def _run(*args: Any) -> Any:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _variants(face: np.ndarray, seed: int) -> list[np.ndarray]:
    """Four images of one face: as is, brighter, mirrored, zoomed in with noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = face.shape[:2]
    zoom = np.asarray(Image.fromarray(face[h // 12:h - h // 12, w // 12:w - w // 12])
                      .resize((w, h), Image.BILINEAR)).astype(np.float64)
    noisy = np.clip(zoom + rng.normal(0, 6, zoom.shape), 0, 255)
    return [face, np.clip(face * 1.2 + 8, 0, 255).astype(np.uint8), face[:, ::-1],
            noisy.astype(np.uint8)]


# insightface t1.jpg's six faces (x1, y1, x2, y2), as MTCNN with the published weights finds them
T1_BOXES = ((54, 262, 171, 395), (270, 150, 374, 268), (465, 264, 571, 411),
            (741, 342, 842, 475), (908, 62, 1013, 200), (1134, 276, 1226, 400))


@pytest.fixture(scope="module")
def lfw_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """LFW layout over real photographs: 9 people x 4 images, 72 interleaved pairs + 1 whose
    image is missing. Faces: scikit-image's astronaut and camera man, insightface's Tom Hanks
    crop and the six people of its t1.jpg (MTCNN's boxes, rounded, recorded in T1_BOXES)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("lfw")
    faces = {"astronaut": PHOTOS["astronaut"]()[40:200, 170:330],
             "camera": PHOTOS["camera"]()[90:250, 150:310],
             "hanks": insightface_image("Tom_Hanks_54745.png")}
    t1 = insightface_image("t1.jpg")
    for k, (x1, y1, x2, y2) in enumerate(T1_BOXES):
        faces[f"t1_person{k}"] = t1[y1:y2, x1:x2]
    names = sorted(faces)
    for seed, name in enumerate(names):
        (root / name).mkdir()
        for number, image in enumerate(_variants(faces[name], seed), start=1):
            Image.fromarray(image).save(root / name / f"{name}_{number:04d}.png")
    lines = ["2\t37"]
    same = [(a, b) for a, b in ((1, 2), (1, 3), (2, 4), (3, 4))]
    diff = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    for k in range(36):
        name = names[k % len(names)]
        a, b = same[k // len(names)]
        lines.append(f"{name}\t{a}\t{b}")
        i, j = diff[k]
        lines.append(f"{names[i]}\t{1 + k % 4}\t{names[j]}\t{1 + (k + 1) % 4}")
    lines.append(f"{names[0]}\t1\t{names[1]}\t9")
    pairs = root / "pairs.txt"
    pairs.write_text("\n".join(lines) + "\n")
    return pairs, root


def _rows(pairs: Path, root: Path, npz: Path) -> tuple[np.ndarray, np.ndarray]:
    """validate_on_lfw.py's float64 embedding rows and labels, from an `embed` .npz."""
    table = ev.embeddings_by_path(npz)
    resolved = ev.pair_paths(root, ev.read_pairs(pairs))
    rows = np.zeros((len(resolved.paths), 512))
    for k, path in enumerate(resolved.paths):
        rows[k] = table[ev.name_key(str(path))]
    return rows, np.asarray(resolved.issame)


def test_evaluate_real_set_equals_upstream(lfw_set: tuple[Path, Path], weights: Path,
                                          up_old: Any, tmp_path: Path) -> None:
    pairs, root = lfw_set
    npz = tmp_path / "emb.npz"
    paths, _ = expand_inputs([str(root)])      # what `embed ROOT -o emb.npz` writes, unfused
    loaded = load_embedding_model(weights, fuse=False)
    write_embeddings(str(npz), embed_images(loaded, paths), loaded.embedding_size, force=False,
                     inputs=paths, detected=False)
    report = tmp_path / "report.json"
    result = _run("evaluate", pairs, root, "--embeddings", npz, "--json", report)
    assert result.exit_code == 0, result.output
    assert "skipped 1 of 73 pairs with a missing image (first: line 74" in result.stderr
    assert result.stdout.startswith("pairs: 72 (10 folds, euclidean distance)")
    got = json.loads(report.read_text())
    rows, issame = _rows(pairs, root, npz)
    tpr, fpr, acc, val, val_std, far = up_old.evaluate(rows, issame)
    assert got["accuracy_per_fold"] == acc.tolist()
    assert (got["accuracy"], got["accuracy_std"]) == (np.mean(acc), np.std(acc))
    assert (got["val"], got["val_std"], got["far"]) == (val, val_std, far)
    assert got["auc"] == sklearn_metrics.auc(fpr, tpr)
    assert f"Accuracy: {np.mean(acc):1.3f}+-{np.std(acc):1.3f}" in result.stdout
    assert got["pairs_missing_images"] == 1 and got["task_parity"] is None

    csv = tmp_path / "roc.csv"
    only = _run("evaluate", pairs, root, "--embeddings", npz, "--calibrate", "--roc", csv)
    assert float(only.stdout) == pytest.approx(got["calibration"]["verify_threshold"], abs=5e-5)
    lines = csv.read_text().splitlines()
    assert lines[0] == "threshold,fpr,tpr" and len(lines) == 401
    assert [float(v) for v in lines[1].split(",")] == [0.0, fpr[0], tpr[0]]
    again = _run("evaluate", pairs, root, "--embeddings", npz, "--roc", csv)
    assert again.exit_code != 0 and "exists" in again.stderr


def test_evaluate_with_model_roc_and_flips(lfw_set: tuple[Path, Path], weights: Path,
                                          tmp_path: Path) -> None:
    pairs, root = lfw_set
    png, report = tmp_path / "roc.png", tmp_path / "r.json"
    result = _run("evaluate", pairs, root, "--weights", weights, "--roc", png, "--json", report,
                  "--folds", "4", "--distance-metric", "cosine", "--subtract-mean",
                  "--use-flipped-images")
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    body = json.loads(report.read_text())
    assert body["folds"] == 4 and body["distance_metric"] == "cosine"
    assert body["calibration"]["verify_threshold"] is None
    assert "verify uses plain euclidean distance" in result.stdout
    assert "mean subtracted, flipped images concatenated" in result.stdout
    bad = _run("evaluate", pairs, root, "--weights", weights, "--roc", tmp_path / "roc.svg")
    assert bad.exit_code != 0 and ".png or .csv" in bad.stderr


def test_evaluate_bad_inputs(lfw_set: tuple[Path, Path], weights: Path, tmp_path: Path) -> None:
    pairs, root = lfw_set
    broken = tmp_path / "pairs.txt"
    broken.write_text("10\t300\nAbel\t1\n")
    result = _run("evaluate", broken, root, "--weights", weights)
    assert result.exit_code != 0 and "line 2: expected 'name n1 n2'" in result.stderr
    broken.write_text("../etc\t1\t2\n")
    result = _run("evaluate", broken, root, "--weights", weights)
    assert result.exit_code != 0 and "line 1: expected" in result.stderr
    none = _run("evaluate", pairs, tmp_path, "--weights", weights)
    assert none.exit_code != 0 and "none of the 73 pairs has both images" in none.stderr
    both = _run("evaluate", pairs, root, "--weights", weights, "--embeddings", tmp_path / "x.npz")
    assert both.exit_code != 0 and "exactly one" in both.stderr


@pytest.mark.tf
def test_evaluate_compare_with_tf_graph(lfw_set: tuple[Path, Path], tmp_path: Path,
                                        request: pytest.FixtureRequest) -> None:
    """Task-level parity: the converted checkpoint and the TF graph decide every pair alike."""
    pairs, root = lfw_set
    ckpt = request.getfixturevalue("upstream_ckpt_512")
    converted = tmp_path / "converted.pt"
    assert _run("convert", ckpt.prefix, "-o", converted).exit_code == 0
    report = tmp_path / "parity.json"
    result = _run("evaluate", pairs, root, "--weights", converted, "--preprocessing",
                  "fixed_standardization", "--compare-with", ckpt.prefix,
                  "--json", report)
    assert result.exit_code == 0, result.output
    assert "both models make the same decision on every pair (72/72" in result.stdout
    parity = json.loads(report.read_text())["task_parity"]
    assert parity["all_decisions_equal"] and parity["max_abs_embedding_difference"] <= 1e-5
    assert parity["accuracy_ours"] == parity["accuracy_tf"]


def test_evaluate_detect_embeds_the_best_face_of_each_photo(lfw_set: tuple[Path, Path],
                                                           weights: Path,
                                                           tmp_path: Path) -> None:
    """``evaluate --detect``: each photo's best face (as ``embed_paths`` picks it) feeds
    validate_on_lfw's protocol; a photo without a face is reported and its pairs dropped."""
    import shutil

    from PIL import Image

    from facenet_convert.converter.embedding import embed_paths, load_detector

    pairs, source = lfw_set
    root = tmp_path / "set"
    shutil.copytree(source, root)
    faceless = min((root / "camera").iterdir())
    Image.fromarray(np.full((160, 160, 3), 128, dtype=np.uint8)).save(faceless)
    report = tmp_path / "detect.json"
    result = _run("evaluate", pairs, root, "--weights", weights, "--detect", "--folds", "4",
                  "--json", report)
    assert result.exit_code == 0, result.output
    assert f"{faceless}: " in result.stderr and "no face" in result.stderr
    assert "pairs dropped: an image could not be embedded" in result.stderr

    plan = ev.plan_pairs(pairs, root, None)
    expected = embed_paths(load_embedding_model(weights, fuse=False), plan.unique_paths,
                           detector=load_detector(None, 32, 20, "cpu"))
    skipped = [p for p, _ in expected.skipped]     # tight crops can hold no whole face too
    assert str(faceless) in skipped and len(expected.paths) > len(skipped)
    assert all(f"{p}: " in result.stderr for p in skipped)
    rows = {p: i for i, p in enumerate(expected.paths)}
    resolved = plan.resolved
    keep = [k for k in range(len(resolved.issame))
            if resolved.paths[2 * k] in rows and resolved.paths[2 * k + 1] in rows]
    assert 0 < len(keep) < len(resolved.issame)
    order = [rows[resolved.paths[2 * k + side]] for k in keep for side in (0, 1)]
    want = ev.evaluate(expected.embeddings[order],
                       np.asarray([resolved.issame[k] for k in keep]), nrof_folds=4)
    got = json.loads(report.read_text())
    assert got["pairs"] == len(keep) and got["pairs_unembeddable"] == (
        len(resolved.issame) - len(keep))
    assert got["accuracy_per_fold"] == want.roc.accuracy.tolist()
    assert (got["val"], got["far"], got["auc"]) == (want.val.val, want.val.far, want.auc)
