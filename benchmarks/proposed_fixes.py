"""Fixes proposed for the harness and its dependencies, applied only inside a benchmark to measure them.

Nothing here runs unless a benchmark asks for it explicitly, and every patch is undone on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def keras_async_checkpoint_copy() -> Iterator[None]:
    """Makes Keras 3 variables work with `tf.train.CheckpointOptions(enable_async=True)` after the first save.

    TF's async checkpoint copies variables to host copies in a `tf.function`
    (`AsyncCheckpointHelper._copy_to_cpu`). Keras's `Variable._copy_trackable_to_cpu` creates
    a new `tf.Variable` on every call, so the second save fails ("tf.function only supports
    singleton tf.Variables created on the first call"). The fix: let the Keras variable's entry
    alias the host copy TensorFlow keeps (and updates) for the wrapped `tf.Variable`.
    """
    from keras.src.backend.tensorflow import core  # pylint: disable=import-outside-toplevel

    original = core.Variable._copy_trackable_to_cpu

    def copy_trackable_to_cpu(self, object_map):
        self.value._copy_trackable_to_cpu(object_map)
        object_map[self] = object_map[self.value]

    core.Variable._copy_trackable_to_cpu = copy_trackable_to_cpu
    try:
        yield
    finally:
        core.Variable._copy_trackable_to_cpu = original
