"""A 2-worker job for tests/test_multi_worker_features.py: step-wise validation, rollback, Keras callbacks.

Run once per task by the local launcher; phases share one MultiWorkerMirroredStrategy, and each
prints `RESULT <json>` with what this worker did, so the test can check that both did the same.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras
import numpy as np
import tensorflow as tf

import harness
from callbacks import EarlyStopping, RollbackOnNaN
from tests.multi_worker_job import trainer
from tests.test_validation_schedule import InjectValidation


def poisoned_on_pipeline(train, pipeline, positions):
    """The batches of one input pipeline (one worker) at these data positions are NaN; starts anywhere."""
    bad = tf.constant(sorted(positions), tf.int64)

    def data(ctx, start_step=0):
        ds = train(ctx, start_step)
        if ctx.input_pipeline_id != pipeline:
            return ds
        per_pipeline = ctx.num_replicas_in_sync // ctx.num_input_pipelines

        def poison(i, batch):
            x, y = batch
            return tf.where(tf.reduce_any(tf.equal(i // per_pipeline, bad)), x * np.nan, x), y

        return ds.enumerate(start_step * per_pipeline).map(poison)

    return data


class StopOnWorker(keras.callbacks.Callback):
    """A stock-style Keras callback that sets stop_training on one worker only, from a batch of the second epoch."""

    def __init__(self, worker, this_worker, epoch, batch):
        super().__init__()
        self.stops, self.epoch, self.batch, self.current = worker == this_worker, epoch, batch, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.stops and self.current == self.epoch and batch >= self.batch:
            self.model.stop_training = True


def report(phase, t, **extra):
    print("RESULT " + json.dumps({"phase": phase, "worker": t.cluster.worker_index, "step": t.global_step,
                                  "epochs": t.epochs_completed, "stop_reason": t.stop_reason, **extra}), flush=True)


def main(out_dir, data_dir):
    strategy = harness.build_strategy("multi_worker_mirrored", cluster_join_timeout_s=60)
    info = harness.ClusterInfo.from_strategy(strategy)
    source = harness.load_source("digits", data_dir, is_chief=info.is_chief, num_workers=info.num_workers)
    train = harness.TrainInput(source.train_examples, source.num_train_examples, 32)
    evaluation = harness.EvalInput(source.eval_examples, source.num_eval_examples, 32)
    validate = {"validation_data": evaluation, "validation_steps": evaluation.steps, "validation_every_n_steps": 7}

    t = trainer(strategy, source, f"{out_dir}/validation")
    t.fit(train, epochs=3, steps_per_epoch=20, **validate)
    report("validation", t, validations=[v["step"] for v in t.history.validation_history],
           val_loss=[v["val_loss"] for v in t.history.validation_history])

    t = trainer(strategy, source, f"{out_dir}/val_early")
    t.fit(train, epochs=3, steps_per_epoch=20, **validate, callbacks=[
        InjectValidation([3.0, 2.0, 2.5, 2.6, 2.7, 2.8]), EarlyStopping(patience=2, monitor_freq="validation")])
    report("val_early", t)

    t = trainer(strategy, source, f"{out_dir}/rollback", linear=True)
    t.checkpoint_every_n_steps = 4
    t.fit(poisoned_on_pipeline(train, pipeline=1, positions={8}), epochs=3, steps_per_epoch=10,
          callbacks=[RollbackOnNaN()])
    report("rollback", t, rollbacks=t.state.rollbacks, finite=t.weights_are_finite(),
           weights=float(sum(np.abs(w).sum() for w in t.model.get_weights())))

    t = trainer(strategy, source, None)
    stop = StopOnWorker(1, info.worker_index, epoch=1, batch=4)
    t.fit(train, epochs=3, steps_per_epoch=10, callbacks=stop)  # a bare one, not in a list
    report("keras_stop", t)


if __name__ == "__main__":
    main(*sys.argv[1:])
