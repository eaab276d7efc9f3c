"""Contenders that take turns in short slices, each timed by wall clock and by the process's CPU time.

Every contender runs its own training call in a thread of its own, but only one runs at a
time: a contender stops at a switch point (before every N-th K-step call of an epoch, the
epoch's first call included, and at the end of training) and hands over to the next one;
the scheduler (the calling thread) gives the turns, in a random order every tick (seeded: a
fixed rotation would make each contender always follow the same one, and the first calls
after a switch run on caches the previous contender left). So the contenders see the same
machine, interleaved every few tens of milliseconds, and a drift in the load of this shared
machine hits all of them alike.

A slice runs from the moment a contender gets its turn to its next switch point, and
belongs to the epoch in which it started: the epoch's cost is the sum of its slices, the
epoch end (metrics, callbacks, checkpoint) and the next epoch's begin included. Its clocks
are `time.perf_counter` (wall) and `time.process_time` (user + system time of every thread
of the process: the waiting contenders are blocked and use none). Epoch 0 is the warm-up
(set-up, first calls, graph export), interleaved but not counted; so is the set-up before
the first switch point and whatever runs after the end of training (writers closing): the
scheduler lets each contender finish alone once all are done.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from benchmarks.failures import describe

wall_clock = time.perf_counter
cpu_clock = time.process_time

BOOTSTRAP_RESAMPLES = 4000


@dataclasses.dataclass
class EpochCost:
    wall_s: float = 0.0
    cpu_s: float = 0.0
    slices: int = 0
    end_wall_s: float | None = None  # the epoch end alone: from the last batch hook to the next epoch (or the end)
    end_cpu_s: float | None = None


class Pacer:
    """A contender's side of the turns: call `loop_begin()` before each K-step call, `finish()` at the end.

    `loop_begin()` returns False once the timed epochs are over (the contender may stop early);
    a contender that keeps running after that is simply not timed any more.
    """

    def __init__(self, turns: Turns, name: str):
        self._turns, self.name = turns, name
        self._go = threading.Semaphore(0)
        self.epoch = -1  # the epoch of the current K-step call (0: warm-up)
        self._call_in_epoch = 0
        self._slice_epoch: int | None = None
        self._slice_start = (0.0, 0.0)
        self._batch_done: tuple[float, float] | None = None
        self.costs: dict[int, EpochCost] = {}
        self.slices: list[tuple[int, float, float]] = []  # (epoch, wall, cpu) of each timed slice
        self.ended = False
        self.error: str | None = None
        self.started: float | None = None  # when the contender first got the turn
        self.granted: tuple[float, float] | None = None  # (wall, cpu) when the scheduler last gave the turn
        self.handover_wall_s = 0.0  # summed over the timed slices: from the scheduler's grant to the slice's start
        self.handover_cpu_s = 0.0
        self.setup_s: float | None = None  # from then to its first switch point: the training call's set-up

    # ----- called by the contender, in its own thread -----------------------------------------------

    def batch_done(self) -> None:
        """After every hook of a K-step call ran (the last one before the epoch end counts)."""
        self._batch_done = (wall_clock(), cpu_clock())

    def _close_epoch_end(self) -> None:
        if self._batch_done is not None and self.epoch >= self._turns.warm_up_epochs:
            wall, cpu = wall_clock(), cpu_clock()
            cost = self.costs.setdefault(self.epoch, EpochCost())
            cost.end_wall_s, cost.end_cpu_s = wall - self._batch_done[0], cpu - self._batch_done[1]
        self._batch_done = None

    def epoch_begin(self) -> None:
        self._close_epoch_end()
        self.epoch += 1
        self._call_in_epoch = 0

    def loop_begin(self) -> bool:
        if self.ended:
            return False
        if self._call_in_epoch % self._turns.calls_per_slice == 0:
            self._switch()
        self._call_in_epoch += 1
        return not self.ended

    def finish(self) -> None:
        """The end of training: closes the last slice and waits for the turn to finish alone."""
        if not self.ended:
            self._close_epoch_end()
            self._close()
            self.ended = True
            self._hand_over()

    def _close(self) -> None:
        wall, cpu = wall_clock(), cpu_clock()
        if self._slice_epoch is not None and self._slice_epoch >= self._turns.warm_up_epochs:
            cost = self.costs.setdefault(self._slice_epoch, EpochCost())
            cost.wall_s += wall - self._slice_start[0]
            cost.cpu_s += cpu - self._slice_start[1]
            cost.slices += 1
            self.slices.append((self._slice_epoch, wall - self._slice_start[0], cpu - self._slice_start[1]))
        self._slice_epoch = None

    def _switch(self) -> None:
        if self.setup_s is None:
            self.setup_s = wall_clock() - self.started
        self._close()
        if self.epoch >= self._turns.warm_up_epochs + self._turns.timed_epochs:
            self.ended = True  # an extra epoch: not timed
        self._hand_over()
        if not self.ended:
            self._slice_epoch = self.epoch
            self._slice_start = (wall_clock(), cpu_clock())
            if self.epoch >= self._turns.warm_up_epochs and self.granted is not None:
                self.handover_wall_s += self._slice_start[0] - self.granted[0]
                self.handover_cpu_s += self._slice_start[1] - self.granted[1]

    def _hand_over(self) -> None:
        self._turns._back.release()  # pylint: disable=protected-access
        self._go.acquire()


class Turns:
    """Runs contender bodies in turns; `run()` returns each one's per-epoch costs (or its error)."""

    def __init__(self, *, calls_per_slice: int, timed_epochs: int, warm_up_epochs: int = 1, seed: int = 0):
        self.calls_per_slice, self.timed_epochs = calls_per_slice, timed_epochs
        self.warm_up_epochs, self.seed = warm_up_epochs, seed
        self._back = threading.Semaphore(0)

    @property
    def epochs(self) -> int:
        """How many epochs each contender's training call must run."""
        return self.warm_up_epochs + self.timed_epochs

    def run(self, bodies: dict[str, Callable[[Pacer], Any]]) -> dict[str, Pacer]:
        pacers = {name: Pacer(self, name) for name in bodies}
        threads = {}
        for name, body in bodies.items():
            threads[name] = threading.Thread(target=self._body, args=(body, pacers[name]), name=f"contender-{name}",
                                             daemon=True)
            threads[name].start()
        running = list(bodies)
        rng = random.Random(self.seed)
        while running:
            order = rng.sample(running, len(running))
            for name in order:
                pacer = pacers[name]
                pacer.granted = (wall_clock(), cpu_clock())
                pacer._go.release()  # pylint: disable=protected-access
                self._back.acquire()
                if pacer.error is not None or pacer.ended:
                    running.remove(name)
        for name, thread in threads.items():  # each finishes alone (untimed): writers close, saves complete
            if pacers[name].error is None:
                pacers[name]._go.release()  # pylint: disable=protected-access
            thread.join()
        return pacers

    def _body(self, body: Callable[[Pacer], Any], pacer: Pacer) -> None:
        pacer._go.acquire()  # pylint: disable=protected-access
        pacer.started = wall_clock()
        try:
            body(pacer)
            if not pacer.ended:
                raise RuntimeError("the contender ended without calling finish()")
        except Exception as e:  # a contender that cannot run is a result
            pacer.error = describe(e)
            pacer.ended = True
            self._back.release()


# ----- statistics ------------------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def bootstrap_median_ci(values: Sequence[float], level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                        seed: int = 0) -> list[float] | None:
    """The percentile bootstrap interval of the median of `values` ([low, high]); None without values."""
    values = list(values)
    if not values:
        return None
    rng = np.random.default_rng(seed)
    data = np.asarray(values, dtype=float)
    medians = np.median(data[rng.integers(0, len(data), (resamples, len(data)))], axis=1)
    tail = (1 - level) / 2
    return [float(np.quantile(medians, tail)), float(np.quantile(medians, 1 - tail))]


def summarize(ratios: Sequence[float]) -> dict[str, Any]:
    """Median and bootstrap interval of paired samples (e.g. blocks of a round)."""
    return {"median": median(ratios), "ci95": bootstrap_median_ci(ratios), "samples": list(ratios)}


def slice_costs(pacer: Pacer, clock: str) -> dict[int, list[float]]:
    """{epoch: [cost of each slice, in order]} on `clock` ("cpu" or "wall")."""
    column = 2 if clock == "cpu" else 1
    out: dict[int, list[float]] = {}
    for entry in pacer.slices:
        out.setdefault(entry[0], []).append(entry[column])
    return out


def paired_estimate(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """b's typical cost of an epoch over a's, from slices paired by epoch and position: (estimate, loop, end).

    `a` and `b` are [draws x] epochs x slices. The last slice of an epoch holds its end (metrics,
    callbacks, checkpoint), the others only K-step calls. Each kind's ratio is the median of the
    per-slice ratios b/a of that kind (the slices of one position of one epoch ran in one turn of the
    scheduler, a few tens of milliseconds apart), weighted by a's typical cost of each kind (its median
    per position).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim == 2:
        a, b = a[None], b[None]
    ratios = b / a
    end = np.median(ratios[:, :, -1], axis=1)
    a_end = np.median(a[:, :, -1], axis=1)
    if a.shape[2] == 1:
        return end, end, end
    loop = np.median(ratios[:, :, :-1].reshape(len(a), -1), axis=1)
    a_loop = np.median(a[:, :, :-1], axis=1).sum(axis=1)
    return (loop * a_loop + end * a_end) / (a_loop + a_end), loop, end


def compare(a: Pacer, b: Pacer, clock: str, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
            seed: int = 0) -> dict[str, Any] | None:
    """a's speed relative to b's (b's cost over a's) on `clock`: the paired estimate, its percentile bootstrap
    interval over epochs (resampled whole), and for reference the per-epoch ratios and the ratio of totals."""
    ca, cb = slice_costs(a, clock), slice_costs(b, clock)
    epochs = [e for e in sorted(ca) if e in cb and len(ca[e]) == len(cb[e]) == len(ca[min(ca)])]
    if not epochs:
        return None
    am = np.array([ca[e] for e in epochs], dtype=float)
    bm = np.array([cb[e] for e in epochs], dtype=float)
    if (am <= 0).any():
        return None
    estimate, loop, end = (float(x[0]) for x in paired_estimate(am, bm))
    rng = np.random.default_rng(seed)
    boot = np.concatenate([paired_estimate(am[d], bm[d])[0]  # in chunks: draws x epochs x slices floats each
                           for d in np.array_split(rng.integers(0, len(epochs), (resamples, len(epochs))), 8)])
    tail = (1 - level) / 2
    return {"median": estimate, "ci95": [float(np.quantile(boot, tail)), float(np.quantile(boot, 1 - tail))],
            "slice_median": loop, "last_slice_median": end,
            "per_epoch": (bm.sum(axis=1) / am.sum(axis=1)).tolist(), "ratio_of_totals": float(bm.sum() / am.sum()),
            "epochs": len(epochs), "slices_per_epoch": int(am.shape[1])}
