"""Worker threads for torch CPU work: each task runs on one intra-op thread.

Independent pieces of work (pyramid levels, net slices, embedding batches) run faster side by
side on single-threaded Python workers than one after another on one OpenMP team, whose
threads wait at a barrier after every op. torch ops release the GIL, so the workers overlap.

Pinning a worker to one intra-op thread has a trap: ATen sizes a thread's OpenMP team lazily,
at the thread's first parallel region, from the value that the last ``torch.set_num_threads``
call in *any* thread stored. A worker that called ``set_num_threads(1)`` once at start-up
took the caller's value (2 on a 2-core machine) as soon as the caller restored its own
setting, so every worker ran 2-thread teams: 4 busy threads on 2 cores, and results that
depended on which thread had started first. Here every task sets one thread itself, and the
caller's setting is given back after each :meth:`TorchWorkers.map`.
"""

from __future__ import annotations

import collections
import functools
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch


class TorchWorkers:
    """``map(function, items)`` on ``count`` worker threads (started on first use), each
    task on one intra-op thread and under ``torch.inference_mode``. One item, or a count of
    1, runs in the calling thread with its own thread setting; a task's own ``map`` runs in
    the task's thread (nested work cannot wait for itself)."""

    def __init__(self, count: int, name: str, *, pin_single: bool = False) -> None:
        self.count = max(1, int(count))
        self.name = name
        #: run work that stays in the calling thread on one intra-op thread too, so that every
        #: task computes with one thread whatever the count: results then cannot depend on the
        #: number of workers, nor on how many calls are in flight
        self.pin_single = bool(pin_single)
        self._pool: ThreadPoolExecutor | None = None
        self._inside = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles (of a model holding workers) take the settings, not threads."""
        return {"count": self.count, "name": self.name, "pin_single": self.pin_single}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["count"], state["name"],  # type: ignore[misc]
                      pin_single=state.get("pin_single", False))

    @property
    def busy_here(self) -> bool:
        """Whether the calling thread is running one of this pool's tasks."""
        return bool(getattr(self._inside, "task", False))

    def map(self, function: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """``[function(item) for item in items]``, in order, the items side by side."""
        if self.busy_here or self.count <= 1 or len(items) <= 1:
            return list(self._in_this_thread(function, items))
        caller_threads = torch.get_num_threads()
        try:
            return list(self._executor().map(functools.partial(self._task, function), items))
        finally:
            torch.set_num_threads(caller_threads)   # the process-wide value, and MKL's

    def imap(self, function: Callable[[Any], Any], items: Iterable[Any], window: int
             ) -> Iterator[Any]:
        """``function(item)`` for each item as it comes, in order, up to ``window`` items
        in flight on the workers: a long stream keeps every worker busy without a barrier
        after each group (a large item no longer holds up the small ones behind it).

        The caller's thread setting is given back when the stream ends; closing the stream
        early cancels the items not started (the ones running finish and are dropped). The
        caller should run no multi-threaded torch work of its own between items.
        """
        if self.busy_here or self.count <= 1:
            yield from self._in_this_thread(function, items)
            return
        caller_threads = torch.get_num_threads()
        executor, task = self._executor(), functools.partial(self._task, function)
        pending: collections.deque[Future[Any]] = collections.deque()
        try:
            for item in items:
                pending.append(executor.submit(task, item))
                if len(pending) >= max(1, window):
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
            torch.set_num_threads(caller_threads)

    def _in_this_thread(self, function: Callable[[Any], Any], items: Iterable[Any]
                        ) -> Iterator[Any]:
        """The items one after another in the calling thread (a task's own map, one worker,
        or one item), on one intra-op thread when ``pin_single``."""
        pin = self.pin_single and not self.busy_here
        caller_threads = torch.get_num_threads()
        if pin:
            torch.set_num_threads(1)
        try:
            for item in items:
                with torch.inference_mode():
                    result = function(item)
                yield result
        finally:
            if pin:
                torch.set_num_threads(caller_threads)

    def _task(self, function: Callable[[Any], Any], item: Any) -> Any:
        """One item on a worker: one intra-op thread, set by every task itself."""
        torch.set_num_threads(1)
        self._inside.task = True
        try:
            with torch.inference_mode():
                return function(item)
        finally:
            self._inside.task = False

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.count, thread_name_prefix=self.name)
        return self._pool

    def close(self) -> None:
        """Stop the worker threads (also done at interpreter exit)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
