"""The training-state checkpoints of a run: complete or absent, one state per global step.

`model_dir/checkpoints/ckpt-<global step>` holds the state after everything of that step ran
(its loop, its hooks, and its epoch end when the step ends an epoch); it is written through
`tf.train.CheckpointManager` on the chief, restorable with `tf.train.Checkpoint`, and listed in
the `checkpoint` state file. Nothing that happened to the directory can make a resume wrong:

- A complete checkpoint that the state file does not list yet (the process died between
  the two writes) is adopted; incomplete leftovers of a killed save are removed.
- A damaged state file is rebuilt from the complete checkpoints on disk, with one warning.
- An unreadable newest checkpoint is reported and the previous one used.
- A save that fails (a full disk), synchronous or asynchronous, is one `StorageError` line and
  removes its partial files; the previous checkpoint stays listed and restorable.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from callbacks import file_errors
from harness import storage, tf_compat
from harness.errors import SetupError, StorageError
from harness.model_saving import discarded_directory

log = logging.getLogger(__name__)

PREFIX = "ckpt"
PROGRESS_KEY = "progress/.ATTRIBUTES/VARIABLE_VALUE"
_NUMBERED = re.compile(rf"{PREFIX}-(\d+)(?:\.|_temp|$)")
# The state file: lines `name: "value"` or `name: number` of the four fields TensorFlow writes.
_STATE_LINE = re.compile(r'(?:\s*(?:(?:all_)?model_checkpoint_paths?: *"[^"\n]*"|(?:all_model_checkpoint_timestamps'
                         r'|last_preserved_timestamp): *[-+0-9.eE]+)\s*)*\s*')


def step_of(path: str) -> int:
    return int(path.rsplit("-", 1)[1])


def _relative(path: str) -> str:
    """A checkpoint's name as the state file lists it (relative to the directory, as TensorFlow writes it)."""
    return path.rsplit("/", 1)[-1]


def read_progress(path: str) -> dict[str, Any]:
    """The progress record (position, callback state, history, settings) of a checkpoint, without restoring it."""
    return json.loads(tf.train.load_checkpoint(path).get_tensor(PROGRESS_KEY))


class Checkpointer:
    """Saves, lists and restores the training-state checkpoints under `directory` (`max_to_keep` newest)."""

    def __init__(self, checkpoint: tf.train.Checkpoint, directory: str, *, is_chief: bool,
                 max_to_keep: int | None = 3, enable_async: bool = False):
        self.checkpoint, self.directory, self.is_chief = checkpoint, directory, is_chief
        self.max_to_keep, self.enable_async = max_to_keep, enable_async
        self._options = tf.train.CheckpointOptions(enable_async=enable_async)
        self._manager: tf.train.CheckpointManager | None = None
        self._damaged = False  # the state file was found damaged (reported once; rebuilt on adoption)

    # ----- listing ----------------------------------------------------------------------------

    def _listed(self) -> list[str]:
        """The state file's checkpoints, oldest first; a damaged state file is rebuilt (chief) or ignored.

        The file is checked before TensorFlow parses it: TensorFlow logs two lines of its own
        about a damaged one and ignores it; here it is one warning line, once.
        """
        state_file = f"{self.directory}/checkpoint"
        try:
            text = storage.read_text(state_file)  # an unreachable or misplaced path fails here, in one line
            if text is None:
                return []
            if not _STATE_LINE.fullmatch(text) or "model_checkpoint_path" not in text:
                raise ValueError("not a checkpoint list")
            state = tf.train.get_checkpoint_state(self.directory)
        except StorageError as e:
            if "not text" not in str(e):
                raise
            self._report_damaged(state_file, "not text")
            return []
        except Exception as e:  # a damaged text proto raises parser errors of several types
            self._report_damaged(state_file, storage.cause(e))
            return []
        if state is None:
            return []
        paths = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
        return [p if "/" in p else f"{self.directory}/{p}" for p in paths]

    def _report_damaged(self, state_file: str, reason: str) -> None:
        if not self._damaged:
            log.warning("%s is damaged (%s); rebuilding the list from the complete checkpoints on disk.",
                        state_file, reason)
        self._damaged = True
        if self.is_chief:
            storage.remove_quietly(state_file)

    def _numbers_on_disk(self) -> dict[int, list[str]]:
        with storage.failing_as_storage_error("list", self.directory):
            if tf.io.gfile.exists(self.directory) and not tf.io.gfile.isdir(self.directory):
                raise storage.failure("use", self.directory, "it is a file, not a directory of checkpoints",
                                      fix=file_errors.IN_THE_WAY)
            names = tf.io.gfile.glob(f"{self.directory}/{PREFIX}-*")
        found: dict[int, list[str]] = {}
        for name in names:
            match = _NUMBERED.match(name.rsplit("/", 1)[-1])
            if match:
                found.setdefault(int(match.group(1)), []).append(name)
        return found

    @staticmethod
    def _complete(prefix: str, files: list[str]) -> bool:
        """The index and every data shard it needs are on disk (readability is checked when read)."""
        base = prefix.rsplit("/", 1)[-1]
        names = {f.rsplit("/", 1)[-1] for f in files}
        shards = [n for n in names if n.startswith(f"{base}.data-")]
        return f"{base}.index" in names and bool(shards) and len(shards) == int(shards[0].rsplit("-of-", 1)[1])

    def candidates(self) -> list[str]:
        """Complete checkpoints, newest first: the listed ones and any newer complete one not listed yet.

        Leftovers of an interrupted save (incomplete checkpoints newer than the newest listed
        one, a merge's temporary directory) are reported and, on the chief, removed.
        """
        listed = [p for p in self._listed() if tf.io.gfile.exists(f"{p}.index")]
        newest_listed = max((step_of(p) for p in listed), default=-1)
        unlisted = []
        for number, files in sorted(self._numbers_on_disk().items()):
            prefix = f"{self.directory}/{PREFIX}-{number}"
            if number <= newest_listed:
                continue
            if self._complete(prefix, files):
                unlisted.append(prefix)
                self._remove_leftovers(prefix, [f for f in files if f.endswith(f"{PREFIX}-{number}_temp")])
            else:
                self._remove_leftovers(prefix, files)
        return sorted(set(listed) | set(unlisted), key=step_of, reverse=True)

    def _remove_leftovers(self, prefix: str, files: list[str]) -> None:
        if not files or not self.is_chief:
            return  # the chief removes (and reports) them; elsewhere they may be a save in progress
        log.warning("Found leftovers of an interrupted save of %s; removing them.", prefix)
        if self.is_chief:
            for name in files:
                storage.remove_quietly(name)

    # ----- restoring --------------------------------------------------------------------------

    def restore_newest(self, check: Callable[[str, dict[str, Any]], None]) -> tuple[str, dict[str, Any]] | None:
        """Restores the newest readable checkpoint; returns its path and progress record, or None if there is none.

        `check(path, progress)` runs before any variable is touched (it may refuse the resume).
        A damaged checkpoint is reported and the previous one used.
        """
        candidates = self.candidates()
        for path in candidates:
            try:
                progress = read_progress(path)
            except Exception as e:  # a damaged file fails in many ways: DataLoss, IndexError, ...
                log.warning("Checkpoint %s is unreadable (%s); trying the previous one.", path, storage.cause(e))
                continue
            check(path, progress)
            try:
                self.checkpoint.read(path).assert_existing_objects_matched().expect_partial()
            except (AssertionError, ValueError) as e:
                raise SetupError(f"checkpoint {path} does not match this run's model and optimizer "
                                 f"({storage.cause(e)}); resume with the settings that wrote it, or use a new "
                                 "model_dir") from None
            except tf.errors.OpError as e:
                log.warning("Checkpoint %s is unreadable (%s); trying the previous one.", path, storage.cause(e))
                continue
            self._adopt(path, candidates)
            return path, progress
        if candidates:
            raise SetupError(f"no checkpoint in {self.directory} is readable; move them away to keep them, "
                             "or pass --fresh to start over")
        return None

    def restore(self, path: str) -> dict[str, Any]:
        """Restores the checkpoint at `path` (a rollback: one this run wrote or resumed from); returns its progress."""
        progress = read_progress(path)
        self.checkpoint.read(path).assert_existing_objects_matched().expect_partial()
        return progress

    def _adopt(self, path: str, complete: list[str]) -> None:
        """Lists a restored checkpoint that the state file did not list yet, with the complete ones before it.

        The chief rewrites the state file, with timestamps, so that `max_to_keep` retention goes on
        counting the adopted checkpoints. It writes the file itself (the same text format that
        `tf.train.CheckpointManager` reads), atomically; TensorFlow's own writer for it is deprecated
        and says so in three lines.
        """
        if not self.is_chief or path in self._listed():
            return
        if not self._damaged:  # (a damaged state file was reported already, with its rebuilding)
            log.warning("Adopted %s, a complete checkpoint that the state file did not list yet.", path)
        paths = sorted((p for p in complete if step_of(p) <= step_of(path)), key=step_of)
        with storage.failing_as_storage_error("update the checkpoint list in", self.directory):
            times = [tf.io.gfile.stat(f"{p}.index").mtime_nsec / 1e9 for p in paths]
        lines = [f'model_checkpoint_path: "{_relative(path)}"',
                 *(f'all_model_checkpoint_paths: "{_relative(p)}"' for p in paths),
                 *(f"all_model_checkpoint_timestamps: {t!r}" for t in times),
                 f"last_preserved_timestamp: {min(times) - 1!r}"]
        storage.write_text(f"{self.directory}/checkpoint", "\n".join(lines) + "\n",
                           note="the checkpoints themselves are intact")
        self._manager = None

    # ----- saving -----------------------------------------------------------------------------

    def _chief_manager(self) -> tf.train.CheckpointManager:
        if self._manager is None:
            self._listed()  # repairs a damaged state file first
            storage.makedirs(self.directory)
            self._manager = tf.train.CheckpointManager(self.checkpoint, self.directory, max_to_keep=self.max_to_keep,
                                                       checkpoint_name=PREFIX)
        return self._manager

    def save(self, step: int) -> str:
        """Writes the state at `step` (every worker calls this); returns its path (which the chief writes)."""
        if not self.is_chief:
            with discarded_directory() as directory:
                self._write(lambda: self.checkpoint.write(f"{directory}/{PREFIX}", options=self._options))
                self.checkpoint.sync()
            return f"{self.directory}/{PREFIX}-{step}"
        manager = self._chief_manager()
        prefix = f"{self.directory}/{PREFIX}-{step}"
        try:
            with storage.failing_as_storage_error("write the checkpoint", prefix, "earlier checkpoints are intact"):
                return self._write(lambda: manager.save(checkpoint_number=step, options=self._options))
        except StorageError:
            self._discard_incomplete(failed=step)
            raise

    def _discard_incomplete(self, failed: int | None = None) -> None:
        """After a failed save (chief): deletes the files of the failed one and of every incomplete checkpoint."""
        try:
            for number, files in self._numbers_on_disk().items():
                prefix = f"{self.directory}/{PREFIX}-{number}"
                temp = [f for f in files if f.endswith("_temp")]
                for name in files if number == failed or not self._complete(prefix, files) else temp:
                    storage.remove_quietly(name)
        except StorageError:
            pass  # the storage that failed the save may fail the cleanup too; a resume removes the rest

    def _write(self, write):
        if not self.enable_async:
            return write()
        with tf_compat.async_checkpoint_copies():
            return write()

    def sync(self) -> None:
        """Waits for an asynchronous save to finish (its failure surfaces here, as a `StorageError`)."""
        try:
            with storage.failing_as_storage_error("finish writing a checkpoint in", self.directory,
                                                  "earlier checkpoints are intact"):
                self.checkpoint.sync()
                tf_compat.raise_async_checkpoint_error(self.checkpoint)
        except StorageError:
            if self.is_chief:
                self._discard_incomplete()
            raise
