"""Fed the same monitored values, our EarlyStopping and ReduceLROnPlateau act at the same epochs as
Keras's; our schedules give the same learning rates as keras.optimizers.schedules."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from callbacks import EarlyStopping, LearningRateScheduler, ReduceLROnPlateau, schedules
from tests.callback_helpers import InjectMonitor, RecordLearningRate, fit

SEQUENCES = {
    "plateau": [1.0, 0.8, 0.79, 0.81, 0.82, 0.83, 0.7, 0.9, 0.95, 0.96],
    "noisy": [2.0, 1.5, 1.6, 1.4, 1.45, 1.44, 1.43, 1.42, 1.6, 1.7],
    "rising": [0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4],
    "accuracy": [0.1, 0.5, 0.6, 0.6, 0.59, 0.61, 0.6, 0.58, 0.57, 0.56],
}
ES_CASES = [
    ("plateau", {"patience": 2}),
    ("plateau", {"patience": 1, "min_delta": 0.05}),
    ("noisy", {"patience": 3}),
    ("noisy", {"patience": 2, "baseline": 1.41}),
    ("rising", {"patience": 0}),
    ("rising", {"patience": 2, "start_from_epoch": 3}),
    ("accuracy", {"patience": 2, "monitor": "val_accuracy", "mode": "max"}),
    ("accuracy", {"patience": 3, "monitor": "val_accuracy"}),
]


def keras_options(options):
    """Keras infers 'max' for accuracy only from a compiled metric object; say it explicitly."""
    if "accuracy" in options.get("monitor", "") and "mode" not in options:
        return {**options, "mode": "max"}
    return options


def keras_model():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    return model


def keras_early_stopping_epoch(values, options):
    model = keras_model()
    cb = keras.callbacks.EarlyStopping(**keras_options(options))
    cb.set_model(model)
    cb.on_train_begin()
    for epoch, value in enumerate(values):
        cb.on_epoch_end(epoch, {options.get("monitor", "val_loss"): value})
        if model.stop_training:
            return epoch
    return None


def our_early_stopping_epoch(values, options):
    stopper = EarlyStopping(**options)
    for epoch, value in enumerate(values):
        if stopper.evaluate_stopping_criteria(epoch, value)[0]:
            return epoch
    return None


@pytest.mark.parametrize("sequence, options", ES_CASES)
def test_early_stopping_criteria_stop_at_the_same_epoch_as_keras(sequence, options):
    values = SEQUENCES[sequence]
    assert our_early_stopping_epoch(values, options) == keras_early_stopping_epoch(values, options)


@pytest.mark.slow
def test_early_stopping_stops_training_at_the_epoch_its_criteria_say(digits):
    values, options = SEQUENCES["plateau"], {"patience": 2}
    trainer = fit(digits, [InjectMonitor("val_loss", values), EarlyStopping(**options)], epochs=len(values),
                  steps_per_epoch=1)
    assert trainer.history.epoch[-1] == keras_early_stopping_epoch(values, options)
    assert trainer.stop_reason.startswith("early stopping: val_loss did not improve for 2 epochs")


def keras_plateau_rates(values, options):
    model = keras_model()
    cb = keras.callbacks.ReduceLROnPlateau(**keras_options(options))
    cb.set_model(model)
    cb.on_train_begin()
    rates = [float(model.optimizer.learning_rate)]
    for epoch, value in enumerate(values):
        cb.on_epoch_end(epoch, {options.get("monitor", "val_loss"): value})
        rates.append(float(model.optimizer.learning_rate))
    return rates


PLATEAU_CASES = [
    ("plateau", {"patience": 1, "factor": 0.5}),
    ("noisy", {"patience": 2, "factor": 0.1, "cooldown": 1}),
    ("rising", {"patience": 1, "factor": 0.5, "min_lr": 0.002}),
    ("accuracy", {"patience": 1, "factor": 0.5, "monitor": "val_accuracy", "min_delta": 0.0}),
]


@pytest.mark.parametrize("sequence, options", PLATEAU_CASES)
def test_plateau_criteria_reduce_at_the_same_epochs_as_keras(sequence, options):
    values = SEQUENCES[sequence]
    plateau, rates = ReduceLROnPlateau(**options), [0.01]
    for value in values:
        new = plateau.evaluate_plateau(value, rates[-1])
        rates.append(rates[-1] if new is None else new)
    np.testing.assert_allclose(rates, keras_plateau_rates(values, options), rtol=1e-6)


@pytest.mark.slow
def test_reduce_lr_on_plateau_changes_the_trainers_rate_when_its_criteria_say(digits):
    sequence, options = PLATEAU_CASES[1]
    values = SEQUENCES[sequence]
    recorder = RecordLearningRate()
    trainer = fit(digits, [InjectMonitor("val_loss", values), ReduceLROnPlateau(**options), recorder],
                  epochs=len(values), steps_per_epoch=1, learning_rate=0.01)
    rates = recorder.rates + [trainer.learning_rate.current(trainer.global_step)]
    np.testing.assert_allclose(rates, keras_plateau_rates(values, options), rtol=1e-6)


@pytest.mark.slow
def test_reduce_lr_on_plateau_composes_with_a_per_step_schedule(digits):
    """Keras raises a TypeError here; the harness scales the schedule."""
    schedule = schedules.Cosine(0.01, decay_steps=100)
    values = [1.0, 1.0, 1.0, 1.0]
    trainer = fit(digits, [InjectMonitor("val_loss", values), LearningRateScheduler(schedule),
                           ReduceLROnPlateau(patience=1, factor=0.5)], epochs=4, steps_per_epoch=5)
    # No improvement after epoch 1: the rate halves at the ends of epochs 2, 3 and 4, on top of the schedule.
    assert trainer.learning_rate.current(trainer.global_step) == pytest.approx(0.125 * float(schedule(20)), rel=1e-6)
    # The logged rate is the one in effect during the epoch (before that epoch's reduction).
    assert trainer.history.history["lr"] == pytest.approx([float(schedule(5)), float(schedule(10)),
                                                           0.5 * float(schedule(15)), 0.25 * float(schedule(20))],
                                                          rel=1e-6)


STEPS = tf.range(0, 160, dtype=tf.int64)


@pytest.mark.parametrize("ours, theirs", [
    (schedules.Cosine(0.1, 100, alpha=0.1), keras.optimizers.schedules.CosineDecay(0.1, 100, alpha=0.1)),
    (schedules.Warmup(schedules.Cosine(0.5, 100), warmup_steps=20, initial_learning_rate=0.01),
     keras.optimizers.schedules.CosineDecay(0.01, 100, warmup_target=0.5, warmup_steps=20)),
    (schedules.StepDecay(0.1, 10, 0.5), keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5, staircase=True)),
    (schedules.Linear(0.1, 50, end_learning_rate=0.01),
     keras.optimizers.schedules.PolynomialDecay(0.1, 50, end_learning_rate=0.01, power=1.0)),
])
def test_schedules_match_keras(ours, theirs):
    np.testing.assert_allclose([float(ours(s)) for s in STEPS], [float(theirs(s)) for s in STEPS], rtol=1e-5, atol=1e-8)


def test_per_step_schedule_runs_in_graph_every_step(digits):
    schedule = schedules.StepDecay(0.05, decay_steps=7, decay_rate=0.5)
    trainer = fit(digits, [LearningRateScheduler(schedule)], epochs=2, steps_per_epoch=10, steps_per_execution=4)
    # The optimizer's own variable holds the rate of the last update (step 19), set inside the compiled loop.
    assert float(trainer.optimizer.learning_rate.numpy()) == pytest.approx(float(schedule(19)))
    assert trainer.history.history["lr"] == pytest.approx([float(schedule(10)), float(schedule(20))])
    assert trainer.train_loop_traces == 1


@pytest.mark.slow
def test_keras_style_epoch_schedule(digits):
    trainer = fit(digits, [LearningRateScheduler(lambda epoch, lr: 0.1 / (epoch + 1))], epochs=3, steps_per_epoch=2)
    assert trainer.history.history["lr"] == pytest.approx([0.1, 0.05, 0.1 / 3])


def test_keras_learning_rate_schedule_objects_work_as_per_step(digits):
    schedule = keras.optimizers.schedules.ExponentialDecay(0.05, 5, 0.5, staircase=True)
    trainer = fit(digits, [LearningRateScheduler(schedule)], epochs=1, steps_per_epoch=10)
    assert trainer.history.history["lr"] == pytest.approx([float(schedule(10))])


@pytest.mark.parametrize("make, message", [
    (lambda: ReduceLROnPlateau(factor=1.0), "factor must be in"),
    (lambda: EarlyStopping(patience=-1), "patience must be >= 0"),
    (lambda: EarlyStopping(mode="sideways"), "unknown mode 'sideways'"),
])
def test_bad_options_are_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_unknown_monitor_is_an_error_and_absent_one_a_single_warning(digits, caplog):
    with pytest.raises(ValueError, match="monitor 'val_acc' is not a metric of this run"):
        fit(digits, [EarlyStopping(monitor="val_acc")], epochs=1, steps_per_epoch=1)
    with caplog.at_level("WARNING"):
        trainer = fit(digits, [EarlyStopping(monitor="val_loss", patience=0)], epochs=3, steps_per_epoch=1,
                      validation=False)
    assert trainer.stop_reason is None
    assert sum("not in the logs" in r.getMessage() for r in caplog.records) == 1
