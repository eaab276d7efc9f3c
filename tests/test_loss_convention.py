"""The logged loss is what the step minimised, in Keras's convention: sum(w * l) / N plus the
regularisation at the weights the step started from; weighted evaluation data works through
EvalInput. Checked against Keras `fit` and `evaluate` on the same data, weights and regulariser."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from harness import EvalInput, Trainer
from tests.conftest import SPARSE_CE, strategy

N, FEATURES, CLASSES = 12, 4, 3
RNG = np.random.default_rng(7)
X = RNG.normal(size=(N, FEATURES)).astype(np.float32)
Y = RNG.integers(0, CLASSES, size=N).astype(np.int32)
W = RNG.uniform(0.0, 2.0, size=N).astype(np.float32)


def model():
    keras.utils.set_random_seed(3)
    return keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(
        CLASSES, kernel_regularizer=keras.regularizers.L2(0.05))])


def keras_reference():
    reference = model()
    reference.compile(optimizer=keras.optimizers.SGD(0.1), weighted_metrics=["sparse_categorical_accuracy"],
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    evaluated = reference.evaluate(X, Y, sample_weight=W, batch_size=N, verbose=0, return_dict=True)
    history = reference.fit(X, Y, sample_weight=W, batch_size=N, epochs=1, shuffle=False, verbose=0)
    return reference, evaluated, history.history["loss"][0]


def test_the_logged_loss_and_the_update_match_keras_fit_and_evaluate():
    reference, evaluated, keras_loss = keras_reference()
    s = strategy("default")
    with s.scope():
        ours = model()
        optimizer = keras.optimizers.SGD(0.1)
    trainer = Trainer(s, ours, optimizer, SPARSE_CE, global_batch_size=N)
    examples = lambda: tf.data.Dataset.from_tensor_slices((X, Y, W))
    val = EvalInput(examples, N, N)
    before = trainer.evaluate(val, val.steps)
    history = trainer.fit(lambda ctx: examples().batch(N).repeat(), epochs=1, steps_per_epoch=1)
    assert before["loss"] == pytest.approx(evaluated["loss"], rel=1e-6)
    assert before["accuracy"] == pytest.approx(evaluated["sparse_categorical_accuracy"], rel=1e-6)
    assert history.history["loss"][0] == pytest.approx(keras_loss, rel=1e-6)
    for a, b in zip(ours.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_weighted_evaluation_pads_to_whole_batches_without_counting_the_padding():
    """13 weighted examples in batches of 8 on 2 replicas: 3 padded examples of weight 0 count nowhere."""
    s = strategy("mirrored", 2)
    with s.scope():
        ours = model()
        optimizer = keras.optimizers.SGD(0.1)
    trainer = Trainer(s, ours, optimizer, SPARSE_CE, global_batch_size=8)
    x, y, w = np.concatenate([X, X[:1]]), np.concatenate([Y, Y[:1]]), np.concatenate([W, W[:1]])
    val = EvalInput(lambda: tf.data.Dataset.from_tensor_slices((x, y, w)), 13, 8)
    logs = trainer.evaluate(val, val.steps)
    reference = model()
    reference.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      weighted_metrics=["sparse_categorical_accuracy"])
    expected = reference.evaluate(x, y, sample_weight=w, batch_size=13, verbose=0, return_dict=True)
    assert val.steps == 2
    assert logs["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    assert logs["accuracy"] == pytest.approx(expected["sparse_categorical_accuracy"], rel=1e-6)
