"""Collective decisions: every worker stops, saves or changes the learning rate at the same
step, or none does.

A decision taken on one worker only (its own clock, a signal it received, a callback that
votes on the chief alone) would leave the others waiting in a collective forever. At each
decision point the workers' votes go through one small all-reduce: a stop or save asked by
any worker is taken by all, each knows who asked, and a learning-rate change takes the
chief's value.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf


@dataclasses.dataclass
class Votes:
    """What this worker asks for at one decision point."""

    stop_reason: str | None = None
    preempted: bool = False  # stop and save, but the run is not finished: a rerun resumes it
    savers: set[int] = dataclasses.field(default_factory=set)
    lr_base: float | None = None
    lr_scale: float | None = None

    @property
    def stop(self) -> bool:
        return self.stop_reason is not None


@dataclasses.dataclass(frozen=True)
class Decision:
    """What every worker does: identical on all of them."""

    stop_voters: tuple[int, ...] = ()
    preempted: bool = False
    savers: tuple[int, ...] = ()
    lr_base: float | None = None
    lr_scale: float | None = None

    @property
    def stop(self) -> bool:
        return bool(self.stop_voters)


class DecisionMaker:
    """Agrees on a `Decision` from every worker's `Votes`; free (no communication) on one worker.

    The vote vector: one stop slot per worker, a preemption slot, one slot per saver, and
    two (flag, value) pairs for learning-rate changes that only the chief fills in.
    """

    def __init__(self, strategy: tf.distribute.Strategy, *, num_workers: int, worker_index: int,
                 is_chief: bool, num_savers: int):
        self._strategy, self._num_workers, self._worker_index = strategy, num_workers, worker_index
        self._is_chief, self._num_savers = is_chief, num_savers
        self._local_replicas = strategy.num_replicas_in_sync // num_workers
        if num_workers > 1:
            size = num_workers + 1 + num_savers + 4
            self._sum = tf.function(self._all_reduce_sum, input_signature=[tf.TensorSpec([size], tf.float64)])

    def _all_reduce_sum(self, votes: tf.Tensor) -> tf.Tensor:
        per_replica = self._strategy.run(tf.identity, args=(votes,))
        return self._strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def agree(self, votes: Votes) -> Decision:
        if self._num_workers == 1:
            return Decision(stop_voters=(0,) if votes.stop else (), preempted=votes.preempted,
                            savers=tuple(sorted(votes.savers)), lr_base=votes.lr_base, lr_scale=votes.lr_scale)
        w, s = self._num_workers, self._num_savers
        vector = np.zeros([w + 1 + s + 4], np.float64)
        vector[self._worker_index] = float(votes.stop)
        vector[w] = float(votes.preempted)
        vector[[w + 1 + i for i in votes.savers]] = 1.0
        lr_slots = (w + 1 + s, w + 3 + s)
        if self._is_chief:
            for slot, value in zip(lr_slots, (votes.lr_base, votes.lr_scale)):
                if value is not None:
                    vector[slot:slot + 2] = (1.0, value)
        # Every local replica contributes the same vector: divide their copies back out.
        total = self._sum(tf.constant(vector)).numpy() / self._local_replicas
        lr = [total[k + 1] if total[k] > 0.5 else None for k in lr_slots]
        return Decision(stop_voters=tuple(int(i) for i in np.flatnonzero(total[:w] > 0.5)),
                        preempted=bool(total[w] > 0.5),
                        savers=tuple(int(i) for i in np.flatnonzero(total[w + 1:w + 1 + s] > 0.5)),
                        lr_base=lr[0], lr_scale=lr[1])

    def all_equal(self, value: int) -> bool:
        """Whether every worker holds the same integer `value` (one all-reduce)."""
        if self._num_workers == 1:
            return True
        vector = np.zeros([self._sum.input_signature[0].shape[0]], np.float64)
        vector[self._worker_index] = float(value)
        total = self._sum(tf.constant(vector)).numpy()[:self._num_workers] / self._local_replicas
        return bool((total == total[0]).all())
