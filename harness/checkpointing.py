"""Checkpoints that are complete or absent, written by the chief, restorable with `tf.train.Checkpoint`.

Saving may read synchronised variables, which takes every worker; so every worker saves,
and non-chief workers write into a local temporary directory that they delete at once
(nothing of theirs ever lands under model_dir). All model_dir I/O goes through `tf.io.gfile`.
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import keras
import tensorflow as tf
from absl import logging

from harness.errors import SetupError


@contextlib.contextmanager
def _discarded_directory() -> Iterator[str]:
    """A local temporary directory for a non-chief worker's copy of a save, deleted afterwards."""
    directory = tempfile.mkdtemp(prefix="harness-worker-save-")
    try:
        yield directory
    finally:
        tf.io.gfile.rmtree(directory)


def write_checkpoint(checkpoint: tf.train.Checkpoint, prefix: str, *, is_chief: bool) -> str | None:
    """Writes `checkpoint` at `prefix` atomically on the chief; elsewhere into a discarded temp.

    The files go under a temporary prefix first; the `.index` file, whose presence makes a
    checkpoint readable, is renamed into place last. Returns the path on the chief.
    """
    if not is_chief:
        with _discarded_directory() as directory:
            checkpoint.write(f"{directory}/ckpt")
        return None
    parent = prefix.rsplit("/", 1)[0] if "/" in prefix else "."
    tf.io.gfile.makedirs(parent)
    temp = f"{prefix}.tmp-{uuid.uuid4().hex[:8]}"
    checkpoint.write(temp)
    data_files = tf.io.gfile.glob(f"{temp}.data-*")
    for old in tf.io.gfile.glob(f"{prefix}.data-*") + tf.io.gfile.glob(f"{prefix}.index"):
        tf.io.gfile.remove(old)
    for name in data_files:
        tf.io.gfile.rename(name, prefix + name[len(temp):], overwrite=True)
    tf.io.gfile.rename(f"{temp}.index", f"{prefix}.index", overwrite=True)
    return prefix


def save_keras_model(model: keras.Model, path: str, *, is_chief: bool) -> str | None:
    """Saves the whole model (architecture, weights, optimizer) as a `.keras` file, atomically, on the chief."""
    if not path.endswith(".keras"):
        raise ValueError(f"a full-model save path must end with '.keras', got {path!r}")
    if not is_chief:
        return None
    parent = path.rsplit("/", 1)[0] if "/" in path else "."
    tf.io.gfile.makedirs(parent)
    temp = f"{path[:-len('.keras')]}.tmp-{uuid.uuid4().hex[:8]}.keras"
    model.save(temp)
    tf.io.gfile.rename(temp, path, overwrite=True)
    return path


def write_text(path: str, text: str) -> None:
    """Writes a file through gfile, atomically (readers never see half a file), creating its folder."""
    parent = path.rsplit("/", 1)[0] if "/" in path else "."
    tf.io.gfile.makedirs(parent)
    temp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with tf.io.gfile.GFile(temp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(temp, path, overwrite=True)


def write_json(path: str, payload: dict[str, Any]) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def remove_checkpoint(prefix: str) -> None:
    """Deletes the files of the checkpoint at `prefix` (those that exist)."""
    for name in tf.io.gfile.glob(f"{prefix}.index") + tf.io.gfile.glob(f"{prefix}.data-*"):
        tf.io.gfile.remove(name)


def _keras_variables_support_async_checkpoints() -> None:
    """Makes Keras 3 variables copyable more than once by TensorFlow's async checkpointing.

    An async save copies every variable to the CPU through `_copy_trackable_to_cpu`, on every
    save. Keras 3.15's version creates a new `tf.Variable` each time, so the second async
    save fails ("tf.function only supports singleton tf.Variables"). The Keras variable
    saves exactly its backing variable's tensors, so its CPU copy can simply be that of the
    backing variable, which TensorFlow creates once and reuses.
    """
    from keras.src.backend.tensorflow.core import Variable  # pylint: disable=import-outside-toplevel

    def copy_trackable_to_cpu(self, object_map):
        self.value._copy_trackable_to_cpu(object_map)  # pylint: disable=protected-access
        object_map[self] = object_map[self.value]

    Variable._copy_trackable_to_cpu = copy_trackable_to_cpu  # pylint: disable=protected-access


class Checkpointer:
    """The training-state checkpoints of a run under `directory` (resume point; `max_to_keep` newest).

    Wraps `tf.train.CheckpointManager` on the chief. The checkpoint resumed from stays until
    a newer one is complete; a corrupt or truncated newest checkpoint is reported and the
    previous one used.
    """

    def __init__(self, checkpoint: tf.train.Checkpoint, directory: str, *, is_chief: bool,
                 max_to_keep: int | None = 3, enable_async: bool = False):
        self.checkpoint, self.directory, self.is_chief = checkpoint, directory, is_chief
        if enable_async:
            _keras_variables_support_async_checkpoints()
        self._options = tf.train.CheckpointOptions(enable_async=enable_async)
        self._manager = (tf.train.CheckpointManager(checkpoint, directory, max_to_keep=max_to_keep,
                                                    checkpoint_name="ckpt") if is_chief else None)

    def save(self, step: int) -> str | None:
        if not self.is_chief:
            with _discarded_directory() as directory:
                self.checkpoint.write(f"{directory}/ckpt", options=self._options)
                self.checkpoint.sync()
            return None
        return self._manager.save(checkpoint_number=step, options=self._options)

    def sync(self) -> None:
        """Waits for an asynchronous save to finish."""
        self.checkpoint.sync()

    def candidates(self) -> list[str]:
        """Complete checkpoints in `directory`, newest first."""
        state = tf.train.get_checkpoint_state(self.directory)
        if state is None:
            return []
        paths = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
        return [p for p in reversed(paths) if tf.io.gfile.exists(f"{p}.index")]

    def _interrupted_saves(self, latest: str | None) -> list[str]:
        """Files of checkpoints newer than the newest complete one: left by a save that was killed."""
        newest = int(latest.rsplit("-", 1)[1]) if latest else -1
        names = tf.io.gfile.glob(f"{self.directory}/ckpt-*")
        numbers = {int(m.group(1)) for m in (re.match(r"ckpt-(\d+)", n.rsplit("/", 1)[-1]) for n in names) if m}
        return [f"{self.directory}/ckpt-{n}" for n in sorted(numbers) if n > newest]

    def restore_latest(self) -> str | None:
        """Restores the newest readable checkpoint; returns its path, or None when there is none."""
        candidates = self.candidates()
        for partial in self._interrupted_saves(candidates[0] if candidates else None):
            logging.warning("Found an incomplete checkpoint %s (a save was interrupted); ignoring it.", partial)
            if self.is_chief:
                for name in tf.io.gfile.glob(f"{partial}*"):
                    (tf.io.gfile.rmtree if tf.io.gfile.isdir(name) else tf.io.gfile.remove)(name)
        for i, path in enumerate(candidates):
            try:
                self.checkpoint.read(path).assert_existing_objects_matched().expect_partial()
            except Exception as e:  # noqa: BLE001  (a damaged file fails in many ways: DataLoss, IndexError, ...)
                logging.warning("Checkpoint %s is unreadable (%s: %s); trying the previous one.",
                                path, type(e).__name__, (str(e).splitlines() or [""])[0][:200])
                continue
            if i:
                logging.warning("Resumed from %s, the newest readable checkpoint.", path)
            return path
        if candidates:
            raise SetupError(f"no checkpoint in {self.directory} is readable; move them away to keep them, "
                             "or pass --fresh to start over")
        return None
