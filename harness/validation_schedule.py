"""Step-wise validation (`validation_every_n_steps=N`): at every multiple of N global steps, and at epoch ends.

Keras validates once per epoch (keras#19562); Lightning's `val_check_interval` validates inside one.
Here a validation happens at the exact global steps N, 2N, ... (not at the first loop end past
them): the K-step loop is cut so that a loop ends at each multiple, which depends on the global
step only, so every worker validates at the same steps and a resumed run at the same steps as an
uninterrupted one. A multiple that ends an epoch is that epoch end's validation (one, not two).

Each validation is followed by a decision point (the loop's), where the stops and saves that
callbacks ask for after it (`on_validation_end`) are agreed; a checkpoint at step S holds the
state after the validation at S (the callbacks' counters, the validation history).
"""

from __future__ import annotations

from harness.errors import UsageError


class ValidationSchedule:
    """Where the K-step loops end and when a step-wise validation is due; inert without `every_n_steps`."""

    def __init__(self, every_n_steps: int | None, has_validation: bool):
        if every_n_steps is not None:
            if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
                raise UsageError(f"must be an integer >= 1, got {every_n_steps!r}", argument="validation_every_n_steps")
            if not has_validation:
                raise UsageError("needs validation_data (there is nothing to validate on)",
                                 argument="validation_every_n_steps")
        self.every_n_steps = every_n_steps

    def loop_length(self, step: int, k: int) -> int:
        """The length of the loop starting after `step`: at most `k`, ending at the next multiple if sooner."""
        if not self.every_n_steps:
            return k
        return min(k, self.every_n_steps - step % self.every_n_steps)

    def due(self, step: int) -> bool:
        """Whether a loop ending at `step` (not at an epoch end) is followed by a validation."""
        return bool(self.every_n_steps) and step % self.every_n_steps == 0
