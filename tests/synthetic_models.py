"""Synthetic test material: seeded models that need not be trained, and sources that hold
exactly what a mapping table expects (names from the table's own inverse)."""

from __future__ import annotations

import numpy as np
import torch

from facenet_convert.converter.mapping import (
    TRANSFORMS,
    TargetEntry,
    compile_table,
    expected_source_name,
    materialize,
    plan,
)
from facenet_convert.converter.registry import get_table
from facenet_convert.converter.sources.memory import ArraySource
from facenet_convert.models.inception_resnet_v1 import InceptionResNetV1


def seed_batchnorm(net: torch.nn.Module, seed: int, *, affine: bool = True) -> torch.nn.Module:
    """Set every BatchNorm's running statistics (and, with ``affine``, its scale and shift)
    to seeded values away from the identity, so that every layer matters to the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                if affine:
                    module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                    module.bias.copy_(torch.rand(n, generator=generator) - 0.5)
    return net.eval()


def realistic_model(embedding_size: int = 512, seed: int = 0) -> InceptionResNetV1:
    """Inception-ResNet-V1 in eval mode, seeded (the same weights whatever ran before in the
    process), with realistic BatchNorm (see above)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = InceptionResNetV1(embedding_size=embedding_size)
    seed_batchnorm(model, 1)
    return model


def synthetic(table_name: str, entries: list[TargetEntry], *,
              extras: dict[str, np.ndarray] | None = None, seed: int = 0
              ) -> dict[str, np.ndarray]:
    """A source holding exactly what ``table_name`` expects for ``entries``."""
    table = get_table(table_name)
    rng = np.random.default_rng(seed)
    rules = compile_table(table)
    arrays: dict[str, np.ndarray] = {}
    for entry in entries:
        name = expected_source_name(table, entry.key)
        if name is None or name.endswith("gamma"):
            continue  # filled
        rule = next(r.rule for r in rules if r.regex.fullmatch(name))
        shape = TRANSFORMS[rule.transform].source_shape(entry.shape)
        arrays[name] = rng.normal(size=shape).astype(np.float32)
    arrays.update(extras or {})
    return arrays


def convert_arrays(table_name: str, arrays: dict[str, np.ndarray],
                   entries: list[TargetEntry], **kwargs):
    reader = ArraySource(arrays)
    the_plan = plan(get_table(table_name), reader.tensors(), entries, **kwargs)
    return the_plan, materialize(the_plan, reader)
