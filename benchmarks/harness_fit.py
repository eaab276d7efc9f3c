"""Contender (b): `harness.Trainer.fit` with the default callbacks of `scripts/train.py`.

TensorBoard, CSVLogger and the progress bar (into a string buffer), plus the trainer's own
training-state checkpoint at every epoch end. A pacing callback, first in the list after the
trainer's History, takes the turns (`benchmarks.interleave`) before each K-step call; one
last in the list marks when every batch hook has run (the start of an epoch end).
"""

from __future__ import annotations

import io

import keras

import harness
from benchmarks.interleave import Pacer
from benchmarks.timing import Stamps
from benchmarks.workload import Workload
from callbacks import Callback, CSVLogger, ProgressBar, TensorBoard


class _Stamper(Callback):
    """First in the list: stamps the first batch end (time to first step)."""

    identical_on_every_worker = True  # it asks for nothing (a cluster agrees as with train.py's callbacks)

    def __init__(self, stamps: Stamps):
        self.stamps = stamps

    def on_train_batch_end(self, step, logs=None):
        self.stamps.batch_end()


class _Pacing(Callback):
    """First in the list: the contender's turns."""

    identical_on_every_worker = True  # it asks for nothing (a cluster agrees as with train.py's callbacks)

    def __init__(self, pacer: Pacer):
        self.pacer = pacer

    def on_epoch_begin(self, epoch, logs=None):
        self.pacer.epoch_begin()

    def on_train_batch_begin(self, step, logs=None):
        self.pacer.loop_begin()

    def on_train_end(self, logs=None):
        self.pacer.finish()


class _LastPacing(Callback):
    """Last in the list: every batch hook has run."""

    identical_on_every_worker = True  # it asks for nothing (a cluster agrees as with train.py's callbacks)

    def __init__(self, pacer: Pacer):
        self.pacer = pacer

    def on_train_batch_end(self, step, logs=None):
        self.pacer.batch_done()


def default_callbacks(write_graph: bool = True) -> list[Callback]:
    """What `scripts/train.py` turns on by default (its RunSummary aside), output kept off the terminal."""
    return [TensorBoard(write_graph=write_graph), CSVLogger(), ProgressBar(stream=io.StringIO())]


class HarnessFit:
    name = "harness"

    def __init__(self, workload: Workload, model_dir: str, write_graph: bool = True, **trainer_kwargs):
        """`write_graph=False` for all but one harness contender: TensorBoard's graph export (once per
        `fit`, in the untimed warm-up) uses TensorFlow's one process-wide trace, which two trainers taking
        turns would each end for the other ("Must enable trace before export")."""
        self.workload, self.write_graph = workload, write_graph
        model, optimizer = workload.build()
        self.trainer = harness.Trainer(
            workload.strategy, model, optimizer,
            keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None),
            global_batch_size=workload.global_batch_size, model_dir=model_dir, **trainer_kwargs)

    def _fit(self, epochs: int, steps_per_epoch: int, first: list[Callback], last: list[Callback]) -> None:
        self.trainer.fit(self.workload.dataset_fn, epochs=self.trainer.epochs_completed + epochs,
                         steps_per_epoch=steps_per_epoch, resume=False,
                         callbacks=[*first, *default_callbacks(self.write_graph), *last])

    def first_step(self) -> float:
        self.trainer.steps_per_execution = 1
        stamps = Stamps()
        self._fit(1, 1, [_Stamper(stamps)], [])
        return stamps.first_batch_end - stamps.call

    def train(self, pacer: Pacer, steps_per_execution: int, steps_per_epoch: int, epochs: int) -> None:
        self.trainer.steps_per_execution = steps_per_execution  # the loop takes K as a tensor: no retrace
        self._fit(epochs, steps_per_epoch, [_Pacing(pacer)], [_LastPacing(pacer)])
