"""One training run from plain settings: what `scripts/train.py` does, callable from Python.

`RunConfig` mirrors the command-line flags one to one; `run(config)` builds the strategy,
data, model, trainer and callbacks, trains, and returns the summary that the chief also
writes to `<model_dir>/summary.json`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import tensorflow as tf
from absl import logging

from callbacks import (CSVLogger, EarlyStopping, LearningRateScheduler, ModelCheckpoint, ProgressBar, ReduceLROnPlateau,
                       RunSummary, TensorBoard, TerminateOnNaN, schedules)
from callbacks.base import Callback
from harness.cluster import ClusterInfo
from harness.data import DEFAULT_DATASET, EvalInput, TrainInput, load_source, per_replica_batch_size
from harness.errors import UsageError
from harness.export import export_model
from harness.models import build_model, build_optimizer
from harness.strategy import build_strategy
from harness.trainer import Trainer

MIXED_PRECISION = {"none": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


@dataclasses.dataclass
class RunConfig:
    """Every setting of a run; each field is the `scripts/train.py` flag of the same name."""

    strategy: str = "mirrored"
    num_cpu_devices: int | None = None
    tpu: str | None = None
    collective_timeout_s: float | None = None
    cluster_join_timeout_s: float = 300.0
    heartbeat_timeout_s: float = 10.0
    dataset: str = DEFAULT_DATASET
    data_dir: str | None = None
    download_data: bool = False
    global_batch_size: int = 64
    epochs: int = 10
    steps_per_epoch: int = 0  # 0: one pass over the training split
    model: str = "mlp"
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    steps_per_execution: int = 1
    mixed_precision: str = "none"
    jit_compile: bool = False
    seed: int = 0
    deterministic: bool = False
    model_dir: str = "runs/default"
    fresh: bool = False
    max_to_keep: int = 3
    checkpoint_every_n_steps: int | None = None
    checkpoint_every_n_seconds: float | None = None
    async_checkpoint: bool = False
    export_dir: str = ""
    # Callbacks.
    progress: bool = True
    tensorboard: bool = True
    update_freq: int = 0  # 0: per epoch
    histogram_freq: int = 0
    profile_steps: str = ""  # "start,stop" global steps
    csv_log: bool = True
    terminate_on_nan: bool = True
    monitor: str = "val_loss"
    mode: str = "auto"
    min_delta: float = 0.0
    early_stopping_patience: int | None = None
    restore_best_weights: bool = False
    save_best_only: bool = False
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    decay_steps: int = 0  # 0: the whole run after warm-up
    lr_decay_rate: float = 0.1
    reduce_lr_on_plateau_patience: int | None = None
    reduce_lr_factor: float = 0.1
    min_lr: float = 0.0

    def validate(self) -> None:
        for name in ("epochs", "steps_per_execution", "global_batch_size", "max_to_keep"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.steps_per_epoch < 0:
            raise UsageError(f"--steps_per_epoch must be >= 0 (0 means one pass), got {self.steps_per_epoch}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise UsageError(f"unknown --mixed_precision={self.mixed_precision!r}; "
                             f"choose one of {', '.join(MIXED_PRECISION)}")
        if not self.model_dir:
            raise UsageError("--model_dir must not be empty")
        for name in ("update_freq", "histogram_freq", "warmup_steps", "decay_steps"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{name} must be >= 0, got {getattr(self, name)}")
        known = ("loss", "accuracy", "val_loss", "val_accuracy", "lr")
        if self.monitor not in known:
            raise UsageError(f"--monitor={self.monitor!r} is not a metric of this run; choose one of {', '.join(known)}")

    def profile_range(self) -> tuple[int, int]:
        if not self.profile_steps:
            return (0, 0)
        try:
            start, stop = (int(v) for v in self.profile_steps.split(","))
        except ValueError:
            raise UsageError(f"--profile_steps must be 'start,stop' global steps, got {self.profile_steps!r}") from None
        return (start, stop)


def build_callbacks(config: RunConfig, *, total_steps: int) -> list[Callback]:
    """The callbacks the flags ask for; bad option values raise `UsageError`."""
    cbs: list[Callback] = []
    try:
        if config.lr_schedule != "constant" or config.warmup_steps:
            cbs.append(LearningRateScheduler(schedules.build_schedule(
                config.lr_schedule, config.learning_rate, total_steps=total_steps, warmup_steps=config.warmup_steps,
                decay_steps=config.decay_steps or None, decay_rate=config.lr_decay_rate)))
        if config.reduce_lr_on_plateau_patience is not None:
            cbs.append(ReduceLROnPlateau(config.monitor, factor=config.reduce_lr_factor, mode=config.mode,
                                         patience=config.reduce_lr_on_plateau_patience, min_lr=config.min_lr))
        if config.terminate_on_nan:
            cbs.append(TerminateOnNaN())
        if config.early_stopping_patience is not None:
            cbs.append(EarlyStopping(config.monitor, min_delta=config.min_delta, mode=config.mode,
                                     patience=config.early_stopping_patience,
                                     restore_best_weights=config.restore_best_weights))
        if config.save_best_only:
            cbs.append(ModelCheckpoint("best/epoch{epoch:04d}", monitor=config.monitor, mode=config.mode,
                                       save_best_only=True, save_weights_only=True, max_to_keep=config.max_to_keep))
        if config.tensorboard:
            cbs.append(TensorBoard(update_freq=config.update_freq or "epoch", histogram_freq=config.histogram_freq,
                                   profile_batch=config.profile_range()))
        if config.csv_log:
            cbs.append(CSVLogger())
        if config.progress:
            cbs.append(ProgressBar())
    except UsageError:
        raise
    except ValueError as e:
        raise UsageError(str(e)) from None
    return [*cbs, RunSummary(config.strategy)]


OUTPUTS = ("checkpoints", "best", "early_stopping", "tensorboard", "metrics.csv", "summary.json")


def clear_outputs(model_dir: str) -> None:
    """Deletes what earlier runs of the harness wrote in `model_dir` (nothing else)."""
    for name in OUTPUTS:
        path = f"{model_dir}/{name}"
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        elif tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)


def run(config: RunConfig, callbacks: list[Callback] | None = None) -> dict[str, Any]:
    """Trains as `config` says; returns the run summary (also in `<model_dir>/summary.json`)."""
    config.validate()
    build_callbacks(config, total_steps=1)  # fail on bad callback options before TensorFlow does any work
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = build_strategy(config.strategy, num_cpu_devices=config.num_cpu_devices, tpu=config.tpu,
                              collective_timeout_s=config.collective_timeout_s,
                              cluster_join_timeout_s=config.cluster_join_timeout_s,
                              heartbeat_timeout_s=config.heartbeat_timeout_s)
    cluster = ClusterInfo.from_strategy(strategy)
    per_replica_batch_size(config.global_batch_size, cluster.num_replicas)
    logging.info("Strategy %s: %d worker(s), %d replica(s); this is worker %d%s.", config.strategy,
                 cluster.num_workers, cluster.num_replicas, cluster.worker_index, " (chief)" if cluster.is_chief else "")
    source = load_source(config.dataset, config.data_dir, download=config.download_data,
                         is_chief=cluster.is_chief, num_workers=cluster.num_workers)
    train = TrainInput(source.train_examples, source.num_train_examples, config.global_batch_size, seed=config.seed)
    evaluation = (EvalInput(source.eval_examples, source.num_eval_examples, config.global_batch_size)
                  if source.eval_examples is not None else None)
    if config.fresh and cluster.is_chief:
        clear_outputs(config.model_dir)
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(MIXED_PRECISION[config.mixed_precision])
    try:
        keras.utils.set_random_seed(config.seed)  # here, so preparing the data set never shifts the weights' seeds
        with strategy.scope():
            model = build_model(config.model, source.input_shape, source.num_classes)
            optimizer = build_optimizer(config.optimizer, config.learning_rate)
        trainer = Trainer(strategy, model, optimizer,
                          keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None),
                          global_batch_size=config.global_batch_size, steps_per_execution=config.steps_per_execution,
                          jit_compile=config.jit_compile, model_dir=config.model_dir,
                          checkpoint_max_to_keep=config.max_to_keep, async_checkpoint=config.async_checkpoint,
                          checkpoint_every_n_steps=config.checkpoint_every_n_steps,
                          checkpoint_every_n_seconds=config.checkpoint_every_n_seconds)
        steps_per_epoch = config.steps_per_epoch or train.steps_per_pass
        run_callbacks = [*(callbacks or []), *build_callbacks(config, total_steps=steps_per_epoch * config.epochs)]
        trainer.fit(train, epochs=config.epochs, steps_per_epoch=steps_per_epoch,
                    validation_data=evaluation, validation_steps=evaluation.steps if evaluation else None,
                    callbacks=run_callbacks, resume=not config.fresh)
        if config.export_dir and not trainer.preempted and trainer.weights_are_finite():
            exported = export_model(model, config.export_dir, is_chief=cluster.is_chief)
            for kind, path in exported.items():
                print(f"Exported {kind}: {path}", flush=True)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    summary = next(cb for cb in run_callbacks if isinstance(cb, RunSummary))._payload(trainer.history.last_logs())
    summary["preempted"] = trainer.preempted
    print(f"Done: global step {summary['global_step']}, {summary['epochs_completed']} epochs, "
          f"stop reason: {summary['stop_reason'] or 'none'}", flush=True)
    return summary
