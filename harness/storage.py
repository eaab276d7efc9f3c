"""All writing under model_dir and export_dir: through `tf.io.gfile`, atomic, and failing in one line.

`tf.io.gfile` makes `gs://` work on Cloud TPU and `ram://` in tests. A reader never sees half
a file: text is written to a temporary name and renamed into place. A write that fails (a full
disk, a read-only or unreachable file system, a path that is a file) leaves no temporary file
behind and raises `StorageError` naming the path and the cause.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import tensorflow as tf

from harness.errors import StorageError

# What a failed file operation says, reduced to its cause (TensorFlow's messages run long).
_CAUSES = ("No space left on device", "Read-only file system", "Permission denied", "Not a directory",
           "Is a directory", "File exists", "No such file or directory", "Disk quota exceeded",
           "Operation not permitted", "Input/output error")


def cause(error: BaseException) -> str:
    """A short cause for a failed file operation, e.g. 'No space left on device'."""
    text = str(error)
    for known in _CAUSES:
        if known.lower() in text.lower():
            return known
    first = (text.strip().splitlines() or [type(error).__name__])[0]
    return re.sub(r"\s+", " ", first)[:160]


@contextlib.contextmanager
def failing_as_storage_error(action: str, path: str, hint: str = "") -> Iterator[None]:
    """Turns a file-system error inside the block into one `StorageError` line."""
    try:
        yield
    except StorageError:
        raise
    except (OSError, tf.errors.OpError) as e:
        raise StorageError(f"cannot {action} {path}: {cause(e)}{'; ' + hint if hint else ''}") from None


def parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path.rstrip("/") else "."


def makedirs(path: str) -> None:
    """Creates `path` and its parents; a file in the way is a clear error."""
    with failing_as_storage_error("create the directory", path, "choose another path or free it"):
        if tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path):
            raise StorageError(f"cannot use {path} as a directory: it is a file; move it away or choose another path")
        tf.io.gfile.makedirs(path)


def check_writable_directory(path: str, what: str) -> None:
    """Fails now, not after training, when `path` cannot hold this run's files (creates it if needed)."""
    makedirs(path)
    probe = f"{path.rstrip('/')}/.harness-write-check-{uuid.uuid4().hex[:8]}"
    with failing_as_storage_error(f"write {what} in", path, "check the path, its permissions and free space"):
        with tf.io.gfile.GFile(probe, "w") as f:
            f.write("ok")
        tf.io.gfile.remove(probe)


def remove_quietly(path: str) -> None:
    """Deletes a file or directory if it exists, ignoring failures (cleanup after another failure)."""
    try:
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        elif tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)
    except (OSError, tf.errors.OpError):
        pass


def write_text(path: str, text: str) -> None:
    """Writes a file atomically (readers never see half a file), creating its folder."""
    makedirs(parent(path))
    temp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with failing_as_storage_error("write", path, "free some space or fix the permissions; the previous "
                                      "version, if any, is intact"):
            if tf.io.gfile.isdir(path):
                raise StorageError(f"cannot write {path}: it is a directory; move it away")
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
            raise StorageError(f"cannot read {path}: it is a directory; move it away")
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
