"""RunSummary: `summary.json`, the machine-readable outcome of a run, written by the chief."""

from __future__ import annotations

import json
import math
from typing import Any

import tensorflow as tf

from callbacks import file_errors, stragglers
from callbacks.base import Callback


def _json_number(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


class RunSummary(Callback):
    """Rewrites `<model_dir>/summary.json` atomically after every epoch and at the end (chief only).

    It holds the strategy and cluster shape, the global step, epochs completed, the stop
    reason, the per-epoch history, the final metrics and, for each callback that monitors a
    metric, the best value and its epoch; with several workers, the straggler view of every
    epoch (`workers`: min, mean and max busy seconds, and the slowest worker's index); with
    step-wise validation, `validation_history` (every validation: `step` and the `val_` metrics);
    after rollbacks, `rollbacks` (each: the `step` that blew up, the checkpoint `restored`, the
    data window skipped, the learning-rate scale after it, why). Non-finite values are written as null.

    The file is only written, never read (a resumed run's history comes from the checkpoint): a
    damaged one is simply replaced at the next epoch end. A directory where it belongs fails at
    train begin, before the first step.
    """

    identical_on_every_worker = True  # its requests follow from the logs and steps alone

    def __init__(self, strategy_name: str, extra: dict[str, Any] | None = None):
        self.strategy_name, self.extra = strategy_name, dict(extra or {})
        self.workers: list[dict[str, float | int]] = []

    def payload(self, final_logs: dict[str, float]) -> dict[str, Any]:
        c = self.context
        history = {k: [_json_number(v) for v in vs] for k, vs in c.history.history.items()}
        best = {type(cb).__name__: {"monitor": cb.monitor, "value": _json_number(cb.best_value),
                                    "epoch": cb.best_epoch + 1,
                                    **({"step": cb.best_step} if getattr(cb, "best_step", None) is not None else {})}
                for cb in c.callbacks if getattr(cb, "best_epoch", None) is not None}
        payload = {**self.extra, "strategy": self.strategy_name, "num_replicas": c.num_replicas,
                   "num_workers": c.num_workers, "global_batch_size": c.global_batch_size,
                   "global_step": c.global_step, "epochs_completed": len(c.history.epoch),
                   "stop_reason": c.stop_reason, "preempted": c.signal is not None, "signal": c.signal,
                   "history": history, "workers": self.workers,
                   "final_metrics": {k: _json_number(v) for k, v in final_logs.items()}, "best": best}
        if c.validation_every_n_steps:
            payload["validation_history"] = [{k: _json_number(v) for k, v in entry.items()}
                                             for entry in c.history.validation_history]
        if c.rollbacks:
            payload["rollbacks"] = [dict(r) for r in c.rollbacks]
        return payload

    def _write(self, logs) -> None:
        if self.context.is_chief and self.context.model_dir:
            payload = self.payload(logs or {})
            self.context.write_text(f"{self.context.model_dir}/summary.json",
                                    json.dumps(payload, indent=2, sort_keys=True) + "\n")

    def on_train_begin(self, logs=None):
        """A directory where summary.json belongs fails now, before the first step, not after an epoch."""
        if self.context.is_chief and self.context.model_dir:
            path = f"{self.context.model_dir}/summary.json"
            with file_errors.failing_as_file_failure("write", path):
                if tf.io.gfile.isdir(path):
                    raise file_errors.FileFailure(file_errors.message("write", path, "it is a directory"))

    def on_epoch_end(self, epoch, logs=None):
        if self.context.epoch_worker_seconds:
            del self.workers[epoch:]  # a resumed run redoes these epochs
            self.workers.append(stragglers.summarize(self.context.epoch_worker_seconds))
        self._write(logs)

    def get_state(self):
        return {"workers": self.workers}

    def set_state(self, state):
        self.workers = list(state["workers"])

    def on_train_end(self, logs=None):
        self._write(logs or self.context.history.last_logs())
