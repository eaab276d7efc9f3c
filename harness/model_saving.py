"""Saving a model's weights or the whole model: complete or absent, written by the chief only.

Saving may read synchronised variables, which takes every worker; so every worker saves,
and non-chief workers write into a local temporary directory that they delete at once
(nothing of theirs ever lands under model_dir).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterator

import keras
import tensorflow as tf

from harness import storage
from harness.errors import UsageError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def discarded_directory() -> Iterator[str]:
    """A local temporary directory for a non-chief worker's copy of a save, deleted afterwards."""
    directory = tempfile.mkdtemp(prefix="harness-worker-save-")
    try:
        yield directory
    finally:
        storage.remove_quietly(directory)


def write_checkpoint(checkpoint: tf.train.Checkpoint, prefix: str, *, is_chief: bool) -> str | None:
    """Writes `checkpoint` at `prefix` atomically on the chief; elsewhere into a discarded temp.

    The files go under a temporary prefix first; the `.index` file, whose presence makes a
    checkpoint readable, is renamed into place last. Returns the path on the chief.
    """
    if not is_chief:
        with discarded_directory() as directory:
            checkpoint.write(f"{directory}/ckpt")
        return None
    storage.makedirs(storage.parent(prefix))
    temp = storage.temp_path(prefix)
    try:
        with storage.failing_as_storage_error("write the checkpoint", prefix, "earlier saves are intact"):
            checkpoint.write(temp)
            data_files = tf.io.gfile.glob(f"{temp}.data-*")
            storage.remove_checkpoint_files(prefix)
            for name in data_files:
                tf.io.gfile.rename(name, prefix + name[len(temp):], overwrite=True)
            tf.io.gfile.rename(f"{temp}.index", f"{prefix}.index", overwrite=True)
    finally:
        for leftover in tf.io.gfile.glob(f"{temp}*"):
            storage.remove_quietly(leftover)
    return prefix


def save_keras_model(model: keras.Model, path: str, *, is_chief: bool) -> str | None:
    """Saves the whole model (architecture, weights, optimizer) as a `.keras` file, atomically, on the chief."""
    if not path.endswith(".keras"):
        raise UsageError(f"a full-model save path must end with '.keras', got {path!r}")
    if not is_chief:
        return None
    storage.makedirs(storage.parent(path))
    temp = storage.temp_path(path[:-len(".keras")], "{path}.tmp-{id}.keras")
    try:
        with storage.failing_as_storage_error("save the model to", path):
            model.save(temp)
            tf.io.gfile.rename(temp, path, overwrite=True)
    finally:
        storage.remove_quietly(temp)
    return path


class ModelSaver:
    """Saves and restores one model's evaluated weights or whole model, never with non-finite weights.

    The evaluated weights are the model's, or with `ema` (a `harness.ema.WeightAverage`) its moving
    average: saves swap the average in for their duration, and weights set or restored through the
    saver become both the model's weights and the average (as Keras's `restore_best_weights` makes
    the best weights the model's).
    """

    def __init__(self, model: keras.Model, *, is_chief: bool, weights_are_finite: Callable[[], bool], ema=None):
        self.model, self.is_chief, self._finite, self._ema = model, is_chief, weights_are_finite, ema
        self._checkpoint = tf.train.Checkpoint(model=model)

    def evaluated(self) -> contextlib.AbstractContextManager:
        """Inside it the model holds the evaluated weights."""
        return self._ema.swapped() if self._ema is not None else contextlib.nullcontext()

    def _can_save(self, path: str) -> bool:
        if self._finite():
            return True
        log.warning("Not saving %s: the model has non-finite weights.", path)
        return False

    def save_weights(self, path: str) -> str | None:
        """A `tf.train.Checkpoint(model=...)` at `path` (chief); every worker must call this."""
        with self.evaluated():
            return write_checkpoint(self._checkpoint, path, is_chief=self.is_chief) if self._can_save(path) else None

    def save_model(self, path: str) -> str | None:
        """The whole model as a `.keras` file at `path` (chief); every worker must call this."""
        with self.evaluated():
            return save_keras_model(self.model, path, is_chief=self.is_chief) if self._can_save(path) else None

    def restore_weights(self, path: str) -> None:
        """Loads weights written by `save_weights` (on every worker)."""
        self._checkpoint.read(path).expect_partial()
        if self._ema is not None:
            self._ema.reset_to_weights()

    def get_weights(self) -> list:
        """The evaluated weights, as `model.get_weights()` lists them (numpy arrays)."""
        with self.evaluated():
            return self.model.get_weights()

    def set_weights(self, weights: list) -> None:
        """Sets the model's weights (and, with an EMA, the average) to `weights` from `get_weights`."""
        self.model.set_weights(weights)
        if self._ema is not None:
            self._ema.reset_to_weights()
