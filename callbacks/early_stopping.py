"""EarlyStopping: stop every worker at the same epoch when the monitored metric stops improving."""

from __future__ import annotations

import logging
import math

from callbacks.base import Callback
from callbacks.monitor import Monitor, check_monitor_freq

log = logging.getLogger(__name__)


class EarlyStopping(Callback):
    """Keras's EarlyStopping, decided from logs aggregated over all replicas and workers.

    Same options and semantics as `keras.callbacks.EarlyStopping` (`monitor`, `min_delta`,
    `patience`, `mode`, `baseline`, `restore_best_weights`, `start_from_epoch`), plus, as in
    Lightning: `check_finite` stops when the metric becomes NaN or infinite,
    `stopping_threshold` stops as soon as the metric is better than it, and
    `divergence_threshold` stops as soon as it is worse. The stop is agreed across workers
    and its reason lands in summary.json. Counters and the best value resume exactly. With
    `restore_best_weights` the best weights are kept in memory, as in Keras, and (with a
    model_dir) also checkpointed, so a resumed run can restore a best epoch from before it. They
    are the evaluated weights (`context.get_weights()`): the EMA when the trainer keeps one.

    `monitor_freq="validation"` acts after every validation instead of every epoch (with the
    trainer's `validation_every_n_steps`, also between epoch ends): `patience` then counts
    validations, the monitor must be a `val_` metric, and the stop is agreed at that step.
    """

    identical_on_every_worker = True  # its requests follow from the logs and steps alone

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 0, verbose: int = 0,
                 mode: str = "auto", baseline: float | None = None, restore_best_weights: bool = False,
                 start_from_epoch: int = 0, *, check_finite: bool = True, stopping_threshold: float | None = None,
                 divergence_threshold: float | None = None, monitor_freq: str = "epoch"):
        if patience < 0:
            raise ValueError(f"EarlyStopping: patience must be >= 0, got {patience}")
        if start_from_epoch < 0:
            raise ValueError(f"EarlyStopping: start_from_epoch must be >= 0, got {start_from_epoch}")
        check_monitor_freq(monitor_freq, monitor, "EarlyStopping")
        self.monitor, self.monitor_freq = monitor, monitor_freq
        self._monitor = Monitor(monitor, mode, min_delta, "EarlyStopping")
        self.patience, self.verbose, self.baseline = patience, verbose, baseline
        self.restore_best_weights, self.start_from_epoch = restore_best_weights, start_from_epoch
        self.check_finite, self.stopping_threshold = check_finite, stopping_threshold
        self.divergence_threshold = divergence_threshold
        self._reset()

    def _reset(self) -> None:
        self.wait, self.stopped_epoch, self.best, self.best_epoch = 0, 0, None, None
        self.best_step, self.validations = None, 0  # (monitor_freq="validation")
        self._best_weights = None

    @property
    def _per_validation(self) -> bool:
        return self.monitor_freq == "validation"

    @property
    def best_value(self) -> float | None:
        return self.best

    def _best_weights_path(self) -> str | None:
        return f"{self.context.model_dir}/early_stopping/best_weights" if self.context.model_dir else None

    def on_train_begin(self, logs=None):
        if self.context.global_step == 0:
            self._reset()
        self._monitor.check_known(self.context.metric_names, self.context.logged_names)

    def _stop(self, epoch: int, why: str) -> None:
        self.stopped_epoch = epoch
        self.context.request_stop(f"early stopping: {why}")
        if self.verbose:
            log.info("Epoch %d: early stopping (%s).", epoch + 1, why)

    def _remember_best_weights(self) -> None:
        if not self.restore_best_weights:
            return
        self._best_weights = self.context.get_weights()
        if self._best_weights_path():
            self.context.request_save(self)

    def on_save(self):
        self.context.save_weights(self._best_weights_path())

    def evaluate_stopping_criteria(self, epoch: int, current: float, index: int | None = None,
                                   best_at: str | None = None) -> tuple[str | None, bool]:
        """Updates the counters with this epoch's value; returns (why to stop or None, whether it is the best).

        Pure (no context, no TensorFlow), as Lightning's `_evaluate_stopping_criteria`, so the
        criteria are unit-tested against Keras's callback value by value. Per validation, `index`
        counts the validations (Keras's "never on the first epoch" becomes "never on the first
        validation", and patience counts validations) and `best_at` says where the best one was.
        """
        index = epoch if index is None else index
        if epoch < self.start_from_epoch:
            return None, False
        if self.check_finite and not math.isfinite(current):
            return f"{self.monitor} is {current}", False
        first = self.best_epoch is None
        if first and self.restore_best_weights:
            self.best_epoch = epoch
        self.wait += 1
        if self._monitor.is_improvement(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.baseline is None or self._monitor.is_improvement(current, self.baseline):
                self.wait = 0
            improved = True
        elif self.wait >= self.patience and index > 0:
            unit = "epochs" if index is epoch else "validations"
            return (f"{self.monitor} did not improve for {self.wait} {unit} "
                    f"(best {self.best:.6g} at {best_at or f'epoch {self.best_epoch + 1}'})"), \
                first and self.restore_best_weights
        else:
            improved = first and self.restore_best_weights
        if self.stopping_threshold is not None and self._monitor.better(current, self.stopping_threshold):
            return f"{self.monitor} = {current:.6g} reached the stopping threshold {self.stopping_threshold}", improved
        if self.divergence_threshold is not None and self._monitor.better(self.divergence_threshold, current):
            return f"{self.monitor} = {current:.6g} diverged past {self.divergence_threshold}", improved
        return None, improved

    def on_epoch_end(self, epoch, logs=None):
        if self._per_validation:
            return
        current = self._monitor.value(logs)
        if current is None:
            return
        why, best = self.evaluate_stopping_criteria(epoch, current)
        if best:
            self._remember_best_weights()
        if why:
            self._stop(epoch, why)

    def on_validation_end(self, step, logs=None):
        if not self._per_validation:
            return
        current = self._monitor.value(logs)
        if current is None:
            return
        epoch, best = self.context.epoch, self.best
        best_at = None if self.best_step is None else f"step {self.best_step}"
        why, improved = self.evaluate_stopping_criteria(epoch, current, index=self.validations, best_at=best_at)
        self.validations += 1
        if self.best is not best:  # a new best value (or the first)
            self.best_step = step
        if improved:
            self._remember_best_weights()
        if why:
            self._stop(epoch, why)

    def on_train_end(self, logs=None):
        if not self.restore_best_weights or self.best_epoch is None:
            return
        if self._best_weights is not None:
            self.context.set_weights(self._best_weights)
        elif self._best_weights_path():  # the best epoch came before a resume
            self.context.restore_weights(self._best_weights_path())
        if self.verbose:
            log.info("Restored the model weights from the end of the best epoch, %d.", self.best_epoch + 1)

    def get_config(self):
        return {"monitor": self.monitor, "mode": self._monitor.mode, "min_delta": self._monitor.min_delta,
                "patience": self.patience, "baseline": self.baseline, "restore_best_weights": self.restore_best_weights,
                "start_from_epoch": self.start_from_epoch, "check_finite": self.check_finite,
                "stopping_threshold": self.stopping_threshold, "divergence_threshold": self.divergence_threshold,
                **({"monitor_freq": self.monitor_freq} if self._per_validation else {})}

    def get_state(self):
        state = {"wait": self.wait, "stopped_epoch": self.stopped_epoch, "best": self.best,
                 "best_epoch": self.best_epoch}
        if self._per_validation:
            state.update(best_step=self.best_step, validations=self.validations)
        return state

    def set_state(self, state):
        self.wait, self.stopped_epoch = state["wait"], state["stopped_epoch"]
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.best_step, self.validations = state.get("best_step"), state.get("validations", 0)
        self._best_weights = None  # (after a rollback: the ones in memory may be from the steps it discarded)


