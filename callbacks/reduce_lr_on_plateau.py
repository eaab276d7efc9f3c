"""ReduceLROnPlateau: scale the learning rate down when the monitored metric stalls."""

from __future__ import annotations

import logging
import math

from callbacks.base import Callback
from callbacks.monitor import Monitor, check_monitor_freq

log = logging.getLogger(__name__)


class ReduceLROnPlateau(Callback):
    """Keras's ReduceLROnPlateau (same options and semantics), composable with schedules.

    The reduction multiplies the harness's learning-rate scale, so it composes with a
    per-step schedule from `LearningRateScheduler` (where Keras raises a TypeError); the
    change is agreed across workers (the chief's value) and its state resumes exactly.

    `monitor_freq="validation"` acts after every validation instead of every epoch (with the
    trainer's `validation_every_n_steps`, also between epoch ends): `patience` and `cooldown`
    then count validations, and the monitor must be a `val_` metric.
    """

    identical_on_every_worker = True  # its requests follow from the logs and steps alone

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10, verbose: int = 0,
                 mode: str = "auto", min_delta: float = 1e-4, cooldown: int = 0, min_lr: float = 0.0, *,
                 monitor_freq: str = "epoch"):
        if not 0.0 < factor < 1.0:
            raise ValueError(f"ReduceLROnPlateau: factor must be in (0, 1), got {factor}")
        for name, value in (("patience", patience), ("cooldown", cooldown), ("min_lr", min_lr)):
            if not 0 <= value < math.inf:  # (NaN fails this too)
                raise ValueError(f"ReduceLROnPlateau: {name} must be a finite number >= 0, got {value}")
        check_monitor_freq(monitor_freq, monitor, "ReduceLROnPlateau")
        self.monitor, self.monitor_freq = monitor, monitor_freq
        self._monitor = Monitor(monitor, mode, min_delta, "ReduceLROnPlateau")
        self.factor, self.patience, self.verbose = factor, patience, verbose
        self.cooldown, self.min_lr = cooldown, min_lr
        self._reset()

    def _reset(self) -> None:
        self.best, self.wait, self.cooldown_counter = None, 0, 0

    def on_train_begin(self, logs=None):
        if self.context.global_step == 0:
            self._reset()
        self._monitor.check_known(self.context.metric_names, self.context.logged_names)

    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def evaluate_plateau(self, current: float, learning_rate: float) -> float | None:
        """Updates the counters with this epoch's value; returns the reduced rate when it is due now, else None.

        Pure (no context, no TensorFlow), so the criteria are unit-tested against Keras's callback.
        """
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if self._monitor.is_improvement(current, self.best):
            self.best, self.wait = current, 0
            return None
        if self.in_cooldown():
            return None
        self.wait += 1
        if self.wait < self.patience or learning_rate <= self.min_lr:
            return None
        self.cooldown_counter, self.wait = self.cooldown, 0
        return max(learning_rate * self.factor, self.min_lr)

    def _act(self, logs, where: str) -> None:
        current = self._monitor.value(logs)
        if current is None:
            return
        old = self.context.learning_rate
        new = self.evaluate_plateau(current, old)
        if new is not None:
            self.context.scale_learning_rate(new / old)
            if self.verbose:
                log.info("%s: ReduceLROnPlateau reducing the learning rate to %.6g.", where, new)

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor_freq == "epoch":
            self._act(logs, f"Epoch {epoch + 1}")

    def on_validation_end(self, step, logs=None):
        if self.monitor_freq == "validation":
            self._act(logs, f"Step {step}")

    def get_config(self):
        return {"monitor": self.monitor, "mode": self._monitor.mode, "min_delta": self._monitor.min_delta,
                "factor": self.factor, "patience": self.patience, "cooldown": self.cooldown, "min_lr": self.min_lr,
                **({"monitor_freq": self.monitor_freq} if self.monitor_freq != "epoch" else {})}

    def get_state(self):
        return {"best": self.best, "wait": self.wait, "cooldown_counter": self.cooldown_counter}

    def set_state(self, state):
        self.best, self.wait, self.cooldown_counter = state["best"], state["wait"], state["cooldown_counter"]
