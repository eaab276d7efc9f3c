"""Gradient accumulation: A micro-batches make the update of one global batch, under a strategy.

A=4 equals A=1 (SGD and Adam, mirrored x2, with steps_per_execution > 1), the optimizer counts
updates, a float16 overflow in any micro-batch skips the whole update on every replica, the
micro-batches hold A=1's examples in the same order in every layout, a bad split and a custom step
that cannot be accumulated are one-line usage errors, and a resume mid-epoch is bitwise exact.
(The 2-worker cluster is in tests/multi_worker_job.py.)
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from harness import Trainer, TrainInput, UsageError
from harness.data import training_input
from tests import custom_steps
from tests.conftest import SPARSE_CE, make_trainer, strategy
from tests.test_exact_resume import SignalAt

STEPS = 10


def train_input(source, batch=32):
    return TrainInput(source.train_examples, source.num_train_examples, batch)


def weights(trainer):
    return [v.numpy() for v in trainer.model.trainable_variables]


def assert_close(a, b, atol=1e-6):
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=0, atol=atol)


@pytest.mark.parametrize("optimizer, learning_rate, k", [("sgd", 0.1, 1), ("adam", 1e-3, 5)])
@pytest.mark.slow
def test_four_micro_batches_make_the_update_of_one_global_batch(digits, optimizer, learning_rate, k):
    data = train_input(digits)
    runs = {}
    for steps in (1, 4):
        trainer = make_trainer(strategy("mirrored", 2), digits, optimizer=optimizer, learning_rate=learning_rate,
                               gradient_accumulation_steps=steps, steps_per_execution=k)
        trainer.fit(data, epochs=1, steps_per_epoch=data.steps_per_pass)  # one pass; with k=5 a short last call
        assert trainer.global_step == data.steps_per_pass
        assert int(trainer.optimizer.iterations.numpy()) == data.steps_per_pass  # one apply per update
        assert trainer.train_loop_traces == 1
        runs[steps] = trainer
    assert_close(weights(runs[4]), weights(runs[1]))
    # The same examples at the same weights: the epoch's logged loss is the same mean.
    assert runs[4].history.history["loss"] == pytest.approx(runs[1].history.history["loss"], rel=1e-6)


@pytest.mark.slow
def test_a_plain_dataset_function_is_cut_into_micro_batches_of_the_same_examples(digits):
    train = train_input(digits)
    plain = lambda ctx: train(ctx)  # takes neither start_step nor micro_batches
    final = []
    for steps in (1, 4):
        trainer = make_trainer(strategy("mirrored", 2), digits, gradient_accumulation_steps=steps)
        trainer.fit(plain, epochs=1, steps_per_epoch=STEPS)
        final.append(weights(trainer))
    assert_close(*final)


def test_regularisation_counts_once_per_update(digits):
    final = []
    for steps in (1, 4):
        s = strategy("mirrored", 2)
        keras.utils.set_random_seed(0)
        with s.scope():
            model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                      keras.layers.Dense(10, kernel_regularizer=keras.regularizers.L2(0.5))])
            optimizer = keras.optimizers.SGD(0.1)
        trainer = Trainer(s, model, optimizer, SPARSE_CE, global_batch_size=32, gradient_accumulation_steps=steps)
        trainer.fit(train_input(digits), epochs=1, steps_per_epoch=3)
        final.append(weights(trainer))
    assert_close(*final)


def read_micro_batches(data, layout, micro_batches, start_step, count):
    """The first `count` global (micro-)batches that `layout` = (pipelines, replicas) reads, as arrays."""
    pipelines, replicas = layout
    per_pipeline = replicas // pipelines
    streams = [iter(training_input(data, start_step, micro_batches)(tf.distribute.InputContext(
        pipelines, p, replicas)).take(count * per_pipeline)) for p in range(pipelines)]
    batches = []
    for _ in range(count):
        shares = [next(streams[p])[0].numpy() for p in range(pipelines) for _ in range(per_pipeline)]
        batches.append(np.concatenate(shares))  # replica order: pipeline-major, as the strategy numbers them
    return batches


def test_every_layout_reads_the_same_micro_batches_and_update_u_holds_a1s_examples(digits):
    data = train_input(digits)
    whole = read_micro_batches(data, (1, 1), 1, 3, 2)  # global batches 3 and 4
    for layout in [(1, 1), (1, 2), (2, 4)]:  # (input pipelines, replicas)
        micro = read_micro_batches(data, layout, 4, 3, 8)  # their 8 micro-batches, from a resume at update 3
        assert all(m.shape[0] == 8 for m in micro)
        for u in range(2):
            np.testing.assert_array_equal(np.concatenate(micro[4 * u:4 * u + 4]), whole[u])


@pytest.mark.parametrize("micro_batch", [0, 1], ids=["accumulating", "applying"])
def test_float16_overflow_in_one_micro_batch_skips_the_update_on_every_replica(digits, micro_batch):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        trainer = make_trainer(strategy("mirrored", 2), digits, gradient_accumulation_steps=2)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    normal, huge = np.ones([8, 8, 8, 1], np.float32), np.full([8, 8, 8, 1], 6e4, np.float32)
    labels = np.zeros([8], np.int32)
    # One pipeline feeds replica 0 then 1, micro-batch 0 then 1; replica 0's share of one micro-batch overflows.
    order = [huge, normal, normal, normal] if micro_batch == 0 else [normal, normal, huge, normal]

    def data(ctx):
        return tf.data.Dataset.from_tensor_slices((np.stack(order), np.stack([labels] * 4))).repeat()

    before, scale = weights(trainer), float(trainer.optimizer.dynamic_scale.numpy())
    trainer.fit(data, epochs=1, steps_per_epoch=1)
    for a, b in zip(before, weights(trainer)):
        np.testing.assert_array_equal(a, b)  # skipped on both replicas
    assert float(trainer.optimizer.dynamic_scale.numpy()) == scale / 2
    assert all(not np.any(s.numpy()) for s in trainer.accumulator._sums.values())  # emptied for the next update


def test_float16_with_accumulation_trains(digits):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        trainer = make_trainer(strategy("mirrored", 2), digits, optimizer="adam", learning_rate=3e-3,
                               gradient_accumulation_steps=4, steps_per_execution=4)
        history = trainer.fit(train_input(digits), epochs=2, steps_per_epoch=12)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_a_global_batch_that_does_not_split_into_micro_batches_is_a_usage_error(digits):
    with pytest.raises(UsageError) as e:
        make_trainer(strategy("mirrored", 2), digits, global_batch_size=36, gradient_accumulation_steps=4)
    assert str(e.value) == ("gradient_accumulation_steps is 4, but global_batch_size 36 does not split into 4 "
                            "micro-batches x 2 replica(s); use a global batch that is a multiple of 8, e.g. 32 or 40")
    assert e.value.as_flag().startswith("--gradient_accumulation_steps is 4")
    with pytest.raises(UsageError, match="^gradient_accumulation_steps must be an integer >= 1, got 0$"):
        make_trainer(strategy("default"), digits, gradient_accumulation_steps=0)


def test_a_custom_step_accumulates_through_apply_gradients(digits):
    final = []
    for steps in (1, 4):
        trainer = make_trainer(strategy("mirrored", 2), digits, trainer_cls=custom_steps.PenalisedTrainer,
                               learning_rate=0.5, gradient_accumulation_steps=steps)
        trainer.fit(train_input(digits), epochs=1, steps_per_epoch=3)
        final.append(weights(trainer))
    assert_close(*final)


class OwnApply(custom_steps.PenalisedTrainer):
    def apply_gradients(self, grads, variables=None, *, already_reduced=False):
        self.optimizer.apply(grads, self.model.trainable_variables)  # bypasses the trainer: not accumulated


@pytest.mark.parametrize("trainer_cls, message", [
    (custom_steps.ClippedTrainer, "pass this replica's own gradients to apply_gradients"),
    (OwnApply, "train_step must apply its gradients with self.apply_gradients"),
])
def test_a_custom_step_that_cannot_be_accumulated_is_refused_in_one_line(digits, trainer_cls, message):
    trainer = make_trainer(strategy("mirrored", 2), digits, trainer_cls=trainer_cls, gradient_accumulation_steps=2)
    with pytest.raises(UsageError, match=message) as e:
        trainer.fit(train_input(digits), epochs=1, steps_per_epoch=1)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("plain", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["TrainInput", "plain"])
def test_a_resume_mid_epoch_is_bitwise_exact(digits, tmp_path, plain):
    train = train_input(digits)
    data = (lambda ctx: train(ctx)) if plain else train

    def trainer(model_dir):
        return make_trainer(strategy("mirrored", 2), digits, optimizer="adam", learning_rate=1e-3,
                            model_dir=str(model_dir), gradient_accumulation_steps=4, steps_per_execution=3)

    first = trainer(tmp_path / "run")
    first.fit(data, epochs=2, steps_per_epoch=STEPS, callbacks=[SignalAt(step=STEPS + 4)])
    assert first.last_checkpoint[0] == STEPS + 6  # loops end at 3, 6, 9, 10 | 13, 16: saved mid-epoch
    resumed = trainer(tmp_path / "run")  # a new process, in effect
    resumed.fit(data, epochs=2, steps_per_epoch=STEPS)
    reference = trainer(tmp_path / "reference")
    reference.fit(data, epochs=2, steps_per_epoch=STEPS)
    for a, b in zip(resumed.model.variables + resumed.optimizer.variables,
                    reference.model.variables + reference.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    assert int(resumed.optimizer.iterations.numpy()) == 2 * STEPS
