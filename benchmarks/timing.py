"""Clocks and statistics shared by the benchmarks: stamps, medians and alternating orders."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

now = time.perf_counter


class Stamps:
    """Times of the events of one training call, from the contender's timing callbacks.

    `epoch_begin`, `batch_end` and `end` come from a callback that runs first (before the
    other callbacks' hooks); `batch_done` from one that runs last, after every batch hook.
    An epoch's end cost runs from its last `batch_done` to the next `epoch_begin` (or `end`).
    """

    def __init__(self):
        self.call = now()
        self.first_batch_end: float | None = None
        self.epoch_begins: list[float] = []
        self.epoch_end_costs: list[float] = []
        self.train_end: float | None = None
        self._last_batch_done: float | None = None

    def batch_end(self) -> None:
        if self.first_batch_end is None:
            self.first_batch_end = now()

    def batch_done(self) -> None:
        self._last_batch_done = now()

    def _close_epoch(self, at: float) -> None:
        if self.epoch_begins and self._last_batch_done is not None:
            self.epoch_end_costs.append(at - self._last_batch_done)
        self._last_batch_done = None

    def epoch_begin(self) -> None:
        at = now()
        self._close_epoch(at)
        self.epoch_begins.append(at)

    def end(self) -> None:
        self.train_end = now()
        self._close_epoch(self.train_end)


class Measurement:
    """One timed training call: the epochs after the first (the warm-up), or its only epoch.

    The warm-up epoch absorbs what the call itself costs (iterator, writers, graph export);
    `call_overhead` estimates that cost as the warm-up epoch minus one steady-state epoch.
    `epoch_end_cost` is the median time an epoch end (metrics, callbacks, checkpoint) takes.
    """

    def __init__(self, stamps: Stamps, *, steps_per_epoch: int, epochs: int):
        warm_up = 1 if epochs > 1 else 0
        if stamps.train_end is None or len(stamps.epoch_begins) != epochs:
            raise RuntimeError(f"the training call ran {len(stamps.epoch_begins)} of {epochs} epochs")
        start = stamps.epoch_begins[warm_up]
        self.steps = (epochs - warm_up) * steps_per_epoch
        self.seconds = stamps.train_end - start
        steady_epoch = self.seconds / (epochs - warm_up)
        self.call_overhead = (start - stamps.call - steady_epoch) if warm_up else (start - stamps.call)
        self.epoch_end_cost = median(stamps.epoch_end_costs[warm_up:])

    @property
    def steps_per_sec(self) -> float:
        return self.steps / self.seconds


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
