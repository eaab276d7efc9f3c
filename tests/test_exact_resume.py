"""Exact, or refuse: what a checkpoint holds, what a resume may change, and what a signal leaves behind.

In-process runs on tiny epochs: a signal is sent to this very process from a callback, so it
lands at a chosen moment; a "crash" is a new Trainer on the same model_dir.
"""

import json
import os
import signal

import numpy as np
import pytest
import tensorflow as tf

from callbacks import Callback, EarlyStopping
from harness import TrainInput, UsageError
from harness.checkpointing import read_progress
from harness.run_record import SettingsChanged
from tests.callback_helpers import InjectMonitor
from tests.conftest import make_trainer, strategy

STEPS = 10


def train_input(source, batch=32):
    return TrainInput(source.train_examples, source.num_train_examples, batch)


def checkpoints(model_dir):
    state = tf.train.get_checkpoint_state(f"{model_dir}/checkpoints")
    return list(state.all_model_checkpoint_paths) if state else []


def steps_of(model_dir):
    return [int(p.rsplit("-", 1)[1]) for p in checkpoints(model_dir)]


def snapshot(directory):
    """Every file under `directory` with its size and modification time."""
    return {os.path.join(d, f): (os.path.getsize(os.path.join(d, f)), os.path.getmtime(os.path.join(d, f)))
            for d, _, files in os.walk(directory) for f in files}


class SignalAt(Callback):
    """Sends `sig` to this process at the end of the loop reaching `step`, or at the end of `epoch`."""

    def __init__(self, sig=signal.SIGTERM, step=None, epoch=None):
        self.sig, self.step, self.epoch = sig, step, epoch

    def on_train_batch_end(self, step, logs=None):
        if self.step is not None and step >= self.step:
            self.step = None
            os.kill(os.getpid(), self.sig)

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            os.kill(os.getpid(), self.sig)


def test_a_stop_and_a_signal_agreed_at_one_point_both_survive(digits, tmp_path):
    """SIGTERM during the epoch end at which EarlyStopping stops: the rerun has nothing left to do."""
    values = [1.0, 2.0, 3.0, 4.0, 5.0]  # no improvement after the first epoch: patience 1 stops at epoch 2
    trainer = make_trainer(strategy("default"), digits, model_dir=str(tmp_path))
    trainer.fit(train_input(digits), epochs=5, steps_per_epoch=STEPS,
                callbacks=[InjectMonitor("loss", values), SignalAt(epoch=1), EarlyStopping("loss", patience=1)])
    assert trainer.state.signal == "SIGTERM" and trainer.stop_reason.startswith("early stopping")
    assert trainer.last_checkpoint == (2 * STEPS, checkpoints(tmp_path)[-1])
    assert read_progress(trainer.last_checkpoint[1])["stop_reason"] == trainer.stop_reason
    before = snapshot(tmp_path)
    rerun = make_trainer(strategy("default"), digits, model_dir=str(tmp_path))
    rerun.fit(train_input(digits), epochs=5, steps_per_epoch=STEPS,
              callbacks=[InjectMonitor("loss", values), EarlyStopping("loss", patience=1)])
    assert not rerun.trained_in_last_fit and rerun.stop_reason == trainer.stop_reason
    assert rerun.history.epoch == [0, 1] and snapshot(tmp_path) == before


@pytest.mark.parametrize("every, k, expected", [
    (7, 4, [8, 10, 14, 20, 24, 28, 30]),  # loops end at 4, 8, 10 | 14, 18, 20 | 24, 28, 30
    (10, 5, [10, 20, 30]),  # every cadence save falls on an epoch's last loop: the epoch end's state is saved
])
def test_a_checkpoint_holds_the_state_after_everything_of_its_step(digits, tmp_path, every, k, expected):
    trainer = make_trainer(strategy("default"), digits, model_dir=str(tmp_path), checkpoint_every_n_steps=every,
                           steps_per_execution=k, checkpoint_max_to_keep=None)
    trainer.fit(train_input(digits), epochs=3, steps_per_epoch=STEPS)
    assert steps_of(tmp_path) == expected
    for path in checkpoints(tmp_path):
        step, progress = int(path.rsplit("-", 1)[1]), read_progress(path)
        assert progress["step_in_epoch"] < STEPS  # never the state before an epoch end
        assert progress["epochs_completed"] * STEPS + progress["step_in_epoch"] == step
    before = snapshot(tmp_path)
    rerun = make_trainer(strategy("default"), digits, model_dir=str(tmp_path), checkpoint_every_n_steps=every,
                         steps_per_execution=k)
    rerun.fit(train_input(digits), epochs=3, steps_per_epoch=STEPS)
    assert not rerun.trained_in_last_fit and snapshot(tmp_path) == before  # a finished run writes nothing


def test_a_complete_checkpoint_missing_from_the_list_is_adopted_and_leftovers_removed(digits, tmp_path, caplog):
    make_trainer(strategy("default"), digits, model_dir=str(tmp_path)).fit(train_input(digits), epochs=2,
                                                                            steps_per_epoch=STEPS)
    directory = str(tmp_path / "checkpoints")
    newest = checkpoints(tmp_path)[-1]
    tf.compat.v1.train.update_checkpoint_state(directory, checkpoints(tmp_path)[0], checkpoints(tmp_path)[:1])
    leftover = tmp_path / f"checkpoints/ckpt-{3 * STEPS + 5}.data-00000-of-00001"  # a save killed before its index
    leftover.write_bytes(b"half")
    trainer = make_trainer(strategy("default"), digits, model_dir=str(tmp_path))
    with caplog.at_level("WARNING"):
        trainer.fit(train_input(digits), epochs=3, steps_per_epoch=STEPS)
    assert any("Adopted" in r.getMessage() and newest in r.getMessage() for r in caplog.records)
    assert any(f"Resuming from {newest} at step {2 * STEPS}" in r.getMessage() for r in caplog.records)
    assert trainer.global_step == 3 * STEPS and not leftover.exists()
    assert steps_of(tmp_path) == [STEPS, 2 * STEPS, 3 * STEPS]


def test_a_signal_mid_epoch_saves_exactly_the_state_it_stopped_at(digits, tmp_path):
    trainer = make_trainer(strategy("default"), digits, model_dir=str(tmp_path), steps_per_execution=3)
    trainer.fit(train_input(digits), epochs=3, steps_per_epoch=STEPS, callbacks=[SignalAt(step=STEPS + 4)])
    assert trainer.state.signal == "SIGTERM" and trainer.stop_reason is None and not trainer.state.finished(3)
    step, path = trainer.last_checkpoint
    assert step == trainer.global_step == STEPS + 6 and os.path.exists(f"{path}.index")
    assert read_progress(path)["step_in_epoch"] == 6
    resumed = make_trainer(strategy("default"), digits, model_dir=str(tmp_path), steps_per_execution=3)
    resumed.fit(train_input(digits), epochs=3, steps_per_epoch=STEPS)
    reference = make_trainer(strategy("default"), digits, model_dir=str(tmp_path / "reference"), steps_per_execution=3)
    reference.fit(train_input(digits), epochs=3, steps_per_epoch=STEPS)
    for a, b in zip(resumed.model.get_weights(), reference.model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_signal_before_the_first_step_saves_nothing(digits, tmp_path):
    trainer = make_trainer(strategy("default"), digits, model_dir=str(tmp_path))

    class SignalAtStart(Callback):
        def on_train_begin(self, logs=None):
            os.kill(os.getpid(), signal.SIGINT)

    trainer.fit(train_input(digits), epochs=2, steps_per_epoch=STEPS, callbacks=[SignalAtStart()])
    assert trainer.state.signal == "SIGINT" and trainer.global_step == 0 and trainer.last_checkpoint is None
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("change, difference", [
    ({"global_batch_size": 64}, "global_batch_size 32 -> 64"),
    ({"optimizer": "adam"}, 'optimizer.class "SGD" -> "Adam"'),
    ({"learning_rate": 0.05}, "optimizer.learning_rate 0.1 -> 0.05"),
    ({"model": "cnn"}, "model.variables"),
])
@pytest.mark.slow
def test_a_resume_that_changes_the_mathematics_is_refused_before_anything_is_touched(digits, tmp_path, change,
                                                                                     difference):
    make_trainer(strategy("default"), digits, model_dir=str(tmp_path)).fit(train_input(digits), epochs=1,
                                                                            steps_per_epoch=STEPS)
    before = snapshot(tmp_path)
    trainer = make_trainer(strategy("default"), digits, model_dir=str(tmp_path), **change)
    batch = change.get("global_batch_size", 32)
    with pytest.raises(SettingsChanged) as e:
        trainer.fit(train_input(digits, batch), epochs=2, steps_per_epoch=STEPS)
    assert difference in str(e.value) and "\n" not in str(e.value) and snapshot(tmp_path) == before
    assert trainer.global_step == 0  # nothing was restored into the new model


@pytest.mark.slow
def test_changing_the_number_of_replicas_continues_the_same_run(digits, tmp_path):
    """mirrored x2 for two epochs, then mirrored x4: equal to four epochs on x2 within float tolerance."""
    def trainer(replicas, model_dir):
        return make_trainer(strategy("mirrored", replicas), digits, model_dir=str(model_dir), optimizer="adam",
                            learning_rate=1e-3)

    trainer(2, tmp_path / "run").fit(train_input(digits), epochs=2, steps_per_epoch=STEPS)
    resumed = trainer(4, tmp_path / "run")
    resumed.fit(train_input(digits), epochs=4, steps_per_epoch=STEPS)
    reference = trainer(2, tmp_path / "reference")
    reference.fit(train_input(digits), epochs=4, steps_per_epoch=STEPS)
    for a, b in zip(resumed.model.get_weights(), reference.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(resumed.history.history["loss"], reference.history.history["loss"], rtol=1e-5)
    run = json.loads((tmp_path / "run/run.json").read_text())
    assert run["settings"]["layout"]["num_replicas"] == 4 and run["finished"]["epochs_completed"] == 4


def test_an_input_built_for_another_global_batch_is_refused(digits):
    trainer = make_trainer(strategy("default"), digits, global_batch_size=32)
    with pytest.raises(UsageError, match="train_data batches 64 examples per step but the trainer's "
                                         "global_batch_size is 32"):
        trainer.fit(train_input(digits, 64), epochs=1, steps_per_epoch=1)


def test_settings_given_to_the_trainer_are_recorded_and_checked(digits, tmp_path):
    make_trainer(strategy("default"), digits, model_dir=str(tmp_path), settings={"dropout": 0.1}).fit(
        train_input(digits), epochs=1, steps_per_epoch=2)
    with pytest.raises(SettingsChanged, match="dropout 0.1 -> 0.2"):
        make_trainer(strategy("default"), digits, model_dir=str(tmp_path), settings={"dropout": 0.2}).fit(
            train_input(digits), epochs=2, steps_per_epoch=2)


@pytest.mark.slow
def test_the_csv_has_every_epoch_once_even_when_logging_was_off_for_a_while(digits, tmp_path):
    from callbacks import CSVLogger

    for epochs, callbacks in ((1, [CSVLogger()]), (2, []), (3, [CSVLogger()])):
        trainer = make_trainer(strategy("default"), digits, model_dir=str(tmp_path))
        trainer.fit(train_input(digits), epochs=epochs, steps_per_epoch=STEPS, callbacks=callbacks)
    header, *rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows] == ["1", "2", "3"]
    losses = [float(row.split(",")[header.split(",").index("loss")]) for row in rows]
    assert losses == trainer.history.history["loss"]
