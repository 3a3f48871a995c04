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


def test_imap_keeps_order_bounds_the_window_and_stops_cleanly() -> None:
    """A stream: results in input order though later items finish first, never more than
    ``window`` items taken ahead, an item's error raised at its turn, the rest cancelled."""
    import time

    import pytest

    workers = TorchWorkers(2, "stream")
    taken: list[int] = []

    def items():
        for number in range(12):
            taken.append(number)
            yield number

    def slow_first(number: int) -> tuple[int, int]:
        time.sleep(0.05 if number % 4 == 0 else 0.0)
        return number, torch.get_num_threads()

    try:
        stream = workers.imap(slow_first, items(), window=3)
        first = next(stream)
        assert first == (0, 1) and len(taken) <= 3
        assert [number for number, _ in stream] == list(range(1, 12))

        def fails_at_five(number: int) -> int:
            if number == 5:
                raise ValueError("five")
            return number

        seen: list[int] = []
        with pytest.raises(ValueError, match="five"):
            seen.extend(workers.imap(fails_at_five, range(100), window=4))  # appends as it goes
        assert seen == [0, 1, 2, 3, 4]
        one = TorchWorkers(1, "alone", pin_single=True)
        assert list(one.imap(lambda n: n * 2, range(4), window=2)) == [0, 2, 4, 6]
    finally:
        workers.close()
