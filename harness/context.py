"""The trainer's side of `callbacks.CallbackContext`: facts for callbacks, and their requests."""

from __future__ import annotations

from typing import TYPE_CHECKING

from callbacks.base import Callback
from harness.checkpointing import save_keras_model, write_checkpoint
from harness.decisions import Votes

if TYPE_CHECKING:
    from harness.trainer import Trainer


class TrainerContext:
    """Implements `callbacks.CallbackContext` for one `Trainer.fit` call."""

    def __init__(self, trainer: Trainer, *, epochs: int, steps_per_epoch: int, has_validation: bool):
        self._trainer = trainer
        self.epochs, self.steps_per_epoch, self.has_validation = epochs, steps_per_epoch, has_validation
        self.epoch = 0
        self.votes = Votes()

    is_chief = property(lambda self: self._trainer.cluster.is_chief)
    worker_index = property(lambda self: self._trainer.cluster.worker_index)
    num_workers = property(lambda self: self._trainer.cluster.num_workers)
    num_replicas = property(lambda self: self._trainer.cluster.num_replicas)
    model = property(lambda self: self._trainer.model)
    optimizer = property(lambda self: self._trainer.optimizer)
    model_dir = property(lambda self: self._trainer.model_dir)
    steps_per_execution = property(lambda self: self._trainer.steps_per_execution)
    global_batch_size = property(lambda self: self._trainer.global_batch_size)
    global_step = property(lambda self: self._trainer.step)
    stop_reason = property(lambda self: self._trainer.stop_reason)
    resumed = property(lambda self: self._trainer.resumed_from is not None)
    history = property(lambda self: self._trainer.history)
    callbacks = property(lambda self: self._trainer.callbacks.callbacks)
    step_in_epoch = property(lambda self: self._trainer.step_in_epoch)
    epochs_completed = property(lambda self: self._trainer.epoch)

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Every name a log of this trainer can have."""
        names = self._trainer.train_metrics.names
        return (*names, *(f"val_{n}" for n in names), "lr")

    @property
    def logged_names(self) -> tuple[str, ...]:
        """The names this run's epoch logs have (no `val_*` without validation data)."""
        names = self._trainer.train_metrics.names
        return (*names, *(f"val_{n}" for n in names if self.has_validation), "lr")

    @property
    def learning_rate(self) -> float:
        return self._trainer.learning_rate.current(self._trainer.step)

    def set_learning_rate(self, value: float) -> None:
        self.votes.lr_base = float(value)

    def scale_learning_rate(self, factor: float) -> None:
        current = self.votes.lr_scale if self.votes.lr_scale is not None else float(self._trainer.learning_rate.scale.numpy())
        self.votes.lr_scale = current * float(factor)

    def set_learning_rate_schedule(self, schedule) -> None:
        """Installs a per-step schedule `schedule(step_tensor) -> rate`; call from `on_train_begin`."""
        self._trainer.set_learning_rate_schedule(schedule)

    def request_stop(self, reason: str) -> None:
        if self.votes.stop_reason is None:
            self.votes.stop_reason = reason

    def request_save(self, callback: Callback) -> None:
        self.votes.savers.add(self._trainer.saver_index(callback))

    def request_checkpoint(self) -> None:
        """Asks for a training-state checkpoint (the resume point) at this decision point."""
        self.votes.savers.add(0)

    def save_weights(self, path: str) -> str | None:
        if not self._trainer.weights_are_finite():
            return None
        return write_checkpoint(self._trainer.weights_checkpoint, path, is_chief=self.is_chief)

    def save_model(self, path: str) -> str | None:
        if not self._trainer.weights_are_finite():
            return None
        return save_keras_model(self._trainer.model, path, is_chief=self.is_chief)

    def restore_weights(self, path: str) -> None:
        """Loads model weights written by `save_weights` (on every worker)."""
        self._trainer.weights_checkpoint.read(path).expect_partial()
