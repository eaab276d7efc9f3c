"""The learning rate as variables: (per-step schedule(global_step) or base) x scale.

The optimizer's own learning-rate variable is assigned from these inside the compiled loop (once
per call, as they change only between calls; before every step with a per-step schedule), so
changing the rate never retraces; a per-step schedule is evaluated in graph from the global step;
and a plateau reduction (the scale) composes with any schedule.
All three parts are checkpointed, so a resumed run continues with the same rate.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from harness.errors import UsageError

Schedule = Callable[[tf.Tensor], tf.Tensor]


class LearningRate:
    """Owns the effective learning rate of `optimizer` (which must have a float learning rate)."""

    def __init__(self, strategy: tf.distribute.Strategy, optimizer: keras.optimizers.Optimizer):
        self._optimizer = optimizer
        current = optimizer.learning_rate
        if not hasattr(current, "assign"):
            raise UsageError("build the optimizer with a float learning rate and pass schedules to "
                             "callbacks.LearningRateScheduler, so the harness can log, scale and resume them")
        self.initial = float(current.numpy())
        with strategy.scope():
            self.base = tf.Variable(self.initial, trainable=False, name="learning_rate_base")
            self.scale = tf.Variable(1.0, trainable=False, name="learning_rate_scale")
        self.schedule: Schedule | None = None

    def value(self, step: tf.Tensor) -> tf.Tensor:
        """The rate for the update at `step` (the global step before it is incremented)."""
        rate = self.base if self.schedule is None else tf.cast(self.schedule(step), tf.float32)
        return rate * self.scale

    def apply(self, step: tf.Tensor) -> None:
        """Assigns the optimizer's rate for the update at `step`; runs in graph, cross-replica."""
        self._optimizer.learning_rate = self.value(step)

    def current(self, step: int, *, base: float | None = None, scale: float | None = None) -> float:
        """The rate at `step`; with `base` or `scale`, as it will be once those values are set."""
        if base is None and scale is None:
            return float(self.value(tf.constant(step, tf.int64)))
        if base is None:
            base = float(self.base.numpy() if self.schedule is None else self.schedule(tf.constant(step, tf.int64)))
        return base * (scale if scale is not None else self.scale_value())

    def scale_value(self) -> float:
        return float(self.scale.numpy())

    def set_schedule(self, schedule: Schedule | None) -> None:
        """Evaluates `schedule(global_step)` in graph before every step (the training loop retraces once)."""
        self.schedule = schedule

    def check_settable(self) -> None:
        if self.schedule is not None:
            raise UsageError("a per-step learning-rate schedule is active; it cannot also be set per epoch "
                             "(use one LearningRateScheduler, or scale the rate with ReduceLROnPlateau)")

    def set_base(self, value: float) -> None:
        self.check_settable()
        self.base.assign(value)

    def set_scale(self, value: float) -> None:
        self.scale.assign(value)
