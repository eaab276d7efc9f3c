"""The exponential moving average of the weights: exact on mirrored x2, swapped in and out bitwise,
used by validation, best weights and the export, part of the checkpoint and of the recorded settings,
and absent (no variables, no retrace) when off."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from callbacks import Callback, EarlyStopping
from harness import EvalInput, TrainInput
from harness.run import RunConfig, run
from harness.run_record import SettingsChanged
from tests.callback_helpers import InjectMonitor
from tests.conftest import make_trainer, strategy
from tests.test_exact_resume import SignalAt

STEPS = 10


def train_input(source):
    return TrainInput(source.train_examples, source.num_train_examples, 32)


def eval_input(source):
    return EvalInput(source.eval_examples, source.num_eval_examples, 32)


def averages(trainer):
    return [v.numpy() for v in trainer.ema.averages]


def weights(trainer):
    return [v.numpy() for v in trainer.model.trainable_variables]


class RecordWeights(Callback):
    """The trainable weights after every K-step loop (every step with K=1), and the EMA at each epoch end."""

    def __init__(self, trainer):
        self.trainer, self.after_step, self.ema_by_epoch = trainer, [], []

    def on_train_batch_end(self, step, logs=None):
        self.after_step.append(weights(self.trainer))

    def on_epoch_end(self, epoch, logs=None):
        self.ema_by_epoch.append(averages(self.trainer))


def test_the_average_equals_its_closed_form_on_every_replica(digits):
    decay, n = 0.8, 12
    trainer = make_trainer(strategy("mirrored", 2), digits, ema_decay=decay)
    recorder = RecordWeights(trainer)
    trainer.fit(train_input(digits), epochs=1, steps_per_epoch=n, callbacks=[recorder])
    w = [[np.float64(x) for x in step] for step in recorder.after_step]  # w[t - 1]: after update t
    for i, average in enumerate(trainer.ema.averages):
        # The first update copies the weights; each later one moves the average by (1 - decay).
        expected = decay ** (n - 1) * w[0][i] + sum((1 - decay) * decay ** (n - t) * w[t - 1][i]
                                                    for t in range(2, n + 1))
        copies = [c.numpy() for c in average.values]
        assert len(copies) == 2
        np.testing.assert_array_equal(copies[0], copies[1])  # one value on every replica
        np.testing.assert_allclose(copies[0], expected, rtol=0, atol=1e-6)
    assert np.abs(averages(trainer)[0] - weights(trainer)[0]).max() > 1e-4  # an average, not the weights


def test_swapping_in_the_average_and_back_restores_the_weights_bitwise(digits):
    trainer = make_trainer(strategy("mirrored", 2), digits, ema_decay=0.5, steps_per_execution=3)
    trainer.fit(train_input(digits), epochs=1, steps_per_epoch=STEPS)
    trained, average = weights(trainer), averages(trainer)
    for _ in range(3):
        with trainer.evaluated_weights(), trainer.evaluated_weights():  # nested: still the average
            for a, b in zip(weights(trainer), average):
                np.testing.assert_array_equal(a, b)
        for a, b in zip(weights(trainer), trained):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(averages(trainer), average):
            np.testing.assert_array_equal(a, b)
    assert trainer.ema._exchange_all.experimental_get_tracing_count() == 1  # assignments, nothing re-created


@pytest.mark.slow
def test_validation_evaluates_the_average(digits):
    trainer = make_trainer(strategy("mirrored", 2), digits, ema_decay=0.7, steps_per_execution=2)
    history = trainer.fit(train_input(digits), epochs=2, steps_per_epoch=STEPS, validation_data=eval_input(digits),
                          validation_steps=eval_input(digits).steps)
    offline = make_trainer(strategy("mirrored", 2), digits, seed=1)  # another model, given the average
    for variable, value in zip(offline.model.trainable_variables, averages(trainer)):
        variable.assign(value)
    logs = offline.evaluate(eval_input(digits), eval_input(digits).steps)
    assert history.history["val_loss"][-1] == pytest.approx(logs["loss"], rel=1e-6)
    assert history.history["val_accuracy"][-1] == pytest.approx(logs["accuracy"], rel=1e-6)
    for variable, value in zip(offline.model.trainable_variables, weights(trainer)):
        variable.assign(value)
    assert offline.evaluate(eval_input(digits), eval_input(digits).steps)["loss"] != pytest.approx(logs["loss"])
    assert trainer.train_loop_traces == 1


def test_early_stopping_restores_the_best_average(digits):
    trainer = make_trainer(strategy("mirrored", 2), digits, ema_decay=0.5)
    recorder = RecordWeights(trainer)
    trainer.fit(train_input(digits), epochs=5, steps_per_epoch=3, callbacks=[
        recorder, InjectMonitor("loss", [3.0, 1.0, 2.0, 2.5, 0.5]), EarlyStopping("loss", patience=2,
                                                                                  restore_best_weights=True)])
    assert trainer.history.epoch == [0, 1, 2, 3]
    for a, b, c in zip(weights(trainer), averages(trainer), recorder.ema_by_epoch[1]):
        np.testing.assert_array_equal(a, c)  # the model ends on the best epoch's average ...
        np.testing.assert_array_equal(b, c)  # ... and so does the average (the export's weights)


def final_checkpoint(model_dir):
    return checkpoint_at(tf.train.latest_checkpoint(f"{model_dir}/checkpoints"))


def checkpoint_at(path):
    reader = tf.train.load_checkpoint(path)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}


def ema_of(checkpoint):
    keys = sorted((k for k in checkpoint if k.startswith("ema/averages/")), key=lambda k: int(k.split("/")[2]))
    return [checkpoint[k] for k in keys]


def test_the_export_and_the_best_checkpoint_hold_the_average(digits, data_dir, tmp_path):
    config = RunConfig(strategy="mirrored", num_cpu_devices=2, model_dir=str(tmp_path / "run"), data_dir=data_dir,
                       epochs=1, steps_per_epoch=STEPS, ema_decay=0.8, export_dir=str(tmp_path / "export"),
                       save_best_only=True, progress=False, tensorboard=False, csv_log=False, optimizer="sgd",
                       learning_rate=0.1)
    summary = run(config)
    assert summary["ema_decay"] == 0.8 and summary["evaluated_with"] == "ema"
    written = json.loads((tmp_path / "run/summary.json").read_text())
    assert (written["ema_decay"], written["evaluated_with"]) == (0.8, "ema")
    average = ema_of(final_checkpoint(tmp_path / "run"))
    assert len(average) == 6
    exported = keras.models.load_model(tmp_path / "export/model.keras")
    for a, b in zip(exported.trainable_weights, average):
        np.testing.assert_array_equal(a.numpy(), b)
    images = np.random.default_rng(0).random([4, 8, 8, 1]).astype(np.float32)
    loaded = tf.saved_model.load(str(tmp_path / "export/saved_model"))
    np.testing.assert_allclose(loaded.serve(images).numpy(), exported.predict(images, verbose=0), rtol=0, atol=1e-6)
    best = tf.train.load_checkpoint(str(tmp_path / "run/best/epoch0001"))
    kernels = sorted(k for k in best.get_variable_to_shape_map() if "kernel" in k)
    np.testing.assert_array_equal(best.get_tensor(kernels[0]), average[0])


@pytest.mark.parametrize("accumulation", [1, 2])
@pytest.mark.slow
def test_the_average_resumes_bitwise(digits, tmp_path, accumulation):
    def trainer(model_dir):
        return make_trainer(strategy("mirrored", 2), digits, optimizer="adam", learning_rate=1e-3, ema_decay=0.9,
                            model_dir=str(model_dir), steps_per_execution=3, gradient_accumulation_steps=accumulation)

    first = trainer(tmp_path / "run")
    first.fit(train_input(digits), epochs=2, steps_per_epoch=STEPS, callbacks=[SignalAt(step=STEPS + 4)])
    assert first.last_checkpoint[0] == STEPS + 6
    assert len(ema_of(final_checkpoint(tmp_path / "run"))) == 6
    resumed = trainer(tmp_path / "run")
    resumed.fit(train_input(digits), epochs=2, steps_per_epoch=STEPS)
    reference = trainer(tmp_path / "reference")
    reference.fit(train_input(digits), epochs=2, steps_per_epoch=STEPS)
    for a, b in zip(averages(resumed) + weights(resumed), averages(reference) + weights(reference)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("decay, shown", [(0.99, "ema_decay 0.9 -> 0.99"), (None, "ema_decay 0.9 -> null")])
def test_a_resume_with_another_decay_is_refused(digits, tmp_path, decay, shown):
    make_trainer(strategy("default"), digits, model_dir=str(tmp_path), ema_decay=0.9).fit(
        train_input(digits), epochs=1, steps_per_epoch=2)
    with pytest.raises(SettingsChanged, match=shown):
        make_trainer(strategy("default"), digits, model_dir=str(tmp_path), ema_decay=decay).fit(
            train_input(digits), epochs=2, steps_per_epoch=2)


def test_without_ema_nothing_is_added(digits, tmp_path):
    trainer = make_trainer(strategy("mirrored", 2), digits, model_dir=str(tmp_path), steps_per_execution=2)
    assert trainer.ema is None and trainer.accumulator is None
    trainer.fit(train_input(digits), epochs=2, steps_per_epoch=4, validation_data=eval_input(digits),
                validation_steps=eval_input(digits).steps)
    assert trainer.train_loop_traces == 1
    assert not [k for k in final_checkpoint(tmp_path) if k.startswith(("ema", "accumulated"))]
    recorded = json.loads((tmp_path / "run.json").read_text())["settings"]["math"]
    assert "ema_decay" not in recorded and "gradient_accumulation_steps" not in recorded


@pytest.mark.parametrize("decay", [0.0, 1.0, 1.5, float("nan")])
def test_a_decay_outside_zero_one_is_a_usage_error(digits, decay):
    from harness import UsageError

    with pytest.raises(UsageError, match=r"^ema_decay must be in \(0, 1\)"):
        make_trainer(strategy("default"), digits, ema_decay=decay)
    with pytest.raises(UsageError, match=r"^ema_decay must be (in \(0, 1\)|a finite number)"):
        RunConfig(ema_decay=decay).validate()


@pytest.mark.slow  # trains, then runs the evaluator task
def test_the_evaluator_task_evaluates_the_checkpoints_average(digits, data_dir, tmp_path, monkeypatch):
    """As training's validation does: each checkpoint's EMA, restored into a fresh model, evaluates the same."""
    from tests.test_evaluator import EVALUATOR_TF_CONFIG, config, evaluations, offline_evaluation

    model_dir = tmp_path / "run"
    trained = run(config(model_dir, data_dir, ema_decay=0.8))
    monkeypatch.setenv("TF_CONFIG", EVALUATOR_TF_CONFIG)
    run(config(model_dir, data_dir, strategy="multi_worker_mirrored", eval_timeout_s=60, ema_decay=0.8))
    records = evaluations(model_dir)
    assert records and records[-1]["step"] == 10
    for record in records:
        model = keras.models.clone_model(make_trainer(strategy("default"), digits).model)
        for variable, value in zip(model.trainable_variables, ema_of(checkpoint_at(record["checkpoint"]))):
            variable.assign(value)
        path = str(tmp_path / f"ema-{record['step']}")
        tf.train.Checkpoint(model=model).write(path)
        expected = offline_evaluation(path, digits, 32)
        assert record["val_loss"] == pytest.approx(expected["val_loss"], abs=1e-6)
        assert record["val_accuracy"] == pytest.approx(expected["val_accuracy"], abs=1e-6)
    assert records[-1]["val_loss"] == pytest.approx(trained["history"]["val_loss"][-1], rel=1e-6)
