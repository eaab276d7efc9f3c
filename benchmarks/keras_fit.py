"""Contender (c): Keras 3 `model.fit` with the equivalent Keras callbacks.

TensorBoard, CSVLogger, BackupAndRestore (Keras's training-state checkpoint for resuming,
saved each epoch, like the harness's) and the progress bar (verbose=1, printed into a string
buffer). The model is compiled with the same loss and accuracy metric and
`steps_per_execution=K`; changing K recompiles, so Keras retraces once per K.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os

import keras

from benchmarks.timing import Measurement, Stamps
from benchmarks.workload import Workload


class _Stamper(keras.callbacks.Callback):
    def __init__(self, stamps: Stamps):
        super().__init__()
        self.stamps = stamps

    def on_epoch_begin(self, epoch, logs=None):
        self.stamps.epoch_begin()

    def on_train_batch_end(self, batch, logs=None):
        self.stamps.batch_end()

    def on_train_end(self, logs=None):
        self.stamps.end()


class _LastStamper(keras.callbacks.Callback):
    def __init__(self, stamps: Stamps):
        super().__init__()
        self.stamps = stamps

    def on_train_batch_end(self, batch, logs=None):
        self.stamps.batch_done()


class KerasFit:
    name = "keras"

    def __init__(self, workload: Workload, model_dir: str):
        self.workload, self.model_dir = workload, model_dir
        self.model, self.optimizer = workload.build()
        self.dataset = workload.distributed_dataset()
        self._runs = itertools.count()
        self._compiled_k: int | None = None

    def _compile(self, steps_per_execution: int) -> None:
        if self._compiled_k == steps_per_execution:
            return
        self._compiled_k = None
        with self.workload.strategy.scope():
            self.model.compile(optimizer=self.optimizer,
                               loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                               metrics=["accuracy"], steps_per_execution=steps_per_execution)
        self._compiled_k = steps_per_execution

    def _callbacks(self, stamps: Stamps) -> list[keras.callbacks.Callback]:
        backup = os.path.join(self.model_dir, f"backup-{next(self._runs)}")
        # History and the progress bar are the ones fit would append; listed here so the last stamper runs after them.
        return [_Stamper(stamps), keras.callbacks.TensorBoard(os.path.join(self.model_dir, "tensorboard")),
                keras.callbacks.CSVLogger(os.path.join(self.model_dir, "metrics.csv")),
                keras.callbacks.BackupAndRestore(backup, save_freq="epoch"), keras.callbacks.History(),
                keras.callbacks.ProgbarLogger(), _LastStamper(stamps)]

    def _fit(self, epochs: int, steps_per_epoch: int) -> Stamps:
        stamps = Stamps()
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                self.model.fit(self.dataset, epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=1,
                               callbacks=self._callbacks(stamps))
        except BaseException:
            self._compiled_k = None  # a failed fit may leave a half-built train function behind
            raise
        return stamps

    def first_step(self) -> float:
        self._compile(1)
        stamps = self._fit(1, 1)
        return stamps.first_batch_end - stamps.call

    def prepare(self, steps_per_execution: int) -> None:
        """Recompiles for K and runs one K-step call (the trace), so a failure shows here."""
        if self._compiled_k != steps_per_execution:
            self._compile(steps_per_execution)
            self._fit(1, steps_per_execution)

    def measure(self, steps_per_execution: int, steps_per_epoch: int, epochs: int) -> Measurement:
        self.prepare(steps_per_execution)
        stamps = self._fit(epochs, steps_per_epoch)
        return Measurement(stamps, steps_per_epoch=steps_per_epoch, epochs=epochs)
