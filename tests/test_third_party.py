"""The upstream TF side: compat loading, upstream-graph builds, reference runners, MTCNN."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from facenet_convert.converter.core.errors import UnsafeSourceError
from facenet_convert.third_party.facenet.testing.build import (
    BuildError,
    UpstreamCheckpoint,
    build_checkpoint,
)
from facenet_convert.third_party.facenet.testing.reference import load_det_npy, reference_images

# Trainable variables of the upstream 512-d graph (BN moving stats included, as upstream puts
# them in TRAINABLE_VARIABLES): 490 for the network + Bottleneck, 2 for a Logits layer.
NETWORK_TRAINABLES = 490


def _graph_variables(meta: Path) -> tuple[dict[str, list[int]], list[str]]:
    """Global variables (name -> shape) and trainable names of an imported metagraph."""
    from facenet_convert.third_party.facenet.compat import load_upstream, upstream_mode

    tf = load_upstream().tf
    with upstream_mode(), tf.Graph().as_default():
        tf.train.import_meta_graph(str(meta), clear_devices=True)
        shapes = {v.op.name: v.shape.as_list() for v in tf.global_variables()}
        trainable = [v.op.name for v in tf.trainable_variables()]
    return shapes, trainable


def _checkpoint(prefix: Path) -> dict[str, list[int]]:
    import tensorflow as tf

    return dict(tf.train.list_variables(str(prefix)))


# ---------------------------------------------------------------------------- no TF needed


def test_reference_images_are_seeded() -> None:
    first, again, other = reference_images(3, 2), reference_images(3, 2), reference_images(4, 2)
    assert first.shape == (2, 160, 160, 3) and first.dtype == np.float32
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_build_rejects_bad_parameters(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="centers=True needs num_classes"):
        build_checkpoint(tmp_path / "a", centers=True)
    with pytest.raises(BuildError, match="optimizer 'SGD'"):
        build_checkpoint(tmp_path / "a", optimizer="SGD")
    with pytest.raises(BuildError, match="must match"):
        build_checkpoint(tmp_path / "a", name="../x")
    assert not (tmp_path / "a").exists()


def test_build_refuses_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("not a build")
    with pytest.raises(BuildError, match="not an earlier build"):
        build_checkpoint(tmp_path, embedding_size=8, optimizer=None, ema=False)
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_det_npy_loader_refuses_pickled_code(tmp_path: Path) -> None:
    class Boom:
        def __reduce__(self):  # what a hostile det*.npy would carry
            # not print: Ray (imported by tests/test_scale.py) swaps builtins.print for its own
            return (os.system, ("echo pwned",))

    path = tmp_path / "det1.npy"
    array = np.empty((), dtype=object)
    array[()] = {"conv1": {"weights": Boom()}}
    np.save(path, array, allow_pickle=True)
    with pytest.raises(UnsafeSourceError, match=r"pickle global (posix|os)\.system is not"):
        load_det_npy(path)


def test_det_npy_loader_reads_the_real_weights(det_npy: dict[str, Path]) -> None:
    weights = load_det_npy(det_npy["det1"])
    reference = np.load(det_npy["det1"], allow_pickle=True, encoding="latin1").item()
    assert sorted(weights) == sorted(reference)
    for layer, params in reference.items():
        for name, value in params.items():
            assert np.array_equal(weights[layer][name], value)


# ---------------------------------------------------------------------------- TF


@pytest.mark.tf
def test_compat_is_idempotent_and_leaves_tf2_settings_alone() -> None:
    import tensorflow as tf

    from facenet_convert.third_party.facenet.compat import load_upstream, upstream_mode

    first = load_upstream()
    assert load_upstream() is first
    assert callable(first.inception_resnet_v1.inference)
    assert {"PNet", "RNet", "ONet"} <= set(vars(first.detect_face))
    assert sys.modules["tensorflow.contrib.slim"] is first.slim
    with upstream_mode():
        assert not tf.compat.v1.resource_variables_enabled()
        assert not tf.compat.v1.control_flow_v2_enabled()
    assert tf.executing_eagerly()
    assert tf.compat.v1.resource_variables_enabled()
    assert tf.compat.v1.control_flow_v2_enabled()
    assert tf.TensorShape([3])[0] == 3 and isinstance(tf.TensorShape([3])[0], int)


@pytest.mark.tf
@pytest.mark.parametrize("fixture, trainables, slots", [
    ("upstream_ckpt_512", NETWORK_TRAINABLES + 2, ("Adam", "Adam_1")),
    ("upstream_ckpt_128", NETWORK_TRAINABLES, ("RMSProp", "RMSProp_1")),
    ("upstream_ckpt_512_plain", NETWORK_TRAINABLES + 2, ("Momentum",)),
])
def test_checkpoint_holds_what_the_upstream_graph_defines(
        fixture: str, trainables: int, slots: tuple[str, ...],
        request: pytest.FixtureRequest) -> None:
    built: UpstreamCheckpoint = request.getfixturevalue(fixture)
    graph_vars, trainable = _graph_variables(built.meta)
    stored = _checkpoint(built.prefix)
    assert stored == graph_vars  # saved="all": every global variable, shapes as in the graph
    assert len(trainable) == trainables
    assert stored["InceptionResnetV1/Bottleneck/weights"] == [1792, built.embedding_size]
    assert ("Logits/weights" in stored) == (built.num_classes is not None)
    assert ("centers" in stored) == built.centers
    if built.centers:
        assert stored["centers"] == [built.num_classes, built.embedding_size]
    assert "global_step" in stored
    for name in trainable:
        assert (f"{name}/ExponentialMovingAverage" in stored) == built.ema
        # BN moving statistics get no gradient (inference-mode FusedBatchNorm), hence no slots.
        has_gradient = not name.endswith(("moving_mean", "moving_variance"))
        for slot in slots:
            assert (f"{name}/{slot}" in stored) == has_gradient, f"{name}/{slot}"
    # Release folders have no state file; files are named as train_softmax.py names them.
    assert not (built.directory / "checkpoint").exists()
    assert built.prefix.name == f"model-{built.name}.ckpt-{built.step}"
    assert built.meta.name == f"model-{built.name}.meta"
    assert built.index_file.is_file() and built.data_file.is_file()
    assert (built.frozen_pb is not None) == (fixture != "upstream_ckpt_512_plain")


@pytest.mark.tf
def test_values_are_trained_looking_and_ema_differs(upstream_ckpt_512: UpstreamCheckpoint
                                                    ) -> None:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(upstream_ckpt_512.prefix))
    trainable = [name for name in reader.get_variable_to_shape_map()
                 if name.startswith(("InceptionResnetV1/", "Logits/"))
                 and "/ExponentialMovingAverage" not in name and "/Adam" not in name]
    assert len(trainable) == NETWORK_TRAINABLES + 2
    for name in trainable:
        raw = reader.get_tensor(name)
        shadow = reader.get_tensor(f"{name}/ExponentialMovingAverage")
        assert np.all(np.isfinite(raw)) and not np.allclose(raw, shadow), name
        if name.endswith("moving_variance"):
            assert raw.min() > 0 and shadow.min() > 0 and not np.allclose(raw, 1.0), name
        if name.endswith(("moving_mean", "beta")):
            assert np.abs(raw).max() > 0, name
    assert reader.get_tensor("global_step") == upstream_ckpt_512.step


@pytest.mark.tf
def test_frozen_graph_keeps_upstream_names_and_drops_logits(
        upstream_ckpt_512: UpstreamCheckpoint) -> None:
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(upstream_ckpt_512.frozen_pb.read_bytes())
    names = {node.name for node in graph_def.node}
    ops = {node.op for node in graph_def.node}
    assert {"input", "phase_train", "embeddings"} <= names
    assert "InceptionResnetV1/Bottleneck/weights" in names
    assert not any(name.startswith("Logits") for name in names)
    assert not ops & {"VariableV2", "VarHandleOp", "RefSwitch", "AssignSub"}


@pytest.mark.tf
def test_second_build_reuses_the_first(upstream_ckpt_128: UpstreamCheckpoint) -> None:
    record = upstream_ckpt_128.directory / "build.json"
    before = (record.stat().st_mtime_ns, upstream_ckpt_128.data_file.stat().st_mtime_ns)
    again = build_checkpoint(upstream_ckpt_128.directory, embedding_size=128, num_classes=None,
                             ema=False, optimizer="RMSPROP", centers=False, freeze=True)
    assert again == upstream_ckpt_128
    assert (record.stat().st_mtime_ns, again.data_file.stat().st_mtime_ns) == before


@pytest.mark.tf
def test_small_builds_are_deterministic_and_upstream_saver_is_trainable_only(
        tmp_path: Path) -> None:
    import tensorflow as tf

    options = {"embedding_size": 16, "num_classes": None, "ema": False, "optimizer": None,
                   "saved": "trainable", "step": 7, "seed": 5}
    first = build_checkpoint(tmp_path / "a", state_file=True, **options)
    second = build_checkpoint(tmp_path / "b", **options)
    one, two = (tf.train.load_checkpoint(str(b.prefix)) for b in (first, second))
    names = sorted(one.get_variable_to_shape_map())
    assert names == sorted(two.get_variable_to_shape_map())
    assert len(names) == NETWORK_TRAINABLES  # train_softmax.py's Saver(tf.trainable_variables())
    assert "global_step" not in names
    for name in names:
        assert np.array_equal(one.get_tensor(name), two.get_tensor(name)), name
    state = tf.train.get_checkpoint_state(str(first.directory))
    assert state is not None and Path(state.model_checkpoint_path) == first.prefix
    assert not (second.directory / "checkpoint").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


@pytest.mark.tf
def test_reference_runners_agree(upstream_ckpt_512: UpstreamCheckpoint) -> None:
    from facenet_convert.third_party.facenet.testing.reference import (
        run_checkpoint,
        run_frozen,
        run_rebuilt,
    )

    built = upstream_ckpt_512
    images = reference_images(0, 3)
    fetch = ("embeddings:0", "Logits/BiasAdd:0", "InceptionResnetV1/Conv2d_1a_3x3/Relu:0")
    from_meta = run_checkpoint(built.prefix, built.meta, images, fetch)
    embeddings = from_meta["embeddings:0"]
    assert embeddings.shape == (3, 512)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    cosine = embeddings @ embeddings.T
    assert cosine[np.triu_indices(3, 1)].max() < 0.95  # distinct inputs, distinct embeddings
    assert from_meta["Logits/BiasAdd:0"].shape == (3, 16)
    assert from_meta["InceptionResnetV1/Conv2d_1a_3x3/Relu:0"].shape == (3, 79, 79, 32)

    frozen = run_frozen(built.frozen_pb, images)["embeddings:0"]
    assert np.abs(frozen - embeddings).max() <= 1e-6

    rebuilt_ckpt = run_checkpoint(built.prefix, images_nhwc=images)["embeddings:0"]
    assert np.abs(rebuilt_ckpt - embeddings).max() <= 1e-5

    points = run_rebuilt(built.prefix, images, 512, 16)
    assert np.abs(points["embeddings"] - embeddings).max() <= 1e-5
    assert points["Conv2d_1a_3x3"].shape == (3, 79, 79, 32)
    assert points["Mixed_8b"].shape == (3, 3, 3, 1792)
    assert points["PreLogitsFlatten"].shape == (3, 1792)
    assert points["logits"].shape == (3, 16)
    np.testing.assert_allclose(points["logits"], from_meta["Logits/BiasAdd:0"], atol=1e-4)


@pytest.mark.tf
def test_ema_selection_changes_embeddings(upstream_ckpt_512_plain: UpstreamCheckpoint) -> None:
    from facenet_convert.third_party.facenet.testing.reference import run_checkpoint

    built = upstream_ckpt_512_plain
    images = reference_images(1, 2)
    raw = run_checkpoint(built.prefix, images_nhwc=images)["embeddings:0"]
    ema = run_checkpoint(built.prefix, images_nhwc=images, use_ema=True)["embeddings:0"]
    ema_meta = run_checkpoint(built.prefix, built.meta, images, use_ema=True)["embeddings:0"]
    assert np.abs(ema - raw).max() > 1e-3
    assert np.abs(ema - ema_meta).max() <= 1e-5


@pytest.mark.tf
def test_frozen_128_matches_its_checkpoint(upstream_ckpt_128: UpstreamCheckpoint) -> None:
    from facenet_convert.third_party.facenet.testing.reference import run_checkpoint, run_frozen

    images = reference_images(2, 2)
    ckpt = run_checkpoint(upstream_ckpt_128.prefix, upstream_ckpt_128.meta, images)
    frozen = run_frozen(upstream_ckpt_128.frozen_pb, images)
    assert ckpt["embeddings:0"].shape == (2, 128)
    assert np.abs(ckpt["embeddings:0"] - frozen["embeddings:0"]).max() <= 1e-6


@pytest.mark.tf
def test_mtcnn_runners_on_the_real_weights(det_npy: dict[str, Path]) -> None:
    from facenet_convert.third_party.facenet.testing.reference import run_mtcnn

    rng = np.random.default_rng(0)
    pnet = run_mtcnn(det_npy, "pnet", rng.uniform(-1, 1, (1, 30, 20, 3)))
    assert pnet["conv4-2"].shape == (1, 10, 5, 4) and pnet["prob1"].shape == (1, 10, 5, 2)
    np.testing.assert_allclose(pnet["prob1"].sum(axis=3), 1.0, atol=1e-5)
    rnet = run_mtcnn(det_npy["det2"].parent, "rnet", rng.uniform(-1, 1, (2, 24, 24, 3)))
    assert rnet["conv5-2"].shape == (2, 4) and rnet["prob1"].shape == (2, 2)
    onet = run_mtcnn(det_npy["det3"], "onet", rng.uniform(-1, 1, (2, 48, 48, 3)),
                     all_layers=True)
    assert onet["conv6-2"].shape == (2, 4) and onet["conv6-3"].shape == (2, 10)
    assert onet["prob1"].shape == (2, 2) and onet["prelu5"].shape == (2, 256)
    np.testing.assert_allclose(onet["prob1"].sum(axis=1), 1.0, atol=1e-5)
