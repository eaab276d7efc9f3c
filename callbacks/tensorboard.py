"""TensorBoard: scalars, histograms, the graph and profiles, written by the chief at the global step."""

from __future__ import annotations

import functools
import itertools
import logging
import os
import socket
import time

import tensorflow as tf

from callbacks import file_errors, stragglers
from callbacks.base import Callback
from callbacks.cadence import crosses_multiple

log = logging.getLogger(__name__)

_marks = itertools.count()


def write_start_event(log_dir: str, step: int) -> None:
    """Marks the start of a session at `step` (TensorBoard's SessionLog.START), in an event file of its own.

    TensorBoard ignores a run's first start mark, and at any later one (a resumed run) it
    drops the earlier events at or after its step: the steps the resumed run redoes would
    otherwise show twice. Written with public APIs (a TFRecord file of `Event` protos), so
    it works wherever `tf.io.gfile` does.
    """
    now = time.time()
    name = f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}.{next(_marks)}.restart"
    with tf.io.TFRecordWriter(f"{log_dir}/{name}") as writer:
        writer.write(tf.compat.v1.Event(wall_time=now, file_version="brain.Event:2").SerializeToString())
        start = tf.compat.v1.SessionLog(status=tf.compat.v1.SessionLog.START)
        writer.write(tf.compat.v1.Event(step=step, wall_time=now, session_log=start).SerializeToString())


def _writes_events(hook):
    """A hook that writes events: a failure (a full disk, a file in the way) is one `FileFailure` line,
    `cannot write TensorBoard events to <dir>: <cause>; <fix>`, and the writers are dropped."""
    @functools.wraps(hook)
    def wrapped(self, *args, **kwargs):
        try:
            return hook(self, *args, **kwargs)
        except file_errors.FileFailure:
            self._abandon()
            raise
        except (OSError, tf.errors.OpError) as e:
            self._abandon()
            raise file_errors.FileFailure(file_errors.message("write TensorBoard events to", self._root, e)) from None
    return wrapped


class TensorBoard(Callback):
    """Keras's TensorBoard options, for a distributed run.

    - Only the chief writes; other workers write nothing.
    - Steps are the global step, for epoch and batch summaries alike, so curves of resumed
      runs continue where they stopped (and a restart mark drops the redone steps' events).
    - Per epoch: `epoch_<metric>` in `train/` and `validation/`, `epoch_learning_rate`,
      `epoch_steps_per_second` and `epoch_examples_per_second`; with several workers, the
      straggler view `workers/epoch_seconds_{min,mean,max}` and `workers/epoch_slowest`
      (and `workers/loop_...` with the batch summaries).
    - `update_freq`: "epoch", or every that many steps `batch_<metric>` (running means of
      the epoch), `batch_learning_rate` and `batch_steps_per_second`.
    - `histogram_freq`: weight histograms every that many epochs; `write_graph`: the traced
      training loop; `profile_batch`: a profiler trace over a (start, stop) range of global
      steps, or one step; 0 turns it off.
    - With step-wise validation (the trainer's `validation_every_n_steps`), every validation as
      Keras names it: `evaluation_<metric>_vs_iterations` in `validation/` at its global step.
    - After a rollback, a restart mark drops the events of the steps it discarded.
    `log_dir` defaults to `<model_dir>/tensorboard`.
    """

    identical_on_every_worker = True  # its requests follow from the logs and steps alone

    def __init__(self, log_dir: str | None = None, histogram_freq: int = 0, write_graph: bool = True,
                 update_freq: str | int = "epoch", profile_batch: int | tuple[int, int] = 0):
        if update_freq != "epoch" and not (isinstance(update_freq, int) and update_freq > 0):
            raise ValueError(f"TensorBoard: update_freq must be 'epoch' or a positive integer, got {update_freq!r}")
        if histogram_freq < 0:
            raise ValueError(f"TensorBoard: histogram_freq must be >= 0, got {histogram_freq}")
        start, stop = profile_batch if isinstance(profile_batch, (tuple, list)) else (profile_batch, profile_batch)
        if start < 0 or stop < start:
            raise ValueError(f"TensorBoard: profile_batch must be a step or a (start, stop) range, "
                             f"got {profile_batch!r}")
        self.log_dir, self.histogram_freq, self.write_graph = log_dir, histogram_freq, write_graph
        self.update_freq, self._profile_range = update_freq, (start, stop)
        self._writers: dict[str, tf.summary.SummaryWriter] = {}
        self._profiling = self._tracing = False

    @property
    def _root(self) -> str:
        if self.log_dir:
            return self.log_dir
        if not self.context.model_dir:
            raise ValueError("TensorBoard needs a log_dir when the trainer has no model_dir")
        return f"{self.context.model_dir}/tensorboard"

    def _writer(self, name: str) -> tf.summary.SummaryWriter:
        return self._writers[name]

    @_writes_events
    def on_train_begin(self, logs=None):
        if not self.context.is_chief:
            return
        step = self.context.global_step
        for name in ("train", "validation"):
            tf.io.gfile.makedirs(f"{self._root}/{name}")
            write_start_event(f"{self._root}/{name}", step + 1 if step else 0)
        if self.context.resumed:  # files are read in name order, by creation second: the mark must come first
            time.sleep(1.0 - time.time() % 1.0 + 0.01)
        for name in ("train", "validation"):  # one at a time: after a failure, the created one is closed
            self._writers[name] = tf.summary.create_file_writer(f"{self._root}/{name}")
        if self.write_graph:
            tf.summary.trace_on(graph=True, profiler=False)
            self._tracing = True
        self._epoch_start = self._interval_start = (time.monotonic(), step)
        log.info("TensorBoard: tensorboard --logdir %s", self._root)

    def _crosses_update(self, step: int, previous: int) -> bool:
        return isinstance(self.update_freq, int) and crosses_multiple(previous, step, self.update_freq)

    def wants_batch_logs(self, step):
        return self._crosses_update(step, self._previous_step())

    def _previous_step(self) -> int:
        return self.context.global_step

    @_writes_events
    def on_train_batch_begin(self, step, logs=None):
        start, stop = self._profile_range
        if self.context.is_chief and stop and not self._profiling and start <= step + self.context.steps_per_execution \
                and step < stop:
            tf.profiler.experimental.start(f"{self._root}/train")
            self._profiling = True

    @_writes_events
    def on_train_batch_end(self, step, logs=None):
        if not self.context.is_chief:
            return
        if self._tracing:
            with self._writer("train").as_default():
                tf.summary.trace_export(name="train_loop", step=step)
            self._tracing = False
        if self._profiling and step >= self._profile_range[1]:
            tf.profiler.experimental.stop()
            self._profiling = False
        previous_time, previous_step = self._interval_start
        if logs and self._crosses_update(step, previous_step):
            now = time.monotonic()
            with self._writer("train").as_default(step=step):
                for name, value in logs.items():
                    tf.summary.scalar(f"batch_{name}", value)
                tf.summary.scalar("batch_learning_rate", self.context.learning_rate)
                tf.summary.scalar("batch_steps_per_second", (step - previous_step) / max(now - previous_time, 1e-9))
                self._write_workers("loop", self.context.worker_seconds)
            self._interval_start = (now, step)

    @_writes_events
    def on_epoch_end(self, epoch, logs=None):
        if not self.context.is_chief:
            return
        logs, step = logs or {}, self.context.global_step
        start_time, start_step = self._epoch_start
        now = time.monotonic()
        steps_per_second = (step - start_step) / max(now - start_time, 1e-9)
        with self._writer("train").as_default(step=step):
            for name, value in logs.items():
                if not name.startswith("val_") and name != "lr":
                    tf.summary.scalar(f"epoch_{name}", value)
            tf.summary.scalar("epoch_learning_rate", logs.get("lr", self.context.learning_rate))
            tf.summary.scalar("epoch_steps_per_second", steps_per_second)
            tf.summary.scalar("epoch_examples_per_second", steps_per_second * self.context.global_batch_size)
            self._write_workers("epoch", self.context.epoch_worker_seconds)
            if self.histogram_freq and (epoch + 1) % self.histogram_freq == 0:
                for weight in self.context.model.weights:
                    tf.summary.histogram(weight.path, weight.numpy())
        with self._writer("validation").as_default(step=step):
            for name, value in logs.items():
                if name.startswith("val_"):
                    tf.summary.scalar(f"epoch_{name[4:]}", value)
        for writer in self._writers.values():
            writer.flush()
        self._epoch_start = self._interval_start = (time.monotonic(), step)

    @_writes_events
    def on_validation_end(self, step, logs=None):
        """With step-wise validation, every validation as Keras names it: `evaluation_<metric>_vs_iterations`
        in `validation/` at the global step (the epoch ends' too, so the curve is whole)."""
        if not self.context.is_chief or not self.context.validation_every_n_steps:
            return
        with self._writer("validation").as_default(step=step):
            for name, value in (logs or {}).items():
                tf.summary.scalar(f"evaluation_{name.removeprefix('val_')}_vs_iterations", value)
        self._writer("validation").flush()

    @_writes_events
    def on_rollback(self, step):
        """The steps after `step` are trained again: a restart mark at `step + 1` drops their earlier events."""
        if not self.context.is_chief or not self._writers:
            return
        for writer in self._writers.values():
            writer.close()
        for name in ("train", "validation"):
            write_start_event(f"{self._root}/{name}", step + 1)
        time.sleep(1.0 - time.time() % 1.0 + 0.01)  # the new event files must sort after the marks
        for name in ("train", "validation"):
            self._writers[name] = tf.summary.create_file_writer(f"{self._root}/{name}")
        self._epoch_start = self._interval_start = (time.monotonic(), step)

    @staticmethod
    def _write_workers(span: str, seconds) -> None:
        """The straggler view (several workers): `workers/<span>_seconds_{min,mean,max}`, `workers/<span>_slowest`."""
        if not seconds:
            return
        summary = stragglers.summarize(seconds)
        for name in ("min", "mean", "max"):
            tf.summary.scalar(f"workers/{span}_seconds_{name}", summary[name])
        tf.summary.scalar(f"workers/{span}_slowest", summary["slowest"])

    def _abandon(self) -> None:
        """After a failed write: stops tracing and profiling and drops the writers (a close would flush, and fail,
        again); nothing is retried."""
        for stop, active in ((tf.summary.trace_off, self._tracing), (tf.profiler.experimental.stop, self._profiling)):
            if active:
                try:
                    stop()
                except Exception:  # already failing; the first error is the one to report
                    pass
        self._tracing = self._profiling = False
        for writer in self._writers.values():
            try:
                writer.close()
            except (OSError, tf.errors.OpError):
                pass
        self._writers = {}

    @_writes_events
    def on_train_end(self, logs=None):
        if self._profiling:
            tf.profiler.experimental.stop()
            self._profiling = False
        if self._tracing:
            tf.summary.trace_off()
            self._tracing = False
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
