"""RollbackOnNaN: when the loss blows up, go back to the last checkpoint and train on past the data that did it."""

from __future__ import annotations

import logging
import math

from callbacks.base import Callback
from callbacks.terminate_on_nan import NON_FINITE_LOSS

log = logging.getLogger(__name__)


class RollbackOnNaN(Callback):
    """Recovers from a blown-up run, as Model Garden's trainer does, on every worker at the same step.

    After every K-step loop, a non-finite loss (or one above `divergence_threshold`) asks for a
    rollback (`context.request_rollback`), agreed like a stop: every worker restores the newest
    training checkpoint, skips the data from that checkpoint's step to this one (the pipeline is
    rebuilt to start after it), multiplies the learning rate by `lr_factor` (1.0: unchanged), and
    trains on. After `max_rollbacks` rollbacks it gives up with one line and stops, as
    `TerminateOnNaN` does. The checked loss is the logged one, the running mean of the epoch so
    far: a NaN in any step makes it NaN at once. It needs training checkpoints (a model_dir):
    before the first one there is nothing to go back to, and it stops (checkpoint more often
    with `checkpoint_every_n_steps`). The rollbacks (count, skipped windows, learning-rate factor)
    are part of the run's state: a resume continues exactly after them.
    """

    identical_on_every_worker = True  # its requests follow from the logs and steps alone

    def __init__(self, divergence_threshold: float | None = None, lr_factor: float = 1.0, max_rollbacks: int = 3):
        if divergence_threshold is not None and not math.isfinite(divergence_threshold):
            raise ValueError(f"RollbackOnNaN: divergence_threshold must be a finite number, got {divergence_threshold}")
        if not 0.0 < lr_factor <= 1.0:
            raise ValueError(f"RollbackOnNaN: lr_factor must be in (0, 1], got {lr_factor}")
        if not isinstance(max_rollbacks, int) or max_rollbacks < 0:
            raise ValueError(f"RollbackOnNaN: max_rollbacks must be an integer >= 0, got {max_rollbacks!r}")
        self.divergence_threshold, self.lr_factor, self.max_rollbacks = divergence_threshold, lr_factor, max_rollbacks

    def wants_batch_logs(self, step):
        return True

    def get_config(self):
        return {"monitor": "loss", "divergence_threshold": self.divergence_threshold, "lr_factor": self.lr_factor,
                "max_rollbacks": self.max_rollbacks}

    def _blown_up(self, loss: float) -> str | None:
        if not math.isfinite(loss):
            return f"{NON_FINITE_LOSS} ({loss})"
        if self.divergence_threshold is not None and loss > self.divergence_threshold:
            return f"loss {loss:.6g} above the divergence threshold {self.divergence_threshold:g}"
        return None

    def on_train_batch_end(self, step, logs=None):
        loss = (logs or {}).get("loss")
        what = None if loss is None else self._blown_up(loss)
        if what is None:
            return
        done, saved = len(self.context.rollbacks), self.context.last_checkpoint_step
        if saved is None:
            reason = f"{what} at step {step}, and no checkpoint to roll back to yet"
        elif done >= self.max_rollbacks:
            reason = (f"{what} at step {step} after {done} rollback{'s' * (done != 1)} "
                      f"(max_rollbacks {self.max_rollbacks})")
        else:
            self.context.request_rollback(f"{what} at step {step}", self.lr_factor)
            return
        log.warning("Giving up: %s; stopping.", reason)
        self.context.request_stop(reason)
