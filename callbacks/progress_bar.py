"""ProgressBar: what the run is doing, on the chief's terminal or log."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from callbacks import stragglers
from callbacks.base import Callback
from callbacks.cadence import crosses_multiple


def _format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _format_logs(logs: dict[str, float]) -> str:
    return " - ".join(f"{k}: {v:.4g}" for k, v in logs.items())


def _format_stragglers(seconds) -> str:
    """' - slowest worker 1: 2.4s (fastest 1.1s)' when the workers' busy times are uneven, else ''."""
    if not seconds:
        return ""
    summary = stragglers.summarize(seconds)
    if not stragglers.is_uneven(summary):
        return ""
    return f" - slowest worker {summary['slowest']}: {summary['max']:.2f}s (fastest {summary['min']:.2f}s)"


class ProgressBar(Callback):
    """A live bar on a terminal; plain periodic lines when output is not a terminal (chief only).

    Shows steps, the training steps/s, ETA and the running metrics. Metrics are read about
    `updates_per_epoch` times per epoch (at fixed steps, the same on every worker), not on
    every loop, so the bar costs no host sync per step. The epoch's line says what each part
    took: the training steps (and their rate) and the validation, separately.
    """

    identical_on_every_worker = True  # its requests follow from the logs and steps alone

    def __init__(self, stream: TextIO | None = None, updates_per_epoch: int = 10, log_every_s: float = 15.0,
                 width: int = 30):
        if updates_per_epoch < 1:
            raise ValueError(f"ProgressBar: updates_per_epoch must be >= 1, got {updates_per_epoch}")
        self.stream, self.updates_per_epoch = stream, updates_per_epoch
        self.log_every_s, self.width = log_every_s, width
        self._logs: dict[str, float] = {}

    @property
    def _out(self) -> TextIO:
        return self.stream or sys.stdout

    def _interval(self) -> int:
        return max(1, self.context.steps_per_epoch // self.updates_per_epoch)

    def wants_batch_logs(self, step):
        return crosses_multiple(self.context.global_step, step, self._interval())

    def _live(self) -> bool:
        return self._out.isatty()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = (time.monotonic(), self.context.global_step)
        self._last_print = time.monotonic()
        self._logs = {}
        self._trained_until = self._tested_from = self._tested_until = None

    def on_test_begin(self, logs=None):
        self._tested_from = time.monotonic()

    def on_test_end(self, logs=None):
        self._tested_until = time.monotonic()

    def on_train_batch_end(self, step, logs=None):
        if not self.context.is_chief:
            return
        self._logs = logs or self._logs
        now = self._trained_until = time.monotonic()
        if not self._live() and now - self._last_print < self.log_every_s:
            return
        self._last_print = now
        done, total = self.context.step_in_epoch, self.context.steps_per_epoch
        start_time, start_step = self._epoch_start
        rate = (step - start_step) / max(now - start_time, 1e-9)
        eta = (total - done) / rate if rate > 0 else 0.0
        status = f"train {rate:.1f} steps/s - ETA {_format_duration(eta)}"
        if self._logs:
            status += " - " + _format_logs(self._logs)
        status += _format_stragglers(self.context.worker_seconds)
        epoch = f"Epoch {self.context.epoch + 1}/{self.context.epochs}"
        if self._live():
            filled = self.width * done // total
            bar = "=" * max(filled - 1, 0) + (">" if filled < self.width else "=") + "." * (self.width - filled)
            self._out.write(f"\r{epoch} {done}/{total} [{bar}] {status}\033[K")
        else:
            self._out.write(f"{epoch} - step {done}/{total} - {status}\n")
        self._out.flush()

    def on_epoch_end(self, epoch, logs=None):
        if not self.context.is_chief:
            return
        start_time, start_step = self._epoch_start
        steps = self.context.global_step - start_step
        trained = (self._trained_until or time.monotonic()) - start_time
        parts = [f"Epoch {epoch + 1}/{self.context.epochs}", f"{steps} step{'s' * (steps != 1)}",
                 f"train {trained:.1f}s ({steps / max(trained, 1e-9):.1f} steps/s)"]
        if self._tested_from is not None and self._tested_until is not None:
            parts.append(f"validation {self._tested_until - self._tested_from:.1f}s")
        line = " - ".join([*parts, _format_logs(logs or {})]) + _format_stragglers(self.context.epoch_worker_seconds)
        self._out.write(("\r" + line + "\033[K\n") if self._live() else line + "\n")
        self._out.flush()

    def on_train_end(self, logs=None):
        if self.context.is_chief and self.context.stop_reason:
            self._out.write(f"Stopped: {self.context.stop_reason}\n")
            self._out.flush()
