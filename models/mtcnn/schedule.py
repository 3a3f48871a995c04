"""How MTCNN's work is cut for the CPU: parts of RNet/ONet crops by the input alone (results
never depend on the thread count), and OpenCV's own thread pool off while detections run."""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any

NET_BATCH = 64
PART_CROPS = {24: 48, 48: 12}
"""Crops per RNet / ONet part to aim for (at least two parts when there are two crops): each
net call has a fixed cost beside its per-crop cost, so parts large enough to amortise it and
enough of them to keep both workers busy (docs/performance.md has the measurements)."""
MAX_PARTS = 8


_OPENCV_LOCK = threading.Lock()
_OPENCV_USERS = [0, 1]    # detections running now, the thread count to give back after them


@contextlib.contextmanager
def single_threaded_opencv() -> Iterator[None]:
    """OpenCV's own thread pool off while detections run, the caller's setting back after.

    Our workers already run the pyramid resizes side by side; OpenCV splitting each resize
    over all cores as well put twice as many threads as cores to work (8 large photos side
    by side, two runs on 2 cores: 10-17% slower, 8-20% more CPU with OpenCV's threads on;
    single photos: no difference measured). ``cv2.setNumThreads`` is process-wide: the first
    of concurrent detections saves the setting and the last gives it back.
    """
    import cv2

    with _OPENCV_LOCK:
        if _OPENCV_USERS[0] == 0:
            _OPENCV_USERS[1] = cv2.getNumThreads()
            cv2.setNumThreads(1)
        _OPENCV_USERS[0] += 1
    try:
        yield
    finally:
        with _OPENCV_LOCK:
            _OPENCV_USERS[0] -= 1
            if _OPENCV_USERS[0] == 0:
                cv2.setNumThreads(_OPENCV_USERS[1])


def part_count(crops: int, size: int) -> int:
    """How many parts an image's RNet (``size`` 24) / ONet (48) crops are cut into: by the
    crops alone (never by the thread count, so results do not depend on it), at most
    ``NET_BATCH`` crops a part; an even count keeps two workers equally busy."""
    parts = min(MAX_PARTS, max(min(2, crops), round(crops / PART_CROPS[size])))
    parts = max(parts, math.ceil(crops / NET_BATCH))
    return parts + 1 if 1 < parts < crops and parts % 2 else parts


def call(job: Callable[[], Any]) -> Any:
    return job()
