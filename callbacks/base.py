"""The callback protocol: Keras's hooks, logs aggregated over every replica and worker, and a
context through which a callback asks the trainer for collective decisions."""

from __future__ import annotations

from typing import Any, ClassVar, Protocol


class CallbackContext(Protocol):
    """What a callback may know about the run and ask of the trainer (built by the trainer).

    Every value is identical on every worker except `is_chief` and `worker_index`. Requests
    are collected at the next decision point (after the batch or epoch hooks) and agreed
    across workers: if any worker asks to stop, all stop at the same step.
    """

    is_chief: bool
    worker_index: int
    num_workers: int
    num_replicas: int
    model: Any
    optimizer: Any
    model_dir: str | None
    epochs: int
    steps_per_epoch: int
    steps_per_execution: int
    global_batch_size: int
    global_step: int
    epoch: int  # the epoch in progress (0-based), as the hooks receive it
    epochs_completed: int  # how many epochs have ended
    step_in_epoch: int
    has_validation: bool
    resumed: bool  # this fit restored a checkpoint (steps after it may have been logged before)
    stop_reason: str | None  # why the run ended early (it is then finished)
    signal: str | None  # the signal (SIGTERM, SIGINT) that stopped it; a rerun resumes
    history: Any  # the run's callbacks.History
    callbacks: list  # every callback of the run, in order
    worker_seconds: tuple[float, ...]  # every worker's busy time in the last K-step loop (several workers only)
    epoch_worker_seconds: tuple[float, ...]  # ... summed over this epoch's loops (see callbacks.stragglers)
    metric_names: tuple[str, ...]  # every name a log of this trainer can have
    logged_names: tuple[str, ...]  # the names this run's epoch logs have
    validation_every_n_steps: int | None  # also validate at every multiple of this global step (None: epoch ends only)
    rollbacks: tuple[dict, ...]  # the run's rollbacks so far (see request_rollback), oldest first
    last_checkpoint_step: int | None  # the step of the newest training checkpoint (the one a rollback restores)

    @property
    def learning_rate(self) -> float:
        """The learning rate the next step uses (schedule x plateau factor)."""

    def set_learning_rate(self, value: float) -> None:
        """Sets the base learning rate (the chief's value wins). With a per-step schedule active
        this raises a `ValueError`: scale the schedule with `scale_learning_rate` instead."""

    def scale_learning_rate(self, factor: float) -> None:
        """Multiplies the learning rate by `factor` from now on (the chief's value wins)."""

    def set_learning_rate_schedule(self, schedule) -> None:
        """Installs a per-step schedule `schedule(step) -> rate`, evaluated in graph; call from `on_train_begin`."""

    def request_stop(self, reason: str) -> None:
        """Asks every worker to stop after the current decision point; `reason` lands in summary.json."""

    def request_save(self, callback: Callback) -> None:
        """Asks every worker to call `callback.on_save()` at the current decision point."""

    def request_checkpoint(self) -> None:
        """Asks for a training-state checkpoint (the resume point) at this decision point."""

    def request_rollback(self, reason: str, lr_factor: float = 1.0) -> None:
        """Asks every worker to restore the newest training checkpoint at this decision point, skip the data
        from its step to this one, and multiply the learning rate by `lr_factor`. It overrides the stops, saves
        and learning-rate changes asked at the same point (they were decided on the state it discards)."""

    def save_weights(self, path: str) -> str | None:
        """Writes a `tf.train.Checkpoint(model=...)` at `path` (chief) or a discarded temporary (others).
        Call from `on_save`, on every worker; returns the path on the chief. Skipped for non-finite weights."""

    def save_model(self, path: str) -> str | None:
        """Writes the whole model as a `.keras` file at `path` on the chief; a no-op elsewhere."""

    def restore_weights(self, path: str) -> None:
        """Loads weights written by `save_weights`, on every worker."""

    def get_weights(self) -> list:
        """The evaluated weights (the EMA of the weights when the trainer keeps one), as `model.get_weights()`."""

    def set_weights(self, weights: list) -> None:
        """Sets the evaluated weights from `get_weights()` (with an EMA: the weights and the EMA), on every worker."""

    def write_text(self, path: str, text: str) -> None:
        """Writes a text file atomically through `tf.io.gfile` on the chief (a no-op elsewhere);
        a failure (full disk, read-only) is one clear error naming the path."""

    def remove_saved(self, path: str) -> None:
        """Deletes what `save_weights` or `save_model` wrote at `path` (chief only)."""


class Callback:
    """Base class for callbacks: override the hooks you need.

    Logs are dicts of Python floats aggregated over all replicas and workers (identical on
    every worker). Batch hooks fire once per `steps_per_execution` loop with the global step;
    they receive metric logs only when some callback's `wants_batch_logs(step)` is true,
    because reading metrics costs a host sync (and an all-reduce across workers).
    """

    context: CallbackContext

    #: True when every request this callback makes (stop, save, rollback, learning rate) follows only from
    #: what every worker sees alike (logs, steps, epochs, its own checkpointed state): never from a clock,
    #: `worker_index` or `is_chief`. When every callback of a multi-worker fit says so, the workers skip the
    #: all-reduce that agrees on a loop's requests unless one is made (see `harness.controller`): at one
    #: step per loop that all-reduce costs about as much as the step. False (always agree) by default.
    identical_on_every_worker: ClassVar[bool] = False

    def set_context(self, context: CallbackContext) -> None:
        self.context = context

    def wants_batch_logs(self, step: int) -> bool:
        """Whether the batch hooks ending at global `step` need metric logs. Must agree on every worker."""
        return False

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None: ...
    def on_train_end(self, logs: dict[str, float] | None = None) -> None: ...
    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None: ...
    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None: ...
    def on_train_batch_begin(self, step: int, logs: dict[str, float] | None = None) -> None: ...
    def on_train_batch_end(self, step: int, logs: dict[str, float] | None = None) -> None: ...
    def on_test_begin(self, logs: dict[str, float] | None = None) -> None: ...
    def on_test_end(self, logs: dict[str, float] | None = None) -> None: ...

    def on_validation_end(self, step: int, logs: dict[str, float] | None = None) -> None:
        """After every validation, at global `step`: the step-wise ones (`validation_every_n_steps`) and the
        epoch end's (before `on_epoch_end`). `logs` holds the `val_` metrics only."""

    def on_rollback(self, step: int) -> None:
        """After a rollback restored the checkpoint at global `step` (and this callback's state from it):
        the steps after it are trained again, on other data."""

    def on_save(self) -> None:
        """Runs on every worker when a `context.request_save(self)` was agreed."""

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable state to checkpoint with the training state (for exact resume)."""
        return {}

    def get_config(self) -> dict[str, Any]:
        """The options that change what the run computes (when it stops, its learning rate), JSON-serialisable.

        Recorded with the run: a resume with other options is refused. Callbacks that only
        observe or write (TensorBoard, CSVLogger, ModelCheckpoint) return {}.
        """
        return {}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores what `get_state` returned."""
