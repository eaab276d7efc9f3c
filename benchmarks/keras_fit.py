"""Contender (c): Keras 3 `model.fit` with the equivalent Keras callbacks.

TensorBoard, CSVLogger, BackupAndRestore (Keras's training-state checkpoint for resuming,
saved each epoch, like the harness's) and the progress bar (verbose=1, printed into a string
buffer). The model is compiled with the same loss and accuracy metric and
`steps_per_execution=K`; changing K recompiles, so Keras retraces once per K (in the
untimed warm-up epoch). A pacing callback, first in the list, takes the turns.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os

import keras

from benchmarks.interleave import Pacer
from benchmarks.timing import Stamps
from benchmarks.workload import Workload


class _Stamper(keras.callbacks.Callback):
    def __init__(self, stamps: Stamps):
        super().__init__()
        self.stamps = stamps

    def on_train_batch_end(self, batch, logs=None):
        self.stamps.batch_end()


class _Pacing(keras.callbacks.Callback):
    def __init__(self, pacer: Pacer):
        super().__init__()
        self.pacer = pacer

    def on_epoch_begin(self, epoch, logs=None):
        self.pacer.epoch_begin()

    def on_train_batch_begin(self, batch, logs=None):
        self.pacer.loop_begin()

    def on_train_end(self, logs=None):
        self.pacer.finish()


class _LastPacing(keras.callbacks.Callback):
    def __init__(self, pacer: Pacer):
        super().__init__()
        self.pacer = pacer

    def on_train_batch_end(self, batch, logs=None):
        self.pacer.batch_done()


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

    def callbacks(self, first: list[keras.callbacks.Callback] = (),
                  last: list[keras.callbacks.Callback] = ()) -> list[keras.callbacks.Callback]:
        backup = os.path.join(self.model_dir, f"backup-{next(self._runs)}")
        # History and the progress bar are the ones fit would append; listed here so the last ones run after them.
        return [*first, keras.callbacks.TensorBoard(os.path.join(self.model_dir, "tensorboard")),
                keras.callbacks.CSVLogger(os.path.join(self.model_dir, "metrics.csv")),
                keras.callbacks.BackupAndRestore(backup, save_freq="epoch"), keras.callbacks.History(),
                keras.callbacks.ProgbarLogger(), *last]

    def _fit(self, epochs: int, steps_per_epoch: int, callbacks: list[keras.callbacks.Callback]) -> None:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                self.model.fit(self.dataset, epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=1,
                               callbacks=callbacks)
        except BaseException:
            self._compiled_k = None  # a failed fit may leave a half-built train function behind
            raise

    def first_step(self) -> float:
        self._compile(1)
        stamps = Stamps()
        self._fit(1, 1, self.callbacks([_Stamper(stamps)]))
        return stamps.first_batch_end - stamps.call

    def train(self, pacer: Pacer, steps_per_execution: int, steps_per_epoch: int, epochs: int) -> None:
        self._compile(steps_per_execution)
        self._fit(epochs, steps_per_epoch, self.callbacks([_Pacing(pacer)], [_LastPacing(pacer)]))
