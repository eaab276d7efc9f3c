"""Each callback checked from what it writes: checkpoints restored with tf.train.Checkpoint,
event files read back with TensorBoard's reader, CSV read with the csv module."""

import csv
import dataclasses
import io
import json
import math
import os
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

from callbacks import (
    Callback,
    CSVLogger,
    EarlyStopping,
    LambdaCallback,
    ModelCheckpoint,
    ProgressBar,
    RunSummary,
    TensorBoard,
    TerminateOnNaN,
)
from harness import Trainer, TrainInput, build_model
from tests.callback_helpers import InjectMonitor, fit
from tests.conftest import SPARSE_CE, make_trainer, strategy


def files_under(path):
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)


class RecordWeights(Callback):
    def __init__(self):
        self.by_epoch = {}

    def on_epoch_end(self, epoch, logs=None):
        self.by_epoch[epoch] = [v.numpy() for v in self.context.model.trainable_variables]


def restored_weights(source, path):
    with strategy("default").scope():
        model = build_model("mlp", source.input_shape, source.num_classes)
    tf.train.Checkpoint(model=model).read(path).assert_existing_objects_matched()
    return [v.numpy() for v in model.trainable_variables]


@pytest.mark.slow
def test_model_checkpoint_save_best_only_saves_the_improving_epochs(digits, tmp_path):
    recorder = RecordWeights()
    checkpoint = ModelCheckpoint("best/epoch{epoch}", save_best_only=True, save_weights_only=True)
    fit(digits, [InjectMonitor("val_loss", [3.0, 2.0, 2.5, 1.0, 1.5]), checkpoint, recorder], epochs=5,
        steps_per_epoch=3, model_dir=str(tmp_path))
    saved = sorted(f for f in files_under(tmp_path / "best") if f.endswith(".index"))
    assert saved == ["epoch1.index", "epoch2.index", "epoch4.index"]
    assert not [f for f in files_under(tmp_path) if ".tmp-" in f]
    for a, b in zip(restored_weights(digits, str(tmp_path / "best/epoch4")), recorder.by_epoch[3]):
        np.testing.assert_array_equal(a, b)
    assert (checkpoint.best, checkpoint.best_epoch) == (1.0, 3)


def test_model_checkpoint_every_n_steps_with_max_to_keep(digits, tmp_path):
    checkpoint = ModelCheckpoint("steps/step{step}-loss{loss:.2f}", save_weights_only=True, save_freq=7, max_to_keep=2)
    fit(digits, [checkpoint], epochs=3, steps_per_epoch=10, model_dir=str(tmp_path), validation=False)
    kept = sorted(f[:-len(".index")] for f in files_under(tmp_path / "steps") if f.endswith(".index"))
    assert [k.split("-")[0] for k in kept] == ["step21", "step28"]  # saved at 7, 14, 21, 28; two kept
    assert len(checkpoint.saved) == 2


def test_timed_checkpoints_of_one_process_save_mid_epoch_where_the_time_is_up(digits, tmp_path):
    slow = LambdaCallback(on_train_batch_end=lambda step, logs: time.sleep(0.12))
    fit(digits, [slow], epochs=1, steps_per_epoch=6, model_dir=str(tmp_path), validation=False,
        checkpoint_every_n_seconds=0.2, checkpoint_max_to_keep=100)
    state = tf.train.get_checkpoint_state(str(tmp_path / "checkpoints"))
    steps = [int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths]
    # At least every second loop is 0.2 s after the last save (the first also traces); 6 ends the epoch.
    assert steps[-1] == 6 and len(steps) >= 3, steps


def test_model_checkpoint_full_model_is_a_loadable_keras_file(digits, tmp_path):
    trainer = fit(digits, [ModelCheckpoint("model.keras")], epochs=1, steps_per_epoch=3, model_dir=str(tmp_path))
    loaded = keras.models.load_model(tmp_path / "model.keras")
    x = np.random.default_rng(0).random([4, 8, 8, 1]).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), trainer.model.predict(x, verbose=0), atol=1e-6)


def test_model_checkpoint_rejects_a_full_model_path_without_keras_suffix():
    with pytest.raises(ValueError, match="must end with '.keras'"):
        ModelCheckpoint("model.h5")


@pytest.mark.slow
def test_tensorboard_writes_epoch_and_batch_scalars_at_the_global_step(digits, tmp_path):
    trainer = fit(digits, [TensorBoard(update_freq=5, histogram_freq=1)], epochs=3, steps_per_epoch=10,
                  model_dir=str(tmp_path))
    train = EventAccumulator(str(tmp_path / "tensorboard/train"), size_guidance={"tensors": 0})
    train.Reload()
    validation = EventAccumulator(str(tmp_path / "tensorboard/validation"), size_guidance={"tensors": 0})
    validation.Reload()

    def values(accumulator, tag):
        return [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in accumulator.Tensors(tag)]

    history = trainer.history.history
    assert [s for s, _ in values(train, "epoch_loss")] == [10, 20, 30]
    assert [v for _, v in values(train, "epoch_loss")] == pytest.approx(history["loss"])
    assert [s for s, _ in values(validation, "epoch_accuracy")] == [10, 20, 30]
    assert [v for _, v in values(validation, "epoch_accuracy")] == pytest.approx(history["val_accuracy"])
    assert [s for s, _ in values(train, "batch_loss")] == [5, 10, 15, 20, 25, 30]
    assert [v for _, v in values(train, "epoch_learning_rate")] == pytest.approx(history["lr"])
    assert all(v > 0 for _, v in values(train, "epoch_examples_per_second"))
    tags = train.Tags()["tensors"]
    assert any("kernel" in t for t in tags)  # weight histograms
    assert train.SummaryMetadata("train_loop").plugin_data.plugin_name == "graph_run_metadata_graph"  # the graph


def test_tensorboard_profiles_a_step_range(digits, tmp_path):
    fit(digits, [TensorBoard(profile_batch=(2, 4), write_graph=False)], epochs=1, steps_per_epoch=6,
        model_dir=str(tmp_path), validation=False)
    assert [f for f in files_under(tmp_path / "tensorboard/train") if f.startswith("plugins/profile")]


def read_csv(path, separator=","):
    with open(path) as f:
        return list(csv.reader(io.StringIO(f.read()), delimiter=separator))


def test_csv_logger_writes_a_header_once_and_a_row_per_epoch(digits, tmp_path):
    trainer = fit(digits, [CSVLogger(separator=";")], epochs=3, steps_per_epoch=4, model_dir=str(tmp_path))
    rows = read_csv(tmp_path / "metrics.csv", ";")
    assert rows[0] == ["epoch", "accuracy", "loss", "lr", "val_accuracy", "val_loss"]
    assert [r[0] for r in rows[1:]] == ["1", "2", "3"]  # epochs count from 1 wherever a person reads them
    assert [float(r[2]) for r in rows[1:]] == pytest.approx(trainer.history.history["loss"])


@pytest.mark.slow
def test_csv_logger_append_keeps_earlier_rows_and_one_header(digits, tmp_path):
    path = str(tmp_path / "log.csv")
    fit(digits, [CSVLogger(path)], epochs=2, steps_per_epoch=2)
    fit(digits, [CSVLogger(path, append=True)], epochs=1, steps_per_epoch=2)
    rows = read_csv(path)
    assert [r[0] for r in rows] == ["epoch", "1", "2", "1"]


def nan_after(source, good_batches):
    """Training data whose features turn NaN after `good_batches` global batches."""
    train = TrainInput(source.train_examples, source.num_train_examples, 32)

    def data(ctx, start_step=0):
        per_pipeline = ctx.num_replicas_in_sync // ctx.num_input_pipelines
        good = train(ctx, start_step).take(good_batches * per_pipeline)
        return good.concatenate(good.map(lambda x, y: (x * np.nan, y)).repeat())

    return data


def test_terminate_on_nan_stops_and_never_overwrites_the_last_good_checkpoint(digits, tmp_path):
    s = strategy("mirrored", 2)
    with s.scope():  # linear, so a NaN input makes a NaN loss (ReLU would turn it into 0)
        model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
        optimizer = keras.optimizers.SGD(0.1)
    trainer = Trainer(s, model, optimizer, SPARSE_CE, global_batch_size=32, model_dir=str(tmp_path))
    checkpoint = ModelCheckpoint("steps/step{step}", save_weights_only=True, save_freq=3)
    trainer.fit(nan_after(digits, 7), epochs=3, steps_per_epoch=5, callbacks=[TerminateOnNaN(), checkpoint])
    assert trainer.global_step == 8 and trainer.stop_reason.startswith("non-finite loss (nan) at step 8")
    assert sorted(f for f in files_under(tmp_path / "steps") if f.endswith(".index")) == ["step3.index", "step6.index"]
    latest = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    assert latest.endswith("ckpt-5")  # the epoch-end checkpoint; none written after the loss went NaN
    restored = keras.models.clone_model(model)
    tf.train.Checkpoint(model=restored).read(latest).expect_partial()
    assert all(np.isfinite(w.numpy()).all() for w in restored.weights)


@pytest.mark.slow
def test_lambda_callback_calls_each_hook(digits):
    calls = []
    fit(digits, [LambdaCallback(on_train_begin=lambda logs: calls.append("begin"),
                                on_epoch_end=lambda epoch, logs: calls.append(("epoch", epoch, sorted(logs))),
                                on_train_batch_end=lambda step, logs: calls.append(("batch", step, "loss" in logs)),
                                on_train_end=lambda logs: calls.append("end"))],
        epochs=2, steps_per_epoch=4, steps_per_execution=2)
    names = ["accuracy", "loss", "lr", "val_accuracy", "val_loss"]
    assert calls == ["begin", ("batch", 2, True), ("batch", 4, True), ("epoch", 0, names),
                     ("batch", 6, True), ("batch", 8, True), ("epoch", 1, names), "end"]
    with pytest.raises(TypeError, match="unknown hook"):
        LambdaCallback(on_batch_finish=print)


def test_custom_callback_sees_aggregated_logs_and_stops_training(digits, tmp_path):
    class StopWhenAccurate(Callback):
        """A user's callback: stop once validation accuracy passes a bar."""

        def __init__(self):
            self.seen = []

        def on_epoch_end(self, epoch, logs=None):
            self.seen.append(dict(logs))
            if logs["val_accuracy"] >= 0.5:
                self.context.request_stop(f"val_accuracy {logs['val_accuracy']:.3f} >= 0.5")

    callback = StopWhenAccurate()
    trainer = fit(digits, [callback], epochs=20, steps_per_epoch=10, model_dir=str(tmp_path), optimizer="adam",
                  learning_rate=3e-3, global_batch_size=64)
    assert len(callback.seen) < 20 and trainer.stop_reason.startswith("val_accuracy")
    # What the callback saw is what the trainer aggregated over both replicas.
    assert callback.seen[-1]["loss"] == trainer.history.history["loss"][-1]


def test_non_chief_writes_nothing(digits, tmp_path):
    """A simulated non-chief worker runs every writing callback; model_dir stays empty."""
    s = strategy("mirrored", 2)
    chief = make_trainer(s, digits)
    trainer = make_trainer(s, digits, model_dir=str(tmp_path),
                           cluster=dataclasses.replace(chief.cluster, is_chief=False, worker_index=1))
    train = TrainInput(digits.train_examples, digits.num_train_examples, 32)
    out = io.StringIO()
    trainer.fit(train, epochs=2, steps_per_epoch=4, callbacks=[
        TensorBoard(update_freq=2), CSVLogger(), ModelCheckpoint("best.keras"), ProgressBar(stream=out),
        ModelCheckpoint("w/{epoch}", save_weights_only=True),
        EarlyStopping(monitor="loss", restore_best_weights=True, patience=5)])
    assert trainer.global_step == 8
    assert files_under(tmp_path) == [] and out.getvalue() == ""


@pytest.mark.slow
def test_progress_bar_prints_lines_when_not_a_terminal(digits):
    out = io.StringIO()
    fit(digits, [ProgressBar(stream=out, log_every_s=0.0)], epochs=2, steps_per_epoch=4)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("Epoch 1/2 - step 1/4") and "steps/s - ETA" in lines[0]
    assert sum(line.startswith("Epoch 2/2 - 4 steps") and "val_loss" in line for line in lines) == 1
    assert not math.isnan(float(lines[-1].split("loss: ")[1].split()[0]))


@pytest.mark.slow
def test_no_host_sync_per_step_when_no_callback_asks(digits, tmp_path):
    """With the default file callbacks on, metrics are read once per epoch, and the loop runs K steps a call."""
    trainer = make_trainer(strategy("mirrored", 2), digits, model_dir=str(tmp_path), steps_per_execution=5)
    reads, calls = [], []
    result, loop = trainer.train_metrics.result, trainer._make_train_loop
    trainer.train_metrics.result = lambda: reads.append(trainer.global_step) or result()

    def counting_loop():
        compiled = loop()
        return lambda iterator, k: calls.append(int(k)) or compiled(iterator, k)

    trainer._make_train_loop = counting_loop
    trainer.fit(TrainInput(digits.train_examples, digits.num_train_examples, 32), epochs=2, steps_per_epoch=20,
                callbacks=[TensorBoard(), CSVLogger(), ModelCheckpoint("m/{epoch}", save_weights_only=True),
                           ProgressBar(stream=io.StringIO(), updates_per_epoch=2)])
    assert calls == [5] * 8
    assert reads == [10, 20, 20, 30, 40, 40]  # the progress bar's 2 per epoch, and the epoch logs


@pytest.mark.slow
def test_early_stopping_restores_the_best_weights_and_reports_in_summary_json(digits, tmp_path):
    recorder = RecordWeights()
    stopper = EarlyStopping(patience=2, restore_best_weights=True)
    trainer = fit(digits, [InjectMonitor("val_loss", [3.0, 1.0, 2.0, 2.5, 0.5]), stopper, recorder,
                           RunSummary("mirrored")], epochs=5, steps_per_epoch=3, model_dir=str(tmp_path))
    assert trainer.history.epoch == [0, 1, 2, 3]  # stopped after two epochs without improvement
    for a, b in zip([v.numpy() for v in trainer.model.trainable_variables], recorder.by_epoch[1]):
        np.testing.assert_array_equal(a, b)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stop_reason"] == "early stopping: val_loss did not improve for 2 epochs (best 1 at epoch 2)"
    assert summary["best"]["EarlyStopping"] == {"monitor": "val_loss", "value": 1.0, "epoch": 2}
    assert summary["epochs_completed"] == 4 and summary["global_step"] == 12
    assert len(summary["history"]["val_loss"]) == 4
