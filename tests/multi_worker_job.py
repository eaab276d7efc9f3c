"""A multi-worker job for tests/test_multi_worker.py, run once per task by the local launcher.

Phases share one MultiWorkerMirroredStrategy; each prints `RESULT <json>` with what this
worker did, so the test can check that every worker took every decision at the same step.
"""

import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras
import numpy as np

import harness
from callbacks import Callback, EarlyStopping, ProgressBar, RunSummary, TensorBoard, TerminateOnNaN
from tests import custom_steps

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)


class VoteOnOneWorker(Callback):
    """Asks to stop on one worker only, from the first loop that ends at or after `step`."""

    def __init__(self, worker, step):
        self.worker, self.step = worker, step

    def on_train_batch_end(self, step, logs=None):
        if self.context.worker_index == self.worker and step >= self.step:
            self.context.request_stop(f"worker {self.worker} voted at step {step}")


class FailOnOneWorker(Callback):
    """Raises on one worker only (a bug in a user's callback), from the first loop that ends at or after `step`."""

    def __init__(self, worker, step):
        self.worker, self.step = worker, step

    def on_train_batch_end(self, step, logs=None):
        if self.context.worker_index == self.worker and step >= self.step:
            raise ValueError(f"user callback failed at step {step}")


class SleepOnWorker(Callback):
    """Makes one worker slow outside the step (a heavy callback): the straggler view must name it."""

    identical_on_every_worker = True  # it asks for nothing: the workers agree one loop later (lagged)

    def __init__(self, worker, seconds, from_step=0):
        self.worker, self.seconds, self.from_step = worker, seconds, from_step

    def on_train_batch_end(self, step, logs=None):
        if self.context.worker_index == self.worker and step >= self.from_step:
            time.sleep(self.seconds)


class SignalOnWorker(Callback):
    """SIGTERMs one worker's own process (a preemption notice) at the end of the loop that ends at `step`."""

    identical_on_every_worker = True

    def __init__(self, worker, step):
        self.worker, self.step = worker, step

    def on_train_batch_end(self, step, logs=None):
        if self.context.worker_index == self.worker and step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class AsksNothing(Callback):
    """A user's callback that does not say `identical_on_every_worker`: every loop's point agrees at once."""


def threads():
    return int(next(line for line in open("/proc/self/status") if line.startswith("Threads:")).split()[1])


class CountThreads(Callback):
    """This process's threads after the first epoch (the step traced) and at the end of training."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            self.after_first_epoch = threads()

    def on_train_end(self, logs=None):
        self.at_end = threads()


def trainer(strategy, source, model_dir, linear=False, trainer_cls=harness.Trainer, learning_rate=0.1):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = (keras.Sequential([keras.Input(source.input_shape), keras.layers.Flatten(), keras.layers.Dense(10)])
                 if linear else harness.build_model("mlp", source.input_shape, source.num_classes))
        optimizer = keras.optimizers.SGD(learning_rate)
    return trainer_cls(strategy, model, optimizer, LOSS, global_batch_size=32, steps_per_execution=2,
                       model_dir=model_dir)


def accumulate(strategy, source, train, out_dir, is_chief):
    """One epoch with 1 and 4 micro-batches per update, SGD and Adam, and an EMA: the chief saves the weights and
    the averages (`weights` then `averages` in arr_0..) for the test to compare."""
    for name, learning_rate in (("SGD", 0.1), ("Adam", 1e-3)):
        for steps in (1, 4):
            keras.utils.set_random_seed(0)
            with strategy.scope():
                model = harness.build_model("mlp", source.input_shape, source.num_classes)
                optimizer = getattr(keras.optimizers, name)(learning_rate)
            t = harness.Trainer(strategy, model, optimizer, LOSS, global_batch_size=32, steps_per_execution=3,
                                gradient_accumulation_steps=steps, ema_decay=0.9)
            t.fit(train, epochs=1, steps_per_epoch=train.steps_per_pass)
            if is_chief:
                np.savez(f"{out_dir}/accumulate_{name}_{steps}.npz", *t.model.get_weights(),
                         *[v.numpy() for v in t.ema.averages])
            report(f"accumulate_{name}_{steps}", t)
            print("RESULT " + json.dumps({"phase": f"iterations_{name}_{steps}", "worker": t.cluster.worker_index,
                                          "step": int(t.optimizer.iterations.numpy())}), flush=True)


def nan_on_pipeline(train, pipeline, after_steps):
    """Batches of one input pipeline (one worker) turn NaN after `after_steps` steps."""

    def data(ctx, start_step=0):
        ds = train(ctx, start_step)
        if ctx.input_pipeline_id != pipeline:
            return ds
        return ds.take(after_steps).concatenate(ds.skip(after_steps).map(lambda x, y: (x * np.nan, y)))

    return data


def report(phase, t):
    print("RESULT " + json.dumps({"phase": phase, "worker": t.cluster.worker_index, "step": t.global_step,
                                  "epochs": t.epochs_completed, "stop_reason": t.stop_reason,
                                  "lagged": t.controller.lagged, "all_reduces": t.controller.maker.all_reduces,
                                  "preempted": t.preempted, "saved": (t.last_checkpoint or [None])[0],
                                  "weights": float(sum(np.sum(w, dtype=np.float64) for w in t.model.get_weights()))}),
          flush=True)


def main(out_dir, data_dir):
    strategy = harness.build_strategy("multi_worker_mirrored", cluster_join_timeout_s=60)
    info = harness.ClusterInfo.from_strategy(strategy)
    source = harness.load_source("digits", data_dir, is_chief=info.is_chief, num_workers=info.num_workers)
    train = harness.TrainInput(source.train_examples, source.num_train_examples, 32)

    t = trainer(strategy, source, f"{out_dir}/vote")
    t.fit(train, epochs=3, steps_per_epoch=10, callbacks=[VoteOnOneWorker(worker=1, step=7)])
    report("vote", t)

    t = trainer(strategy, source, f"{out_dir}/nan", linear=True)
    t.fit(nan_on_pipeline(train, pipeline=1, after_steps=5), epochs=3, steps_per_epoch=10,
          callbacks=[TerminateOnNaN()])
    report("nan", t)

    for phase, callbacks in (("lagged", [TerminateOnNaN()]), ("agreed", [TerminateOnNaN(), AsksNothing()])):
        t = trainer(strategy, source, None)  # 2 epochs of 5 loops: the decision points' all-reduces are counted
        t.fit(train, epochs=2, steps_per_epoch=10, callbacks=callbacks)
        report(phase, t)

    t = trainer(strategy, source, f"{out_dir}/signal")  # worker 1 alone is signalled after the loop ending at step 4
    t.fit(train, epochs=2, steps_per_epoch=10, callbacks=[SignalOnWorker(worker=1, step=4)])
    report("signal", t)

    t = trainer(strategy, source, f"{out_dir}/early")
    t.fit(train, epochs=5, steps_per_epoch=4, callbacks=[EarlyStopping(monitor="loss", min_delta=10.0)])
    report("early", t)

    for name in ("ClippedTrainer", "PenalisedTrainer"):  # the README's custom steps: one step, as on one device
        t = trainer(strategy, source, None, trainer_cls=getattr(custom_steps, name), learning_rate=0.5)
        t.fit(train, epochs=1, steps_per_epoch=1)
        if info.is_chief:
            np.savez(f"{out_dir}/{name}.npz", *t.model.get_weights())
        report(name, t)

    accumulate(strategy, source, train, out_dir, info.is_chief)

    t = trainer(strategy, source, f"{out_dir}/straggler")
    t.fit(train, epochs=2, steps_per_epoch=4, callbacks=[
        SleepOnWorker(worker=1, seconds=0.3), RunSummary("multi_worker_mirrored"), TensorBoard(update_freq=2),
        ProgressBar(stream=sys.stdout, log_every_s=0.0)])
    report("straggler", t)

    t, counter = trainer(strategy, source, None), CountThreads()  # 100 steps: 50 loops, 50 decisions, 100 all-reduces
    t.fit(train, epochs=2, steps_per_epoch=100, callbacks=[counter])
    print("RESULT " + json.dumps({"phase": "threads", "worker": info.worker_index,
                                  "grown": counter.at_end - counter.after_first_epoch}), flush=True)

    # Last (it aborts the job's collectives): worker 1 fails in a callback, and its script goes on living.
    t = trainer(strategy, source, None)
    start = time.monotonic()
    try:
        t.fit(train, epochs=3, steps_per_epoch=10, callbacks=[FailOnOneWorker(worker=1, step=3)])
    except Exception as e:  # a user's script catching its own error, or the peer's
        print("RESULT " + json.dumps({"phase": "failure", "worker": info.worker_index, "error": str(e),
                                      "type": type(e).__name__, "seconds": time.monotonic() - start}), flush=True)
    if info.worker_index == 1:
        time.sleep(20)  # alive, holding nothing: the others must not wait for it


def stuck(out_dir, data_dir):
    """Worker 1 stalls from step 4 (alive, heartbeating) for longer than the collective timeout."""
    strategy = harness.build_strategy("multi_worker_mirrored", cluster_join_timeout_s=60, collective_timeout_s=3)
    info = harness.ClusterInfo.from_strategy(strategy)
    source = harness.load_source("digits", data_dir, is_chief=info.is_chief, num_workers=info.num_workers)
    t = trainer(strategy, source, None)
    start = time.monotonic()
    try:
        t.fit(harness.TrainInput(source.train_examples, source.num_train_examples, 32), epochs=1, steps_per_epoch=10,
              callbacks=[SleepOnWorker(worker=1, seconds=12, from_step=4)])
    except Exception as e:
        print("RESULT " + json.dumps({"phase": "stuck", "worker": info.worker_index, "error": str(e),
                                      "type": type(e).__name__, "seconds": time.monotonic() - start}), flush=True)


if __name__ == "__main__":
    (stuck if sys.argv[3:] == ["stuck"] else main)(*sys.argv[1:3])
