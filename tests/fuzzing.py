"""Bounded property-based fuzzing settings, with a longer run behind one environment variable.

CI runs each parser's mutation test with the example count the test names (seconds each);
``FACENET_CONVERT_FUZZ_SCALE=50 ./scripts/test.sh -k mutated`` runs fifty times as many, with
fresh random examples instead of the derandomized CI set.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

SCALE = max(1, int(os.environ.get("FACENET_CONVERT_FUZZ_SCALE", "1")))


def fuzz_settings(examples: int) -> settings:
    """``examples`` (times the scale) cases, 2 s each at most, fixtures shared across cases."""
    return settings(max_examples=examples * SCALE, deadline=2000, derandomize=SCALE == 1,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
