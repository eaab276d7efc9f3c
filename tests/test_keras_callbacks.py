"""Stock Keras callbacks inside the harness: hooks with aggregated logs, `stop_training` and the learning rate as
agreed decisions, the same stops and reductions as the harness's own callbacks, a resume that keeps their counters,
and one line for the ones that would write on every worker. The 2-worker run: tests/test_multi_worker_features.py."""

import dataclasses
import os

import keras
import pytest

from callbacks import EarlyStopping, KerasCallback
from harness import EvalInput, TrainInput
from tests.callback_helpers import InjectMonitor, RecordLearningRate, fit
from tests.conftest import make_trainer, strategy
from tests.test_callbacks_keras_parity import SEQUENCES
from tests.test_exact_resume import SignalAt


@pytest.mark.slow
def test_a_bare_keras_lambda_callback_gets_every_hook_with_the_aggregated_logs(digits):
    calls = []
    callback = keras.callbacks.LambdaCallback(
        on_train_begin=lambda logs: calls.append("begin"),
        on_epoch_begin=lambda epoch, logs: calls.append(("epoch begin", epoch)),
        on_train_batch_begin=lambda batch, logs: calls.append(("batch begin", batch)),
        on_train_batch_end=lambda batch, logs: calls.append(("batch end", batch, sorted(logs))),
        on_epoch_end=lambda epoch, logs: calls.append(("epoch end", epoch, dict(logs))),
        on_train_end=lambda logs: calls.append("end"))
    trainer = make_trainer(strategy("mirrored", 2), digits, steps_per_execution=2)
    evaluation = EvalInput(digits.eval_examples, digits.num_eval_examples, 32)
    trainer.fit(TrainInput(digits.train_examples, digits.num_train_examples, 32), epochs=2, steps_per_epoch=4,
                validation_data=evaluation, validation_steps=evaluation.steps, callbacks=callback)  # not in a list
    metrics = ["accuracy", "loss"]
    epoch_logs = [{k: v[e] for k, v in trainer.history.history.items()} for e in (0, 1)]
    assert calls == ["begin", ("epoch begin", 0), ("batch begin", 0), ("batch end", 1, metrics), ("batch begin", 2),
                     ("batch end", 3, metrics), ("epoch end", 0, epoch_logs[0]), ("epoch begin", 1),
                     ("batch begin", 0), ("batch end", 1, metrics), ("batch begin", 2), ("batch end", 3, metrics),
                     ("epoch end", 1, epoch_logs[1]), "end"]


@pytest.mark.slow
def test_stop_training_set_by_a_keras_callback_stops_the_run_there(digits):
    class StopAfterSecondEpoch(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.tested = []

        def on_test_end(self, logs=None):
            self.tested.append(sorted(logs))  # evaluate's unprefixed names, as in Keras

        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.model.stop_training = True

    callback = StopAfterSecondEpoch()
    trainer = fit(digits, [callback], epochs=5, steps_per_epoch=3)
    assert trainer.history.epoch == [0, 1] and callback.tested == [["accuracy", "loss"]] * 2
    assert trainer.stop_reason == "keras StopAfterSecondEpoch set model.stop_training (epoch 2, step 6)"


def stop_epoch(trainer):
    return trainer.history.epoch[-1] if trainer.stop_reason else None


@pytest.mark.parametrize("sequence, options", [
    ("plateau", {"patience": 2}),
    ("noisy", {"patience": 2, "baseline": 1.41}),
    ("accuracy", {"patience": 3, "monitor": "val_accuracy"}),  # mode auto: up, as Keras infers for accuracy
])
@pytest.mark.slow
def test_keras_early_stopping_stops_at_the_same_epoch_as_the_harnesss(digits, sequence, options):
    values, monitor = SEQUENCES[sequence], options.get("monitor", "val_loss")
    theirs = fit(digits, [InjectMonitor(monitor, values), keras.callbacks.EarlyStopping(**options)],
                 epochs=len(values), steps_per_epoch=1)
    ours = fit(digits, [InjectMonitor(monitor, values), EarlyStopping(**options)], epochs=len(values),
               steps_per_epoch=1)
    assert stop_epoch(theirs) == stop_epoch(ours) is not None


@pytest.mark.parametrize("kind, make", [
    ("plateau", lambda module: module.ReduceLROnPlateau(patience=2, factor=0.1, cooldown=1)),
    ("scheduler", lambda module: module.LearningRateScheduler(lambda epoch, lr: lr * 0.5 if epoch in (3, 6) else lr)),
])
@pytest.mark.slow
def test_keras_plateau_and_scheduler_set_the_harnesss_rate_as_its_own_callbacks_do(digits, kind, make):
    import callbacks

    runs = []
    for module in (keras.callbacks, callbacks):
        recorder = RecordLearningRate()
        trainer = fit(digits, [InjectMonitor("val_loss", SEQUENCES["noisy"]), make(module), recorder], epochs=10,
                      steps_per_epoch=1, learning_rate=0.01)
        runs.append((recorder.rates, trainer.history.history["lr"], sorted(trainer.history.history)))
    (keras_rates, keras_lr, keras_keys), (our_rates, our_lr, our_keys) = runs
    assert keras_rates == pytest.approx(our_rates, rel=1e-6) and keras_lr == pytest.approx(our_lr, rel=1e-6)
    assert min(keras_rates) < 0.005  # (it did change the rate)
    assert keras_keys == our_keys and "learning_rate" not in keras_keys  # what Keras writes into logs stays its own


@pytest.mark.slow
def test_keras_early_stopping_counters_survive_a_resume(digits, tmp_path):
    values = SEQUENCES["plateau"]  # patience 2 stops at the end of the 5th epoch

    def run(model_dir, *extra):
        return fit(digits, [InjectMonitor("val_loss", values), keras.callbacks.EarlyStopping(patience=2), *extra],
                   epochs=len(values), steps_per_epoch=1, model_dir=str(model_dir))

    preempted = run(tmp_path / "run", SignalAt(epoch=3))
    assert preempted.state.signal == "SIGTERM" and preempted.history.epoch == [0, 1, 2, 3]
    resumed, reference = run(tmp_path / "run"), run(tmp_path / "reference")
    assert resumed.history.epoch == reference.history.epoch == [0, 1, 2, 3, 4]
    assert resumed.stop_reason == reference.stop_reason


@pytest.mark.parametrize("name, drop_in", [
    ("ModelCheckpoint", "callbacks.ModelCheckpoint (same options)"),
    ("TensorBoard", "callbacks.TensorBoard (same options)"),
    ("CSVLogger", "callbacks.CSVLogger (same options)"),
    ("BackupAndRestore", "the harness backs up and resumes by itself"),
    ("ProgbarLogger", "callbacks.ProgressBar"),
])
def test_keras_callbacks_that_write_on_every_worker_are_refused_naming_the_harnesss_class(tmp_path, name, drop_in):
    make = {"ModelCheckpoint": lambda: keras.callbacks.ModelCheckpoint(str(tmp_path / "m.keras")),
            "TensorBoard": lambda: keras.callbacks.TensorBoard(str(tmp_path)),
            "CSVLogger": lambda: keras.callbacks.CSVLogger(str(tmp_path / "log.csv")),
            "BackupAndRestore": lambda: keras.callbacks.BackupAndRestore(str(tmp_path)),
            "ProgbarLogger": keras.callbacks.ProgbarLogger}[name]
    with pytest.raises(ValueError, match=f"^keras.callbacks.{name} ") as e:
        KerasCallback(make())
    assert drop_in in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="restore_best_weights=True"):
        KerasCallback(keras.callbacks.EarlyStopping(restore_best_weights=True))


def test_a_keras_callback_saving_the_model_writes_on_the_chief_only(digits, tmp_path):
    class SaveAtEnd(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            self.model.save(os.path.join(self.path, "model.keras"))

    s = strategy("mirrored", 2)
    for is_chief, directory in ((True, tmp_path / "chief"), (False, tmp_path / "other")):
        trainer = make_trainer(s, digits)
        trainer.cluster = dataclasses.replace(trainer.cluster, is_chief=is_chief, worker_index=int(not is_chief))
        trainer.saver.is_chief = is_chief
        callback = SaveAtEnd()
        callback.path = str(directory)
        trainer.fit(TrainInput(digits.train_examples, digits.num_train_examples, 32), epochs=1, steps_per_epoch=2,
                    callbacks=[callback])
    assert (tmp_path / "chief/model.keras").exists() and not (tmp_path / "other").exists()


def test_the_options_of_keras_callbacks_that_decide_are_recorded():
    stock = keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=3, min_delta=0.01)
    config = KerasCallback(stock).get_config()
    assert config == {"class": "keras.callbacks.EarlyStopping", "monitor": "val_accuracy", "mode": "max",
                      "min_delta": 0.01, "patience": 3, "baseline": None, "start_from_epoch": 0}
    assert KerasCallback(keras.callbacks.LambdaCallback()).get_config() == {}  # an observer: nothing to record
