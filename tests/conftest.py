"""Shared fixtures: real upstream files (pinned wheels) and TF-built reference checkpoints."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from facenet_convert.third_party.wheels import (
    FACENET,
    FACENET_PYTORCH,
    KERAS_FACENET,
    fetch_wheel,
    wheel_member,
)

# TF-built reference checkpoints (session fixtures, cached across runs).
pytest_plugins = ["tf_fixtures"]

# Under pytest-xdist each worker gets its share of the cores, before torch, TF, ONNX Runtime or
# numba start their thread pools (and the CLIs the tests start inherit it): N workers each
# running every core's worth of threads would only fight over them.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
if _WORKERS > 1:
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(_name, str(max(1, (os.cpu_count() or 1) // _WORKERS)))


def pytest_sessionstart(session: pytest.Session) -> None:
    """Fetch the pinned upstream packages the tests read once, before any test sets
    FACENET_CONVERT_OFFLINE (which forbids fetching): tests themselves never reach a host."""
    from facenet_convert.third_party.facenet.testing.photos import INSIGHTFACE

    for wheel in (FACENET, FACENET_PYTORCH, KERAS_FACENET, INSIGHTFACE):
        fetch_wheel(wheel)


# A whole run writes gigabytes (checkpoints, exported models) and CI machines may have little disk:
# a passed test's tmp_path goes when the test ends (tmp_path_retention_policy in setup.cfg), and
# every folder a test module made goes when its last test is done, so the peak is about one
# module's. Folders whose names start with SESSION_PREFIX belong to session fixtures and stay;
# nothing else outlives its module, so the base folder holds nothing else when a module starts.
SESSION_PREFIX = "session-"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    result = yield
    if getattr(nextitem, "module", None) is not getattr(item, "module", None):   # fixtures gone
        base = item.config._tmp_path_factory.getbasetemp()   # what tmp_path_factory gives
        for folder in base.iterdir():
            if not folder.name.startswith(SESSION_PREFIX):
                shutil.rmtree(folder, ignore_errors=True)
    return result


# The files that take longest on a fresh clone (their own tests plus the TF builds they start
# first), longest first. pytest-xdist hands whole files to the workers in collection order
# (scripts/test.sh turns off its reordering by test count, which put the few-test files with
# long builds last); a long file handed out last kept one worker busy while the other idled.
LONG_FILES = ("test_command_contract.py", "test_promises.py", "test_inception_resnet_v2.py",
              "test_scale.py", "test_third_party.py", "test_graphdef.py", "test_parity.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: number for number, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def det_npy() -> dict[str, Path]:
    """The real MTCNN weights det1/2/3.npy from the pinned upstream facenet wheel."""
    return {name: wheel_member(FACENET, f"facenet/src/align/{name}.npy")
            for name in ("det1", "det2", "det3")}


@pytest.fixture(scope="session")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A converted-looking Inception-ResNet-V1 weights file (seeded, realistic BatchNorm)."""
    import torch

    from tests.synthetic_models import realistic_model

    path = tmp_path_factory.mktemp(f"{SESSION_PREFIX}weights") / "random-512.pt"
    torch.save(realistic_model().state_dict(), path)
    return path


@pytest.fixture(scope="session")
def published_mtcnn() -> dict[str, Path]:
    """facenet-pytorch 2.6.0's published pnet.pt, rnet.pt, onet.pt."""
    return {name: wheel_member(FACENET_PYTORCH, f"facenet_pytorch/data/{name}.pt")
            for name in ("pnet", "rnet", "onet")}



@pytest.fixture(autouse=True)
def _no_internet_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never reach the internet: pretrained downloads only from loopback servers they set."""
    monkeypatch.setenv("FACENET_CONVERT_OFFLINE", "1")
