"""Votes that ride in a training loop's gradient all-reduce: a lagged decision costs no collective of its own.

A lagged decision (see `harness.controller`) sums every worker's vector of votes within the next
K-step loop's call. `Trainer.all_reduce_gradients` appends the vector to the gradients it sums:
MultiWorkerMirroredStrategy concatenates the tensors of one dtype into one all-reduce, so the
votes add a few numbers to it, not a round trip. The sum is kept in a variable that is read
without communication (its first local replica's copy). A loop whose step never sums its
gradients through the trainer (a custom step that leaves it to Keras's `optimizer.apply`) sums
the votes in an all-reduce of their own after its steps instead: tracing decides which, the same
on every worker.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import tensorflow as tf

from harness.decision_maker import sum_over_replicas

SUM = tf.distribute.ReduceOp.SUM


class RidingVotes:
    """One worker's votes on their way through a loop's gradient all-reduce (a vector of `size` floats)."""

    def __init__(self, strategy: tf.distribute.Strategy, size: int):
        self._strategy = strategy
        with strategy.scope():
            self._arrived = tf.Variable(tf.zeros([size]), trainable=False, name="riding_votes",
                                        synchronization=tf.VariableSynchronization.ON_READ,
                                        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self._waiting: tf.Tensor | None = None  # while a loop that carries votes is traced
        # This worker's CPU: votes made there are not copied again for the call (a tenth of a ms per call).
        self.host = tf.DeviceSpec.from_string(strategy.extended.worker_devices[0]).replace(
            device_type="CPU", device_index=0).to_string()
        self._rode = False

    @contextlib.contextmanager
    def boarding(self, votes: tf.Tensor) -> Iterator[None]:
        """While a loop's steps are traced inside it, `votes` (float32) ride in their gradient all-reduce."""
        self._waiting, self._rode = votes, False
        try:
            yield
        finally:
            self._waiting = None

    def all_reduce(self, tensors: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        """The sum of `tensors` over every replica (replica context), with the waiting votes riding along."""
        context = tf.distribute.get_replica_context()
        if self._waiting is None:
            return context.all_reduce(SUM, list(tensors))
        # (tf.identity places the votes on this replica's device: the all-reduce sends from there)
        *summed, arrived = context.all_reduce(SUM, [*tensors, tf.identity(self._waiting)])
        self._arrived.assign(arrived)
        self._rode = True
        return summed

    def arrived(self, votes: tf.Tensor) -> tf.Tensor:
        """`votes` summed over every replica (cross-replica context, after the loop's steps): each worker's
        count once per local replica."""
        if not self._rode:  # no gradient all-reduce went through the trainer: one of their own
            return sum_over_replicas(self._strategy, votes)
        return self._arrived.read_value()
