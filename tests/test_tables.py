"""Every table against every layout: full coverage, explicit drops, layouts equal the models'.

Sources here are synthetic (names from the tables' own inverse, shapes from the layouts), to
check the tables' bookkeeping; the real upstream files are converted in test_convert*.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from facenet_convert.converter.architectures import inception_resnet_v1 as irv1
from facenet_convert.converter.core.errors import MappingError
from facenet_convert.converter.mapping import (
    compile_table,
    expected_source_name,
)
from facenet_convert.converter.recognition import detect
from facenet_convert.converter.registry import all_tables, get_architecture, get_table, names
from facenet_convert.converter.sources.memory import ArraySource
from facenet_convert.converter.tables import inception_resnet_v1_slim as slim
from tests.synthetic_models import convert_arrays, synthetic

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("name", sorted(all_tables()))
def test_tables_compile_and_name_their_architecture(name):
    table = get_table(name)
    compile_table(table)
    assert table.architecture in names()
    for rule in table.rules:
        assert rule.target is not None or rule.reason


@pytest.mark.parametrize("embedding, classes", [(512, None), (128, None), (512, 8631), (64, 3)])
def test_slim_checkpoint_with_training_extras(embedding, classes):
    entries = irv1.layout(embedding, classes)
    arrays = synthetic(slim.CHECKPOINT.name, entries)
    variables = list(arrays)
    extras = {"global_step": np.array(1, np.int64), "beta1_power": np.array(0.9, np.float32),
              "beta2_power": np.array(0.9, np.float32), "total_loss/avg": np.array(1.0),
              "centers": np.zeros((3, embedding), np.float32),
              "InceptionResnetV1/AuxLogits/Conv2d_1b_1x1/weights": np.zeros(1, np.float32),
              "_CHECKPOINTABLE_OBJECT_GRAPH": np.array(b"", object)}
    for var in variables:
        for suffix in ("Adam", "Adam_1", "ExponentialMovingAverage"):
            extras[f"{var}/{suffix}"] = arrays[var]
    arrays.update(extras)
    the_plan, done = convert_arrays(slim.CHECKPOINT.name, arrays, entries)
    assert list(done.arrays) == [e.key for e in entries]
    assert len(the_plan.mapped) == len(variables)
    assert {d.source for d in the_plan.drops} == set(extras)
    found = detect(ArraySource(arrays).tensors())
    assert (found.architecture, found.scheme, found.embedding_size, found.num_classes,
            found.ema, found.optimizer, found.centers) == (
        "inception_resnet_v1", "tf-slim", embedding, classes, True, "ADAM", True)


@pytest.mark.parametrize("suffixes", [("RMSProp", "RMSProp_1"), ("Momentum",), ("Adagrad",),
                                      ("Adadelta", "Adadelta_1"), ("Ftrl", "Ftrl_1")])
def test_every_optimizer_slot_is_dropped(suffixes):
    entries = irv1.layout(128)
    arrays = synthetic(slim.CHECKPOINT.name, entries)
    arrays.update({f"{k}/{s}": v for k, v in list(arrays.items()) for s in suffixes})
    the_plan, _ = convert_arrays(slim.CHECKPOINT.name, arrays, entries)
    assert all(d.reason.startswith("optimizer slot") for d in the_plan.drops)


def test_frozen_table_drops_op_constants_but_not_unknown_variables():
    entries = irv1.layout(512)
    arrays = synthetic(slim.FROZEN.name, entries)
    junk = {"InceptionResnetV1/Conv2d_1a_3x3/BatchNorm/Const": np.ones(32, np.float32),
            "InceptionResnetV1/Repeat/block35_1/mul/x": np.array(0.17, np.float32),
            "InceptionResnetV1/Logits/Flatten/flatten/Reshape/shape": np.array([-1, 1792]),
            "phase_train/input": np.array(False)}
    arrays.update(junk)
    the_plan, _ = convert_arrays(slim.FROZEN.name, arrays, entries)
    assert {d.source for d in the_plan.drops} == set(junk)
    arrays["InceptionResnetV1/Extra/Conv2d_9z_1x1/weights"] = np.zeros(3, np.float32)
    with pytest.raises(MappingError, match=r"Extra/Conv2d_9z_1x1/weights"):
        convert_arrays(slim.FROZEN.name, arrays, entries)


def test_slim_index_arithmetic_is_complete():
    names = {expected_source_name(slim.CHECKPOINT, e.key)
             for e in irv1.layout(512)}
    for block, count in (("Repeat/block35", 5), ("Repeat_1/block17", 10),
                         ("Repeat_2/block8", 5)):
        found = {int(m.group(1)) for n in names if n
                 for m in [re.fullmatch(rf"InceptionResnetV1/{block}_(\d+)/Conv2d_1x1/biases",
                                        n)] if m}
        assert found == set(range(1, count + 1))


def test_keras_table_full_coverage():
    entries = irv1.layout(128)
    arrays = synthetic("inception_resnet_v1.keras_facenet", entries)
    assert "Block35_1_Branch_0_Conv2d_1x1/kernel" in arrays
    assert "Block8_6_Conv2d_1x1/bias" in arrays
    assert "Bottleneck_BatchNorm/moving_variance" in arrays
    the_plan, done = convert_arrays("inception_resnet_v1.keras_facenet", arrays, entries)
    assert len(the_plan.mapped) == len(arrays) and not the_plan.drops
    np.testing.assert_array_equal(done.arrays["repeat_3.4.conv2d.weight"],
                                  arrays["Block8_5_Conv2d_1x1/kernel"].transpose(3, 2, 0, 1))
    found = detect(ArraySource(arrays).tensors())
    assert (found.scheme, found.embedding_size) == ("keras-facenet", 128)


@pytest.mark.parametrize("arch, table, scheme", [("pnet", "pnet.mtcnn_npy", "mtcnn-det1"),
                                                 ("rnet", "rnet.mtcnn_npy", "mtcnn-det2"),
                                                 ("onet", "onet.mtcnn_npy", "mtcnn-det3")])
def test_mtcnn_tables_and_detection(arch, table, scheme):
    entries = get_architecture(arch).layout(None, None)
    arrays = synthetic(table, entries)
    _, done = convert_arrays(table, arrays, entries)
    assert list(done.arrays) == [e.key for e in entries]
    assert detect(ArraySource(arrays).tensors()).scheme == scheme


def test_unknown_architecture_detects_nothing():
    found = detect(ArraySource({"resnet/conv1/kernel": np.zeros(3, np.float32)}).tensors())
    assert found.architecture is None and found.notes


def test_layouts_equal_recorded_facenet_pytorch():
    recorded = json.loads((DATA / "facenet_pytorch_layouts.json").read_text())["layouts"]
    ours = {"inception_resnet_v1": irv1.layout(512, 8631),
            **{arch: get_architecture(arch).layout(None, None) for arch in names("detection")}}
    for arch, entries in ours.items():
        want = [(k, tuple(shape)) for k, shape in recorded[arch]["state_dict"]]
        assert [(e.key, e.shape) for e in entries] == want, arch
