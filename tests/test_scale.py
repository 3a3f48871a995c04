"""``--engine ray`` (converter/scale.py): the local engine's results bit for bit, a killed actor,
a resumed interrupted run, hostile inputs as manifest skips, and the missing-Ray message.

One loopback-only Ray cluster (2 CPUs on 127.0.0.1, no dashboard) serves the whole module.
Inputs are real photographs (scikit-image's, insightface's) and a seeded Inception-ResNet-V1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import facenet_convert
from facenet_convert.converter.align import AlignOptions
from facenet_convert.converter.align import align_dataset as align_locally
from facenet_convert.converter.cli import main
from facenet_convert.converter.core.errors import MissingExtraError
from facenet_convert.converter.scale import (
    EmbedSpec,
    RayOptions,
    align_to_shards,
    list_inputs,
    read_embeddings,
    require_ray,
)
from facenet_convert.third_party.facenet.testing.photos import PHOTOS, resized

# Ray's single-machine mode, set before ray is imported (the processes it starts inherit it):
# else Ray 2.60 rewrites 127.0.0.1 to the machine's outward address and listens everywhere
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
# the ray extra: CI installs it, these tests never skip
import ray

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray bound to 127.0.0.1 for this module; yields its address."""
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False,
             log_to_driver=False)
    try:
        address = ray.get_runtime_context().gcs_address
        assert address.startswith("127.0.0.1:")
        assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
        yield address
    finally:
        ray.shutdown()


def _run(*args: Any) -> Any:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eleven real face crops (several sizes, one gray) and a broken file."""
    folder = tmp_path_factory.mktemp("faces")
    astronaut = PHOTOS["astronaut"]()
    for k in range(9):
        Image.fromarray(astronaut[20 + 4 * k:200 + 3 * k, 150 + 2 * k:330 + 5 * k]).save(
            folder / f"face{k:02d}.png")
    Image.fromarray(PHOTOS["camera"]()[90:250, 150:310, 0]).save(folder / "gray.png")
    Image.fromarray(PHOTOS["hanks"]()).save(folder / "hanks.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff definitely not a jpeg")
    return folder


@pytest.fixture(scope="module")
def hostile_list(faces: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A .txt list: the faces (relative names), a FIFO, a folder, a missing file, a repeat and
    a symlink to a device."""
    folder = tmp_path_factory.mktemp("hostile")
    os.mkfifo(folder / "fifo.png")
    (folder / "a_folder.png").mkdir()
    os.symlink("/dev/zero", folder / "zero.png")
    names = [str(p) for p in sorted(faces.iterdir())]
    extra = [str(folder / n) for n in ("fifo.png", "a_folder.png", "missing.png", "zero.png")]
    listing = folder / "inputs.txt"
    listing.write_text("\n".join([*names, *extra, names[1], ""]) + "\n")   # face00 twice
    return listing


def _check_manifest(out: Path, inputs: list[str]) -> dict:
    """Every input exactly once, as a row's source or as a skip; shard hashes and counts."""
    from facenet_convert.converter.core.hashing import sha256_file

    manifest = json.loads((out / "manifest.json").read_text())
    skipped = [s["path"] for s in manifest["skipped"]]
    assert all(len(s["reason"].splitlines()) == 1 for s in manifest["skipped"])
    if manifest["kind"] == "embed":
        table = read_embeddings(out)
        names = table.column("name").to_pylist()
        assert len(names) == len(set(names)) == manifest["rows"]
        sources = set(table.column("source").to_pylist())
    else:
        sources = {photo["source"] for shard in manifest["shards"]
                   for photo in json.loads((out / shard["file"]).read_text())["photos"]}
        assert len(sources) == manifest["rows"]
    counted = Counter([*sources, *skipped])
    assert sorted(counted) == sorted(inputs) and set(counted.values()) == {1}
    assert manifest["inputs"] == len(inputs)
    for shard in manifest["shards"]:
        assert sha256_file(out / shard["file"]) == shard["sha256"]
    return manifest


def _sorted_rows(names: list[str], matrix: np.ndarray) -> tuple[list[str], np.ndarray]:
    order = np.argsort(np.array(names))
    return [names[i] for i in order], matrix[order]


def _ray_rows(out: Path) -> tuple[list[str], np.ndarray]:
    table = read_embeddings(out)
    matrix = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    return _sorted_rows(table.column("name").to_pylist(), matrix)


def test_embed_ray_equals_local_bit_for_bit(cluster: str, faces: Path, weights: Path,
                                            hostile_list: Path, tmp_path: Path) -> None:
    common = ["--input-list", hostile_list, "--weights", weights, "--batch-size", 4]  # ORT
    local = _run("embed", *common, "-o", tmp_path / "local.npz")
    assert local.exit_code == 0, local.output
    scaled = _run("embed", *common, "--engine", "ray", "--shard-size", 5, "--actors", 2,
                  "-o", tmp_path / "ray")
    assert scaled.exit_code == 0, scaled.output
    summary = json.loads(scaled.stdout)
    assert (summary["shards"], summary["rows"]) == (2, 11)       # 5 -> 8: two whole batches

    saved = np.load(tmp_path / "local.npz")
    want_names, want = _sorted_rows(saved["names"].tolist(), saved["embeddings"])
    got_names, got = _ray_rows(tmp_path / "ray")
    assert got_names == want_names and len(got_names) == 11
    assert got.dtype == np.float32 and np.array_equal(got, want)

    paths, skipped = list_inputs([], str(hostile_list))
    manifest = _check_manifest(tmp_path / "ray", [*map(str, paths), *(s[0] for s in skipped)])
    reasons = {Path(s["path"].split("@")[0]).name: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {"broken.jpg", "fifo.png", "a_folder.png", "missing.png",
                            "zero.png", "face00.png"}
    assert "not a regular file" in reasons["fifo.png"] and "listed again" in reasons["face00.png"]
    assert "no such file" in reasons["missing.png"]

    # the Python API: a ray.data.Dataset of the same rows
    spec = EmbedSpec(weights=str(weights), batch_size=4)
    dataset = facenet_convert.scale.embed_dataset(paths, spec,
                                                  options=RayOptions(shard_size=8))
    assert isinstance(dataset, ray.data.Dataset)
    rows = dataset.take_all()
    api_names, api = _sorted_rows([r["name"] for r in rows],
                                  np.stack([r["embedding"] for r in rows]))
    assert api_names == want_names and np.array_equal(api, want)


def test_embed_detect_ray_equals_local_from_parquet_list(cluster: str, weights: Path,
                                                         published_mtcnn: dict[str, Path],
                                                         tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    mtcnn = tmp_path / "mtcnn"
    mtcnn.mkdir()
    for name, path in published_mtcnn.items():
        shutil.copy(path, mtcnn / f"{name}.pt")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("t1", "astronaut", "coffee"):         # 6 faces, 1 face, none
        Image.fromarray(PHOTOS[name]()).save(photos / f"{name}.png")
    Image.fromarray(resized(PHOTOS["t1"](), 480, 332)).save(photos / "t1_small.png")
    pq.write_table(pa.table({"path": sorted(p.name for p in photos.iterdir())}),
                   photos / "list.parquet")
    common = ["--input-list", photos / "list.parquet", "--detect", "--mtcnn", mtcnn,
              "--weights", weights, "--backend", "torch", "--batch-size", 2]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)            # torch engines: as many threads as each actor
    try:
        local = _run("embed", *common, "-o", tmp_path / "local.npz")
    finally:
        torch.set_num_threads(threads)
    assert local.exit_code == 0, local.output
    scaled = _run("embed", *common, "--engine", "ray", "--shard-size", 2, "-o", tmp_path / "ray")
    assert scaled.exit_code == 0, scaled.output
    saved = np.load(tmp_path / "local.npz")
    want_names, want = _sorted_rows(saved["names"].tolist(), saved["embeddings"])
    got_names, got = _ray_rows(tmp_path / "ray")
    assert got_names == want_names and len(got_names) >= 8
    assert np.array_equal(got, want)
    table = read_embeddings(tmp_path / "ray")
    boxes = dict(zip(table.column("name").to_pylist(),
                     table.column("box").to_numpy(zero_copy_only=False), strict=True))
    for name, box in zip(saved["names"].tolist(), saved["boxes"], strict=True):
        assert np.array_equal(boxes[name], box)
    manifest = _check_manifest(tmp_path / "ray",
                               [str(photos / n) for n in sorted(os.listdir(photos))
                                if n.endswith(".png")])
    assert [Path(s["path"]).name for s in manifest["skipped"]] == ["coffee.png"]


@pytest.fixture(scope="module")
def align_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes of real photos (rescaled copies), plus a broken and a faceless photo."""
    root = tmp_path_factory.mktemp("align") / "in"
    for name, source in (("people", "astronaut"), ("solo", "hanks"), ("group", "t1")):
        (root / name).mkdir(parents=True)
        photo = PHOTOS[source]()
        for k, width in enumerate((photo.shape[1], int(photo.shape[1] * 0.8))):
            height = photo.shape[0] * width // photo.shape[1]
            Image.fromarray(resized(photo, width, height)).save(root / name / f"{source}{k}.png")
    Image.fromarray(PHOTOS["coffee"]()).save(root / "solo" / "coffee.jpg")
    (root / "solo" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return root


def _options(published_mtcnn: dict[str, Path]) -> AlignOptions:
    return AlignOptions(nets=tuple(str(published_mtcnn[n]) for n in ("pnet", "rnet", "onet")))


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


@pytest.fixture(scope="module")
def local_aligned(align_photos: Path, published_mtcnn: dict[str, Path],
                  tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("aligned") / "local"
    align_locally(align_photos, out, options=_options(published_mtcnn))
    return out


def _inputs(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if p.is_file())


def test_align_ray_equals_local_byte_for_byte(cluster: str, align_photos: Path,
                                              local_aligned: Path,
                                              published_mtcnn: dict[str, Path],
                                              tmp_path: Path) -> None:
    out = tmp_path / "ray"
    result = _run("align", align_photos, out, "--mtcnn", published_mtcnn["pnet"].parent,
                  "--engine", "ray", "--shard-size", 3)
    assert result.exit_code == 0, result.output
    assert "2 of 8 photos not aligned; reasons in" in result.stderr
    summary = json.loads(result.stdout)
    assert (summary["inputs"], summary["rows"], summary["skipped"]) == (8, 6, 2)
    want = _tree(local_aligned)
    assert len(want) >= 6 and _tree(out) == want
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["group", "people", "solo"]
    lines = next(local_aligned.glob("bounding_boxes_*.txt")).read_text().replace(
        str(local_aligned), str(out))
    assert Path(summary["extra"]["bounding_boxes"]).read_text() == lines
    manifest = _check_manifest(out, _inputs(align_photos))
    assert {Path(s["path"]).name for s in manifest["skipped"]} == {"coffee.jpg", "broken.jpg"}


def test_align_ray_from_a_list_equals_local(cluster: str, align_photos: Path,
                                            local_aligned: Path,
                                            published_mtcnn: dict[str, Path],
                                            tmp_path: Path) -> None:
    """INPUT_DIR as a .txt list (shared storage): the folder run's crops; a missing entry is a
    manifest skip, and every listed input is accounted for once."""
    photo_list = tmp_path / "photos.txt"
    missing = str(align_photos / "solo" / "gone.png")
    photo_list.write_text("\n".join([*_inputs(align_photos), missing]) + "\n")
    out = tmp_path / "ray"
    result = _run("align", photo_list, out, "--mtcnn", published_mtcnn["pnet"].parent,
                  "--engine", "ray", "--shard-size", 4)
    assert result.exit_code == 0, result.output
    assert _tree(out) == _tree(local_aligned)
    manifest = _check_manifest(out, [*_inputs(align_photos), missing])
    assert any(s["path"] == missing and "no such file" in s["reason"]
               for s in manifest["skipped"])


def _ray_workers(tag: str) -> list[int]:
    """PIDs of this test process's Ray actor processes whose title holds ``tag``."""
    parents: dict[int, int] = {}
    titles: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            titles[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes().decode(
                errors="replace")
        except OSError:
            continue
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    mine = []
    for pid, title in titles.items():
        ancestor = parents.get(pid, 0)
        while ancestor not in (0, 1, os.getpid()):
            ancestor = parents.get(ancestor, 0)
        if ancestor == os.getpid() and tag in title:
            mine.append(pid)
    return sorted(mine)


@pytest.mark.slow   # a stress case: CI runs it, `-m 'not slow'` skips it
def test_killed_actor_loses_and_duplicates_nothing(cluster: str, align_photos: Path,
                                                   local_aligned: Path,
                                                   published_mtcnn: dict[str, Path],
                                                   tmp_path: Path) -> None:
    out = tmp_path / "ray"
    outcome: dict[str, Any] = {}
    totals: list[int] = []
    done: list[int] = []

    def job() -> None:
        try:
            outcome["summary"] = align_to_shards(align_photos, out, _options(published_mtcnn),
                                                 ray_options=RayOptions(actors=1, shard_size=1),
                                                 on_total=totals.append, on_done=done.append)
        except BaseException as error:  # noqa: BLE001 - reported by the test thread
            outcome["error"] = error

    worker = threading.Thread(target=job)
    worker.start()
    killed, done_then = None, 0
    deadline = time.monotonic() + 120
    while killed is None and worker.is_alive() and time.monotonic() < deadline:
        done_then = len(list(out.glob("align-*.json")))
        if done_then:
            pids = _ray_workers("AlignShards")          # the one actor: every shard waits
            if pids:
                killed = pids[0]
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.02)
    worker.join(timeout=240)
    assert killed is not None and done_then < 8, "the job ended before its actor was killed"
    assert "error" not in outcome, outcome.get("error")
    summary = outcome["summary"]
    assert (summary.inputs, summary.rows, summary.skipped, summary.shards) == (8, 6, 2, 8)
    assert totals == [8] and sum(done) == 8      # progress: the retried shard counted once
    assert _tree(out) == _tree(local_aligned)
    _check_manifest(out, _inputs(align_photos))


@pytest.mark.slow   # a stress case: CI runs it, `-m 'not slow'` skips it
def test_rerun_after_interrupt_keeps_finished_shards(cluster: str, faces: Path, weights: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "ray"

    def command(folder: Path, shard_size: int = 2) -> list[str]:
        return ["embed", str(faces), "--weights", str(weights), "--backend", "torch",
                "--batch-size", "2", "--shard-size", str(shard_size), "--actors", "1",
                "--engine", "ray", "--ray-address", cluster, "-o", str(folder)]

    args = command(out)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    driver = subprocess.Popen([sys.executable, "-m", "facenet_convert.converter", *args],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("embed-*.parquet")) and time.monotonic() < deadline:
            assert driver.poll() is None, "the driver ended before writing a shard"
            time.sleep(0.02)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    assert not (out / "manifest.json").exists()
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
              for p in out.glob("embed-*.parquet")}
    assert 1 <= len(before) < 6
    rerun = _run(*args)
    assert rerun.exit_code == 0, rerun.output
    summary = json.loads(rerun.stdout)
    assert summary["shards"] == 6 and summary["reused_shards"] >= len(before)
    for name, stat in before.items():
        assert ((out / name).stat().st_ino, (out / name).stat().st_mtime_ns) == stat
    fresh = _run(*command(tmp_path / "fresh"))
    assert fresh.exit_code == 0, fresh.output
    (names, got), (fresh_names, want) = _ray_rows(out), _ray_rows(tmp_path / "fresh")
    assert names == fresh_names and len(names) == 11 and np.array_equal(got, want)
    _check_manifest(out, [str(p) for p in sorted(faces.iterdir())])
    # other shard contents (here: other boundaries) are never taken for finished shards
    again = _run(*command(out, shard_size=4))
    assert again.exit_code == 0 and json.loads(again.stdout)["reused_shards"] == 0
    _check_manifest(out, [str(p) for p in sorted(faces.iterdir())])


def test_sigterm_after_a_shard_says_finished_parts_are_kept(cluster: str, faces: Path,
                                                           weights: Path,
                                                           tmp_path: Path) -> None:
    # actors commit shards before the driver hears of them: "nothing written" would be false
    out = tmp_path / "ray"
    driver = subprocess.Popen(
        [sys.executable, "-m", "facenet_convert.converter", "embed", str(faces), "--weights",
         str(weights), "--backend", "torch", "--batch-size", "2", "--shard-size", "2",
         "--actors", "1", "--engine", "ray", "--ray-address", cluster, "-o", str(out)],
        cwd=ROOT, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("embed-*.parquet")) and time.monotonic() < deadline:
        assert driver.poll() is None, "the driver ended before writing a shard"
        time.sleep(0.02)
    driver.send_signal(signal.SIGTERM)
    _, stderr = driver.communicate(timeout=120)
    if driver.returncode == 0:
        pytest.skip("the run finished before the signal")
    assert driver.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1].endswith("interrupted; finished parts kept, "
                                                     "nothing half-written (rerun with "
                                                     "--resume to complete)"), stderr
    assert list(out.glob("embed-*.parquet")) and not (out / "manifest.json").exists()


def test_missing_ray_is_one_line(monkeypatch: pytest.MonkeyPatch, faces: Path, weights: Path,
                                 tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'facenet-convert\[ray\]'"):
        require_ray()
    result = _run("embed", faces, "--weights", weights, "--engine", "ray", "-o", tmp_path / "o")
    assert result.exit_code != 0 and "pip install 'facenet-convert[ray]'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_evaluate_embedding_step_on_ray_equals_local(cluster: str, faces: Path, weights: Path,
                                                     tmp_path: Path) -> None:
    root = tmp_path / "lfw"
    crops = sorted(p for p in faces.glob("*.png"))            # 9 crops + gray: 5 people x 2
    people = [f"person{k}" for k in range(5)]
    for k, name in enumerate(people):
        (root / name).mkdir(parents=True)
        for number in (1, 2):
            shutil.copy(crops[2 * k + number - 1], root / name / f"{name}_{number:04d}.png")
    lines = ["1\t10"]                  # same and different pairs interleaved, as LFW's
    for k, name in enumerate(people):
        lines += [f"{name}\t1\t2", f"{name}\t1\t{people[(k + 1) % 5]}\t2"]
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    common = ["evaluate", root / "pairs.txt", root, "--weights", weights, "--folds", 2,
              "--use-flipped-images", "--batch-size", 3]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)            # the plain model (few images): as many threads as actors
    try:
        local = _run(*common, "--json", tmp_path / "local.json")
    finally:
        torch.set_num_threads(threads)
    assert local.exit_code == 0, local.output
    scaled = _run(*common, "--engine", "ray", "--shard-size", 4, "--json", tmp_path / "ray.json")
    assert scaled.exit_code == 0, scaled.output
    assert scaled.stdout == local.stdout
    assert (tmp_path / "ray.json").read_bytes() == (tmp_path / "local.json").read_bytes()


def test_local_engine_and_import_never_load_ray() -> None:
    code = ("import sys, facenet_convert; facenet_convert.scale; "
            "from facenet_convert.converter.cli import main; "
            "from facenet_convert.converter.scale import list_inputs; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=ROOT)
    assert done.stdout.strip() == "[]"


@pytest.mark.slow   # a stress case: CI runs it, `-m 'not slow'` skips it
def test_resume_rebuilds_tampered_shards_and_crops(cluster: str, faces: Path, weights: Path,
                                                   align_photos: Path,
                                                   published_mtcnn: dict[str, Path],
                                                   tmp_path: Path) -> None:
    """--resume keeps a shard only if its rows match the sha256 recorded in it (and an align
    shard only if every crop matches its recorded sha256): a shard with a row dropped, or a
    changed crop, is computed again, so every input ends as a row or a skip."""
    import pyarrow.parquet as pq

    out = tmp_path / "embed"
    args = ["embed", faces, "--weights", weights, "--backend", "torch", "--shard-size", 4,
            "--actors", "1", "--engine", "ray", "--ray-address", cluster, "-o", out]
    assert _run(*args).exit_code == 0
    names, want = _ray_rows(out)
    shard = min(out.glob("embed-*.parquet"))
    table = pq.read_table(shard)
    pq.write_table(table.slice(1), shard)          # a row gone, the recorded metadata kept
    rerun = _run(*args)
    assert rerun.exit_code == 0, rerun.output
    assert "does not match what was recorded" in rerun.stderr
    again_names, got = _ray_rows(out)
    assert again_names == names and np.array_equal(got, want)

    aligned = tmp_path / "aligned"
    align = ["align", align_photos, aligned, "--mtcnn", published_mtcnn["pnet"].parent,
             "--engine", "ray", "--shard-size", 3]
    assert _run(*align).exit_code == 0
    crop = min(aligned.rglob("*.png"))
    original = crop.read_bytes()
    crop.write_bytes(original[:-8] + bytes(8))
    rerun = _run(*align)
    assert rerun.exit_code == 0, rerun.output
    assert crop.read_bytes() == original
