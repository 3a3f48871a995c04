"""Proof against TensorFlow: real upstream-graph checkpoints and frozen graphs, converted and
run in torch, give TF's embeddings and logits; EMA conversion equals TF's EMA restore; MTCNN
matches the upstream TF nets. Fixtures come from tests/tf_fixtures.py (built with
third_party/facenet/build.py) and tests/conftest.py (real det*.npy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from facenet_convert.converter.conversion import convert
from facenet_convert.converter.core.errors import MappingError
from facenet_convert.third_party.facenet.testing.reference import (
    reference_images,
    run_checkpoint,
    run_frozen,
    run_mtcnn,
)

pytestmark = pytest.mark.tf

torch = pytest.importorskip("torch")
models = pytest.importorskip("facenet_convert.models")

EMBEDDING_TOL = 1e-5


def _images(seed: int = 0, batch: int = 3) -> np.ndarray:
    return np.asarray(reference_images(seed, batch), dtype=np.float32)


def _torch_net(result: Any, embedding_size: int, num_classes: int | None) -> Any:
    net = models.InceptionResNetV1(embedding_size=embedding_size, num_classes=num_classes)
    net.load_state_dict(result.state_dict, strict=True)
    return net.eval()


def _torch_outputs(net: Any, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        embeddings = net(x).numpy()
        logits = None
        if net.num_classes is not None:
            net.classify = True
            logits = net(x).numpy()
            net.classify = False
    return embeddings, logits


def _check_checkpoint(ckpt: Any, tmp_path: Path, weights: str = "raw") -> Any:
    out = tmp_path / f"model-{weights}.pt"
    result = convert(ckpt.prefix, weights=weights, output=out, report=tmp_path / "r.json")
    assert (result.embedding_size, result.num_classes) == (ckpt.embedding_size,
                                                           ckpt.num_classes)
    found = result.detection
    assert found.ema == ckpt.ema and found.centers == ckpt.centers
    assert found.optimizer == ckpt.optimizer
    loaded = torch.load(out, weights_only=True)
    assert list(loaded) == list(result.arrays)
    net = models.InceptionResNetV1(embedding_size=ckpt.embedding_size,
                                   num_classes=ckpt.num_classes)
    net.load_state_dict(loaded, strict=True)
    net.eval()
    images = _images()
    fetch = ["embeddings:0"] + (["Logits/BiasAdd:0"] if ckpt.num_classes else [])
    tf_values = list(run_checkpoint(ckpt.prefix, ckpt.meta, images, fetch,
                                    use_ema=weights == "ema").values())
    embeddings, logits = _torch_outputs(net, images)
    assert np.abs(embeddings - tf_values[0]).max() <= EMBEDDING_TOL
    if ckpt.num_classes:
        scale = max(1.0, float(np.abs(tf_values[1]).max()))
        assert np.abs(logits - tf_values[1]).max() <= 1e-4 * scale
    return result


def test_512_logits_ema_adam_centers(upstream_ckpt_512, tmp_path):
    result = _check_checkpoint(upstream_ckpt_512, tmp_path)
    reasons = {d.source: d.reason for d in result.plan.drops}
    assert reasons["centers"].startswith("center-loss")
    assert reasons["global_step"] == "training step counter"
    assert any(r.startswith("optimizer slot") for r in reasons.values())
    assert any(r.startswith("EMA shadow") for r in reasons.values())
    assert len(result.plan.filled) == 2 * sum(1 for k in result.arrays if k.endswith(".bn.bias")
                                              or k == "last_bn.bias")


def test_ema_weights_match_tf_ema_restore(upstream_ckpt_512, tmp_path):
    raw = convert(upstream_ckpt_512.prefix)
    ema = _check_checkpoint(upstream_ckpt_512, tmp_path, weights="ema")
    differing = [k for k in raw.arrays if not np.array_equal(raw.arrays[k], ema.arrays[k])]
    assert "conv2d_1a.conv.weight" in differing and "logits.weight" in differing
    assert ema.plan.ema_missing == []  # upstream keeps a shadow of every trainable variable
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(upstream_ckpt_512.prefix))
    shadow = reader.get_tensor("InceptionResnetV1/Bottleneck/weights/ExponentialMovingAverage")
    np.testing.assert_array_equal(ema.arrays["last_linear.weight"], shadow.T)


def test_128_no_logits_rmsprop_no_ema(upstream_ckpt_128, tmp_path):
    result = _check_checkpoint(upstream_ckpt_128, tmp_path)
    assert "logits.weight" not in result.arrays
    with pytest.raises(MappingError, match="no ExponentialMovingAverage shadows"):
        convert(upstream_ckpt_128.prefix, weights="ema")


def test_512_plain_momentum(upstream_ckpt_512_plain, tmp_path):
    result = _check_checkpoint(upstream_ckpt_512_plain, tmp_path)
    assert result.detection.optimizer == "MOM" and not result.detection.centers


@pytest.mark.parametrize("fixture", ["upstream_ckpt_512", "upstream_ckpt_128"])
def test_frozen_pb_equals_tf(fixture, request, tmp_path):
    ckpt = request.getfixturevalue(fixture)
    out = tmp_path / "frozen.safetensors"
    result = convert(ckpt.frozen_pb, output=out)
    assert result.table == "inception_resnet_v1.tf_slim_frozen"
    assert result.num_classes is None and result.embedding_size == ckpt.embedding_size
    dropped = {d.source for d in result.plan.drops}
    assert dropped and not any(n.endswith(("/weights", "/biases", "/beta", "/moving_mean",
                                           "/moving_variance")) for n in dropped)
    # the frozen graph holds the same raw weights as the checkpoint
    from_ckpt = convert(ckpt.prefix)
    for key, value in result.arrays.items():
        if not key.startswith("logits."):
            np.testing.assert_array_equal(value, from_ckpt.arrays[key], err_msg=key)
    from safetensors.numpy import load_file

    state = {k: torch.from_numpy(v) for k, v in load_file(out).items()}
    net = models.InceptionResNetV1(embedding_size=ckpt.embedding_size)
    net.load_state_dict(state, strict=True)
    net.eval()
    images = _images(seed=1)
    embeddings, _ = _torch_outputs(net, images)
    want = run_frozen(ckpt.frozen_pb, images)["embeddings:0"]
    assert np.abs(embeddings - want).max() <= EMBEDDING_TOL


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    import tensorflow as tf

    prefix = tmp_path / "mobilenet" / "model.ckpt"
    prefix.parent.mkdir()
    names = ["MobilenetV1/Conv2d_0/weights", "MobilenetV1/Conv2d_0/BatchNorm/beta",
             "MobilenetV1/Logits/Conv2d_1c_1x1/weights", "global_step"]
    values = [tf.constant(np.zeros((3, 3, 3, 8), np.float32)),
              tf.constant(np.zeros(8, np.float32)),
              tf.constant(np.zeros((1, 1, 8, 10), np.float32)), tf.constant(np.int64(3))]
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * 4,
                      tensors=values)
    out = tmp_path / "o.pt"
    with pytest.raises(MappingError, match="cannot tell which model"):
        convert(prefix, output=out)
    with pytest.raises(MappingError, match=r"3 source tensor\(s\) match no rule.*"
                                           r"MobilenetV1/Conv2d_0/weights"):
        convert(prefix, model="inception_resnet_v1", output=out)
    assert not out.exists()


@pytest.mark.parametrize("det, which, size, keys", [
    ("det1", "pnet", 31, ("conv4-2", "prob1")),
    ("det2", "rnet", 24, ("conv5-2", "prob1")),
    ("det3", "onet", 48, ("conv6-2", "conv6-3", "prob1")),
])
def test_mtcnn_matches_upstream_tf_nets(det_npy, det, which, size, keys):
    result = convert(det_npy[det])
    net = {"pnet": models.PNet, "rnet": models.RNet, "onet": models.ONet}[which]()
    net.load_state_dict(result.state_dict, strict=True)
    net.eval()
    images = np.random.default_rng(0).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
    # upstream feeds its nets (N, W, H, C) images; the torch nets take (N, C, H, W)
    want = run_mtcnn(det_npy, which, images.transpose(0, 2, 1, 3))
    with torch.no_grad():
        ours = net(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
    for key, got in zip(keys, ours, strict=True):
        got = got.numpy()
        if got.ndim == 4:  # (N, C, H', W') -> upstream's (N, W', H', C)
            got = got.transpose(0, 3, 2, 1)
        assert got.shape == want[key].shape, key
        assert np.abs(got - want[key]).max() <= 1e-5, key


def _keras_facenet(embedding_size: int) -> Any:
    """Inception-ResNet-V1 in Keras with keras-facenet's layer names (as deepface builds it)."""
    import tensorflow as tf

    layers = tf.keras.layers

    def conv_bn(x: Any, filters: int, kernel: Any, name: str, strides: int = 1,
                padding: str = "same") -> Any:
        x = layers.Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=False,
                          name=name)(x)
        x = layers.BatchNormalization(axis=3, momentum=0.995, epsilon=0.001, scale=False,
                                      name=f"{name}_BatchNorm")(x)
        return layers.Activation("relu")(x)

    def residual(x: Any, branches: list[Any], channels: int, scale: float, name: str,
                 relu: bool = True) -> Any:
        mixed = layers.Concatenate(axis=3)(branches)
        up = layers.Conv2D(channels, 1, padding="same", use_bias=True,
                           name=f"{name}_Conv2d_1x1")(mixed)
        x = layers.Add()([x, layers.Rescaling(scale)(up)])
        return layers.Activation("relu")(x) if relu else x

    inputs = layers.Input(shape=(160, 160, 3))
    x = conv_bn(inputs, 32, 3, "Conv2d_1a_3x3", strides=2, padding="valid")
    x = conv_bn(x, 32, 3, "Conv2d_2a_3x3", padding="valid")
    x = conv_bn(x, 64, 3, "Conv2d_2b_3x3")
    x = layers.MaxPooling2D(3, strides=2)(x)
    x = conv_bn(x, 80, 1, "Conv2d_3b_1x1", padding="valid")
    x = conv_bn(x, 192, 3, "Conv2d_4a_3x3", padding="valid")
    x = conv_bn(x, 256, 3, "Conv2d_4b_3x3", strides=2, padding="valid")
    for i in range(1, 6):
        n = f"Block35_{i}"
        b0 = conv_bn(x, 32, 1, f"{n}_Branch_0_Conv2d_1x1")
        b1 = conv_bn(conv_bn(x, 32, 1, f"{n}_Branch_1_Conv2d_0a_1x1"), 32, 3,
                     f"{n}_Branch_1_Conv2d_0b_3x3")
        b2 = conv_bn(x, 32, 1, f"{n}_Branch_2_Conv2d_0a_1x1")
        b2 = conv_bn(conv_bn(b2, 32, 3, f"{n}_Branch_2_Conv2d_0b_3x3"), 32, 3,
                     f"{n}_Branch_2_Conv2d_0c_3x3")
        x = residual(x, [b0, b1, b2], 256, 0.17, n)
    b0 = conv_bn(x, 384, 3, "Mixed_6a_Branch_0_Conv2d_1a_3x3", strides=2, padding="valid")
    b1 = conv_bn(conv_bn(x, 192, 1, "Mixed_6a_Branch_1_Conv2d_0a_1x1"), 192, 3,
                 "Mixed_6a_Branch_1_Conv2d_0b_3x3")
    b1 = conv_bn(b1, 256, 3, "Mixed_6a_Branch_1_Conv2d_1a_3x3", strides=2, padding="valid")
    x = layers.Concatenate(axis=3)([b0, b1, layers.MaxPooling2D(3, strides=2)(x)])
    for i in range(1, 11):
        n = f"Block17_{i}"
        b0 = conv_bn(x, 128, 1, f"{n}_Branch_0_Conv2d_1x1")
        b1 = conv_bn(x, 128, 1, f"{n}_Branch_1_Conv2d_0a_1x1")
        b1 = conv_bn(b1, 128, (1, 7), f"{n}_Branch_1_Conv2d_0b_1x7")
        b1 = conv_bn(b1, 128, (7, 1), f"{n}_Branch_1_Conv2d_0c_7x1")
        x = residual(x, [b0, b1], 896, 0.1, n)
    b0 = conv_bn(conv_bn(x, 256, 1, "Mixed_7a_Branch_0_Conv2d_0a_1x1"), 384, 3,
                 "Mixed_7a_Branch_0_Conv2d_1a_3x3", strides=2, padding="valid")
    b1 = conv_bn(conv_bn(x, 256, 1, "Mixed_7a_Branch_1_Conv2d_0a_1x1"), 256, 3,
                 "Mixed_7a_Branch_1_Conv2d_1a_3x3", strides=2, padding="valid")
    b2 = conv_bn(conv_bn(x, 256, 1, "Mixed_7a_Branch_2_Conv2d_0a_1x1"), 256, 3,
                 "Mixed_7a_Branch_2_Conv2d_0b_3x3")
    b2 = conv_bn(b2, 256, 3, "Mixed_7a_Branch_2_Conv2d_1a_3x3", strides=2, padding="valid")
    x = layers.Concatenate(axis=3)([b0, b1, b2, layers.MaxPooling2D(3, strides=2)(x)])
    for i in range(1, 7):
        n = f"Block8_{i}"
        b0 = conv_bn(x, 192, 1, f"{n}_Branch_0_Conv2d_1x1")
        b1 = conv_bn(x, 192, 1, f"{n}_Branch_1_Conv2d_0a_1x1")
        b1 = conv_bn(b1, 192, (1, 3), f"{n}_Branch_1_Conv2d_0b_1x3")
        b1 = conv_bn(b1, 192, (3, 1), f"{n}_Branch_1_Conv2d_0c_3x1")
        x = residual(x, [b0, b1], 1792, 0.2 if i < 6 else 1.0, n, relu=i < 6)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(embedding_size, use_bias=False, name="Bottleneck")(x)
    x = layers.BatchNormalization(momentum=0.995, epsilon=0.001, scale=False,
                                  name="Bottleneck_BatchNorm")(x)
    return tf.keras.Model(inputs, x, name="inception_resnet_v1")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_keras_facenet_h5_equals_keras(tmp_path):
    model = _keras_facenet(128)
    rng = np.random.default_rng(3)
    weights = []
    for w in model.weights:  # trained-looking values: BN statistics away from 0/1
        shape = tuple(w.shape)
        if "moving_variance" in w.path:
            weights.append(rng.uniform(0.5, 1.5, shape).astype(np.float32))
        elif "kernel" in w.path:
            fan_in = int(np.prod(shape[:-1]))
            weights.append(rng.normal(0, np.sqrt(2.0 / fan_in), shape).astype(np.float32))
        else:
            weights.append(rng.normal(0, 0.1, shape).astype(np.float32))
    model.set_weights(weights)
    path = tmp_path / "facenet_keras.h5"
    model.save(str(path))
    images = _images(seed=2, batch=2)
    want = model.predict(images, verbose=0)
    want = want / np.linalg.norm(want, axis=1, keepdims=True)
    result = convert(path, output=tmp_path / "k.pt")
    assert result.detection.scheme == "keras-facenet" and result.embedding_size == 128
    assert len(result.plan.mapped) == len(model.weights) and not result.plan.drops
    net = _torch_net(result, 128, None)
    embeddings, _ = _torch_outputs(net, images)
    assert np.abs(embeddings - want).max() <= EMBEDDING_TOL
