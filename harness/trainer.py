"""The Trainer: a custom, strategy-aware training loop with K steps per compiled call.

One `tf.function` call runs `steps_per_execution` steps in a `tf.range` loop whose length is
a tensor, so neither K nor the epoch ever retraces it (the Orbit pattern). Callbacks run
between calls with logs aggregated over all replicas and workers; their stop, save and
learning-rate requests are agreed across workers at fixed decision points.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf
from absl import logging

from callbacks.base import Callback
from callbacks.callback_list import CallbackList
from callbacks.history import History
from harness.checkpointing import Checkpointer
from harness.cluster import ClusterInfo, lost_task_message
from harness.context import TrainerContext
from harness.data import DatasetFn, accepts_start_step, per_replica_batch_size
from harness.decisions import Decision, DecisionMaker
from harness.errors import SetupError, UsageError
from harness.learning_rate import LearningRate, Schedule
from harness.metrics import MeanMetrics, MetricFn, sparse_categorical_accuracy
from harness.preemption import PreemptionWatcher

LossFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def unpack(batch) -> tuple[Any, Any, Any]:
    """`(features, labels[, sample_weight])` -> a 3-tuple with `None` for a missing weight."""
    if isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
        return (*batch, None) if len(batch) == 2 else tuple(batch)
    raise UsageError("each batch must be (features, labels) or (features, labels, sample_weight)")


def _check_created_in_scope(strategy: tf.distribute.Strategy, model: keras.Model) -> None:
    for variable in model.variables:
        if not strategy.extended.variable_created_in_scope(getattr(variable, "value", variable)):
            raise UsageError(f"variable {variable.path} was not created under strategy.scope(); "
                             "build the model inside `with strategy.scope():`")


def _naming_lost_peers(method):
    """Turns TensorFlow's error for a peer lost in a multi-worker job into a one-line `SetupError` naming it."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except tf.errors.OpError as e:
            message = lost_task_message(e) if self.cluster.num_workers > 1 else None
            if message is None:
                raise
            raise SetupError(message) from e

    return wrapper


def _check_xla_devices(strategy: tf.distribute.Strategy) -> None:
    if strategy.num_replicas_in_sync == 1:
        return
    devices = strategy.extended.worker_devices
    if len(devices) > 1 and all("CPU" in d.upper() for d in devices):
        raise UsageError("--jit_compile cannot run several replicas on logical CPU devices (XLA compiles "
                         "them all for CPU:0); use it with one CPU replica, or on GPUs or TPUs")


class Trainer:
    """Trains a Keras model with a `tf.distribute` strategy and strategy-aware callbacks.

    Build the model (and optimizer) inside `strategy.scope()`. `loss(labels, outputs)` must
    return per-example losses (e.g. a Keras loss with `reduction=None`); the step averages
    them over the global batch, so N replicas make the same update as one device. Subclass
    and override `train_step` / `test_step` (replica context) to customise the step.
    """

    def __init__(self, strategy: tf.distribute.Strategy, model: keras.Model,
                 optimizer: keras.optimizers.Optimizer, loss: LossFn, *, global_batch_size: int,
                 metrics: Mapping[str, MetricFn] | None = None, steps_per_execution: int = 1,
                 jit_compile: bool = False, model_dir: str | None = None,
                 checkpoint_max_to_keep: int | None = 3, async_checkpoint: bool = False,
                 checkpoint_every_n_steps: int | None = None, checkpoint_every_n_seconds: float | None = None,
                 cluster: ClusterInfo | None = None):
        if steps_per_execution < 1:
            raise UsageError(f"--steps_per_execution must be >= 1, got {steps_per_execution}")
        self.strategy, self.model, self.loss = strategy, model, loss
        self.global_batch_size, self.steps_per_execution = global_batch_size, steps_per_execution
        self.jit_compile, self.model_dir = jit_compile, model_dir
        for name, value in (("checkpoint_every_n_steps", checkpoint_every_n_steps),
                            ("checkpoint_every_n_seconds", checkpoint_every_n_seconds)):
            if value is not None and value <= 0:
                raise UsageError(f"--{name} must be > 0, got {value}")
        self.checkpoint_every_n_steps, self.checkpoint_every_n_seconds = (checkpoint_every_n_steps,
                                                                          checkpoint_every_n_seconds)
        self.cluster = cluster or ClusterInfo.from_strategy(strategy)  # override only to simulate a task
        if jit_compile:
            _check_xla_devices(strategy)
        per_replica_batch_size(global_batch_size, self.cluster.num_replicas)  # an uneven split is a clear error
        self.metric_fns = dict(metrics if metrics is not None else {"accuracy": sparse_categorical_accuracy})
        _check_created_in_scope(strategy, model)
        with strategy.scope():
            if model.dtype_policy.name == "mixed_float16" and not isinstance(
                    optimizer, keras.optimizers.LossScaleOptimizer):
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            # Keras creates slot variables lazily, which fails inside a distributed trace.
            optimizer.build(model.trainable_variables)
            self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.optimizer = optimizer
        self.learning_rate = LearningRate(strategy, optimizer)
        names = ("loss", *self.metric_fns)
        self.train_metrics = MeanMetrics(strategy, names, "train")
        self.eval_metrics = MeanMetrics(strategy, names, "eval")
        self.step = 0  # host copy of global_step, kept in sync without reading the variable
        self.epoch = 0  # epochs completed
        self.step_in_epoch = 0
        self.stop_reason: str | None = None
        self.preempted = False  # stopped by a signal: saved, and a rerun resumes
        self.resumed_from: str | None = None  # the checkpoint this fit restored, if any
        self._watcher = PreemptionWatcher()
        self._last_save = (time.monotonic(), 0)  # (clock, step) of the newest training checkpoint
        self.history = History()
        self.callbacks = CallbackList([self.history])
        self.weights_checkpoint = tf.train.Checkpoint(model=model)
        # Epoch, position in the epoch, callback state and history, as JSON: a string variable
        # (not a PythonState) so that asynchronous checkpoints carry it too.
        self._progress = tf.Variable("", dtype=tf.string, trainable=False, name="progress")
        self.checkpoint = tf.train.Checkpoint(
            model=model, optimizer=optimizer, global_step=self.global_step,
            learning_rate_base=self.learning_rate.base, learning_rate_scale=self.learning_rate.scale,
            train_metrics=self.train_metrics.variable, progress=self._progress)
        self.checkpointer = (Checkpointer(self.checkpoint, f"{model_dir}/checkpoints", is_chief=self.cluster.is_chief,
                                          max_to_keep=checkpoint_max_to_keep, enable_async=async_checkpoint)
                             if model_dir else None)
        self._train_loop: Callable | None = None
        self._eval_loop = tf.function(self._eval_steps)
        self._num_steps: dict[int, tf.Tensor] = {}

    # ----- the step (replica context) ---------------------------------------------------------

    def compute_loss(self, per_example_loss: tf.Tensor, sample_weight: tf.Tensor | None = None) -> tf.Tensor:
        """This replica's share of the global-batch mean loss plus its share of regularisation."""
        if per_example_loss.shape.rank == 0:
            raise UsageError("the loss returned a scalar; it must return per-example losses "
                             "(e.g. keras.losses.SparseCategoricalCrossentropy(reduction=None))")
        loss = tf.nn.compute_average_loss(per_example_loss, sample_weight=sample_weight,
                                          global_batch_size=self.global_batch_size)
        if self.model.losses:
            loss += tf.nn.scale_regularization_loss(tf.add_n([tf.cast(l, loss.dtype) for l in self.model.losses]))
        return loss

    def _agree_finite(self, grads: list[tf.Tensor]) -> list[tf.Tensor]:
        """Makes every replica see non-finite gradients when any replica has them.

        Keras's LossScaleOptimizer decides "skip this step" from the first replica's local
        gradients; a non-finite gradient elsewhere would then be applied. One scalar
        all-reduce (no conditional around the apply) makes the decision global.
        """
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
        bad = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM,
                                                             1.0 - tf.cast(finite, tf.float32))
        return [tf.where(bad > 0, tf.constant(math.nan, g.dtype), g) for g in grads]

    def train_step(self, batch) -> None:
        """One optimisation step on this replica's part of a global batch."""
        features, labels, sample_weight = unpack(batch)
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            outputs = self.model(features, training=True)
            per_example_loss = self.loss(labels, outputs)
            loss = self.compute_loss(per_example_loss, sample_weight)
            scaled_loss = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled_loss, variables)
        pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
        grads = [tf.convert_to_tensor(g) for g, _ in pairs]
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            grads = self._agree_finite(grads)
        self.optimizer.apply(grads, [v for _, v in pairs])
        self.update_metrics(self.train_metrics, labels, outputs, per_example_loss, sample_weight)

    def test_step(self, batch) -> None:
        features, labels, sample_weight = unpack(batch)
        outputs = self.model(features, training=False)
        per_example_loss = self.loss(labels, outputs)
        self.update_metrics(self.eval_metrics, labels, outputs, per_example_loss, sample_weight)

    def update_metrics(self, metrics: MeanMetrics, labels, outputs, per_example_loss, sample_weight) -> None:
        regularization = tf.add_n(self.model.losses) if self.model.losses else 0.0
        values = {"loss": tf.cast(per_example_loss, tf.float32) + tf.cast(regularization, tf.float32)}
        values.update({name: fn(labels, outputs) for name, fn in self.metric_fns.items()})
        metrics.update(values, sample_weight)

    # ----- the loops (cross-replica context, compiled) ----------------------------------------

    def _replica_fn(self, fn):
        return tf.function(fn, jit_compile=True) if self.jit_compile else fn

    def _make_train_loop(self) -> Callable:
        step_fn = self._replica_fn(self.train_step)

        def loop(iterator, num_steps):
            for _ in tf.range(num_steps):
                self.learning_rate.apply(self.global_step)
                self.strategy.run(step_fn, args=(next(iterator),))
                self.global_step.assign_add(1)

        return tf.function(loop)

    def _eval_steps(self, iterator, num_steps):
        step_fn = self._replica_fn(self.test_step)
        for _ in tf.range(num_steps):
            self.strategy.run(step_fn, args=(next(iterator),))

    def _steps_tensor(self, k: int) -> tf.Tensor:
        if k not in self._num_steps:
            self._num_steps[k] = tf.constant(k, tf.int64)
        return self._num_steps[k]

    @property
    def train_loop_traces(self) -> int:
        """How many times the K-step training loop was traced (1 after any number of calls)."""
        return self._train_loop.experimental_get_tracing_count() if self._train_loop else 0

    def set_learning_rate_schedule(self, schedule: Schedule | None) -> None:
        """Evaluates `schedule(global_step)` in graph before every step (retraces once, now)."""
        self.learning_rate.schedule = schedule
        self._train_loop = None

    # ----- state --------------------------------------------------------------------------------

    def _progress_state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                "stop_reason": None if self.preempted else self.stop_reason,  # a preempted run is not finished
                "callbacks": self.callbacks.get_state()}

    def _restore_progress_state(self, state: dict[str, Any]) -> None:
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.stop_reason = state["stop_reason"]
        self.callbacks.set_state(state["callbacks"])

    def saver_index(self, callback: Callback) -> int:
        """Index of a saver in the decision vector: 0 is the trainer's checkpoint, then callbacks."""
        for i, cb in enumerate(self.callbacks):
            if cb is callback:
                return i + 1
        raise ValueError(f"{callback!r} is not one of this run's callbacks")

    # ----- decisions ------------------------------------------------------------------------------

    def _own_votes(self, votes) -> None:
        """The trainer's votes: preemption, and checkpoints every N steps or T seconds."""
        if self._watcher.received:
            votes.preempted = True
            votes.stop_reason = votes.stop_reason or f"preempted ({self._watcher.received})"
            votes.savers.add(0)
        last_time, last_step = self._last_save
        every_steps, every_seconds = self.checkpoint_every_n_steps, self.checkpoint_every_n_seconds
        if every_steps and self.step // every_steps > last_step // every_steps:
            votes.savers.add(0)
        if every_seconds and self.cluster.is_chief and time.monotonic() - last_time >= every_seconds:
            votes.savers.add(0)  # the chief's clock decides; the agreement makes every worker save

    def _decide(self, context: TrainerContext) -> Decision:
        votes, context.votes = context.votes, type(context.votes)()
        self._own_votes(votes)
        decision = self._decision_maker.agree(votes)
        if decision.preempted and not self.preempted:
            self.preempted = True
            self.stop_reason = votes.stop_reason if votes.preempted else "preempted (signal on another worker)"
        if decision.lr_base is not None:
            self.learning_rate.set_base(decision.lr_base)
        if decision.lr_scale is not None:
            self.learning_rate.set_scale(decision.lr_scale)
        if decision.stop and self.stop_reason is None:
            self.stop_reason = (votes.stop_reason if votes.stop
                                else f"stop requested by worker {decision.stop_voters[0]}")
        for saver in decision.savers:
            if saver == 0:
                self.save_checkpoint()
            else:
                self.callbacks.callbacks[saver - 1].on_save()
        return decision

    def weights_are_finite(self) -> bool:
        """False when any model weight is NaN or infinite (then nothing is saved); identical on every worker."""
        finite = bool(self._all_finite())
        if not finite:
            logging.warning("Not saving at step %d: the model has non-finite weights.", self.step)
        return finite

    @tf.function
    def _all_finite(self):
        return tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in self.model.trainable_variables])

    def save_checkpoint(self) -> str | None:
        """Saves the training state (every worker must call this at the same step).

        Never overwrites the last good checkpoint with non-finite weights.
        """
        if self.checkpointer is None or self._last_save[1] == self.step or not self.weights_are_finite():
            return None  # (the same decision on every worker: a save reads synchronised variables collectively)
        self._last_save = (time.monotonic(), self.step)
        self._progress.assign(json.dumps(self._progress_state()))
        return self.checkpointer.save(self.step)

    def _restore(self) -> None:
        """Resumes from the newest readable checkpoint in model_dir, if any."""
        path = self.checkpointer.restore_latest() if self.checkpointer else None
        self.resumed_from = path
        if path is None:
            return
        self.step = int(self.global_step.numpy())
        self._last_save = (time.monotonic(), self.step)
        self._restore_progress_state(json.loads(self._progress.numpy()))
        logging.warning("Resuming from %s at step %d (epoch %d, step %d of the epoch).",
                        path, self.step, self.epoch + 1, self.step_in_epoch)

    # ----- public loops ---------------------------------------------------------------------------

    def _distribute(self, dataset_fn: DatasetFn, start_step: int = 0):
        if accepts_start_step(dataset_fn):
            fn = lambda ctx: dataset_fn(ctx, start_step=start_step)
        else:
            fn = lambda ctx: dataset_fn(ctx).skip(start_step * (ctx.num_replicas_in_sync // ctx.num_input_pipelines))
        return self.strategy.distribute_datasets_from_function(fn)

    def evaluate(self, dataset_fn: DatasetFn, steps: int, callbacks: CallbackList | None = None) -> dict[str, float]:
        """Runs `steps` evaluation steps; returns the aggregated metrics."""
        if steps < 1:
            raise UsageError(f"validation steps must be >= 1, got {steps}")
        if callbacks:
            callbacks.on_test_begin()
        self.eval_metrics.reset()
        iterator = iter(self._distribute(dataset_fn))
        for start in range(0, steps, self.steps_per_execution):
            self._eval_loop(iterator, self._steps_tensor(min(self.steps_per_execution, steps - start)))
        logs = self.eval_metrics.result()
        if callbacks:
            callbacks.on_test_end(logs)
        return logs

    @_naming_lost_peers
    def fit(self, train_data: DatasetFn, *, epochs: int, steps_per_epoch: int,
            validation_data: DatasetFn | None = None, validation_steps: int | None = None,
            callbacks: Sequence[Callback] = (), resume: bool = True) -> History:
        """Trains for `epochs` epochs of `steps_per_epoch` steps, resuming from `model_dir` if it has a checkpoint.

        `train_data(input_context[, start_step])` returns this input pipeline's per-replica
        batches, endlessly (see `harness.data.TrainInput`, which can start mid-stream).
        With `resume` (the default) it continues from the newest checkpoint in model_dir.
        """
        if epochs < 1 or steps_per_epoch < 1:
            raise UsageError(f"epochs and steps_per_epoch must be >= 1, got {epochs} and {steps_per_epoch}")
        if validation_data is not None and not validation_steps:
            raise UsageError("validation_data needs validation_steps (e.g. harness.data.EvalInput(...).steps)")
        self.callbacks = CallbackList([self.history, *callbacks])
        if self.preempted:  # a new fit after a preemption continues the run
            self.preempted, self.stop_reason = False, None
        self._decision_maker = DecisionMaker(
            self.strategy, num_workers=self.cluster.num_workers, worker_index=self.cluster.worker_index,
            is_chief=self.cluster.is_chief, num_savers=1 + len(self.callbacks.callbacks))
        context = TrainerContext(self, epochs=epochs, steps_per_epoch=steps_per_epoch,
                                 has_validation=validation_data is not None)
        self.callbacks.set_context(context)
        self.resumed_from = None
        if resume:
            self._restore()
        if not self._decision_maker.all_equal(self.step):
            raise SetupError(f"the workers resumed from different checkpoints (this one at step {self.step}); "
                             "every worker must see the same model_dir (shared storage such as gs://)")
        if self.epoch >= epochs or self.stop_reason is not None:
            logging.warning("Nothing to do: the run in %s already finished (%d epochs, step %d, stop reason: %s); "
                            "use a new model_dir or --fresh to train again.", self.model_dir, self.epoch, self.step,
                            self.stop_reason or "none")
            return self.history
        with self._watcher:
            return self._train(context, train_data, epochs, steps_per_epoch, validation_data, validation_steps)

    def _train(self, context, train_data, epochs, steps_per_epoch, validation_data, validation_steps) -> History:
        self.callbacks.on_train_begin()
        if self._train_loop is None:
            self._train_loop = self._make_train_loop()
        iterator = iter(self._distribute(train_data, self.step))
        logs: dict[str, float] = {}
        while self.epoch < epochs and self.stop_reason is None:
            context.epoch = self.epoch
            if self.step_in_epoch == 0:
                self.train_metrics.reset()
            self.callbacks.on_epoch_begin(self.epoch)
            if self._decide(context).stop:
                break
            while self.step_in_epoch < steps_per_epoch:
                k = min(self.steps_per_execution, steps_per_epoch - self.step_in_epoch)
                wants_logs = self.callbacks.wants_batch_logs(self.step + k)
                self.callbacks.on_train_batch_begin(self.step)
                self._train_loop(iterator, self._steps_tensor(k))
                self.step += k
                self.step_in_epoch += k
                self.callbacks.on_train_batch_end(self.step, self.train_metrics.result() if wants_logs else {})
                if self._decide(context).stop:
                    break
            if self.stop_reason is not None:
                break
            logs = self.train_metrics.result()
            if validation_data is not None:
                val = self.evaluate(validation_data, validation_steps, self.callbacks)
                logs.update({f"val_{name}": value for name, value in val.items()})
            logs["lr"] = self.learning_rate.current(self.step)
            self.epoch += 1
            self.step_in_epoch = 0
            self.callbacks.on_epoch_end(self.epoch - 1, logs)
            context.request_checkpoint()
            self._decide(context)
        self.callbacks.on_train_end(logs)
        if self.checkpointer is not None:
            self.checkpointer.sync()
        return self.history
