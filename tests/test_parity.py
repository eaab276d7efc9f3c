"""Same update on 1 or N replicas: the loss is averaged over the global batch, the gradients summed."""

import numpy as np
import pytest

from harness import EvalInput, TrainInput
from tests.conftest import make_trainer, strategy

LAYOUTS = [("default", None), ("mirrored", 2), ("mirrored", 4)]


def weights(trainer):
    return [np.array(v.numpy()) for v in trainer.model.trainable_variables]


def test_one_update_gives_the_same_weights_on_1_2_and_4_replicas(digits):
    results = []
    for name, replicas in LAYOUTS:
        trainer = make_trainer(strategy(name, replicas), digits, global_batch_size=32, learning_rate=0.5)
        trainer.fit(TrainInput(digits.train_examples, digits.num_train_examples, 32), epochs=1, steps_per_epoch=1)
        results.append(weights(trainer))
    initial = weights(make_trainer(strategy("default"), digits))
    assert max(np.abs(a - b).max() for a, b in zip(results[0], initial)) > 1e-3  # the update did something
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_three_epochs_give_the_same_loss_curves(digits):
    """Tolerance: 1e-5 relative; only the order of float32 additions differs between layouts."""
    curves = []
    for name, replicas in LAYOUTS:
        trainer = make_trainer(strategy(name, replicas), digits, global_batch_size=64, optimizer="adam",
                               learning_rate=1e-3, steps_per_execution=4)
        evaluation = EvalInput(digits.eval_examples, digits.num_eval_examples, 64)
        history = trainer.fit(TrainInput(digits.train_examples, digits.num_train_examples, 64, seed=1), epochs=3,
                              steps_per_epoch=10, validation_data=evaluation, validation_steps=evaluation.steps)
        curves.append({k: history.history[k] for k in ("loss", "accuracy", "val_loss", "val_accuracy")})
    assert curves[0]["loss"][2] < curves[0]["loss"][0]
    for other in curves[1:]:
        for key in curves[0]:
            np.testing.assert_allclose(other[key], curves[0][key], rtol=1e-5, err_msg=key)
