"""Schema tests over every architecture record (in the style of torchvision's weights tests).

Each record must describe its architecture completely and consistently: the layout equals the
model's real state_dict, every table maps onto the layout and is recognised by its marker,
parity end points name real modules, and every consumer (CLI choices, detection, releases)
sees the same set of names.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from facenet_convert.converter.architecture import TASKS, Architecture
from facenet_convert.converter.cli import main
from facenet_convert.converter.mapping import compile_table
from facenet_convert.converter.recognition import detect
from facenet_convert.converter.registry import (
    all_tables,
    architectures,
    get_architecture,
    get_table,
    match_state,
    names,
)
from facenet_convert.converter.sources.memory import ArraySource
from facenet_convert.models.preprocessing import STANDARDIZATIONS
from facenet_convert.models.releases import RELEASES
from tests.synthetic_models import convert_arrays, synthetic

RECORDS = architectures()
IDS = [record.name for record in RECORDS]
#: Head sizes each embedding record is checked with: default, small, with logits.
HEADS = [(None, None), (128, None), (64, 5)]


def _model(record: Architecture, embedding: int | None, classes: int | None) -> torch.nn.Module:
    cls = record.model_class()
    if record.task == "embedding":
        return cls(embedding_size=embedding or record.default_embedding_size,
                   num_classes=classes)
    return cls()


def _heads(record: Architecture) -> list[tuple[int | None, int | None]]:
    return HEADS if record.task == "embedding" else [(None, None)]


def test_names_are_unique_and_tasks_known():
    assert len(set(IDS)) == len(IDS)
    assert {r.task for r in RECORDS} <= set(TASKS)
    assert {"inception_resnet_v1", "pnet", "rnet", "onet"} <= set(IDS)


@pytest.mark.parametrize("record", RECORDS, ids=IDS)
def test_layout_equals_model_state_dict(record: Architecture):
    for embedding, classes in _heads(record):
        state = _model(record, embedding, classes).state_dict()
        got = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch."))
               for k, v in state.items()]
        want = [(e.key, e.shape, e.dtype) for e in record.layout(embedding, classes)]
        assert got == want, (record.name, embedding, classes)


@pytest.mark.parametrize("record", RECORDS, ids=IDS)
def test_head_keys_give_the_head_sizes(record: Architecture):
    if record.task != "embedding":
        assert record.embedding_key is None and record.classes_key is None
        return
    assert record.default_embedding_size and record.embedding_key and record.classes_key
    for embedding, classes in HEADS[1:]:
        shapes = {e.key: e.shape for e in record.layout(embedding, classes)}
        assert shapes[record.embedding_key][0] == embedding
        assert (shapes[record.classes_key][0] if classes else None) == classes
        assert (record.classes_key in shapes) == (classes is not None)
        assert match_state(shapes) is record


@pytest.mark.parametrize("record", RECORDS, ids=IDS)
def test_every_table_maps_onto_the_layout_and_is_detected(record: Architecture):
    assert record.schemes, record.name
    for scheme in record.schemes:
        table = scheme.table
        assert table.architecture == record.name
        assert get_table(table.name) is table
        assert any(r.regex.fullmatch(scheme.marker) and r.rule.target is not None
                   for r in compile_table(table)), f"{scheme.marker} is not mapped by {table.name}"
        for embedding, classes in _heads(record):
            if classes is not None and scheme.classes_tensor is None:
                continue  # this scheme has no classifier (keras-facenet)
            entries = record.layout(embedding, classes)
            arrays = synthetic(table.name, entries)
            _, done = convert_arrays(table.name, arrays, entries)
            assert list(done.arrays) == [e.key for e in entries]
            found = detect(ArraySource(arrays).tensors(), frozen=scheme.graph is True)
            assert (found.architecture, found.table) == (record.name, table.name)
            if record.task == "embedding" and scheme.embedding_tensor is not None:
                assert found.embedding_size == (embedding or record.default_embedding_size)
            if scheme.classes_tensor is not None:
                assert found.num_classes == classes


def test_tables_belong_to_exactly_one_record():
    owned = [t for r in RECORDS for t in r.tables]
    assert sorted(owned) == sorted(all_tables())


@pytest.mark.parametrize("record", RECORDS, ids=IDS)
def test_end_points_name_real_modules_in_network_order(record: Architecture):
    assert record.end_points, record.name
    net = _model(record, None, 3)
    order = [name for name, _ in net.named_modules()]
    rows = [*record.end_points, *([record.logits_end_point] if record.logits_end_point else [])]
    positions = []
    for row in rows:
        assert row.layout in ("nhwc", "nc", "nhwc-swapped")
        assert row.tf_tensors and all(":" in t for t in row.tf_tensors)
        if row.module:
            net.get_submodule(row.module)
            positions.append(order.index(row.module))
    assert len({row.label for row in rows}) == len(rows)
    assert positions == sorted(positions), "end points must follow the network's order"


@pytest.mark.parametrize("record", RECORDS, ids=IDS)
def test_input_and_preprocessing(record: Architecture):
    if record.task == "embedding":
        assert record.input_size is not None
        assert record.preprocessing in STANDARDIZATIONS
        assert record.upstream_model_def and record.upstream_scope
        net = _model(record, 16, None).eval()
        with torch.no_grad():
            out = net(torch.zeros(2, 3, *record.input_size))
        assert out.shape == (2, 16)
        np.testing.assert_allclose(out.norm(dim=1).numpy(), 1.0, rtol=1e-5)
    elif record.input_size is not None:
        assert len(record.input_size) == 2 and min(record.input_size) > 0


def test_releases_name_registered_architectures():
    assert {release.architecture for release in RELEASES} <= set(IDS)


def test_unknown_architecture_is_one_clear_error():
    with pytest.raises(Exception, match="unknown model 'resnet50'; known: "):
        get_architecture("resnet50")


@pytest.mark.parametrize("command", ["convert", "parity"])
def test_cli_model_choices_come_from_the_registry(command: str):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    assert "|".join(["auto", *names()]) in "".join(result.output.split())
