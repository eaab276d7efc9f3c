"""History: the per-epoch logs of a run, checkpointed so a resumed run keeps its past."""

from __future__ import annotations

from typing import Any

from callbacks.base import Callback


class History(Callback):
    """Records `history[name]` lists and `epoch` indices, like `keras.callbacks.History`.

    With step-wise validation (`validation_every_n_steps`), `validation_history` also lists every
    validation in step order (the step-wise ones and the epoch ends'): `{"step": S, "val_...": ...}`.
    """

    identical_on_every_worker = True  # its requests follow from the logs and steps alone

    def __init__(self):
        self.epoch: list[int] = []
        self.history: dict[str, list[float]] = {}
        self.validation_history: list[dict[str, float]] = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for name, value in (logs or {}).items():
            self.history.setdefault(name, [None] * (len(self.epoch) - 1)).append(value)
        for values in self.history.values():  # a metric absent this epoch gets a hole, not a shift
            values.extend([None] * (len(self.epoch) - len(values)))

    def on_validation_end(self, step, logs=None):
        if self.context.validation_every_n_steps:
            self.validation_history.append({"step": step, **(logs or {})})

    def last_logs(self) -> dict[str, float]:
        """The newest epoch's logs (empty before the first epoch ends)."""
        return {k: v[-1] for k, v in self.history.items() if v and v[-1] is not None}

    def get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"epoch": self.epoch, "history": self.history}
        if self.validation_history:
            state["validation_history"] = self.validation_history
        return state

    def set_state(self, state):
        self.epoch, self.history = list(state["epoch"]), {k: list(v) for k, v in state["history"].items()}
        self.validation_history = [dict(v) for v in state.get("validation_history", [])]
