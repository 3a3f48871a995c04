"""Bounded property-based fuzzing settings, with a longer run behind one environment variable.

CI runs each parser's mutation test with the example count the test names (seconds each);
``FACENET_CONVERT_FUZZ_SCALE=50 ./scripts/test.sh -k mutated`` runs fifty times as many, with
fresh random examples instead of the derandomized CI set.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from facenet_convert.converter.core.errors import SourceError
from facenet_convert.converter.sources.base import SourceReader

SCALE = max(1, int(os.environ.get("FACENET_CONVERT_FUZZ_SCALE", "1")))


def fuzz_settings(examples: int) -> settings:
    """``examples`` (times the scale) cases, 2 s each at most, fixtures shared across cases."""
    return settings(max_examples=examples * SCALE, deadline=2000, derandomize=SCALE == 1,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def mutate(data: st.DataObject, original: bytes, *, max_flips: int = 6,
           positions: st.SearchStrategy[int] | None = None) -> bytes:
    """Up to ``max_flips`` XOR-ed bytes, then maybe a truncation, drawn from ``data``."""
    mutated = bytearray(original)
    where = positions if positions is not None else st.integers(0, len(mutated) - 1)
    for offset, mask in data.draw(st.lists(st.tuples(where, st.integers(1, 255)),
                                           max_size=max_flips)):
        mutated[offset] ^= mask
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(mutated))))
    return bytes(mutated if cut is None else mutated[:cut])


def assert_only_typed_errors(open_reader: Callable[[Path], SourceReader], payload: bytes,
                             filename: str) -> None:
    """Open ``payload`` (as ``filename``) and read every tensor: success, or a one-line
    SourceError; any other exception fails the test."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / filename
        path.write_bytes(payload)
        try:
            with open_reader(path) as reader:
                for name in reader.tensors():
                    reader.read(name)
        except SourceError as error:
            assert "\n" not in str(error)
