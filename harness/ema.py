"""An exponential moving average (EMA) of the model's trainable weights, distribution-safe and exact on resume.

Why the harness does it itself: tensorflow-addons' `MovingAverage` broke under MirroredStrategy and
Keras 3's optimizer EMA swaps the averages in only per epoch (or at the end of `fit`), so neither
gives validation, best checkpoints and the export the averaged weights under a strategy.

- The averages are mirrored variables created in the strategy's scope, one per trainable weight,
  starting as a copy of it. After every update, inside the compiled K-step loop (cross-replica
  context, no host sync), each device moves its copy towards its own copy of the weight:
  `average - (1 - decay) * (average - weight)`; the first update of a run (global step 0) copies
  the weights (as Keras and PyTorch's averaged models do). `strategy.extended.update` runs it on
  every local device with that device's values: no communication, not even across workers, since
  every replica holds the same weights.
- The averages are part of the training checkpoint (so a resume continues them bitwise) and the
  decay is part of the run's recorded settings (a resume with another decay is refused).
- `swapped()` exchanges the values of the weights and the averages in place (assignments inside
  one compiled function; nothing is re-created, no extra copy of the model is kept) and exchanges
  them back on exit, which restores the training weights bitwise. The trainer evaluates, saves best
  weights and exports inside it. Non-trainable weights (batch-norm statistics) are not averaged:
  they are used as trained.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import keras
import tensorflow as tf

from harness.errors import UsageError


def check_decay(decay: float | None) -> None:
    if decay is not None and not (isinstance(decay, float | int) and math.isfinite(decay) and 0 < decay < 1):
        raise UsageError(f"must be in (0, 1), e.g. 0.999, got {decay!r}", argument="ema_decay")


def _move(average: tf.Variable, weight: tf.Tensor, rate: tf.Tensor, first: tf.Tensor):
    return average.assign(tf.where(first, weight, average - rate * (average - weight)))


def _exchange(weight: tf.Variable, average: tf.Variable):
    held = weight.read_value()
    weight.assign(average.read_value())
    return average.assign(held)


def _copy(average: tf.Variable, weight: tf.Tensor):
    return average.assign(weight)


class WeightAverage:
    """The EMA of `model`'s trainable weights with `decay` (see the module doc)."""

    def __init__(self, strategy: tf.distribute.Strategy, model: keras.Model, decay: float):
        check_decay(decay)
        self.decay = float(decay)
        self._strategy = strategy
        self._weights = [w.value for w in model.trainable_variables]  # the backend (distributed) variables
        with strategy.scope():
            self.averages = [tf.Variable(tf.identity(w), trainable=False, name=f"ema_{i}")
                             for i, w in enumerate(self._weights)]
        self.trackable = tf.Module(name="ema")  # what the training checkpoint holds: the averages, in order
        self.trackable.averages = self.averages
        self._depth = 0
        self._exchange_all = tf.function(lambda: self._each(self._weights, _exchange, self.averages))
        self._copy_weights = tf.function(lambda: self._each(self.averages, _copy, self._weights))

    def _each(self, targets, fn, sources) -> None:
        for target, source in zip(targets, sources):
            self._strategy.extended.update(target, fn, args=(source,), group=False)

    def update(self, step: tf.Tensor) -> None:
        """Moves the averages towards the weights after the update at global `step` (cross-replica, in graph)."""
        first = tf.equal(step, 0)
        for average, weight in zip(self.averages, self._weights):
            rate = tf.constant(1.0 - self.decay, average.dtype)
            self._strategy.extended.update(average, _move, args=(weight, rate, first), group=False)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """Inside the block the model holds the averages; on exit, its training weights again (bitwise).
        Re-entrant: a nested block is part of the outer one."""
        self._depth += 1
        if self._depth == 1:
            self._exchange_all()
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._exchange_all()

    def reset_to_weights(self) -> None:
        """Sets the averages to the model's current weights (after weights were set or restored as the
        evaluated ones, e.g. EarlyStopping's best weights)."""
        if self._depth:
            raise RuntimeError("reset_to_weights inside swapped()")
        self._copy_weights()
