"""The mapping engine on small in-memory sources: accounting, errors, transforms, EMA, NaN."""

from __future__ import annotations

import numpy as np
import pytest

from facenet_convert.converter.core.errors import MappingError
from facenet_convert.converter.mapping import (
    TRANSFORMS,
    Fill,
    Rule,
    Table,
    TargetEntry,
    compile_table,
    expected_source_name,
    materialize,
    plan,
    render,
)
from facenet_convert.converter.sources.memory import ArraySource

TABLE = Table(
    name="toy", architecture="toy", scheme="toy",
    rules=(
        Rule(r"net/block_(?P<n>[1-3])/weights", "blocks.{n:minus1}.conv.weight",
             "conv_hwio_to_oihw"),
        Rule(r"net/block_(?P<n>[1-3])/BatchNorm/beta", "blocks.{n:minus1}.bn.bias"),
        Rule(r"net/fc/weights", "fc.weight", "dense_io_to_oi"),
        Rule(r"(?P<var>.+)/Adam(?:_1)?", None, reason="optimizer slot"),
        Rule(r"global_step", None, reason="step counter"),
        Rule(r"(?P<var>.+)/ExponentialMovingAverage", None, reason="EMA not selected"),
    ),
    fills=(Fill(r"blocks\.\d+\.bn\.weight", "ones", "no gamma upstream"),
           Fill(r"blocks\.\d+\.bn\.num_batches_tracked", "zeros", "torch-only counter")),
    ema_pattern=r"(?P<var>.+)/ExponentialMovingAverage",
)


def layout(blocks: int = 2) -> list[TargetEntry]:
    entries = []
    for i in range(blocks):
        entries += [TargetEntry(f"blocks.{i}.conv.weight", (4, 3, 3, 2)),
                    TargetEntry(f"blocks.{i}.bn.weight", (4,)),
                    TargetEntry(f"blocks.{i}.bn.bias", (4,)),
                    TargetEntry(f"blocks.{i}.bn.num_batches_tracked", (), "int64")]
    return entries + [TargetEntry("fc.weight", (5, 4))]


def source(blocks: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {"net/fc/weights": rng.normal(size=(4, 5)).astype(np.float32),
              "global_step": np.array(7, np.int64)}
    for n in range(1, blocks + 1):
        arrays[f"net/block_{n}/weights"] = rng.normal(size=(3, 2, 3, 4)).astype(np.float32)
        arrays[f"net/block_{n}/BatchNorm/beta"] = rng.normal(size=(4,)).astype(np.float32)
    return arrays


def run(arrays: dict[str, np.ndarray], *, weights: str = "raw", strict: bool = False,
        entries: list[TargetEntry] | None = None):
    reader = ArraySource(arrays)
    the_plan = plan(TABLE, reader.tensors(), entries or layout(), weights=weights)
    return the_plan, materialize(the_plan, reader, strict=strict)


def test_one_pass_accounts_for_every_tensor():
    arrays = source()
    arrays["net/fc/weights/Adam"] = np.zeros((4, 5), np.float32)
    the_plan, done = run(arrays)
    assert list(done.arrays) == [e.key for e in layout()]
    assert {d.source for d in the_plan.drops} == {"global_step", "net/fc/weights/Adam"}
    assert {a.target for a in the_plan.filled} == {
        "blocks.0.bn.weight", "blocks.1.bn.weight", "blocks.0.bn.num_batches_tracked",
        "blocks.1.bn.num_batches_tracked"}
    consumed = {a.source for a in the_plan.mapped} | {d.source for d in the_plan.drops}
    assert consumed == set(arrays)


def test_transforms_and_index_arithmetic():
    arrays = source()
    _, done = run(arrays)
    np.testing.assert_array_equal(done.arrays["blocks.1.conv.weight"],
                                  arrays["net/block_2/weights"].transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(done.arrays["fc.weight"], arrays["net/fc/weights"].T)
    assert done.arrays["blocks.0.bn.weight"].tolist() == [1.0] * 4
    counter = done.arrays["blocks.0.bn.num_batches_tracked"]
    assert counter.dtype == np.int64 and counter.shape == () and counter == 0
    for value in done.arrays.values():
        assert value.flags.c_contiguous and value.flags.owndata


def test_mtcnn_conv_transform_is_permute_3210():
    kernel = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    out = TRANSFORMS["mtcnn_conv"].apply(kernel)
    assert out.shape == (5, 4, 3, 2)
    assert out[1, 2, 0, 1] == kernel[1, 0, 2, 1]
    assert TRANSFORMS["mtcnn_conv"].source_shape((5, 4, 3, 2)) == (2, 3, 4, 5)
    assert TRANSFORMS["conv_hwio_to_oihw"].source_shape((5, 4, 3, 2)) == (3, 2, 4, 5)


def test_render_converters():
    assert render("repeat_1.{n:minus1}.x", {"n": "5"}) == "repeat_1.4.x"
    with pytest.raises(MappingError, match="unknown converter"):
        render("{n:plus7}", {"n": "1"})


def test_expected_source_name_inverts_templates():
    assert expected_source_name(TABLE, "blocks.2.conv.weight") == "net/block_3/weights"
    assert expected_source_name(TABLE, "fc.weight") == "net/fc/weights"
    assert expected_source_name(TABLE, "nothing.here") is None


def test_unknown_tensor_is_an_error_with_hint():
    arrays = source()
    arrays["net/block_1/weightz"] = np.zeros(3, np.float32)
    with pytest.raises(MappingError, match=r"match no rule.*net/block_1/weightz \(nearest "
                                           r"known: net/block_1/weights\)") as info:
        run(arrays)
    assert "\n" not in str(info.value)


def test_missing_tensor_names_target_and_expected_source():
    arrays = source()
    del arrays["net/block_2/BatchNorm/beta"]
    with pytest.raises(MappingError, match=r"blocks\.1\.bn\.bias \(expected source "
                                           r"net/block_2/BatchNorm/beta"):
        run(arrays)


def test_rule_hitting_a_key_the_layout_lacks():
    with pytest.raises(MappingError, match=r"net/block_3/weights maps to blocks\.2\.conv"
                                           r"\.weight .*no such key"):
        run(source(blocks=3))


def test_shape_mismatch_checked_before_transform():
    arrays = source()
    arrays["net/fc/weights"] = np.zeros((5, 4), np.float32)  # transposed by mistake
    with pytest.raises(MappingError, match=r"source net/fc/weights has shape \[5, 4\] but "
                                           r"target fc\.weight \(dense_io_to_oi\) expects "
                                           r"\[4, 5\]"):
        run(arrays)


def test_target_filled_twice():
    table = Table("dup", "toy", "toy", rules=(Rule(r"a|b", "x"),))
    tensors = ArraySource({"a": np.zeros(1, np.float32), "b": np.zeros(1, np.float32)})
    with pytest.raises(MappingError, match="filled twice: by a and by b"):
        plan(table, tensors.tensors(), [TargetEntry("x", (1,))])


def test_ema_selection_and_missing_report():
    arrays = source()
    shadow = {f"{k}/ExponentialMovingAverage": v + 1 for k, v in arrays.items()
              if k != "global_step" and k != "net/block_2/BatchNorm/beta"}
    arrays.update(shadow)
    raw_plan, raw = run(arrays)
    ema_plan, ema = run(arrays, weights="ema")
    np.testing.assert_array_equal(ema.arrays["fc.weight"], (arrays["net/fc/weights"] + 1).T)
    np.testing.assert_array_equal(raw.arrays["fc.weight"], arrays["net/fc/weights"].T)
    assert ema_plan.ema_missing == ["net/block_2/BatchNorm/beta"]
    assert raw_plan.ema_missing == []
    fc = next(a for a in ema_plan.mapped if a.target == "fc.weight")
    assert fc.source == "net/fc/weights/ExponentialMovingAverage"
    assert fc.variable == "net/fc/weights"
    assert any(d.source == "net/fc/weights" and d.rule == "weights=ema" for d in ema_plan.drops)
    assert any(d.reason == "EMA not selected" for d in raw_plan.drops)


def test_ema_without_shadows_is_an_error():
    with pytest.raises(MappingError, match="no ExponentialMovingAverage shadows"):
        run(source(), weights="ema")


def test_nonfinite_reported_or_refused():
    arrays = source()
    arrays["net/block_1/weights"][0, 0, 0, 0] = np.nan
    _, done = run(arrays)
    assert done.nonfinite == ["net/block_1/weights"]
    with pytest.raises(MappingError, match=r"NaN or Inf: net/block_1/weights"):
        run(arrays, strict=True)


def test_tables_are_validated():
    with pytest.raises(MappingError, match="has no reason"):
        compile_table(Table("t1", "toy", "toy", rules=(Rule("x", None),)))
    with pytest.raises(MappingError, match="unknown transform"):
        compile_table(Table("t2", "toy", "toy", rules=(Rule("x", "y", "rotate"),)))
    with pytest.raises(MappingError, match="uses group 'k'"):
        compile_table(Table("t3", "toy", "toy", rules=(Rule("(?P<n>x)", "{k}"),)))


def test_first_rule_in_table_order_wins():
    from facenet_convert.converter.mapping import first_match

    table = Table("order", "toy", "toy", rules=(
        Rule(r"a", "x"),                        # a prefix of the name: must not win
        Rule(r"a/(?P<rest>.+)", "y.{rest}"),    # first full match
        Rule(r"a/b", "z"),                      # also matches, but later
        Rule(r"(?P<rest>.+)/c", None, reason="dropped"),
    ))
    rule, groups = first_match(table, "a/b")
    assert rule.target == "y.{rest}" and groups == {"rest": "b"}
    assert first_match(table, "a/b/c")[0].target == "y.{rest}"
    assert first_match(table, "q/c")[0].target is None
    assert first_match(table, "q") is None
    assert first_match(table, "a")[0].target == "x"
