"""RunConfig validation and the run's recorded settings, as pure logic (no TensorFlow work)."""

import dataclasses
import math

import pytest

from harness import run_record
from harness.errors import UsageError
from harness.run_config import LAYOUT, LOCAL, MATH, RunConfig

FLOAT_FIELDS = [f.name for f in dataclasses.fields(RunConfig) if f.type.startswith("float")]


def record(config):
    recorded = config.recorded()
    return run_record.make_record(recorded[MATH], recorded[LAYOUT])


@pytest.mark.parametrize("name", FLOAT_FIELDS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_every_float_setting_refuses_non_finite_values(name, value):
    with pytest.raises(UsageError, match=f"^{name} must be a finite number") as e:
        RunConfig(**{name: value}).validate()
    assert e.value.as_flag().startswith(f"--{name} ")


@pytest.mark.parametrize("changes, message", [
    ({"epochs": 0}, "epochs must be >= 1"),
    ({"steps_per_execution": 0}, "steps_per_execution must be >= 1"),
    ({"global_batch_size": -4}, "global_batch_size must be >= 1"),
    ({"num_cpu_devices": 0}, "num_cpu_devices must be >= 1"),
    ({"checkpoint_every_n_steps": 0}, "checkpoint_every_n_steps must be >= 1"),
    ({"early_stopping_patience": -1}, "early_stopping_patience must be >= 0"),
    ({"min_delta": -0.1}, "min_delta must be >= 0"),
    ({"learning_rate": 0.0}, "learning_rate must be > 0"),
    ({"checkpoint_every_n_seconds": 0.0}, "checkpoint_every_n_seconds must be > 0"),
    ({"heartbeat_timeout_s": -1.0}, "heartbeat_timeout_s must be > 0"),
    ({"seed": -1}, "seed must be in 0..4294967295"),
    ({"seed": 2**32}, "seed must be in 0..4294967295"),
    ({"reduce_lr_factor": 1.0}, r"reduce_lr_factor must be in \(0, 1\)"),
    ({"model_dir": ""}, "model_dir must not be empty"),
    ({"monitor": "val_auc"}, "monitor is 'val_auc', not a metric of this run; choose one of loss, accuracy"),
    ({"model": "vit"}, "model is 'vit'; choose one of mlp, cnn, resnet"),
    ({"strategy": "horovod"}, "strategy is 'horovod'; choose one of default"),
    ({"profile_steps": "5"}, "profile_steps must be 'start,stop'"),
    ({"profile_steps": "9,3"}, "profile_steps must be 'start,stop' with 0 <= start <= stop"),
])
def test_bad_settings_name_the_setting_and_the_fix(changes, message):
    with pytest.raises(UsageError, match=f"^{message}") as e:
        RunConfig(**changes).validate()
    assert "\n" not in str(e.value)


def test_every_field_has_help_and_a_kind():
    for field in dataclasses.fields(RunConfig):
        assert field.metadata["help"].endswith(".") and field.metadata["kind"] in (MATH, LAYOUT, LOCAL), field.name


def test_a_resume_that_changes_the_mathematics_is_refused_with_every_difference():
    before = record(RunConfig())
    after = record(RunConfig(global_batch_size=32, optimizer="sgd", steps_per_execution=4))
    with pytest.raises(run_record.SettingsChanged) as e:
        run_record.check_resume(before, after, "runs/x")
    message = e.value.as_flag()
    assert "--global_batch_size 64 -> 32" in message and "--optimizer \"adam\" -> \"sgd\"" in message
    assert "steps_per_execution" not in message  # a layout change is not a reason to refuse
    assert "rerun with the recorded settings" in message and "new --model_dir" in message and "\n" not in message
    assert str(e.value).startswith("model_dir runs/x holds a run with other settings")  # library names, no --


def test_a_resume_that_changes_only_the_layout_is_allowed_and_reported():
    before = record(RunConfig())
    after = record(RunConfig(strategy="default", steps_per_execution=8, num_cpu_devices=4, tensorboard=False,
                             epochs=20, model_dir="elsewhere"))
    changed = run_record.check_resume(before, after, "runs/x")
    assert sorted(name for name, _, _ in changed) == ["epochs", "num_cpu_devices", "steps_per_execution", "strategy",
                                                      "tensorboard"]


def test_a_record_survives_its_json_round_trip():
    config = RunConfig(profile_steps="1,2", tpu=None)
    assert run_record.normalise(record(config)) == record(config)
    assert run_record.check_resume(run_record.normalise(record(config)), record(config), "x") == []


def test_tasks_of_one_job_must_agree_on_everything_but_the_data_location():
    chief = record(RunConfig(data_dir="/shared"))
    run_record.check_same_job(chief, record(RunConfig(data_dir="/local")), "worker:1", ignore=("data_dir",))
    with pytest.raises(run_record.SettingsDifferAcrossTasks) as e:
        run_record.check_same_job(chief, record(RunConfig(data_dir="/shared", steps_per_execution=2)), "worker:1")
    assert e.value.as_flag().startswith("worker:1 was started with other settings than the chief: "
                                        "--steps_per_execution is 2 here but 1 on the chief")
    assert "\n" not in str(e.value)


def test_a_setting_added_after_a_run_was_recorded_counts_as_its_default():
    recorded = record(RunConfig())
    del recorded[MATH]["seed"]  # as if the run was recorded before --seed existed
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    assert run_record.check_resume(recorded, record(RunConfig()), "x", defaults) == []
    with pytest.raises(run_record.SettingsChanged, match="seed 0 -> 7"):
        run_record.check_resume(recorded, record(RunConfig(seed=7)), "x", defaults)
