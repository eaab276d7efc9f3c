"""Every callback flag of scripts/train.py reaches every callback the README's flag table says it configures."""

import pytest

from callbacks import (
    CSVLogger,
    EarlyStopping,
    LearningRateScheduler,
    ModelCheckpoint,
    ProgressBar,
    ReduceLROnPlateau,
    TensorBoard,
    TerminateOnNaN,
)
from harness.run import build_callbacks
from harness.run_config import RunConfig

ON = {"early_stopping_patience": 2, "reduce_lr_on_plateau_patience": 3, "save_best_only": True}


def built(**flags):
    return build_callbacks(RunConfig(**{**ON, **flags}), total_steps=100)


def one(callbacks, cls):
    found = [cb for cb in callbacks if isinstance(cb, cls)]
    assert len(found) == 1, (cls.__name__, callbacks)
    return found[0]


def config(cb):
    return cb.get_config() if cb.get_config() else vars(cb)


@pytest.mark.parametrize("flag, value, reaches", [
    ("monitor", "val_accuracy", {EarlyStopping: ("monitor", "val_accuracy"),
                                 ReduceLROnPlateau: ("monitor", "val_accuracy"),
                                 ModelCheckpoint: ("monitor", "val_accuracy")}),
    ("mode", "max", {EarlyStopping: ("mode", "max"), ReduceLROnPlateau: ("mode", "max")}),
    ("min_delta", 0.25, {EarlyStopping: ("min_delta", 0.25), ReduceLROnPlateau: ("min_delta", 0.25)}),
    ("early_stopping_patience", 7, {EarlyStopping: ("patience", 7)}),
    ("restore_best_weights", True, {EarlyStopping: ("restore_best_weights", True)}),
    ("reduce_lr_on_plateau_patience", 5, {ReduceLROnPlateau: ("patience", 5)}),
    ("reduce_lr_factor", 0.5, {ReduceLROnPlateau: ("factor", 0.5)}),
    ("min_lr", 1e-5, {ReduceLROnPlateau: ("min_lr", 1e-5)}),
    ("max_to_keep", 9, {ModelCheckpoint: ("max_to_keep", 9)}),
    ("update_freq", 25, {TensorBoard: ("update_freq", 25)}),
    ("histogram_freq", 2, {TensorBoard: ("histogram_freq", 2)}),
    ("tensorboard_dir", "/tmp/tb", {TensorBoard: ("log_dir", "/tmp/tb")}),
    ("monitor_every", "validation", {EarlyStopping: ("monitor_freq", "validation"),
                                     ReduceLROnPlateau: ("monitor_freq", "validation"),
                                     ModelCheckpoint: ("save_freq", "validation")}),
])
def test_a_flag_reaches_each_callback_it_configures(flag, value, reaches):
    callbacks = built(**{flag: value})
    for cls, (attribute, expected) in reaches.items():
        assert config(one(callbacks, cls))[attribute] == expected, (flag, cls.__name__)


def test_profile_steps_reach_tensorboard():
    assert one(built(profile_steps="3,5"), TensorBoard)._profile_range == (3, 5)


@pytest.mark.parametrize("flag, cls", [("tensorboard", TensorBoard), ("csv_log", CSVLogger), ("progress", ProgressBar),
                                       ("terminate_on_nan", TerminateOnNaN), ("save_best_only", ModelCheckpoint)])
def test_a_switch_adds_or_removes_its_callback(flag, cls):
    assert any(isinstance(cb, cls) for cb in built(**{flag: True}))
    assert not any(isinstance(cb, cls) for cb in built(**{flag: False}))


@pytest.mark.parametrize("flags, schedule", [
    ({"lr_schedule": "cosine", "learning_rate": 0.1}, {"class": "Cosine", "initial_learning_rate": 0.1,
                                                       "decay_steps": 100}),
    ({"lr_schedule": "linear", "decay_steps": 40}, {"class": "Linear", "decay_steps": 40}),
    ({"lr_schedule": "step", "lr_decay_rate": 0.5, "decay_steps": 10}, {"class": "StepDecay", "decay_rate": 0.5,
                                                                       "decay_steps": 10}),
    ({"lr_schedule": "cosine", "warmup_steps": 20}, {"class": "Warmup", "warmup_steps": 20}),
    ({"warmup_steps": 5}, {"class": "Warmup", "warmup_steps": 5}),
])
def test_schedule_flags_reach_the_learning_rate_scheduler(flags, schedule):
    recorded = one(built(**flags), LearningRateScheduler).get_config()["schedule"]
    assert {k: recorded[k] for k in schedule} == schedule
    if flags.get("lr_schedule") == "cosine" and flags.get("warmup_steps"):
        assert recorded["after"]["decay_steps"] == 100 - flags["warmup_steps"]  # decay after the warm-up


def test_the_constant_schedule_adds_no_scheduler():
    assert not any(isinstance(cb, LearningRateScheduler) for cb in built())
