"""LearningRateScheduler: a Keras-style per-epoch schedule, or a per-step schedule run in graph."""

from __future__ import annotations

import logging
from collections.abc import Callable

import keras

from callbacks.base import Callback
from callbacks.schedules import Schedule

log = logging.getLogger(__name__)


def _is_per_step(schedule: Callable) -> bool:
    return isinstance(schedule, (Schedule, keras.optimizers.schedules.LearningRateSchedule))


class LearningRateScheduler(Callback):
    """Sets the learning rate from `schedule`.

    - A function `schedule(epoch, lr) -> lr` (or `schedule(epoch)`), as in Keras: called in
      Python at the start of every epoch; the new rate is agreed across workers (the chief's).
    - A per-step schedule, a `callbacks.schedules.Schedule` or any
      `keras.optimizers.schedules.LearningRateSchedule`: evaluated in graph from the global
      step before every update, with no host sync and no retracing.

    The optimizer's rate stays a variable either way, and the effective rate is logged as `lr`.
    """

    identical_on_every_worker = True  # its requests follow from the logs and steps alone

    def __init__(self, schedule: Callable, verbose: int = 0):
        if not callable(schedule):
            raise TypeError(f"LearningRateScheduler: schedule must be callable, got {schedule!r}")
        self.schedule, self.verbose = schedule, verbose
        self.per_epoch = not _is_per_step(schedule)

    def get_config(self):
        schedule = self.schedule
        if hasattr(schedule, "get_config"):
            return {"schedule": {"class": type(schedule).__name__, **schedule.get_config()}}
        return {"schedule": getattr(schedule, "__qualname__", repr(schedule))}

    def on_train_begin(self, logs=None):
        if not self.per_epoch:
            self.context.set_learning_rate_schedule(self.schedule)

    def on_epoch_begin(self, epoch, logs=None):
        if not self.per_epoch:
            return
        try:
            rate = self.schedule(epoch, self.context.learning_rate)
        except TypeError:  # Keras also accepts schedule(epoch)
            rate = self.schedule(epoch)
        try:
            rate = float(rate)
        except (TypeError, ValueError):
            raise ValueError(f"LearningRateScheduler: schedule(epoch, lr) must return a number, got {rate!r}") from None
        if rate < 0:
            raise ValueError(f"LearningRateScheduler: schedule returned a negative learning rate {rate}")
        self.context.set_learning_rate(rate)
        if self.verbose:
            log.info("Epoch %d: LearningRateScheduler setting the learning rate to %.6g.", epoch + 1, rate)
