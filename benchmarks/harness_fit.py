"""Contender (b): `harness.Trainer.fit` with the default callbacks of `scripts/train.py`.

TensorBoard, CSVLogger and the progress bar (into a string buffer), plus the trainer's own
training-state checkpoint at every epoch end. A timing callback, first in the list, stamps
the epoch starts and the end of training.
"""

from __future__ import annotations

import io

import keras

import harness
from benchmarks.timing import Measurement, Stamps
from benchmarks.workload import Workload
from callbacks import Callback, CSVLogger, ProgressBar, TensorBoard


class _Stamper(Callback):
    """First in the list: stamps epoch starts, the first batch end and the end of training."""

    def __init__(self, stamps: Stamps):
        self.stamps = stamps

    def on_epoch_begin(self, epoch, logs=None):
        self.stamps.epoch_begin()

    def on_train_batch_end(self, step, logs=None):
        self.stamps.batch_end()

    def on_train_end(self, logs=None):
        self.stamps.end()


class _LastStamper(Callback):
    """Last in the list: stamps when every batch hook has run."""

    def __init__(self, stamps: Stamps):
        self.stamps = stamps

    def on_train_batch_end(self, step, logs=None):
        self.stamps.batch_done()


def default_callbacks() -> list[Callback]:
    """What `scripts/train.py` turns on by default (its RunSummary aside), output kept off the terminal."""
    return [TensorBoard(), CSVLogger(), ProgressBar(stream=io.StringIO())]


class HarnessFit:
    name = "harness"

    def __init__(self, workload: Workload, model_dir: str, **trainer_kwargs):
        self.workload = workload
        model, optimizer = workload.build()
        self.trainer = harness.Trainer(
            workload.strategy, model, optimizer,
            keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None),
            global_batch_size=workload.global_batch_size, model_dir=model_dir, **trainer_kwargs)

    def _fit(self, epochs: int, steps_per_epoch: int) -> Stamps:
        stamps = Stamps()
        self.trainer.fit(self.workload.dataset_fn, epochs=self.trainer.epochs_completed + epochs,
                         steps_per_epoch=steps_per_epoch, resume=False,
                         callbacks=[_Stamper(stamps), *default_callbacks(), _LastStamper(stamps)])
        return stamps

    def first_step(self) -> float:
        self.trainer.steps_per_execution = 1
        stamps = self._fit(1, 1)
        return stamps.first_batch_end - stamps.call

    def prepare(self, steps_per_execution: int) -> None:
        self.trainer.steps_per_execution = steps_per_execution  # the loop takes K as a tensor: no retrace

    def measure(self, steps_per_execution: int, steps_per_epoch: int, epochs: int) -> Measurement:
        self.trainer.steps_per_execution = steps_per_execution
        stamps = self._fit(epochs, steps_per_epoch)
        return Measurement(stamps, steps_per_epoch=steps_per_epoch, epochs=epochs)
