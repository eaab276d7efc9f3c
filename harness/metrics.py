"""Metrics as (weighted sum, total weight) per replica, summed across replicas and workers.

A mean of per-replica means is wrong whenever replicas see different weights (padding at
the end of an evaluation, sample weights); sums are exact in every layout. Every worker
reads the same all-reduced numbers, so callbacks decide identically everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import tensorflow as tf

MetricFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def sparse_categorical_accuracy(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """1.0 where the arg-max of `logits` equals the integer label, per example."""
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return tf.cast(tf.equal(predicted, tf.cast(tf.reshape(labels, tf.shape(predicted)), tf.int32)), tf.float32)


class MeanMetrics:
    """Running weighted means of per-example values, one accumulator vector per replica."""

    def __init__(self, strategy: tf.distribute.Strategy, names: Sequence[str], name: str):
        self.names = tuple(names)
        self._strategy = strategy
        with strategy.scope():
            self._sums = tf.Variable(tf.zeros([len(self.names) + 1]), trainable=False, name=f"{name}_sums",
                                     synchronization=tf.VariableSynchronization.ON_READ,
                                     aggregation=tf.VariableAggregation.SUM)
        self._read = tf.function(self._all_reduced_sums)
        self._reset = tf.function(self._reset_on_every_replica)

    @property
    def variable(self) -> tf.Variable:
        """The per-replica accumulator (checkpointed so a resumed epoch keeps its running means)."""
        return self._sums

    def update(self, values: Mapping[str, tf.Tensor], sample_weight: tf.Tensor | None = None) -> None:
        """Adds this replica's per-example `values` (one entry per name); call in replica context."""
        first = tf.convert_to_tensor(values[self.names[0]])
        weight = tf.ones_like(first, tf.float32) if sample_weight is None else tf.cast(sample_weight, tf.float32)
        weight = tf.reshape(weight, [-1])
        sums = [tf.reduce_sum(tf.reshape(tf.cast(values[n], tf.float32), [-1]) * weight) for n in self.names]
        self._sums.assign_add(tf.stack([*sums, tf.reduce_sum(weight)]))

    def _all_reduced_sums(self) -> tf.Tensor:
        local = self._strategy.run(self._sums.read_value)
        return self._strategy.reduce(tf.distribute.ReduceOp.SUM, local, axis=None)

    def _zero_local(self) -> None:
        self._sums.assign(tf.zeros_like(self._sums))

    def _reset_on_every_replica(self) -> None:
        self._strategy.run(self._zero_local)

    def result(self) -> dict[str, float]:
        """The means over everything seen since the last reset (one all-reduce; a host sync)."""
        *sums, weight = self._read().numpy().tolist()
        return {n: (s / weight if weight else math.nan) for n, s in zip(self.names, sums)}

    def reset(self) -> None:
        self._reset()
