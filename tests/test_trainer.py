"""The K-step loop, retracing, mixed precision, and the trainer's clear errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from harness import Trainer, TrainInput, UsageError
from tests.conftest import SPARSE_CE, make_trainer, strategy


def train_input(source, batch=32, seed=0):
    return TrainInput(source.train_examples, source.num_train_examples, batch, seed=seed)


@pytest.mark.slow
def test_steps_per_execution_1_and_8_give_the_same_weights_with_2_replicas(digits):
    final = []
    for k in (1, 8):
        trainer = make_trainer(strategy("mirrored", 2), digits, optimizer="adam", learning_rate=1e-3,
                               steps_per_execution=k)
        trainer.fit(train_input(digits), epochs=2, steps_per_epoch=12)  # 12 = 8 + 4: a short last call
        assert trainer.global_step == 24 and trainer.restored_global_step() == 24
        final.append([v.numpy() for v in trainer.model.trainable_variables])
    for a, b in zip(*final):
        np.testing.assert_array_equal(a, b)


def test_changing_k_or_the_epoch_never_retraces(digits):
    trainer = make_trainer(strategy("mirrored", 2), digits, steps_per_execution=8)
    data = train_input(digits)
    trainer.fit(data, epochs=2, steps_per_epoch=12)  # calls with K=8 and K=4
    trainer.steps_per_execution = 3
    trainer.fit(data, epochs=4, steps_per_epoch=12)  # two more epochs with K=3
    assert trainer.global_step == 48
    assert trainer.train_loop_traces == 1


@pytest.mark.slow
def test_bfloat16_mixed_precision_trains(digits):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        trainer = make_trainer(strategy("mirrored", 2), digits, optimizer="adam", learning_rate=3e-3)
        assert trainer.model.layers[1].compute_dtype == "bfloat16"
        history = trainer.fit(train_input(digits), epochs=3, steps_per_epoch=20)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_float16_skips_a_step_when_any_replica_overflows(digits):
    """Keras's LossScaleOptimizer takes "finite?" from the first replica only; the trainer makes it global."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        trainer = make_trainer(strategy("mirrored", 2), digits, optimizer="sgd", learning_rate=0.1)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    normal = np.ones([16, 8, 8, 1], np.float32)
    huge = np.full([16, 8, 8, 1], 6e4, np.float32)  # overflows float16 activations on the second replica only
    labels = np.zeros([16], np.int32)

    def data(ctx):  # one pipeline feeds replica 0 then replica 1
        return tf.data.Dataset.from_tensor_slices((np.stack([normal, huge]), np.stack([labels, labels]))).repeat()

    before = [v.numpy() for v in trainer.model.trainable_variables]
    scale = float(trainer.optimizer.dynamic_scale.numpy())
    trainer.fit(data, epochs=1, steps_per_epoch=1)
    after = [v.numpy() for v in trainer.model.trainable_variables]
    assert all(np.isfinite(a).all() for a in after)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)  # the step was skipped on both replicas
    assert float(trainer.optimizer.dynamic_scale.numpy()) == scale / 2


@pytest.mark.slow
def test_float16_trains_normally(digits):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        trainer = make_trainer(strategy("mirrored", 2), digits, optimizer="adam", learning_rate=3e-3)
        history = trainer.fit(train_input(digits), epochs=3, steps_per_epoch=20)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_model_built_outside_the_scope_is_refused(digits):
    s = strategy("mirrored", 2)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    with s.scope():
        optimizer = keras.optimizers.SGD(0.1)
    with pytest.raises(UsageError, match="not created under strategy.scope"):
        Trainer(s, model, optimizer, SPARSE_CE, global_batch_size=32)


def test_a_loss_that_averages_is_refused(digits):
    s = strategy("default")
    with s.scope():
        model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
        optimizer = keras.optimizers.SGD(0.1)
    trainer = Trainer(s, model, optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      global_batch_size=32)
    with pytest.raises(UsageError, match="must return per-example losses"):
        trainer.fit(train_input(digits), epochs=1, steps_per_epoch=1)


def test_indivisible_batch_and_bad_k_are_refused(digits):
    with pytest.raises(UsageError, match="does not split evenly over 4 replicas"):
        make_trainer(strategy("mirrored", 4), digits, global_batch_size=30)
    with pytest.raises(UsageError, match="steps_per_execution must be >= 1"):
        make_trainer(strategy("default"), digits, steps_per_execution=0)


@pytest.mark.parametrize("name, replicas", [("default", None), ("mirrored", 2)])
@pytest.mark.slow
def test_a_clipped_global_gradient_moves_the_weights_by_the_clip_norm(digits, name, replicas):
    class ClippedTrainer(Trainer):
        def train_step(self, batch):
            features, labels = batch
            with tf.GradientTape() as tape:
                logits = self.model(features, training=True)
                per_example_loss = self.loss(labels, logits)
                loss = self.compute_loss(per_example_loss)
            grads = self.all_reduce_gradients(tape.gradient(loss, self.model.trainable_variables))
            grads, _ = tf.clip_by_global_norm(grads, 0.01)
            self.apply_gradients(grads, already_reduced=True)
            self.update_metrics(self.train_metrics, labels, logits, per_example_loss, None)
            self.calls += 1

    trainer = make_trainer(strategy(name, replicas), digits, trainer_cls=ClippedTrainer, learning_rate=1.0)
    trainer.calls = 0
    before = [v.numpy() for v in trainer.model.trainable_variables]
    trainer.fit(train_input(digits), epochs=1, steps_per_epoch=1)
    moved = np.sqrt(sum(((a - v.numpy()) ** 2).sum() for a, v in zip(before, trainer.model.trainable_variables)))
    assert trainer.calls == (replicas or 1)  # traced once (per replica)
    assert moved == pytest.approx(0.01, rel=1e-3)  # lr 1.0 x clipped norm 0.01, once (not twice on 2 replicas)


def test_each_evaluation_reads_the_same_batches(digits):
    """Every evaluation reads the same whole pass of an EvalInput, or the same first `steps` batches of a shorter
    evaluation, as a freshly built input does (no state is carried from one evaluation to the next)."""
    from harness import EvalInput

    trainer = make_trainer(strategy("mirrored", 2), digits, steps_per_execution=3)
    evaluation = EvalInput(digits.eval_examples, digits.num_eval_examples, 32)
    fresh = make_trainer(strategy("mirrored", 2), digits, steps_per_execution=3)
    fresh.model.set_weights(trainer.model.get_weights())
    for steps in (evaluation.steps, 4):
        first = [trainer.evaluate(evaluation, steps) for _ in range(3)]
        assert first[0] == first[1] == first[2] == fresh.evaluate(EvalInput(digits.eval_examples,
                                                                             digits.num_eval_examples, 32), steps)
    whole = trainer.evaluate(evaluation, evaluation.steps)
    assert whole["accuracy"] * digits.num_eval_examples == pytest.approx(round(whole["accuracy"] *
                                                                                digits.num_eval_examples))
