"""Upstream's learning-rate schedule file (``facenet.get_learning_rate_from_file``).

Lines ``epoch: rate`` (``#`` starts a comment; ``-`` or a rate <= 0 means "stop training", as
``train_softmax.py`` stops on ``lr <= 0``). The rate
of epoch ``e`` is the one on the last line whose epoch is ``<= e``; past the last line
upstream returns nothing, which ends its training loop: :func:`rate_for_epoch` returns None.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from facenet_convert.converter.core.errors import ConverterError
from facenet_convert.converter.core.inputs import open_regular

#: upstream's marker for "stop here"
STOP = -1.0


class ScheduleError(ConverterError):
    """A learning-rate schedule file does not follow upstream's format."""


@dataclass(frozen=True)
class Schedule:
    """``(epoch, rate)`` pairs in file order; rate ``STOP`` (``-``) ends training."""

    entries: tuple[tuple[int, float], ...]
    source: str = "<schedule>"

    def rate_for_epoch(self, epoch: int) -> float | None:
        """Upstream's rate for ``epoch``; None past the last line or at a ``-``."""
        rate: float | None = None
        for start, value in self.entries:
            if start <= epoch:
                rate = value
            else:
                return None if rate is None or rate <= 0 else rate
        return None   # upstream falls off the end: no rate, training stops


def parse_schedule(text: str, source: str = "<schedule>") -> Schedule:
    """Parse upstream's schedule format; every malformed line is a one-line error."""
    entries: list[tuple[int, float]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(":")
        if len(parts) != 2:
            raise ScheduleError(f"line {number}: expected 'epoch: rate', found {raw.strip()!r}",
                                path=source)
        try:
            epoch = int(parts[0].strip())
        except ValueError:
            raise ScheduleError(f"line {number}: epoch {parts[0].strip()!r} is not an integer",
                                path=source) from None
        value = parts[1].strip()
        if value == "-":
            rate = STOP
        else:
            try:
                rate = float(value)
            except ValueError:
                raise ScheduleError(f"line {number}: rate {value!r} is not a number or '-'",
                                    path=source) from None
            if not math.isfinite(rate):
                raise ScheduleError(f"line {number}: rate {value!r} must be finite",
                                    path=source)
        if entries and epoch < entries[-1][0]:
            raise ScheduleError(f"line {number}: epoch {epoch} comes after epoch "
                                f"{entries[-1][0]}; epochs must not decrease", path=source)
        entries.append((epoch, rate))
    if not entries:
        raise ScheduleError("no 'epoch: rate' line", path=source)
    return Schedule(tuple(entries), source)


def read_schedule(path: str | os.PathLike[str]) -> Schedule:
    """Read and parse a schedule file (a regular file, size-capped)."""
    with open_regular(path, "learning-rate schedule", ScheduleError) as handle:
        data = handle.read((1 << 20) + 1)
    if len(data) > 1 << 20:
        raise ScheduleError("larger than 1 MiB; not a learning-rate schedule", path=path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ScheduleError("not UTF-8 text", path=path) from None
    return parse_schedule(text, str(path))


def exponential_decay(rate: float, global_step: int, decay_steps: int, factor: float) -> float:
    """``tf.train.exponential_decay(..., staircase=True)`` as ``train_softmax.py`` sets it."""
    if factor == 1.0:
        return rate
    return rate * factor ** math.floor(global_step / decay_steps)
