"""The Trainer: the train and test steps, and the compiled loop that runs K of them per call.

One `tf.function` call runs `steps_per_execution` steps in a `tf.range` loop whose length is
a tensor, so neither K nor the epoch ever retraces it (the Orbit pattern). The outer loop
(epochs, callbacks, decision points) is `harness.controller.Controller`; `fit` hands over to it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from callbacks.base import Callback
from callbacks.history import History
from harness import tf_compat
from harness.accumulation import ACCUMULATE, APPLY, GradientAccumulator, check_split
from harness.checkpointing import Checkpointer
from harness.cluster import ClusterInfo
from harness.collective_watchdog import WATCHDOG
from harness.compiled import compiled
from harness.controller import Controller
from harness.data import DatasetFn, per_replica_batch_size, training_input
from harness.ema import WeightAverage, check_decay
from harness.errors import UsageError
from harness.learning_rate import LearningRate
from harness.mean_metrics import MeanMetrics
from harness.metrics import LOSS, METRICS, MetricFn
from harness.model_saving import ModelSaver
from harness.riding_votes import RidingVotes
from harness.run_state import RunState
from harness.strategy import input_options
from harness.trainer_checks import (
    check_created_in_scope,
    check_xla_devices,
    positive_or_none,
    warn_unsynchronised_batch_norm,
)

LossFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def unpack(batch) -> tuple[Any, Any, Any]:
    """`(features, labels[, sample_weight])` -> a 3-tuple with `None` for a missing weight."""
    if isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
        return (*batch, None) if len(batch) == 2 else tuple(batch)
    raise UsageError("each batch must be (features, labels) or (features, labels, sample_weight)")


class Trainer:
    """Trains a Keras model with a `tf.distribute` strategy and strategy-aware callbacks.

    Build the model (and optimizer) inside `strategy.scope()`. `loss(labels, outputs)` must
    return per-example losses (e.g. a Keras loss with `reduction=None`); the step averages
    them over the global batch, so N replicas make the same update as one device. Subclass
    and override `train_step` / `test_step` (replica context) to customise the step.
    `settings` are this run's own settings (a `harness.run_config.RunConfig`, or a mapping of
    hyper-parameters): recorded in model_dir, and a resume with other values is refused.
    Training checkpoints go to `checkpoint_dir` (default `<model_dir>/checkpoints`).
    `gradient_accumulation_steps=A` makes each update from A micro-batches of `global_batch_size / A`
    (see `harness.accumulation`); `ema_decay` keeps an EMA of the weights that validation, best
    weights and the export use (see `harness.ema`).
    """

    def __init__(self, strategy: tf.distribute.Strategy, model: keras.Model,
                 optimizer: keras.optimizers.Optimizer, loss: LossFn, *, global_batch_size: int,
                 metrics: Mapping[str, MetricFn] | None = None, steps_per_execution: int = 1,
                 jit_compile: bool = False, model_dir: str | None = None,
                 checkpoint_max_to_keep: int | None = 3, async_checkpoint: bool = False,
                 checkpoint_every_n_steps: int | None = None, checkpoint_every_n_seconds: float | None = None,
                 cluster: ClusterInfo | None = None, settings: Any = None, checkpoint_dir: str | None = None,
                 gradient_accumulation_steps: int = 1, ema_decay: float | None = None):
        if steps_per_execution < 1:
            raise UsageError(f"must be >= 1, got {steps_per_execution}", argument="steps_per_execution")
        if checkpoint_every_n_steps is not None and checkpoint_every_n_steps < 1:
            raise UsageError(f"must be >= 1, got {checkpoint_every_n_steps}", argument="checkpoint_every_n_steps")
        positive_or_none(checkpoint_every_n_seconds=checkpoint_every_n_seconds)
        self.strategy, self.model, self.loss = strategy, model, loss
        self.global_batch_size, self.steps_per_execution = global_batch_size, steps_per_execution
        self.jit_compile, self.model_dir, self.settings = jit_compile, model_dir, settings
        self.checkpoint_every_n_steps, self.checkpoint_every_n_seconds = (checkpoint_every_n_steps,
                                                                          checkpoint_every_n_seconds)
        self.cluster = cluster or ClusterInfo.from_strategy(strategy)  # override only to simulate a task
        if jit_compile:
            check_xla_devices(strategy)
        per_replica_batch_size(global_batch_size, self.cluster.num_replicas)  # an uneven split is a clear error
        check_split(global_batch_size, gradient_accumulation_steps, self.cluster.num_replicas)
        check_decay(ema_decay)
        self.accumulation_steps = gradient_accumulation_steps
        self.metric_fns = dict(metrics if metrics is not None else METRICS)
        check_created_in_scope(strategy, model)
        warn_unsynchronised_batch_norm(model, self.cluster.num_replicas)
        with strategy.scope():
            if model.dtype_policy.name == "mixed_float16" and not isinstance(
                    optimizer, keras.optimizers.LossScaleOptimizer):
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            # Keras creates slot variables lazily, which fails inside a distributed trace.
            optimizer.build(model.trainable_variables)
            self._step_variable = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.accumulator = (GradientAccumulator(strategy, model.trainable_variables, gradient_accumulation_steps)
                            if gradient_accumulation_steps > 1 else None)
        self.ema = WeightAverage(strategy, model, ema_decay) if ema_decay is not None else None
        self.optimizer = optimizer
        self.optimizer_config = optimizer.get_config()  # as the user built it (the loop assigns its rate)
        self.learning_rate = LearningRate(strategy, optimizer)
        names = (LOSS, *self.metric_fns)
        self.train_metrics = MeanMetrics(strategy, names, "train")
        self.eval_metrics = MeanMetrics(strategy, names, "eval")
        self.state = RunState()
        self.last_checkpoint: tuple[int, str] | None = None  # (step, path) of the newest training checkpoint
        self.trained_in_last_fit = False  # False when the last fit found its run already finished
        self.controller: Controller | None = None  # the last fit's outer loop (its callbacks, for inspection)
        self.history = History()
        self.saver = ModelSaver(model, is_chief=self.cluster.is_chief, weights_are_finite=self.weights_are_finite,
                                ema=self.ema)
        # Position, callback state, history and settings, as JSON: a string variable (not a
        # PythonState) so that asynchronous checkpoints carry it too.
        self._progress = tf.Variable("", dtype=tf.string, trainable=False, name="progress")
        self.checkpoint = tf.train.Checkpoint(
            model=model, optimizer=optimizer, global_step=self._step_variable,
            learning_rate_base=self.learning_rate.base, learning_rate_scale=self.learning_rate.scale,
            train_metrics=self.train_metrics.variable, progress=self._progress,
            **({"ema": self.ema.trackable} if self.ema else {}))
        checkpoint_dir = checkpoint_dir or (f"{model_dir}/checkpoints" if model_dir else None)
        self.checkpointer = (Checkpointer(self.checkpoint, checkpoint_dir, is_chief=self.cluster.is_chief,
                                          max_to_keep=checkpoint_max_to_keep, enable_async=async_checkpoint)
                             if checkpoint_dir else None)
        self._train_loop: Callable | None = None
        self._traced_schedule: Any = None
        self._eval_loop = compiled(self._eval_steps)
        self._input_options = input_options(strategy)
        self._num_steps: dict[int, tf.Tensor] = {}
        self._riders: dict[int, RidingVotes] = {}  # by vector size: the votes a loop's call carries (decisions)
        self._rider: RidingVotes | None = None  # ... while a loop that carries them is traced

    # ----- the run's position -------------------------------------------------------------------

    @property
    def global_step(self) -> int:
        """Steps trained so far (a host copy of the checkpointed step variable, read without a sync)."""
        return self.state.global_step

    @property
    def epochs_completed(self) -> int:
        return self.state.epochs_completed

    @property
    def stop_reason(self) -> str | None:
        return self.state.stop_reason

    @property
    def preempted(self) -> bool:
        """The last `fit` was stopped by a signal: its state is saved and a new `fit` resumes it."""
        return self.state.signal is not None

    # ----- the step (replica context) -------------------------------------------------------------

    def compute_loss(self, per_example_loss: tf.Tensor, sample_weight: tf.Tensor | None = None) -> tf.Tensor:
        """This replica's share of the objective: the global-batch mean loss plus its share of regularisation
        (of a micro-batch's share, with gradient accumulation: the loss is still divided by the global batch)."""
        if per_example_loss.shape.rank == 0:
            raise UsageError("the loss returned a scalar; it must return per-example losses "
                             "(e.g. keras.losses.SparseCategoricalCrossentropy(reduction=None))")
        loss = tf.nn.compute_average_loss(per_example_loss, sample_weight=sample_weight,
                                          global_batch_size=self.global_batch_size)
        if self.model.losses:
            regularization = tf.nn.scale_regularization_loss(self.regularization_loss())
            loss += regularization / self.accumulation_steps if self.accumulation_steps > 1 else regularization
        return loss

    def regularization_loss(self) -> tf.Tensor | float:
        """The model's regularisation losses, summed, at the current weights (the float 0.0 without any: no op)."""
        if not self.model.losses:
            return 0.0
        return tf.add_n([tf.cast(loss, tf.float32) for loss in self.model.losses])

    def all_reduce_gradients(self, grads: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        """The sum of each replica's gradients, identical on every replica (replica context). The workers'
        votes for the next decision ride in the same all-reduce (see `harness.riding_votes`)."""
        if self._rider is not None:
            return self._rider.all_reduce(grads)
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, list(grads))

    def apply_gradients(self, grads: Sequence[tf.Tensor], variables: Sequence[tf.Variable] | None = None, *,
                        already_reduced: bool = False) -> None:
        """Applies gradients with the optimizer, exactly once whatever the number of replicas.

        By default `grads` are this replica's own (e.g. from `tape.gradient`): they are summed
        across replicas first. Pass `already_reduced=True` for gradients that are already the
        global sum on every replica (after `all_reduce_gradients`, e.g. to clip the global
        norm): Keras's `optimizer.apply` would sum those again, an N-times update on N replicas.
        Under float16 loss scaling the skip-on-overflow decision then sees the global gradient. With
        gradient accumulation it adds `grads` to this update's sums, and applies them at its last micro-batch.
        """
        variables = list(variables if variables is not None else self.model.trainable_variables)
        pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
        grads, variables = [tf.convert_to_tensor(g) for g, _ in pairs], [v for _, v in pairs]
        if self.accumulator is not None:
            grads = self.accumulator.combine(grads, variables, already_reduced)
            if grads is None:
                return  # an accumulating micro-step
        if not already_reduced and self.strategy.num_replicas_in_sync > 1:
            grads = self.all_reduce_gradients(grads)
        with tf_compat.gradients_already_reduced(self.optimizer):
            self.optimizer.apply(grads, variables)

    def train_step(self, batch) -> None:
        """One optimisation step on this replica's part of a global batch."""
        features, labels, sample_weight = unpack(batch)
        with tf.GradientTape() as tape:
            outputs = self.model(features, training=True)
            per_example_loss = self.loss(labels, outputs)
            loss = self.compute_loss(per_example_loss, sample_weight)
            regularization = self.regularization_loss()  # before the update: part of what this step minimises
            scaled_loss = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled_loss, self.model.trainable_variables)
        self.apply_gradients(grads)
        self.update_metrics(self.train_metrics, labels, outputs, per_example_loss, sample_weight, regularization)

    def test_step(self, batch) -> None:
        """One evaluation step; examples of weight 0 (evaluation padding) do not count."""
        features, labels, sample_weight = unpack(batch)
        outputs = self.model(features, training=False)
        per_example_loss = self.loss(labels, outputs)
        mask = None if sample_weight is None else tf.cast(tf.reshape(sample_weight, [-1]) > 0, tf.float32)
        self.update_metrics(self.eval_metrics, labels, outputs, per_example_loss, sample_weight,
                            self.regularization_loss(), example_mask=mask)

    def update_metrics(self, metrics: MeanMetrics, labels, outputs, per_example_loss, sample_weight,
                       regularization: tf.Tensor | float = 0.0, example_mask: tf.Tensor | None = None) -> None:
        """Logs the loss as the objective, in Keras's convention: sum(w * l) / N + regularisation."""
        loss = tf.reshape(tf.cast(per_example_loss, tf.float32), [-1])
        if sample_weight is not None:
            loss *= tf.reshape(tf.cast(sample_weight, tf.float32), [-1])
        if isinstance(regularization, tf.Tensor) or regularization:
            loss += tf.cast(regularization, tf.float32)
        values = {LOSS: loss}
        values.update({name: fn(labels, outputs) for name, fn in self.metric_fns.items()})
        metrics.update(values, sample_weight, example_mask)

    # ----- the loops (cross-replica context, compiled) --------------------------------------------

    def _replica_fn(self, fn):
        return tf.function(fn, jit_compile=True) if self.jit_compile else fn

    def _make_train_loop(self) -> Callable:
        accumulator, ema, micro_fn = self.accumulator, self.ema, None
        step_fn = self._replica_fn(self.train_step)
        if accumulator is not None:  # A-1 accumulating micro-steps, then one that applies (harness.accumulation)
            micro_fn = self._replica_fn(accumulator.micro_step(self.train_step, ACCUMULATE))
            step_fn = self._replica_fn(accumulator.micro_step(self.train_step, APPLY))

        per_step_rate = self.learning_rate.schedule is not None  # else the rate is constant within a call

        def loop(iterator, num_steps, votes=None):
            self._rider = None if votes is None else self._riders[votes.shape[0]]
            with self._rider.boarding(votes) if self._rider else contextlib.nullcontext():
                steps(iterator, num_steps)
            rider, self._rider = self._rider, None
            return None if rider is None else rider.arrived(votes)

        def steps(iterator, num_steps):
            first_step = tf.identity(self._step_variable)
            if not per_step_rate:
                self.learning_rate.apply(first_step)
            for i in tf.range(num_steps):
                step = first_step + i  # the global step of this update (the variable is advanced once per call)
                if per_step_rate:
                    self.learning_rate.apply(step)
                if micro_fn is not None:
                    for _ in tf.range(accumulator.steps - 1):
                        self.strategy.run(micro_fn, args=(next(iterator),))
                self.strategy.run(step_fn, args=(next(iterator),))
                if ema is not None:
                    ema.update(step)
            self._step_variable.assign_add(num_steps)

        return compiled(loop)

    def _eval_steps(self, iterator, num_steps):
        step_fn = self._replica_fn(self.test_step)
        for _ in tf.range(num_steps):
            self.strategy.run(step_fn, args=(next(iterator),))

    def _steps_tensor(self, k: int) -> tf.Tensor:
        if k not in self._num_steps:
            self._num_steps[k] = tf.constant(k, tf.int64)
        return self._num_steps[k]

    def run_train_loop(self, iterator, num_steps: int, votes: np.ndarray | None = None) -> tf.Tensor | None:
        """Runs `num_steps` training steps in one compiled call (retraced only when the LR schedule changes).

        With `votes` (a decision vector: see `harness.controller`), the same call sums them over every
        replica and returns the sum (unread: a host sync), riding in the gradient all-reduce (see
        `harness.riding_votes`).
        """
        if self._train_loop is None or self._traced_schedule is not self.learning_rate.schedule:
            self._train_loop, self._traced_schedule = self._make_train_loop(), self.learning_rate.schedule
        with WATCHDOG.watching():
            if votes is None:
                self._train_loop(iterator, self._steps_tensor(num_steps))
                return None
            if votes.shape[0] not in self._riders:
                self._riders[votes.shape[0]] = RidingVotes(self.strategy, votes.shape[0])
            with tf.device(self._riders[votes.shape[0]].host):  # made where the call reads it: no copy
                votes = tf.constant(votes, tf.float32)
            return self._train_loop(iterator, self._steps_tensor(num_steps), votes)

    @property
    def train_loop_traces(self) -> int:
        """How many times the K-step training loop was traced (1 after any number of calls)."""
        return self._train_loop.experimental_get_tracing_count() if self._train_loop else 0

    def distribute(self, dataset_fn: DatasetFn, start_step: int = 0):
        """The distributed training dataset of `dataset_fn` after `start_step` updates (in micro-batches
        with gradient accumulation: see `harness.data.training_input`)."""
        return self.strategy.distribute_datasets_from_function(
            training_input(dataset_fn, start_step, self.accumulation_steps), options=self._input_options)

    def evaluated_weights(self) -> contextlib.AbstractContextManager:
        """Inside it the model holds the weights that validation, best weights and the export use: the EMA
        when `ema_decay` is set (swapped in by assignment, and back out bitwise), else the weights."""
        return self.saver.evaluated()

    # ----- evaluation, saving, fitting ------------------------------------------------------------

    def evaluate(self, dataset_fn: DatasetFn, steps: int, callbacks=None) -> dict[str, float]:
        """Runs `steps` evaluation steps on the evaluated weights (the EMA, if on); returns the aggregated metrics."""
        if steps < 1:
            raise UsageError(f"must be >= 1, got {steps}", argument="validation_steps")
        if callbacks:
            callbacks.on_test_begin()
        self.eval_metrics.reset()
        iterator = iter(self.strategy.distribute_datasets_from_function(dataset_fn, self._input_options))
        with self.evaluated_weights(), WATCHDOG.watching():
            for start in range(0, steps, self.steps_per_execution):
                self._eval_loop(iterator, self._steps_tensor(min(self.steps_per_execution, steps - start)))
        logs = self.eval_metrics.result()
        if callbacks:
            callbacks.on_test_end(logs)
        return logs

    def weights_are_finite(self) -> bool:
        """False when any model weight is NaN or infinite; identical on every worker."""
        return bool(self._all_finite())

    @tf.function
    def _all_finite(self):
        return tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in self.model.trainable_variables])

    def write_checkpoint(self, progress: str) -> str:
        """Saves the training state with its progress record (every worker must call this at the same step)."""
        self._progress.assign(progress)
        return self.checkpointer.save(self.state.global_step)

    def restored_global_step(self) -> int:
        """The checkpointed step variable (read once after a restore; a host sync)."""
        return int(self._step_variable.numpy())

    def fit(self, train_data: DatasetFn, *, epochs: int, steps_per_epoch: int,
            validation_data: DatasetFn | None = None, validation_steps: int | None = None,
            callbacks: Sequence[Callback] | Callback = (), resume: bool = True,
            validation_every_n_steps: int | None = None) -> History:
        """Trains for `epochs` epochs of `steps_per_epoch` steps, resuming from `model_dir` if it has a checkpoint.

        `train_data(input_context[, start_step])` returns this input pipeline's per-replica
        batches, endlessly (see `harness.data.TrainInput`, which can start mid-stream).
        With `resume` (the default) it continues from the newest checkpoint in model_dir.
        `callbacks` are `callbacks.Callback`s or `keras.callbacks.Callback`s (see `callbacks.KerasCallback`).
        `validation_every_n_steps=N` also validates at every multiple of N global steps (see
        `harness.validation_schedule`).
        """
        self.controller = Controller(self, train_data, epochs=epochs, steps_per_epoch=steps_per_epoch,
                                     validation_data=validation_data, validation_steps=validation_steps,
                                     callbacks=callbacks, resume=resume,
                                     validation_every_n_steps=validation_every_n_steps)
        return self.controller.run()
