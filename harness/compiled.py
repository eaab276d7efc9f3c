"""`tf.function` for one object's method, without TensorFlow's false "frequent retracing" warning.

TensorFlow counts the traces of every `tf.function` that wraps the same code (it unwraps bound
methods and closures to their code object): each Trainer (in a notebook, a test suite, a benchmark)
traces its own metrics and loops once, and from the fifth Trainer on TensorFlow warns of
"excessive retracing". Wrapping a callable object made for this method gives it a counter of its
own (TensorFlow keys an object without code by the object), so a real retrace (the same object
tracing again) is still reported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf


class _OwnCounter:
    """Calls `method`; an object of its own, so TensorFlow counts its traces apart."""

    def __init__(self, method: Callable[..., Any]):
        self.method = method

    def __call__(self, *args, **kwargs):
        return self.method(*args, **kwargs)


def compiled(method: Callable[..., Any], **options: Any) -> Callable[..., Any]:
    """`tf.function(method, **options)`, with retracing counted for this object alone."""
    return tf.function(_OwnCounter(method), **options)
