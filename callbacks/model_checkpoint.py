"""ModelCheckpoint: save the model (or its weights) every epoch, every N steps, or when it is best."""

from __future__ import annotations

import logging
import math
import os

from callbacks.base import Callback
from callbacks.cadence import crosses_multiple
from callbacks.monitor import Monitor, check_monitor_freq

log = logging.getLogger(__name__)


class ModelCheckpoint(Callback):
    """Keras's ModelCheckpoint, with every worker taking part in each save.

    Options as in Keras: `filepath` (a template with `{epoch}` (1-based), `{step}` and metric
    names, e.g. "best/epoch{epoch:03d}-{val_loss:.3f}"; relative paths go under model_dir),
    `monitor`, `mode`, `save_best_only`, `save_weights_only` (a `tf.train.Checkpoint(model=...)`
    at the path; otherwise a `.keras` file of the whole model), `save_freq` ("epoch", a number of
    steps, or "validation": after every validation, the trainer's `validation_every_n_steps` ones
    too, with a `val_` monitor for `save_best_only`), `initial_value_threshold`; plus `max_to_keep`
    (delete older saves).

    The decision to save is agreed across workers; the chief writes the real path, the
    others a temporary copy they delete. A save is atomic: complete or absent. Non-finite
    weights are never saved.
    """

    identical_on_every_worker = True  # its requests follow from the logs and steps alone

    def __init__(self, filepath: str, monitor: str = "val_loss", verbose: int = 0, save_best_only: bool = False,
                 save_weights_only: bool = False, mode: str = "auto", save_freq: str | int = "epoch",
                 initial_value_threshold: float | None = None, max_to_keep: int | None = None):
        if save_freq not in ("epoch", "validation") and not (isinstance(save_freq, int) and save_freq > 0):
            raise ValueError(f"ModelCheckpoint: save_freq must be 'epoch', 'validation' or a positive integer, "
                             f"got {save_freq!r}")
        if save_freq == "validation" and save_best_only:
            check_monitor_freq(save_freq, monitor, "ModelCheckpoint", option="save_freq")
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"ModelCheckpoint: max_to_keep must be >= 1 or None, got {max_to_keep}")
        if not save_weights_only and not filepath.endswith(".keras"):
            raise ValueError(f"ModelCheckpoint: a full-model filepath must end with '.keras', got {filepath!r} "
                             "(or pass save_weights_only=True for a TensorFlow checkpoint)")
        self.filepath, self.monitor, self.verbose = filepath, monitor, verbose
        self.save_best_only, self.save_weights_only = save_best_only, save_weights_only
        self.save_freq, self.max_to_keep = save_freq, max_to_keep
        self.initial_value_threshold = initial_value_threshold
        self._monitor = Monitor(monitor, mode, 0.0, "ModelCheckpoint")
        self.best: float | None = initial_value_threshold
        self.best_epoch: int | None = None
        self.best_step: int | None = None  # (save_freq="validation")
        self.saved: list[str] = []
        self._pending: str | None = None
        self._last_step = 0

    @property
    def best_value(self) -> float | None:
        return self.best

    def _resolve(self, path: str) -> str:
        if self.context.model_dir and "://" not in path and not os.path.isabs(path):
            return f"{self.context.model_dir}/{path}"
        return path

    def _format(self, epoch: int, logs: dict[str, float]) -> str:
        try:
            return self._resolve(self.filepath.format(epoch=epoch + 1, step=self.context.global_step, **logs))
        except KeyError as e:
            raise ValueError(f"ModelCheckpoint: filepath {self.filepath!r} uses {{{e.args[0]}}}, which is not in "
                             f"the logs ({', '.join(['epoch', 'step', *logs])})") from None

    def on_train_begin(self, logs=None):
        self._last_step = self.context.global_step
        if self.save_best_only:
            self._monitor.check_known(self.context.metric_names, self.context.logged_names)

    def _crosses_save_step(self, step: int) -> bool:
        return isinstance(self.save_freq, int) and crosses_multiple(self._last_step, step, self.save_freq)

    def wants_batch_logs(self, step):
        return self._crosses_save_step(step)

    def _consider(self, epoch: int, logs: dict[str, float]) -> None:
        if self.save_best_only:
            current = self._monitor.value(logs)
            if current is None or not self._monitor.is_improvement(current, self.best):
                return
            if self.verbose:
                log.info("ModelCheckpoint: %s improved from %s to %.6g.", self.monitor, self.best, current)
            self.best, self.best_epoch = current, epoch
            if self.save_freq == "validation":
                self.best_step = self.context.global_step
        if not math.isfinite(logs.get("loss", 0.0)):
            log.warning("ModelCheckpoint: not saving, the loss is %s.", logs["loss"])
            return
        self._pending = self._format(epoch, logs)
        self.context.request_save(self)

    def on_train_batch_end(self, step, logs=None):
        if self._crosses_save_step(step):
            self._consider(self.context.epoch, logs or {})
        self._last_step = step

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._consider(epoch, logs or {})

    def on_validation_end(self, step, logs=None):
        if self.save_freq == "validation":
            self._consider(self.context.epoch, logs or {})

    def on_rollback(self, step):
        self._last_step = step

    def on_save(self):
        path = self._pending or self._format(self.context.epoch, self.context.history.last_logs())
        self._pending = None
        written = (self.context.save_weights(path) if self.save_weights_only else self.context.save_model(path))
        if not written:  # a non-chief worker, or weights that were not finite
            return
        if self.verbose:
            log.info("ModelCheckpoint: saved %s.", written)
        if written in self.saved:
            self.saved.remove(written)
        self.saved.append(written)
        while self.max_to_keep and len(self.saved) > self.max_to_keep:
            self.context.remove_saved(self.saved.pop(0))

    def get_state(self):
        state = {"best": self.best, "best_epoch": self.best_epoch, "saved": self.saved}
        if self.save_freq == "validation":
            state["best_step"] = self.best_step
        return state

    def set_state(self, state):
        self.best, self.best_epoch, self.saved = state["best"], state["best_epoch"], list(state["saved"])
        self.best_step = state.get("best_step")
