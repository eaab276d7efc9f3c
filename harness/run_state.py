"""Where a run stands (global step, epochs, position in the epoch, why it stopped) and its records.

Two records survive the process. Each training checkpoint carries a progress record (the
state, the callbacks' state and the run's settings) so that a resume continues exactly; and
`model_dir/run.json` says whether the run finished and why, also when its last state could
not be checkpointed (non-finite weights, a stop before an epoch end).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from harness import storage

log = logging.getLogger(__name__)

RUN_FILE = "run.json"


@dataclasses.dataclass
class RunState:
    """The run's position: identical on every worker."""

    global_step: int = 0
    epochs_completed: int = 0
    step_in_epoch: int = 0
    stop_reason: str | None = None  # the run ended early and is finished (a callback's stop, a failure)
    signal: str | None = None  # stopped by this signal: a rerun resumes (not finished)
    # The rollbacks so far (see harness.rollback): each skipped a window [start, stop) of data positions.
    rollbacks: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def data_offset(self) -> int:
        """How many batches of data the rollbacks skipped: the data position is `global_step` plus this."""
        return sum(stop - start for start, stop in (r["skipped"] for r in self.rollbacks))

    def finished(self, epochs: int) -> bool:
        return self.stop_reason is not None or self.epochs_completed >= epochs

    def progress(self, callbacks_state: dict[str, Any], settings: dict[str, Any]) -> str:
        """The progress record stored in a checkpoint (the signal is not stored: a rerun resumes)."""
        record = {"epochs_completed": self.epochs_completed, "step_in_epoch": self.step_in_epoch,
                  "stop_reason": self.stop_reason, "callbacks": callbacks_state, "settings": settings}
        if self.rollbacks:
            record["rollbacks"] = self.rollbacks
        return json.dumps(record)

    def restore(self, global_step: int, progress: dict[str, Any]) -> None:
        self.global_step, self.epochs_completed = global_step, progress["epochs_completed"]
        self.step_in_epoch, self.stop_reason, self.signal = progress["step_in_epoch"], progress["stop_reason"], None
        self.rollbacks = [dict(r) for r in progress.get("rollbacks", [])]


def read_run_file(model_dir: str) -> dict[str, Any] | None:
    """`model_dir/run.json`, or None when absent.

    A damaged one (not text, not JSON, not the shape this module writes) is reported in one
    warning line and ignored: the checkpoints hold the run's state, and the file is rewritten
    when training starts. Only a stop that no checkpoint could hold is lost with it (the rerun
    then trains on from the newest checkpoint). A path that cannot be read at all (a directory,
    unreachable storage) is a `StorageError`: the run could not write its records there either.
    """
    path = f"{model_dir}/{RUN_FILE}"
    try:
        text = storage.read_text(path)
    except storage.StorageError as e:
        if "not text" not in str(e):
            raise
        return _damaged(path, "not text")
    if text is None:
        return None
    try:
        record = json.loads(text)
    except ValueError as e:
        return _damaged(path, f"not JSON: {e}")
    problem = _shape_problem(record)
    return _damaged(path, problem) if problem else record


def _shape_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return "not a JSON object"
    if not isinstance(record.get("settings", {}), dict):
        return "'settings' is not an object"
    finished = record.get("finished")
    if finished is None:
        return None
    if not isinstance(finished, dict):
        return "'finished' is not an object"
    for key, types in (("global_step", int), ("epochs_completed", int), ("stop_reason", (str, type(None)))):
        value = finished.get(key)
        if key in finished and (not isinstance(value, types) or isinstance(value, bool)):
            return f"'finished.{key}' has the wrong type"
    return None


def _damaged(path: str, reason: str) -> None:
    log.warning("%s is damaged (%s); ignoring it (the checkpoints hold the run's state; it is rewritten).",
                path, reason[:120])
    return None


def write_run_file(model_dir: str, settings: dict[str, Any], state: RunState | None) -> None:
    """Records the run's settings and, once it is finished, where and why it ended (chief only)."""
    finished = None if state is None else {"global_step": state.global_step, "epochs_completed":
                                           state.epochs_completed, "stop_reason": state.stop_reason}
    storage.write_json(f"{model_dir}/{RUN_FILE}", {"settings": settings, "finished": finished})
