"""One training run from plain settings: what `scripts/train.py` does, callable from Python.

`run(config)` builds the strategy, data, model, trainer and callbacks from a `RunConfig`,
trains, exports, and returns the summary that the chief also writes to
`<model_dir>/summary.json`. Everything that can be checked before training is checked before
training: the flags, TF_CONFIG, and that the output directories can be written.
"""

from __future__ import annotations

import logging
from typing import Any

import keras
import tensorflow as tf

from callbacks import (
    CSVLogger,
    EarlyStopping,
    LearningRateScheduler,
    ModelCheckpoint,
    ProgressBar,
    ReduceLROnPlateau,
    RollbackOnNaN,
    RunSummary,
    TensorBoard,
    TerminateOnNaN,
    schedules,
)
from callbacks.base import Callback
from harness import storage
from harness.cluster import ClusterInfo
from harness.data import EvalInput, TrainInput, load_source, per_replica_batch_size
from harness.errors import UsageError
from harness.evaluator import DIRECTORY as EVALUATOR_DIRECTORY
from harness.evaluator import evaluate_continuously
from harness.export import export_model
from harness.models import build_model, build_optimizer
from harness.run_config import MIXED_PRECISION, RunConfig
from harness.run_state import RUN_FILE
from harness.strategy import build_strategy, resolve_job
from harness.trainer import Trainer

log = logging.getLogger(__name__)


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
                                         patience=config.reduce_lr_on_plateau_patience, min_lr=config.min_lr,
                                         min_delta=config.min_delta, monitor_freq=config.monitor_every))
        if config.on_nan == "rollback":  # (it stops too, once it gives up)
            cbs.append(RollbackOnNaN(config.divergence_threshold, lr_factor=config.rollback_lr_factor,
                                     max_rollbacks=config.max_rollbacks))
        elif config.terminate_on_nan:
            cbs.append(TerminateOnNaN())
        if config.early_stopping_patience is not None:
            cbs.append(EarlyStopping(config.monitor, min_delta=config.min_delta, mode=config.mode,
                                     patience=config.early_stopping_patience,
                                     restore_best_weights=config.restore_best_weights,
                                     monitor_freq=config.monitor_every))
        if config.save_best_only:
            per_validation = config.monitor_every == "validation"
            cbs.append(ModelCheckpoint("best/step{step:07d}" if per_validation else "best/epoch{epoch:04d}",
                                       monitor=config.monitor, mode=config.mode, save_best_only=True,
                                       save_weights_only=True, max_to_keep=config.max_to_keep,
                                       save_freq="validation" if per_validation else "epoch"))
        if config.tensorboard:
            cbs.append(TensorBoard(config.tensorboard_dir, update_freq=config.update_freq or "epoch",
                                   histogram_freq=config.histogram_freq, profile_batch=config.profile_range()))
        if config.csv_log:
            cbs.append(CSVLogger())
        if config.progress:
            cbs.append(ProgressBar())
    except UsageError:
        raise
    except ValueError as e:
        raise UsageError(str(e)) from None
    evaluated = {"ema_decay": config.ema_decay, "evaluated_with": "ema" if config.ema_decay else "weights",
                 "gradient_accumulation_steps": config.gradient_accumulation_steps}
    return [*cbs, RunSummary(config.strategy, evaluated)]


OUTPUTS = ("checkpoints", "best", "early_stopping", "tensorboard", "metrics.csv", "summary.json", RUN_FILE,
           EVALUATOR_DIRECTORY)


def clear_outputs(config: RunConfig) -> None:
    """Deletes what earlier runs of the harness wrote in `model_dir` (nothing else), and their checkpoint
    and TensorBoard directories where those are elsewhere."""
    dirs = config.output_dirs()
    paths = [f"{config.model_dir}/{name}" for name in OUTPUTS] + [dirs["checkpoint_dir"], dirs["tensorboard_dir"]]
    with storage.failing_as_storage_error("clear the outputs of", config.model_dir):
        for path in dict.fromkeys(paths):
            if tf.io.gfile.isdir(path):
                tf.io.gfile.rmtree(path)
            elif tf.io.gfile.exists(path):
                tf.io.gfile.remove(path)


class _CheckExportDir(Callback):
    """Fails before the first step, not after training, when the export directory cannot be written."""

    identical_on_every_worker = True  # its requests follow from the logs and steps alone

    def __init__(self, export_dir: str):
        self.export_dir = export_dir

    def on_train_begin(self, logs=None):
        if self.context.is_chief:
            storage.check_writable_directory(self.export_dir, "the export")


def run(config: RunConfig, callbacks: list[Callback] | None = None) -> dict[str, Any]:
    """Trains as `config` says; returns the run summary (also in `<model_dir>/summary.json`)."""
    config.validate()
    build_callbacks(config, total_steps=1)  # fail on bad callback options before TensorFlow does any work
    job = resolve_job(config.strategy, **config.cluster_flags())
    if job.source != "none":
        summary = job.summary()
        log.warning("%s.", summary[0].upper() + summary[1:])
    if job.is_evaluator:  # never joins the training cluster (tensorflow issue 46169); evaluates its checkpoints
        return evaluate_continuously(config, job)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = build_strategy(config.strategy, num_cpu_devices=config.num_cpu_devices, tpu=config.tpu,
                              collective_timeout_s=config.collective_timeout_s,
                              cluster_join_timeout_s=config.cluster_join_timeout_s,
                              heartbeat_timeout_s=config.heartbeat_timeout_s, cluster=job)
    cluster = ClusterInfo.from_strategy(strategy)
    per_replica_batch_size(config.global_batch_size, cluster.num_replicas)
    log.info("Strategy %s: %d worker(s), %d replica(s); this is %s%s.", config.strategy, cluster.num_workers,
             cluster.num_replicas, cluster.task_name, " (chief)" if cluster.is_chief else "")
    if config.fresh and cluster.is_chief:
        clear_outputs(config)
    source = load_source(config.dataset, config.data_dir, download=config.download_data,
                         is_chief=cluster.is_chief, num_workers=cluster.num_workers)
    train = TrainInput(source.train_examples, source.num_train_examples, config.global_batch_size, seed=config.seed)
    evaluation = (EvalInput(source.eval_examples, source.num_eval_examples, config.global_batch_size)
                  if source.eval_examples is not None else None)
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
                          checkpoint_every_n_seconds=config.checkpoint_every_n_seconds, settings=config,
                          checkpoint_dir=config.checkpoint_dir,
                          gradient_accumulation_steps=config.gradient_accumulation_steps, ema_decay=config.ema_decay)
        steps_per_epoch = config.steps_per_epoch or train.steps_per_pass
        run_callbacks = [*(callbacks or []), *build_callbacks(config, total_steps=steps_per_epoch * config.epochs)]
        if config.export_dir:
            run_callbacks.insert(0, _CheckExportDir(config.export_dir))
        trainer.fit(train, epochs=config.epochs, steps_per_epoch=steps_per_epoch,
                    validation_data=evaluation, validation_steps=evaluation.steps if evaluation else None,
                    callbacks=run_callbacks, resume=not config.fresh,
                    validation_every_n_steps=config.validation_every_n_steps)
        exported = _export(config, trainer, model, cluster)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    summary = next(cb for cb in run_callbacks if isinstance(cb, RunSummary)).payload(trainer.history.last_logs())
    summary.update(preempted=trainer.preempted, signal=trainer.state.signal, exported=exported,
                   checkpoint=trainer.last_checkpoint[1] if trainer.last_checkpoint else None,
                   checkpoint_step=trainer.last_checkpoint[0] if trainer.last_checkpoint else None)
    return summary


def _export(config: RunConfig, trainer: Trainer, model: keras.Model, cluster: ClusterInfo) -> dict[str, str]:
    """Exports a run that this call trained to its end, or whose export is missing; never a preempted or
    non-finite one."""
    if not config.export_dir or trainer.preempted:
        return {}
    if not trainer.trained_in_last_fit and tf.io.gfile.exists(f"{config.export_dir}/model.keras"):
        return {}
    with trainer.evaluated_weights():  # the EMA of the weights, with --ema_decay
        if not trainer.weights_are_finite():
            log.warning("Not exporting: the model has non-finite weights.")
            return {}
        return export_model(model, config.export_dir, is_chief=cluster.is_chief)
