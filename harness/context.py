"""The trainer's side of `callbacks.CallbackContext`: facts for callbacks, and their requests.

It is built from the few objects that own those facts (the cluster, the fit's plan, the run
state, the learning rate, the model saver) and holds the votes of the current decision point;
it never reaches into the trainer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from callbacks.base import Callback
from callbacks.callback_list import CallbackList
from callbacks.history import History
from harness import storage
from harness.cluster import ClusterInfo
from harness.decisions import Votes
from harness.learning_rate import LearningRate
from harness.metrics import log_names
from harness.model_saving import ModelSaver
from harness.run_state import RunState


@dataclasses.dataclass(frozen=True)
class FitPlan:
    """What one `fit` call was asked to do (identical on every worker)."""

    epochs: int
    steps_per_epoch: int
    steps_per_execution: int
    global_batch_size: int
    has_validation: bool
    metric_names: tuple[str, ...]  # besides the loss
    model_dir: str | None
    validation_every_n_steps: int | None = None  # also validate at every multiple of this global step


class TrainerContext:
    """Implements `callbacks.CallbackContext` for one `Trainer.fit` call."""

    def __init__(self, *, cluster: ClusterInfo, plan: FitPlan, state: RunState, learning_rate: LearningRate,
                 saver: ModelSaver, callbacks: CallbackList, history: History, optimizer: Any, resumed: bool):
        self._cluster, self.plan, self._state, self._learning_rate = cluster, plan, state, learning_rate
        self._saver, self._callbacks = saver, callbacks
        self.history, self.optimizer, self.resumed = history, optimizer, resumed
        self.epoch = state.epochs_completed  # the epoch in progress (0-based), as hooks receive it
        self.votes = Votes()
        # The straggler view (several workers only): busy seconds by worker index, of the last K-step loop
        # and of this epoch's loops so far (see callbacks.stragglers).
        self.worker_seconds: tuple[float, ...] = ()
        self.epoch_worker_seconds: tuple[float, ...] = ()
        self.last_checkpoint_step: int | None = None  # kept by the controller (the checkpoint a rollback restores)

    is_chief = property(lambda self: self._cluster.is_chief)
    worker_index = property(lambda self: self._cluster.worker_index)
    num_workers = property(lambda self: self._cluster.num_workers)
    num_replicas = property(lambda self: self._cluster.num_replicas)
    epochs = property(lambda self: self.plan.epochs)
    steps_per_epoch = property(lambda self: self.plan.steps_per_epoch)
    steps_per_execution = property(lambda self: self.plan.steps_per_execution)
    global_batch_size = property(lambda self: self.plan.global_batch_size)
    has_validation = property(lambda self: self.plan.has_validation)
    model_dir = property(lambda self: self.plan.model_dir)
    validation_every_n_steps = property(lambda self: self.plan.validation_every_n_steps)
    rollbacks = property(lambda self: tuple(self._state.rollbacks))
    global_step = property(lambda self: self._state.global_step)
    epochs_completed = property(lambda self: self._state.epochs_completed)
    step_in_epoch = property(lambda self: self._state.step_in_epoch)
    stop_reason = property(lambda self: self._state.stop_reason)
    signal = property(lambda self: self._state.signal)
    model = property(lambda self: self._saver.model)
    callbacks = property(lambda self: self._callbacks.callbacks)

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Every name a log of this trainer can have."""
        return log_names(self.plan.metric_names)

    @property
    def logged_names(self) -> tuple[str, ...]:
        """The names this run's epoch logs have (no `val_*` without validation data)."""
        return log_names(self.plan.metric_names, self.plan.has_validation)

    def take_votes(self) -> Votes:
        """This decision point's votes; the next point starts with none."""
        votes, self.votes = self.votes, Votes()
        return votes

    # ----- requests (agreed across workers at the next decision point) ---------------------------

    @property
    def learning_rate(self) -> float:
        """The rate the next step uses, with the changes asked at this decision point (before they are agreed)."""
        return self._learning_rate.current(self._state.global_step, base=self.votes.lr_base, scale=self.votes.lr_scale)

    def set_learning_rate(self, value: float) -> None:
        self._learning_rate.check_settable()
        self.votes.lr_base = float(value)

    def scale_learning_rate(self, factor: float) -> None:
        current = self.votes.lr_scale if self.votes.lr_scale is not None else self._learning_rate.scale_value()
        self.votes.lr_scale = current * float(factor)

    def set_learning_rate_schedule(self, schedule) -> None:
        self._learning_rate.set_schedule(schedule)

    def request_stop(self, reason: str) -> None:
        if self.votes.stop_reason is None:
            self.votes.stop_reason = reason

    def request_save(self, callback: Callback) -> None:
        self.votes.savers.add(self._callbacks.saver_index(callback))

    def request_rollback(self, reason: str, lr_factor: float = 1.0) -> None:
        if not 0.0 < lr_factor < float("inf"):
            raise ValueError(f"request_rollback: lr_factor must be a number > 0, got {lr_factor}")
        if self.votes.rollback_reason is None:
            self.votes.rollback_reason, self.votes.rollback_lr_factor = reason, float(lr_factor)

    def request_checkpoint(self) -> None:
        self.votes.savers.add(0)

    # ----- side effects (the chief writes; every worker takes part in saves) ---------------------

    def save_weights(self, path: str) -> str | None:
        return self._saver.save_weights(path)

    def save_model(self, path: str) -> str | None:
        return self._saver.save_model(path)

    def restore_weights(self, path: str) -> None:
        self._saver.restore_weights(path)

    def get_weights(self) -> list:
        return self._saver.get_weights()

    def set_weights(self, weights: list) -> None:
        self._saver.set_weights(weights)

    def write_text(self, path: str, text: str) -> None:
        if self.is_chief:
            storage.write_text(path, text)

    def remove_saved(self, path: str) -> None:
        """Deletes a weights checkpoint or a `.keras` file written by `save_weights`/`save_model` (chief only)."""
        if not self.is_chief:
            return
        if path.endswith(".keras"):
            storage.remove_quietly(path)
        else:
            storage.remove_checkpoint_files(path)
