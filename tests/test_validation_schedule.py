"""Step-wise validation (`validation_every_n_steps`): exact steps, the callbacks that act on each validation,
what a checkpoint holds, and exact resume. In-process, tiny epochs; the 2-worker run is in
tests/test_multi_worker_features.py."""

import json

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

from callbacks import Callback, EarlyStopping, ModelCheckpoint, ReduceLROnPlateau, RunSummary, TensorBoard
from harness import EvalInput, TrainInput, UsageError
from harness.checkpointing import read_progress
from harness.validation_schedule import ValidationSchedule
from tests.conftest import make_trainer, strategy

STEPS, EVERY, K = 20, 7, 4
VALIDATION_STEPS = [7, 14, 20, 21, 28, 35, 40, 42, 49, 56, 60]  # every 7th step, and the epoch ends


class InjectValidation(Callback):
    """Replaces val_loss at each validation with a scripted value (its position survives a resume)."""

    def __init__(self, values):
        self.values, self.seen = list(values), 0

    def on_validation_end(self, step, logs=None):
        logs["val_loss"] = self.values[self.seen]
        self.seen += 1

    def get_state(self):
        return {"seen": self.seen}

    def set_state(self, state):
        self.seen = state["seen"]


class CrashAt(Callback):
    """Raises (a crash, in-process) at the end of the loop reaching `step`."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, step, logs=None):
        if step == self.step:
            raise RuntimeError(f"crash at step {step}")


def fit(source, model_dir=None, callbacks=(), *, epochs=3, every=EVERY, replicas=2, **kwargs):
    trainer = make_trainer(strategy("mirrored", replicas), source, model_dir=model_dir, steps_per_execution=K,
                           **kwargs)
    evaluation = EvalInput(source.eval_examples, source.num_eval_examples, 32)
    trainer.fit(TrainInput(source.train_examples, source.num_train_examples, 32), epochs=epochs,
                steps_per_epoch=STEPS, validation_data=evaluation, validation_steps=evaluation.steps,
                callbacks=list(callbacks), validation_every_n_steps=every)
    return trainer


def test_the_schedule_cuts_loops_at_every_multiple():
    schedule = ValidationSchedule(7, has_validation=True)
    assert [schedule.loop_length(s, 4) for s in (0, 4, 7, 12, 13, 14)] == [4, 3, 4, 2, 1, 4]
    assert [s for s in range(1, 30) if schedule.due(s)] == [7, 14, 21, 28]
    off = ValidationSchedule(None, has_validation=False)
    assert off.loop_length(5, 4) == 4 and not off.due(7)
    with pytest.raises(UsageError, match="validation_every_n_steps needs validation_data"):
        ValidationSchedule(7, has_validation=False)
    with pytest.raises(UsageError, match="validation_every_n_steps must be an integer >= 1"):
        ValidationSchedule(0, has_validation=True)


@pytest.mark.slow
def test_validation_at_every_multiple_and_the_epoch_ends_without_retracing(digits, tmp_path):
    reads, trainer = [], None

    class Loops(Callback):
        def __init__(self):
            self.ends = []

        def on_train_batch_end(self, step, logs=None):
            self.ends.append(step)

    loops = Loops()
    trainer = make_trainer(strategy("mirrored", 2), digits, model_dir=str(tmp_path), steps_per_execution=K)
    result = trainer.train_metrics.result
    trainer.train_metrics.result = lambda: reads.append(trainer.global_step) or result()
    evaluation = EvalInput(digits.eval_examples, digits.num_eval_examples, 32)
    trainer.fit(TrainInput(digits.train_examples, digits.num_train_examples, 32), epochs=3, steps_per_epoch=STEPS,
                validation_data=evaluation, validation_steps=evaluation.steps, validation_every_n_steps=EVERY,
                callbacks=[loops, TensorBoard(), RunSummary("mirrored")])
    assert [v["step"] for v in trainer.history.validation_history] == VALIDATION_STEPS
    assert set(loops.ends) >= set(VALIDATION_STEPS) and loops.ends[:6] == [4, 7, 11, 14, 18, 20]  # cut at multiples
    assert trainer.train_loop_traces == 1 and reads == [20, 40, 60]  # no new train-metric reads, no retrace
    # The epoch ends' validations are the epoch logs' val_ metrics.
    at_ends = [v for v in trainer.history.validation_history if v["step"] % STEPS == 0]
    assert [v["val_loss"] for v in at_ends] == trainer.history.history["val_loss"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["validation_history"] == trainer.history.validation_history
    assert sorted(summary["validation_history"][0]) == ["step", "val_accuracy", "val_loss"]
    events = EventAccumulator(str(tmp_path / "tensorboard/validation"), size_guidance={"tensors": 0})
    events.Reload()
    loss = [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in events.Tensors("evaluation_loss_vs_iterations")]
    assert [s for s, _ in loss] == VALIDATION_STEPS
    assert [v for _, v in loss] == pytest.approx([v["val_loss"] for v in trainer.history.validation_history])
    assert [e.step for e in events.Tensors("epoch_loss")] == [20, 40, 60]  # the epoch curve as before


@pytest.mark.slow
def test_early_stopping_per_validation_stops_at_that_step_and_checkpoints_it(digits, tmp_path):
    values = [3.0, 2.0, 2.5, 2.6, 2.7, 2.8]  # best at the second validation (step 14); patience 2 ends at step 21
    stopper = EarlyStopping(patience=2, monitor_freq="validation")
    trainer = fit(digits, str(tmp_path), [InjectValidation(values), stopper, RunSummary("mirrored")])
    assert trainer.global_step == 21 and trainer.history.epoch == [0]
    assert trainer.stop_reason == "early stopping: val_loss did not improve for 2 validations (best 2 at step 14)"
    assert (stopper.best, stopper.best_step, stopper.validations) == (2.0, 14, 4)
    step, path = trainer.last_checkpoint
    progress = read_progress(path)
    assert step == 21 and progress["stop_reason"] == trainer.stop_reason
    assert progress["callbacks"]["EarlyStopping"]["validations"] == 4
    assert [v["step"] for v in progress["callbacks"]["History"]["validation_history"]] == [7, 14, 20, 21]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["best"]["EarlyStopping"] == {"monitor": "val_loss", "value": 2.0, "epoch": 1, "step": 14}
    rerun = fit(digits, str(tmp_path), [InjectValidation(values), EarlyStopping(patience=2, monitor_freq="validation")])
    assert not rerun.trained_in_last_fit and rerun.global_step == 21


@pytest.mark.slow
def test_plateau_and_best_checkpoints_per_validation(digits, tmp_path):
    values = [3.0, 2.0, 2.5, 2.6, 1.0, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0]

    class Rates(Callback):
        def __init__(self):
            self.by_step = {}

        def on_train_batch_begin(self, step, logs=None):
            self.by_step[step] = self.context.learning_rate

    rates = Rates()
    checkpoint = ModelCheckpoint("best/step{step}", save_best_only=True, save_weights_only=True, save_freq="validation")
    fit(digits, str(tmp_path), [InjectValidation(values), ReduceLROnPlateau(patience=2, factor=0.5,
                                                                            monitor_freq="validation"),
                                checkpoint, rates], learning_rate=0.1)
    # Flat at the validations of steps 20 and 21 (after the best at 14): halved from step 21 on; the best at 28,
    # then flat at 35 and 40: halved again from 40; flat at 42 and 49: from 49.
    assert [rates.by_step[s] for s in (20, 21, 39, 40, 46, 49)] == pytest.approx([0.1, 0.05, 0.05, 0.025, 0.025,
                                                                                   0.0125])
    saved = sorted(p.name for p in (tmp_path / "best").iterdir() if p.name.endswith(".index"))
    assert saved == ["step14.index", "step28.index", "step7.index"] and checkpoint.best_step == 28


@pytest.mark.slow
def test_resume_mid_interval_is_exact(digits, tmp_path):
    """A crash at step 28 (before its validation); the rerun resumes from step 24, between the validations at 21
    and 28, and ends as an uninterrupted run: weights bitwise, validation history and early-stopping counters."""
    values = [5.0 - 0.1 * i for i in range(11)]

    def callbacks(*extra):
        return [InjectValidation(values), EarlyStopping(patience=3, monitor_freq="validation"), *extra]

    kwargs = {"checkpoint_every_n_steps": 6, "optimizer": "adam", "learning_rate": 1e-3}
    with pytest.raises(RuntimeError, match="crash at step 28"):
        fit(digits, str(tmp_path / "run"), callbacks(CrashAt(28)), epochs=2, **kwargs)
    resumed = fit(digits, str(tmp_path / "run"), callbacks(), epochs=2, **kwargs)
    reference = fit(digits, str(tmp_path / "reference"), callbacks(), epochs=2, **kwargs)
    assert resumed.global_step == reference.global_step == 40
    for a, b in zip(resumed.model.get_weights(), reference.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert resumed.history.validation_history == reference.history.validation_history
    assert [v["step"] for v in resumed.history.validation_history] == VALIDATION_STEPS[:7]
    ours, theirs = (t.controller.callbacks.get_state()["EarlyStopping"] for t in (resumed, reference))
    assert ours == theirs and ours["validations"] == 7


def test_bad_per_validation_options_are_clear_errors():
    with pytest.raises(ValueError, match="monitor_freq='validation' acts on validation metrics, but monitor is 'loss'"):
        EarlyStopping(monitor="loss", monitor_freq="validation")
    with pytest.raises(ValueError, match="monitor_freq must be 'epoch' or 'validation'"):
        ReduceLROnPlateau(monitor_freq="batch")
    with pytest.raises(ValueError, match="save_freq must be 'epoch', 'validation' or a positive integer"):
        ModelCheckpoint("x", save_weights_only=True, save_freq="step")


@pytest.mark.slow
def test_train_py_killed_mid_run_resumes_step_wise_validation_exactly(tmp_path, data_dir):
    """scripts/train.py SIGKILLed after its first checkpoint; the same command ends as an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT, run_script

    flags = ["--strategy=default", "--deterministic", "--epochs=3", "--steps_per_epoch=20", "--steps_per_execution=3",
             "--checkpoint_every_n_steps=5", "--validation_every_n_steps=7", "--monitor_every=validation",
             "--early_stopping_patience=20", "--save_best_only", "--progress=false", f"--data_dir={data_dir}"]
    train = [sys.executable, os.path.join(ROOT, "scripts", "train.py"), *flags]
    process = subprocess.Popen([*train, f"--model_dir={tmp_path / 'run'}"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    while not (tmp_path / "run/checkpoints/checkpoint").exists() and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    for name in ("run", "reference"):
        result = run_script(*train[1:], f"--model_dir={tmp_path / name}")
        assert result.returncode == 0, result.stderr[-3000:]
        if name == "run" and "Resuming from" not in result.stdout + result.stderr:
            pytest.skip("the run finished before it was killed")

    def outcome(name):
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(tmp_path / name / "checkpoints")))
        weights = {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
                   if not any(skip in k for skip in ("OBJECT_GRAPH", "save_counter", "progress", "train_metrics"))}
        return summary, weights

    (ours, ours_weights), (theirs, their_weights) = outcome("run"), outcome("reference")
    assert [v["step"] for v in ours["validation_history"]] == VALIDATION_STEPS
    assert ours["validation_history"] == theirs["validation_history"] and ours["best"] == theirs["best"]
    assert sorted(ours_weights) == sorted(their_weights) and ours_weights
    for key, value in ours_weights.items():
        np.testing.assert_array_equal(value, their_weights[key], err_msg=key)
    best = sorted(p.name for p in (tmp_path / "run/best").iterdir() if p.name.endswith(".index"))
    assert best == sorted(p.name for p in (tmp_path / "reference/best").iterdir() if p.name.endswith(".index"))


def test_the_flags_are_checked_before_tensorflow_starts():
    from harness.run_config import RunConfig

    with pytest.raises(UsageError, match="^monitor_every is validation, which acts on validation metrics, but monitor "
                                         "is 'loss'; monitor val_loss"):
        RunConfig(monitor_every="validation", monitor="loss").validate()
    with pytest.raises(UsageError, match="^validation_every_n_steps must be >= 1"):
        RunConfig(validation_every_n_steps=0).validate()
