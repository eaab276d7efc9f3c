"""Clocks and small helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

now = time.perf_counter


class Stamps:
    """When a training call started and when its first K-step call's hooks ended (time to first step)."""

    def __init__(self):
        self.call = now()
        self.first_batch_end: float | None = None

    def batch_end(self) -> None:
        if self.first_batch_end is None:
            self.first_batch_end = now()


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def rotated(items: Sequence[T], shift: int) -> list[T]:
    """`items` starting at position `shift`: repeat r runs the contenders in order rotated by r."""
    shift %= len(items)
    return [*items[shift:], *items[:shift]]


def time_calls(fn, calls: int) -> float:
    """Seconds per call of `fn()`, over `calls` calls."""
    start = now()
    for _ in range(calls):
        fn()
    return (now() - start) / calls
