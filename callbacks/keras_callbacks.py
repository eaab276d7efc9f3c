"""KerasCallback: a stock `keras.callbacks.Callback` run inside the harness, on every worker, its requests agreed.

`CallbackList` wraps every Keras callback it is given in one of these, so users pass their Keras
callbacks to `Trainer.fit` as they pass them to `model.fit`.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import keras
import numpy as np

from callbacks.base import Callback
from callbacks.monitor import Monitor

log = logging.getLogger(__name__)

# Stock callbacks that write files or print on every worker: the harness's strategy-aware class does the same job.
REFUSED = {
    "ModelCheckpoint": "writes on every worker; use callbacks.ModelCheckpoint (same options)",
    "BackupAndRestore": "is not needed: the harness backs up and resumes by itself (the checkpoints in model_dir); "
                        "remove it",
    "TensorBoard": "writes on every worker; use callbacks.TensorBoard (same options)",
    "CSVLogger": "writes on every worker and repeats rows on resume; use callbacks.CSVLogger (same options)",
    "ProgbarLogger": "prints on every worker; use callbacks.ProgressBar",
    "OrbaxCheckpoint": "writes on every worker; use callbacks.ModelCheckpoint",
}
CHIEF_ONLY = ("RemoteMonitor",)  # sends to a server: once, from the chief
# The counters of the stock callbacks that decide (checkpointed, so a resume continues them) and their options
# (recorded with the run: a resume with other options is refused).
STATE = {"EarlyStopping": ("wait", "stopped_epoch", "best", "best_epoch"),
         "ReduceLROnPlateau": ("wait", "cooldown_counter", "best")}
CONFIG = {"EarlyStopping": ("monitor", "mode", "min_delta", "patience", "baseline", "start_from_epoch"),
          "ReduceLROnPlateau": ("monitor", "mode", "min_delta", "factor", "patience", "cooldown", "min_lr"),
          "LearningRateScheduler": ("schedule",)}
_BATCH_HOOKS = ("on_train_batch_begin", "on_train_batch_end", "on_batch_begin", "on_batch_end")


def _stock(callback, names) -> str | None:
    """The name of the stock Keras class among `names` that `callback` is (or subclasses), if any."""
    for name in names:
        try:
            cls = getattr(keras.callbacks, name, None)
        except ImportError:  # a class whose optional dependency is missing: nothing can be an instance of it
            continue
        if isinstance(cls, type) and isinstance(callback, cls):
            return name
    return None


def _overrides(callback, names) -> bool:
    """Whether the callback has its own version of one of these hooks (a subclass's, or a LambdaCallback's)."""
    return any(name in vars(callback) or getattr(type(callback), name) is not getattr(keras.callbacks.Callback, name)
               for name in names)


def _plain(value: Any) -> Any:
    """A JSON-serialisable copy of a counter or option (numpy numbers as Python ones, functions by name)."""
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if callable(value):
        return getattr(value, "__qualname__", type(value).__name__)
    return value


class _Rate(float):
    """The rate as a Keras callback reads it: a number, whose `assign(value)` (tf.keras style) sets it."""

    def __new__(cls, value: float, adapter: KerasCallback):
        rate = super().__new__(cls, value)
        rate._adapter = adapter
        return rate

    def assign(self, value) -> None:
        self._adapter.set_learning_rate(value)

    def numpy(self) -> np.float32:
        return np.float32(self)


class _OptimizerView:
    """A Keras callback's `self.model.optimizer`: its `learning_rate` is the harness's (read and set through the
    agreed learning-rate change; the harness assigns the optimizer's own variable every step); the rest is the
    trainer's optimizer."""

    def __init__(self, adapter: KerasCallback):
        object.__setattr__(self, "_adapter", adapter)

    @property
    def learning_rate(self) -> float:
        return _Rate(self._adapter.context.learning_rate, self._adapter)

    lr = learning_rate

    def __getattr__(self, name):
        return getattr(self._adapter.context.optimizer, name)

    def __setattr__(self, name, value):
        if name in ("learning_rate", "lr"):
            self._adapter.set_learning_rate(value)
        else:
            setattr(self._adapter.context.optimizer, name, value)


class _ModelView:
    """A Keras callback's `self.model`: the trainer's model, except that `stop_training = True` asks every worker
    to stop, `optimizer` is an `_OptimizerView`, and saves are written by the chief only."""

    def __init__(self, adapter: KerasCallback):
        object.__setattr__(self, "_adapter", adapter)
        object.__setattr__(self, "optimizer", _OptimizerView(adapter))
        object.__setattr__(self, "stop_training", False)

    def __getattr__(self, name):
        return getattr(self._adapter.context.model, name)

    def __setattr__(self, name, value):
        if name == "stop_training":
            object.__setattr__(self, name, bool(value))
            if value:
                self._adapter.request_stop()
        elif name == "optimizer":
            raise AttributeError("a Keras callback cannot replace the harness's optimizer")
        else:
            setattr(self._adapter.context.model, name, value)

    def save(self, filepath, *args, **kwargs):
        """The whole model as a `.keras` file, written by the chief (every worker takes part)."""
        self._adapter.check_can_save()
        return self._adapter.context.save_model(str(filepath))

    def save_weights(self, filepath, *args, **kwargs):
        """Keras's weights file, written by the chief only."""
        self._adapter.check_can_save()
        if self._adapter.context.is_chief:
            self._adapter.context.model.save_weights(filepath, *args, **kwargs)


class KerasCallback(Callback):
    """Runs a `keras.callbacks.Callback` inside the harness (`CallbackList` wraps Keras callbacks in this itself).

    - Its hooks get the logs aggregated over every replica and worker, on every worker (a copy: what it
      writes into them stays its own). Keras's hook names and arguments: `on_train_begin/end`,
      `on_epoch_begin/end`, `on_test_begin/end` (around each validation, unprefixed logs), and
      `on_train_batch_begin/end` once per K-step loop with Keras's batch indices for K steps per
      execution: the index within the epoch of the loop's first batch (begin) and of its last batch (end).
      A callback with batch hooks gets metric logs after every loop (a metric read each).
    - `self.model` is the trainer's model; `self.model.stop_training = True` asks every worker to stop at
      the next decision point; `self.model.optimizer.learning_rate` reads the harness's rate and setting it
      changes the rate from the next step on, agreed across workers (as a scale of the harness's rate, so it
      composes with a per-step schedule); `self.model.save(path)` is written by the chief.
    - Stock `EarlyStopping` and `ReduceLROnPlateau` counters are checkpointed (a resume continues them),
      and their options and `LearningRateScheduler`'s schedule are recorded with the run.
    - Stock callbacks that write on every worker are refused, naming the harness's class for the job;
      `RemoteMonitor` runs on the chief only. `chief_only=True` does that for your own (its stop and
      learning-rate requests are still agreed by every worker; it must not save the model).
    """

    def __init__(self, callback: keras.callbacks.Callback, chief_only: bool | None = None):
        if not isinstance(callback, keras.callbacks.Callback):
            raise TypeError(f"KerasCallback wraps a keras.callbacks.Callback, got {callback!r}")
        kind = type(callback).__name__
        refused = _stock(callback, REFUSED)
        if refused:
            raise ValueError(f"keras.callbacks.{refused} {REFUSED[refused]}")
        if _stock(callback, ("EarlyStopping",)) and callback.restore_best_weights:
            raise ValueError("keras.callbacks.EarlyStopping(restore_best_weights=True) loses its best weights on a "
                             "resume; use callbacks.EarlyStopping (same options), which keeps them")
        if getattr(callback, "mode", None) == "auto" and hasattr(callback, "monitor_op"):
            # Keras infers the direction from compile()'d metrics, which a harness model has none of:
            # the harness's rule (accuracy-like names go up) gives what Keras infers for its own metrics.
            callback.mode = Monitor(callback.monitor, "auto", 0.0, kind).mode
        self.callback, self.kind = callback, kind
        self.chief_only = bool(_stock(callback, CHIEF_ONLY)) if chief_only is None else chief_only
        self.state_key = f"keras.{kind}"
        self._stateful, self._configured = _stock(callback, STATE), _stock(callback, CONFIG)
        self._batch_hooks = _overrides(callback, _BATCH_HOOKS)
        self._view = _ModelView(self)
        self._restored: dict[str, Any] | None = None  # counters restored before on_train_begin (a resume)
        self._training = False

    def set_context(self, context) -> None:
        super().set_context(context)
        self.callback.set_model(self._view)
        self.callback.set_params({"verbose": 0, "epochs": context.epochs, "steps": context.steps_per_epoch})

    # ----- what it asks for ---------------------------------------------------------------------

    def request_stop(self) -> None:
        c = self.context
        c.request_stop(f"keras {self.kind} set model.stop_training (epoch {c.epoch + 1}, step {c.global_step})")

    def set_learning_rate(self, value) -> None:
        if not isinstance(value, (int, float, np.floating, np.integer)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"keras {self.kind} set the learning rate to {value!r}; the harness takes a finite "
                             "number >= 0 (pass schedules to callbacks.LearningRateScheduler)")
        current = self.context.learning_rate  # (including the changes asked at this decision point)
        if current > 0:
            self.context.scale_learning_rate(float(value) / current)
        else:
            self.context.set_learning_rate(float(value))

    def check_can_save(self) -> None:
        if self.chief_only:
            raise ValueError(f"keras {self.kind} runs on the chief only, but a save needs every worker; "
                             "run it on every worker (chief_only=False)")

    # ----- the hooks ----------------------------------------------------------------------------

    def _runs_here(self) -> bool:
        return not self.chief_only or self.context.is_chief

    def wants_batch_logs(self, step):
        return self._batch_hooks  # (the same answer on every worker, chief-only or not: a metric read is collective)

    def on_train_begin(self, logs=None):
        object.__setattr__(self._view, "stop_training", False)
        self._training = True
        if self._runs_here():
            self.callback.on_train_begin({})
        if self._restored is not None:  # Keras's on_train_begin resets its counters: a resumed run's come back
            self._apply(self._restored)
            self._restored = None

    def on_train_end(self, logs=None):
        self._training = False
        if self._runs_here():
            self.callback.on_train_end(dict(logs or {}))

    def on_epoch_begin(self, epoch, logs=None):
        if self._runs_here():
            self.callback.on_epoch_begin(epoch, {})

    def on_epoch_end(self, epoch, logs=None):
        if self._runs_here():
            self.callback.on_epoch_end(epoch, dict(logs or {}))

    def on_train_batch_begin(self, step, logs=None):
        if self._runs_here() and self._batch_hooks:
            self.callback.on_train_batch_begin(self.context.step_in_epoch, {})

    def on_train_batch_end(self, step, logs=None):
        if self._runs_here() and self._batch_hooks:
            self.callback.on_train_batch_end(self.context.step_in_epoch - 1, dict(logs or {}))

    def on_test_begin(self, logs=None):
        if self._runs_here():
            self.callback.on_test_begin({})

    def on_test_end(self, logs=None):
        if self._runs_here():
            self.callback.on_test_end(dict(logs or {}))

    # ----- state and options --------------------------------------------------------------------

    def get_state(self):
        if not self._stateful:
            return {}
        return {name: _plain(getattr(self.callback, name, None)) for name in STATE[self._stateful]}

    def _apply(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self.callback, name, value)

    def set_state(self, state):
        if self._training:  # a rollback: the counters of the restored checkpoint, now
            self._apply(state)
        else:  # a resume: after Keras's on_train_begin, which resets them
            self._restored = dict(state)

    def get_config(self):
        if not self._configured:
            return {}
        config = {name: _plain(getattr(self.callback, name, None)) for name in CONFIG[self._configured]}
        if "min_delta" in config:
            config["min_delta"] = abs(config["min_delta"])  # Keras flips its sign once it knows the direction
        return {"class": f"keras.callbacks.{self._configured}", **config}
