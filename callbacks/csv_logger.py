"""CSVLogger: one row of logs per epoch in a CSV file, written by the chief."""

from __future__ import annotations

import csv
import io

import tensorflow as tf

from callbacks.base import Callback


class CSVLogger(Callback):
    """Keras's CSVLogger (`filename`, `separator`, `append`), safe on every worker and on resume.

    Only the chief writes. The file is rewritten whole and atomically each epoch through
    `tf.io.gfile` (so it works on gs://, which cannot append); the header is written once.
    On resume, rows of epochs that are being redone are dropped, so every epoch appears
    exactly once. `filename` defaults to `<model_dir>/metrics.csv`.
    """

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
        with tf.io.gfile.GFile(path, "r") as f:
            reader = csv.DictReader(io.StringIO(f.read()), delimiter=self.separator)
            self._rows = list(reader)
            self.keys = [k for k in (reader.fieldnames or []) if k != "epoch"] or None

    def on_train_begin(self, logs=None):
        if not self.context.is_chief:
            return
        path = self._path()
        resumed = self.context.global_step > 0
        self._rows, self.keys = [], None
        if (self.append or resumed) and tf.io.gfile.exists(path):
            self._read_existing(path)
        if resumed:  # drop rows of epochs the resumed run will redo (written after the checkpoint)
            while self._rows and int(self._rows[-1]["epoch"]) >= self.context.epochs_completed:
                self._rows.pop()

    def on_epoch_end(self, epoch, logs=None):
        if not self.context.is_chief:
            return
        logs = logs or {}
        if self.keys is None:
            self.keys = sorted(logs)
        self._rows.append({"epoch": str(epoch), **{k: repr(float(logs[k])) if k in logs else "NA" for k in self.keys}})
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=["epoch", *self.keys], delimiter=self.separator, lineterminator="\n",
                                extrasaction="ignore", restval="NA")
        writer.writeheader()
        writer.writerows(self._rows)
        self.context.write_text(self._path(), out.getvalue())
