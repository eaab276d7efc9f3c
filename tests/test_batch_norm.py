"""Batch normalisation under several replicas: the harness's models synchronise it, so 2 replicas
train as one device does, every replica holds the same moving statistics, and a resumed run
evaluates exactly as before; a user's model with unsynchronised batch norm gets one warning."""

import keras
import numpy as np
import pytest

from harness import EvalInput, Trainer, TrainInput
from tests.conftest import SPARSE_CE, make_trainer, strategy


def fit(trainer, source, model_dir=None, epochs=1):
    trainer.fit(TrainInput(source.train_examples, source.num_train_examples, 32), epochs=epochs, steps_per_epoch=3)
    return trainer


def small_bn_trainer(s, model_dir=None):
    """A convolution and a synchronised batch norm, as the harness's resnet builds them, at a tiny size."""
    keras.utils.set_random_seed(0)
    with s.scope():
        model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, use_bias=False),
                                  keras.layers.BatchNormalization(synchronized=True), keras.layers.ReLU(),
                                  keras.layers.Flatten(), keras.layers.Dense(10)])
        optimizer = keras.optimizers.SGD(0.1)
    return Trainer(s, model, optimizer, SPARSE_CE, global_batch_size=32, model_dir=model_dir)


def moving_statistics(trainer):
    return [v for v in trainer.model.non_trainable_variables if "moving" in v.path]


@pytest.mark.slow
def test_synchronised_batch_norm_trains_as_one_device_and_keeps_one_set_of_statistics(digits, tmp_path):
    one = fit(small_bn_trainer(strategy("default")), digits)
    two = fit(small_bn_trainer(strategy("mirrored", 2), str(tmp_path)), digits)
    for a, b in zip(one.model.get_weights(), two.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for variable in moving_statistics(two):
        copies = two.strategy.experimental_local_results(variable.value)
        np.testing.assert_array_equal(copies[0].numpy(), copies[1].numpy())
    val = EvalInput(digits.eval_examples, digits.num_eval_examples, 32)
    before = two.evaluate(val, val.steps)
    resumed = small_bn_trainer(strategy("mirrored", 2), str(tmp_path))
    fit(resumed, digits)  # the run is finished: it restores and trains nothing
    assert not resumed.trained_in_last_fit
    assert resumed.evaluate(val, val.steps) == before


def test_a_user_model_with_unsynchronised_batch_norm_gets_one_warning(caplog):
    s = strategy("mirrored", 2)
    with s.scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(), keras.layers.Dense(2)])
        optimizer = keras.optimizers.SGD(0.1)
    with caplog.at_level("WARNING"):
        Trainer(s, model, optimizer, SPARSE_CE, global_batch_size=8)
    warnings = [r.getMessage() for r in caplog.records if "not synchronised" in r.getMessage()]
    assert len(warnings) == 1 and "synchronized=True" in warnings[0]


@pytest.mark.parametrize("replicas", [None, 2])
def test_the_harness_models_never_warn(replicas, caplog):
    with caplog.at_level("WARNING"):
        make_trainer(strategy("mirrored" if replicas else "default", replicas), _Source(), model="resnet")
    assert not [r for r in caplog.records if "not synchronised" in r.getMessage()]


class _Source:
    input_shape, num_classes = (8, 8, 1), 10
