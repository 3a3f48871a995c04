"""TorchWorkers: each task on one intra-op thread, the caller's setting given back."""

from __future__ import annotations

import threading

import torch

from facenet_convert.models.workers import TorchWorkers


def _observe(_: int) -> tuple[str, int]:
    # a parallel-sized op first: ATen sizes a thread's OpenMP team at its first parallel
    # region, from the last value any thread set (the trap the workers must not fall into)
    torch.ones(1 << 17).add_(1.0)
    return threading.current_thread().name, torch.get_num_threads()


def test_tasks_run_single_threaded_and_the_caller_keeps_its_setting() -> None:
    before = torch.get_num_threads()
    workers = TorchWorkers(2, "probe")
    try:
        torch.set_num_threads(2)
        # first tasks without a torch op (as cv2's pyramid resizes): no team size set yet
        assert workers.map(lambda item: item, range(6)) == list(range(6))
        for _ in range(3):
            seen = workers.map(_observe, range(6))
            assert {threads for _, threads in seen} == {1}
            assert all(name.startswith("probe") for name, _ in seen)
            assert torch.get_num_threads() == 2
            torch.set_num_threads(2)
        assert workers.map(lambda item: item * 2, [4, 5, 6]) == [8, 10, 12]     # in order
        nested = workers.map(lambda item: workers.map(_observe, [item, item]), [0, 1, 2, 3])
        for inner in nested:                  # a task's own map runs in the task's thread
            assert len({name for name, _ in inner}) == 1 and inner[0][0].startswith("probe")
        assert workers.map(_observe, [0])[0] == (threading.current_thread().name, 2)  # inline
    finally:
        workers.close()
        torch.set_num_threads(before)
    assert workers.map(lambda item: item + 1, [1, 2]) == [2, 3]      # restarts after close
    workers.close()


def test_copies_and_pickles_carry_settings_not_threads() -> None:
    import copy
    import pickle

    workers = TorchWorkers(3, "copied")
    assert workers.map(lambda item: item, [1, 2]) == [1, 2]          # threads started
    for twin in (copy.deepcopy(workers), pickle.loads(pickle.dumps(workers))):
        assert (twin.count, twin.name, twin.busy_here) == (3, "copied", False)
        assert twin.map(lambda item: -item, [1, 2]) == [-1, -2]
        twin.close()
    workers.close()
