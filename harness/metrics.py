"""The metrics a run logs besides the loss: per-example functions `fn(labels, outputs)`.

`METRICS` is the registry the command line and the callbacks' monitor names come from.
TensorFlow is imported inside the functions so that reading the registry stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tensorflow as tf

MetricFn = Callable[["tf.Tensor", "tf.Tensor"], "tf.Tensor"]


def sparse_categorical_accuracy(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """1.0 where the arg-max of `logits` equals the integer label, per example."""
    import tensorflow as tf

    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return tf.cast(tf.equal(predicted, tf.cast(tf.reshape(labels, tf.shape(predicted)), tf.int32)), tf.float32)


METRICS: dict[str, MetricFn] = {"accuracy": sparse_categorical_accuracy}
LOSS = "loss"
LEARNING_RATE = "lr"


def log_names(metric_names: tuple[str, ...], has_validation: bool = True) -> tuple[str, ...]:
    """The names an epoch's logs hold: the loss and metrics, their `val_` twins, and the learning rate."""
    names = (LOSS, *metric_names)
    return (*names, *(f"val_{n}" for n in names if has_validation), LEARNING_RATE)
