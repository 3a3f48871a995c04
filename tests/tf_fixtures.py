"""Session fixtures: real upstream-graph checkpoints built by TensorFlow (cached across runs).

Tests using them must carry ``@pytest.mark.tf``. Builds live under
``third_party.wheels.cache_dir() / "fixtures"`` and are reused while their parameters (and the
builder version) are unchanged.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from facenet_convert.third_party.wheels import cache_dir

__all__ = ["fixtures_dir", "upstream_ckpt_128", "upstream_ckpt_512", "upstream_ckpt_512_plain"]


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """Where the TF fixture builds are cached."""
    return cache_dir() / "fixtures"


@pytest.fixture(scope="session")
def upstream_ckpt_512(fixtures_dir: Path):
    """512-d, 16-class Logits, EMA, ADAM slots, centers, frozen .pb."""
    from facenet_convert.third_party.facenet.testing.build import build_checkpoint

    return build_checkpoint(fixtures_dir / "upstream_512", embedding_size=512, num_classes=16,
                            ema=True, optimizer="ADAM", centers=True, freeze=True)


@pytest.fixture(scope="session")
def upstream_ckpt_128(fixtures_dir: Path):
    """128-d, no Logits, no EMA, RMSPROP slots, frozen .pb."""
    from facenet_convert.third_party.facenet.testing.build import build_checkpoint

    return build_checkpoint(fixtures_dir / "upstream_128", embedding_size=128, num_classes=None,
                            ema=False, optimizer="RMSPROP", centers=False, freeze=True)


@pytest.fixture(scope="session")
def upstream_ckpt_512_plain(fixtures_dir: Path):
    """512-d, 16-class Logits, EMA, MOM slots, no centers, no .pb."""
    from facenet_convert.third_party.facenet.testing.build import build_checkpoint

    return build_checkpoint(fixtures_dir / "upstream_512_plain", embedding_size=512,
                            num_classes=16, ema=True, optimizer="MOM", centers=False,
                            freeze=False)
