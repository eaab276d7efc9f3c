"""Recovery from a blown-up run (`RollbackOnNaN`, `--on_nan=rollback`): restore the last checkpoint, skip the data
that blew up, and train on; exact after a crash; give up after `max_rollbacks`. In-process on mirrored x2; the
2-worker run is in tests/test_multi_worker_features.py."""

import json
import logging
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

from callbacks import Callback, RollbackOnNaN, RunSummary, TensorBoard, TerminateOnNaN
from harness import Trainer, TrainInput, UsageError
from harness.run import build_callbacks
from harness.run_config import RunConfig
from tests.conftest import SPARSE_CE, strategy

STEPS = 10


def poisoned(source, positions):
    """Training data whose global batches at these data positions are NaN (a poisoned example); starts anywhere."""
    train = TrainInput(source.train_examples, source.num_train_examples, 32)
    bad = tf.constant(sorted(positions), tf.int64)

    def data(ctx, start_step=0):
        per_pipeline = ctx.num_replicas_in_sync // ctx.num_input_pipelines

        def poison(i, batch):
            x, y = batch
            return tf.where(tf.reduce_any(tf.equal(i // per_pipeline, bad)), x * np.nan, x), y

        return train(ctx, start_step).enumerate(start_step * per_pipeline).map(poison)

    return data


def without(source, positions):
    """The same training data with the global batches at these positions left out (from the start only)."""
    train = TrainInput(source.train_examples, source.num_train_examples, 32)
    dropped = tf.constant(sorted(positions), tf.int64)

    def data(ctx):
        per_pipeline = ctx.num_replicas_in_sync // ctx.num_input_pipelines
        kept = train(ctx).enumerate().filter(lambda i, b: ~tf.reduce_any(tf.equal(i // per_pipeline, dropped)))
        return kept.map(lambda i, b: b)

    return data


def linear_trainer(model_dir, **kwargs):
    """A linear model (a NaN input makes a NaN loss; a ReLU would hide it) on 2 replicas, identical for a seed."""
    s = strategy("mirrored", 2)
    keras.utils.set_random_seed(0)
    with s.scope():
        model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
        optimizer = keras.optimizers.SGD(0.1)
    return Trainer(s, model, optimizer, SPARSE_CE, global_batch_size=32, model_dir=model_dir, steps_per_execution=2,
                   **kwargs)


def fit(model_dir, data, callbacks, epochs=3, **kwargs):
    trainer = linear_trainer(str(model_dir) if model_dir else None, **kwargs)
    trainer.fit(data, epochs=epochs, steps_per_epoch=STEPS, callbacks=list(callbacks))
    return trainer


def assert_same_weights(a, b):
    for x, y in zip(a.model.get_weights(), b.model.get_weights()):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_a_nan_rolls_back_to_the_last_checkpoint_and_skips_the_data_that_blew_up(digits, tmp_path):
    """The batch at data position 8 (step 9) is poisoned: the loop ending at step 10 blows up, every replica goes
    back to ckpt-8, and training goes on with the data from position 10: the same run as one without positions 8-9."""
    trainer = fit(tmp_path / "run", poisoned(digits, {8}), [RollbackOnNaN(), TensorBoard(update_freq=2),
                                                          RunSummary("mirrored")], checkpoint_every_n_steps=4)
    assert trainer.global_step == 3 * STEPS and trainer.stop_reason is None and trainer.weights_are_finite()
    assert trainer.state.rollbacks == [{"step": 10, "restored": 8, "skipped": [8, 10], "lr_scale": 1.0,
                                        "reason": "non-finite loss (nan) at step 10"}]
    reference = linear_trainer(None)
    reference.fit(without(digits, {8, 9}), epochs=3, steps_per_epoch=STEPS)
    assert_same_weights(trainer, reference)
    assert trainer.history.history["loss"] == pytest.approx(reference.history.history["loss"], rel=1e-6)
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["rollbacks"] == trainer.state.rollbacks
    # TensorBoard: the blown-up loop's events are dropped by a restart mark; each step shows once, finite.
    events = EventAccumulator(str(tmp_path / "run/tensorboard/train"), size_guidance={"tensors": 0})
    events.Reload()
    losses = [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in events.Tensors("batch_loss")]
    assert [s for s, _ in losses] == list(range(2, 31, 2)) and all(math.isfinite(v) for _, v in losses)


class CrashOnRollback(Callback):
    def on_rollback(self, step):
        raise RuntimeError(f"crash right after the rollback to step {step}")


@pytest.mark.slow
def test_a_resume_after_a_rollback_continues_exactly(digits, tmp_path, caplog):
    """A crash right after the rollback, before any checkpoint holds it: the rerun restores ckpt-8, applies the
    rollback recorded next to it (count, skipped data, learning-rate factor), and ends as the uninterrupted run."""
    data, kwargs = poisoned(digits, {8}), {"checkpoint_every_n_steps": 4}
    with pytest.raises(RuntimeError, match="crash right after the rollback to step 8"):
        fit(tmp_path / "run", data, [RollbackOnNaN(lr_factor=0.5), CrashOnRollback()], **kwargs)
    assert json.loads((tmp_path / "run/checkpoints/rollbacks.json").read_text())[0]["skipped"] == [8, 10]
    with caplog.at_level(logging.WARNING):
        resumed = fit(tmp_path / "run", data, [RollbackOnNaN(lr_factor=0.5)], **kwargs)
    assert any("Applying 1 rollback(s) made after this checkpoint was written" in r.getMessage()
               for r in caplog.records)
    uninterrupted = fit(tmp_path / "reference", data, [RollbackOnNaN(lr_factor=0.5)], **kwargs)
    assert_same_weights(resumed, uninterrupted)
    assert resumed.state.rollbacks == uninterrupted.state.rollbacks and len(resumed.state.rollbacks) == 1
    assert resumed.learning_rate.scale_value() == uninterrupted.learning_rate.scale_value() == 0.5
    assert resumed.history.history["lr"] == pytest.approx([0.05, 0.05, 0.05])


@pytest.mark.slow
def test_after_max_rollbacks_it_gives_up_with_one_line_and_stops(digits, tmp_path, caplog):
    """Every batch from position 4 on is poisoned: two rollbacks to ckpt-4, then one line and a stop."""
    with caplog.at_level(logging.WARNING):
        trainer = fit(tmp_path, poisoned(digits, range(4, 200)), [RollbackOnNaN(max_rollbacks=2)],
                      checkpoint_every_n_steps=2)
    assert trainer.stop_reason == "non-finite loss (nan) at step 6 after 2 rollbacks (max_rollbacks 2)"
    assert [r["skipped"] for r in trainer.state.rollbacks] == [[4, 6], [6, 8]]
    assert sum(r.getMessage().startswith("Giving up:") for r in caplog.records) == 1
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-4")  # the last good one stays
    rerun = fit(tmp_path, poisoned(digits, range(4, 200)), [RollbackOnNaN(max_rollbacks=2)],
                checkpoint_every_n_steps=2)
    assert not rerun.trained_in_last_fit and rerun.stop_reason == trainer.stop_reason  # finished


def test_before_the_first_checkpoint_there_is_nothing_to_roll_back_to(digits, tmp_path):
    trainer = fit(tmp_path, poisoned(digits, {2}), [RollbackOnNaN()])
    assert trainer.stop_reason == "non-finite loss (nan) at step 4, and no checkpoint to roll back to yet"
    assert trainer.state.rollbacks == []


class FakeContext:
    def __init__(self, rollbacks=(), last_checkpoint_step=4):
        self.rollbacks, self.last_checkpoint_step, self.asked = tuple(rollbacks), last_checkpoint_step, []

    def request_rollback(self, reason, lr_factor=1.0):
        self.asked.append(("rollback", reason, lr_factor))

    def request_stop(self, reason):
        self.asked.append(("stop", reason))


@pytest.mark.parametrize("loss, asked", [
    (1.5, []),
    (float("inf"), [("rollback", "non-finite loss (inf) at step 6", 0.5)]),
    (12.5, [("rollback", "loss 12.5 above the divergence threshold 10 at step 6", 0.5)]),
])
def test_what_blows_up(loss, asked):
    callback = RollbackOnNaN(divergence_threshold=10.0, lr_factor=0.5)
    callback.set_context(FakeContext())
    callback.on_train_batch_end(6, {"loss": loss})
    assert callback.context.asked == asked


@pytest.mark.parametrize("options, message", [
    ({"lr_factor": 0.0}, r"lr_factor must be in \(0, 1\]"),
    ({"max_rollbacks": -1}, "max_rollbacks must be an integer >= 0"),
    ({"divergence_threshold": math.nan}, "divergence_threshold must be a finite number"),
])
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        RollbackOnNaN(**options)


def test_the_flags_pick_the_callback_and_stop_changes_nothing():
    default = build_callbacks(RunConfig(), total_steps=10)
    assert any(isinstance(cb, TerminateOnNaN) for cb in default)
    assert not any(isinstance(cb, RollbackOnNaN) for cb in default)
    rollback = build_callbacks(RunConfig(on_nan="rollback", divergence_threshold=50.0, rollback_lr_factor=0.5,
                                         max_rollbacks=5), total_steps=10)
    [callback] = [cb for cb in rollback if isinstance(cb, RollbackOnNaN)]
    assert callback.get_config() == {"monitor": "loss", "divergence_threshold": 50.0, "lr_factor": 0.5,
                                     "max_rollbacks": 5}
    assert not any(isinstance(cb, TerminateOnNaN) for cb in rollback)  # it stops itself when it gives up
    for flag, value in (("divergence_threshold", 5.0), ("rollback_lr_factor", 0.5), ("max_rollbacks", 1)):
        with pytest.raises(UsageError, match=f"^{flag} acts only with on_nan=rollback"):
            RunConfig(**{flag: value}).validate()
    with pytest.raises(UsageError, match=r"^rollback_lr_factor must be in \(0, 1\]"):
        RunConfig(on_nan="rollback", rollback_lr_factor=2.0).validate()
