"""Collective decisions: every worker stops, saves or changes the learning rate at the same
step, or none does; and every worker knows why.

A decision taken on one worker only (its own clock, a signal it received, a callback that
votes on the chief alone) would leave the others waiting in a collective forever. At each
decision point the workers' votes go through one small all-reduce (or ride in a loop's gradient
all-reduce: see `harness.controller`): a stop or save asked by
any worker is taken by all, a learning-rate change takes the chief's value. When a stop is
agreed, a second all-reduce carries the reason of the lowest-numbered worker that asked, so
every worker records the same reason. The same vector carries each worker's busy time since
the last decision point (the straggler view), at no extra communication, and the rollbacks asked
(restore the last checkpoint: see `harness.rollback`), with the lowest voter's learning-rate factor.

`encode`/`decode` are pure (numpy): a decision on W workers is `decode(sum of their encodings)`.
"""

from __future__ import annotations

import dataclasses
import signal as signal_module

import numpy as np

REASON_BYTES = 512  # a stop reason longer than this (UTF-8) is cut, with an ellipsis


@dataclasses.dataclass
class Votes:
    """What this worker asks for at one decision point."""

    stop_reason: str | None = None
    signal: int = 0  # a SIGTERM/SIGINT this worker received: save, stop, and exit 75 (a rerun resumes)
    savers: set[int] = dataclasses.field(default_factory=set)
    lr_base: float | None = None
    lr_scale: float | None = None
    seconds: float = 0.0  # this worker's time outside the K-step loop since the last decision point (its hooks)
    loop_seconds: float = 0.0  # ... and inside it (with its waits for the others in the steps' collectives)
    rollback_reason: str | None = None  # restore the newest checkpoint and skip the data since (harness.rollback)
    rollback_lr_factor: float = 1.0  # ... and multiply the learning rate by this (> 0)

    @property
    def ask_anything(self) -> bool:
        """Whether these votes ask for an action (beyond reporting the busy time)."""
        return bool(self.stop_reason is not None or self.signal or self.savers or self.lr_base is not None
                    or self.lr_scale is not None or self.rollback_reason is not None)


@dataclasses.dataclass(frozen=True)
class Decision:
    """What every worker does: identical on all of them."""

    stop_voters: tuple[int, ...] = ()
    stop_reason: str | None = None  # the lowest-numbered voter's reason
    signal: int = 0  # the lowest-numbered signalled worker's signal
    signalled: tuple[int, ...] = ()
    savers: tuple[int, ...] = ()
    lr_base: float | None = None
    lr_scale: float | None = None
    # Every worker's busy time since the last decision point, by worker index: its time outside the K-step loop
    # plus the fastest loop's (the steps' collectives make each loop wait for the slowest: not its own time).
    seconds: tuple[float, ...] = ()
    rollback_voters: tuple[int, ...] = ()
    rollback_lr_factor: float = 1.0  # the lowest-numbered rollback voter's factor

    @property
    def rollback(self) -> bool:
        """Every worker restores the newest checkpoint here (see `harness.rollback`)."""
        return bool(self.rollback_voters)

    @property
    def stop(self) -> bool:
        """Training ends here: a callback asked, or a signal arrived."""
        return bool(self.stop_voters or self.signal)

    @property
    def signal_name(self) -> str | None:
        return signal_module.Signals(self.signal).name if self.signal else None


class Layout:
    """Where each vote sits: W stop slots, W signal slots, S saver slots, two LR (flag, value) pairs, W times
    outside the loop and W inside, W rollback slots (each voter's learning-rate factor, > 0)."""

    def __init__(self, num_workers: int, num_savers: int):
        self.num_workers, self.num_savers = num_workers, num_savers
        self.size = 5 * num_workers + num_savers + 4

    def encode(self, votes: Votes, worker_index: int, is_chief: bool) -> np.ndarray:
        w = self.num_workers
        vector = [0.0] * self.size  # a list, then one array: numpy is slow on a few elements at a time
        vector[worker_index] = float(votes.stop_reason is not None)
        vector[w + worker_index] = float(votes.signal)
        for i in votes.savers:
            vector[2 * w + i] = 1.0
        if is_chief:  # learning-rate changes take the chief's values
            for slot, value in zip(self._lr_slots(), (votes.lr_base, votes.lr_scale)):
                if value is not None:
                    vector[slot:slot + 2] = (1.0, float(value))
        times = self._times_start()
        vector[times + worker_index], vector[times + w + worker_index] = float(votes.seconds), float(votes.loop_seconds)
        if votes.rollback_reason is not None:
            vector[times + 2 * w + worker_index] = float(votes.rollback_lr_factor)
        return np.array(vector, np.float64)

    def _times_start(self) -> int:
        return 2 * self.num_workers + self.num_savers + 4

    def _lr_slots(self) -> tuple[int, int]:
        start = 2 * self.num_workers + self.num_savers
        return start, start + 2

    def decode(self, total: np.ndarray, stop_reason: str | None = None) -> Decision:
        w, s, times = self.num_workers, self.num_savers, self._times_start()
        values = total.tolist()

        def voters(start: int, count: int, threshold: float = 0.5) -> tuple[int, ...]:
            return tuple(i for i, v in enumerate(values[start:start + count]) if v > threshold)

        signalled, rollback = voters(w, w), voters(times + 2 * w, w, 0.0)
        lr = [values[k + 1] if values[k] > 0.5 else None for k in self._lr_slots()]
        step = min(values[times + w:times + 2 * w])
        return Decision(stop_voters=voters(0, w), stop_reason=stop_reason,
                        signal=int(round(values[w + signalled[0]])) if signalled else 0, signalled=signalled,
                        savers=voters(2 * w, s), lr_base=lr[0], lr_scale=lr[1],
                        seconds=tuple(outside + step for outside in values[times:times + w]),
                        rollback_voters=rollback,
                        rollback_lr_factor=values[times + 2 * w + rollback[0]] if rollback else 1.0)


def encode_reason(reason: str) -> np.ndarray:
    data = reason.encode("utf-8")
    if len(data) > REASON_BYTES:
        data = data[:REASON_BYTES - 3].decode("utf-8", "ignore").encode("utf-8") + b"..."
    vector = np.zeros([REASON_BYTES], np.float64)
    vector[:len(data)] = np.frombuffer(data, np.uint8)
    return vector


def decode_reason(vector: np.ndarray) -> str:
    data = np.rint(vector).astype(np.uint8).tobytes().rstrip(b"\0")
    return data.decode("utf-8", "replace")
