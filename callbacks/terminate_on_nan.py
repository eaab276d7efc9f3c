"""TerminateOnNaN: stop every worker at the same step when the loss stops being finite."""

from __future__ import annotations

import math

from callbacks.base import Callback

NON_FINITE_LOSS = "non-finite loss"


class TerminateOnNaN(Callback):
    """Stops training when the aggregated loss is NaN or infinite, checked after every K-step loop.

    The stop is agreed across workers, and the trainer never saves non-finite weights, so
    the last good checkpoint survives. Costs one metric read per loop.
    """

    identical_on_every_worker = True  # its requests follow from the logs and steps alone

    def wants_batch_logs(self, step):
        return True

    def get_config(self):
        return {"monitor": "loss"}

    def _check(self, logs, where: str) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.context.request_stop(f"{NON_FINITE_LOSS} ({loss}) at {where}")

    def on_train_batch_end(self, step, logs=None):
        self._check(logs, f"step {step}")

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs, f"the end of epoch {epoch + 1}")
