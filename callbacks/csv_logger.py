"""CSVLogger: one row of logs per epoch in a CSV file, written by the chief."""

from __future__ import annotations

import csv
import io
import logging

import tensorflow as tf

from callbacks import file_errors
from callbacks.base import Callback

log = logging.getLogger(__name__)


class CSVLogger(Callback):
    """Keras's CSVLogger (`filename`, `separator`, `append`), safe on every worker and on resume.

    Only the chief writes. The file is rewritten whole and atomically each epoch through
    `tf.io.gfile` (so it works on gs://, which cannot append); the header is written once.
    On resume, rows of epochs that are being redone are dropped, so every epoch appears
    exactly once, and rows of completed epochs that the file lacks come back from the run's
    history. `filename` defaults to `<model_dir>/metrics.csv`. The `epoch` column counts
    from 1, as every epoch number a person reads in the harness does (Keras's counts from 0).

    A file this logger cannot continue (not text, no `epoch` column, a column of this run's
    logs missing from its header, a malformed row) is kept, renamed to `<filename>.damaged-<n>`,
    and a fresh file started, with one warning: its rows are not lost, and this run's are not
    written under a header they do not fit. Extra columns are fine (callbacks may add logs).
    A directory where the file belongs fails before the first step (`FileFailure`, an OSError).
    """

    identical_on_every_worker = True  # its requests follow from the logs and steps alone

    def __init__(self, filename: str | None = None, separator: str = ",", append: bool = False):
        if len(separator) != 1:
            raise ValueError(f"CSVLogger: separator must be one character, got {separator!r}")
        self.filename, self.separator, self.append = filename, separator, append
        self.keys: list[str] | None = None
        self._rows: list[dict[str, str]] = []

    def _path(self) -> str:
        if self.filename:
            return self.filename
        if not self.context.model_dir:
            raise ValueError("CSVLogger needs a filename when the trainer has no model_dir")
        return f"{self.context.model_dir}/metrics.csv"

    def _read_existing(self, path: str) -> None:
        with file_errors.failing_as_file_failure("read", path), tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
        problem, rows, fields = None, [], []
        try:
            reader = csv.DictReader(io.StringIO(data.decode("utf-8"), newline=""), delimiter=self.separator)
            rows, fields = list(reader), list(reader.fieldnames or [])
        except (UnicodeDecodeError, csv.Error):
            problem = "it is not CSV text"
        missing = [name for name in ("epoch", *self.context.logged_names) if name not in fields]
        if not problem and missing:
            problem = f"its header lacks {', '.join(missing)}"
        if not problem and any(None in row or None in row.values() or not row["epoch"].isdigit() for row in rows):
            problem = "a row does not fit its header"
        if problem:
            self._set_aside(path, problem)
            return
        self._rows = rows
        self.keys = [k for k in fields if k != "epoch"] or None

    def _set_aside(self, path: str, problem: str) -> None:
        """Keeps a file this logger cannot continue under a new name, for the user to look at."""
        n = 1
        with file_errors.failing_as_file_failure("move away the damaged", path):
            while tf.io.gfile.exists(f"{path}.damaged-{n}"):
                n += 1
            tf.io.gfile.rename(path, f"{path}.damaged-{n}")
        log.warning("%s cannot be continued (%s); kept as %s.damaged-%d, starting a fresh file.", path, problem,
                    path, n)

    def on_train_begin(self, logs=None):
        if not self.context.is_chief:
            return
        path = self._path()
        resumed = self.context.global_step > 0
        self._rows, self.keys = [], None
        with file_errors.failing_as_file_failure("write", path):
            if tf.io.gfile.isdir(path):
                raise file_errors.FileFailure(file_errors.message("write", path, "it is a directory"))
            exists = tf.io.gfile.exists(path)
        if (self.append or resumed) and exists:
            self._read_existing(path)
        if resumed:  # drop rows of epochs the resumed run will redo (written after the checkpoint)
            while self._rows and int(self._rows[-1]["epoch"]) > self.context.epochs_completed:
                self._rows.pop()
            self._fill_from_history()

    def _fill_from_history(self) -> None:
        """Rows the file lacks for completed epochs (a damaged file set aside, the logger switched off for a
        while) come back from the run's history, which the checkpoint holds: every epoch appears exactly once."""
        history, have = self.context.history, {int(row["epoch"]) for row in self._rows}
        for i, epoch in enumerate(history.epoch):
            if epoch + 1 not in have and epoch < self.context.epochs_completed:
                self._rows.append(self._row(epoch, {name: values[i] for name, values in history.history.items()
                                                    if values[i] is not None}))
        self._rows.sort(key=lambda row: int(row["epoch"]))

    def _row(self, epoch: int, logs: dict[str, float]) -> dict[str, str]:
        if self.keys is None:
            self.keys = sorted(logs)
        return {"epoch": str(epoch + 1), **{k: repr(float(logs[k])) if k in logs else "NA" for k in self.keys}}

    def on_rollback(self, step):
        """A rollback to before an epoch end: that epoch is redone, and its row goes (at the next write)."""
        while self._rows and int(self._rows[-1]["epoch"]) > self.context.epochs_completed:
            self._rows.pop()

    def on_epoch_end(self, epoch, logs=None):
        if not self.context.is_chief:
            return
        self._rows.append(self._row(epoch, logs or {}))
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=["epoch", *self.keys], delimiter=self.separator, lineterminator="\n",
                                extrasaction="ignore", restval="NA")
        writer.writeheader()
        writer.writerows(self._rows)
        self.context.write_text(self._path(), out.getvalue())
