"""Metrics as (sum, count) per replica, summed across replicas and workers.

A mean of per-replica means is wrong whenever replicas see different weights (padding at
the end of an evaluation, sample weights); sums are exact in every layout. Every worker
reads the same all-reduced numbers, so callbacks decide identically everywhere.

Two kinds of mean, as Keras logs them: the loss is the mean over examples of what the caller
passes (already multiplied by the sample weight, so that it is the objective: sum(w * l) / N);
every other metric is a mean weighted by the sample weight: sum(w * m) / sum(w).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import tensorflow as tf

from harness.collective_watchdog import WATCHDOG
from harness.compiled import compiled


class MeanMetrics:
    """Running means of per-example values, one accumulator vector per replica.

    `per_example` names are divided by the number of counted examples (`example_mask`), the
    others by the total sample weight. The vector is [sum per name..., examples, weight].
    """

    def __init__(self, strategy: tf.distribute.Strategy, names: Sequence[str], name: str,
                 per_example: Sequence[str] = ("loss",)):
        self.names = tuple(names)
        self._per_example = tuple(n in per_example for n in self.names)
        self._strategy = strategy
        with strategy.scope():
            self._sums = tf.Variable(tf.zeros([len(self.names) + 2]), trainable=False, name=f"{name}_sums",
                                     synchronization=tf.VariableSynchronization.ON_READ,
                                     aggregation=tf.VariableAggregation.SUM)
        self._read = WATCHDOG.watched(compiled(self._all_reduced_sums))
        self._reset = compiled(self._reset_on_every_replica)

    @property
    def variable(self) -> tf.Variable:
        """The per-replica accumulator (checkpointed so a resumed epoch keeps its running means)."""
        return self._sums

    def update(self, values: Mapping[str, tf.Tensor], sample_weight: tf.Tensor | None = None,
               example_mask: tf.Tensor | None = None) -> None:
        """Adds this replica's per-example `values` (one entry per name); call in replica context.

        `example_mask` (1 for an example, 0 for padding) decides which examples count in the
        per-example means; by default all do.
        """
        weight = None if sample_weight is None else tf.reshape(tf.cast(sample_weight, tf.float32), [-1])
        mask = None if example_mask is None else tf.reshape(tf.cast(example_mask, tf.float32), [-1])
        examples = tf.cast(tf.size(values[self.names[0]]), tf.float32)  # a count of ones, without the ones

        def total(value: tf.Tensor, factor: tf.Tensor | None) -> tf.Tensor:
            value = tf.reshape(tf.cast(value, tf.float32), [-1])
            return tf.reduce_sum(value if factor is None else value * factor)

        sums = [total(values[n], mask if per_example else weight) for n, per_example in zip(self.names,
                                                                                           self._per_example)]
        self._sums.assign_add(tf.stack([*sums, examples if mask is None else tf.reduce_sum(mask),
                                        examples if weight is None else tf.reduce_sum(weight)]))

    def _all_reduced_sums(self) -> tf.Tensor:
        local = self._strategy.run(self._sums.read_value)
        return self._strategy.reduce(tf.distribute.ReduceOp.SUM, local, axis=None)

    def _zero_local(self) -> None:
        self._sums.assign(tf.zeros_like(self._sums))

    def _reset_on_every_replica(self) -> None:
        self._strategy.run(self._zero_local)

    def result(self) -> dict[str, float]:
        """The means over everything seen since the last reset (one all-reduce; a host sync)."""
        *sums, examples, weight = self._read().numpy().tolist()
        return {n: (s / count if count else math.nan)
                for n, s, count in zip(self.names, sums, (examples if p else weight for p in self._per_example))}

    def reset(self) -> None:
        self._reset()
