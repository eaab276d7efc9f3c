"""All writing under model_dir and export_dir: through `tf.io.gfile`, atomic, and failing in one line.

`tf.io.gfile` makes `gs://` work on Cloud TPU and `ram://` in tests. A reader never sees half
a file: text is written to a temporary name and renamed into place. A write that fails (a full
disk, a read-only or unreachable file system, a path that is a file) leaves no temporary file
behind and raises `StorageError` naming the path, the cause and what to do about it:

    cannot write the checkpoint runs/x/checkpoints/ckpt-40: No space left on device; free some space
    (earlier checkpoints are intact)

The fix follows from the cause (TensorFlow's and the OS's messages run long and name neither);
a call site adds what the user may want to know besides (`note`), such as what is still intact.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import tensorflow as tf

from callbacks import file_errors
from harness import cluster
from harness.errors import StorageError


def cause(error: BaseException) -> str:
    """A short cause for a failed file operation, e.g. 'No space left on device'."""
    return file_errors.cause(error)


def failure(action: str, path: str, error: BaseException | str, note: str = "", fix: str = "") -> StorageError:
    """`cannot <action> <path>: <cause>; <fix>[ (<note>)]` as a `StorageError` (the fix follows from the cause)."""
    return StorageError(file_errors.message(action, path, error, note, fix))


@contextlib.contextmanager
def failing_as_storage_error(action: str, path: str, note: str = "") -> Iterator[None]:
    """Turns a file-system error inside the block into one `StorageError` line (see `failure`)."""
    try:
        yield
    except StorageError:
        raise
    except (OSError, tf.errors.OpError) as e:
        if cluster.from_the_cluster(e):  # a lost peer interrupted a collective inside the write: not a storage fault
            raise
        raise failure(action, path, e, note) from None


def parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path.rstrip("/") else "."


def makedirs(path: str) -> None:
    """Creates `path` and its parents; a file in the way is a clear error."""
    with failing_as_storage_error("create the directory", path):
        if tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path):
            raise failure("use", path, "it is a file, not a directory", fix=file_errors.IN_THE_WAY)
        tf.io.gfile.makedirs(path)


def check_writable_directory(path: str, what: str) -> None:
    """Fails now, not after training, when `path` cannot hold this run's files (creates it if needed)."""
    makedirs(path)
    probe = f"{path.rstrip('/')}/.harness-write-check-{uuid.uuid4().hex[:8]}"
    try:
        with failing_as_storage_error(f"write {what} in", path), tf.io.gfile.GFile(probe, "w") as f:
            f.write("ok")
    finally:
        remove_quietly(probe)


def remove_quietly(path: str) -> None:
    """Deletes a file or directory if it exists, ignoring failures (cleanup after another failure)."""
    try:
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        elif tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)
    except (OSError, tf.errors.OpError):
        pass


def temp_path(path: str, pattern: str = "{path}.tmp-{id}") -> str:
    """A fresh temporary name for writing `path`, after removing what a killed writer left under that pattern
    (this process is the only writer of `path`: the chief, or an evaluator in its own folder)."""
    for stale in tf.io.gfile.glob(pattern.format(path=path, id="*")):
        remove_quietly(stale)
    return pattern.format(path=path, id=uuid.uuid4().hex[:8])


def write_text(path: str, text: str, note: str = "the previous version, if any, is intact") -> None:
    """Writes a file atomically (readers never see half a file), creating its folder."""
    makedirs(parent(path))
    temp = temp_path(path)
    try:
        with failing_as_storage_error("write", path, note):
            if tf.io.gfile.isdir(path):
                raise failure("write", path, "it is a directory", note)
            with tf.io.gfile.GFile(temp, "w") as f:
                f.write(text)
            tf.io.gfile.rename(temp, path, overwrite=True)
    finally:
        remove_quietly(temp)


def write_json(path: str, payload: dict[str, Any]) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_text(path: str) -> str | None:
    """The file's text, None when it does not exist; undecodable or unreadable is a `StorageError`."""
    with failing_as_storage_error("read", path):
        if not tf.io.gfile.exists(path):
            return None
        if tf.io.gfile.isdir(path):
            raise failure("read", path, "it is a directory")
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise StorageError(f"cannot read {path}: it is not text (damaged?); move it away") from None


def remove_checkpoint_files(prefix: str) -> None:
    """Deletes the files of the checkpoint at `prefix` (those that exist)."""
    with failing_as_storage_error("delete", prefix):
        for name in tf.io.gfile.glob(f"{prefix}.index") + tf.io.gfile.glob(f"{prefix}.data-*"):
            tf.io.gfile.remove(name)
