"""Rolling a blown-up run back to its last good checkpoint, on every worker at the same step.

Model Garden's trainer restores the last checkpoint when the loss becomes NaN or exceeds a bound;
here a callback asks (`context.request_rollback`, e.g. `callbacks.RollbackOnNaN`), the request is
agreed like a stop (`Decision.rollback`), and every worker then, at the same decision point:

1. waits for an asynchronous save, and restores the newest training checkpoint (model, optimizer,
   global step, learning-rate state, running metrics, EMA) and what its progress record holds
   (position, the callbacks' state, history);
2. records the rollback in `RunState.rollbacks`: the step that blew up, the restored step, the
   window of data positions skipped (from the restored step's position to the blown-up step's:
   the data that blew up is not seen again) and the learning-rate scale after it, multiplied by
   the agreed factor;
3. (the controller) rebuilds the input pipeline at the new data position (`global_step +
   RunState.data_offset`) and calls the callbacks' `on_rollback`.

The stops, saves and learning-rate changes asked at the same point are dropped: they were decided
on the state that is thrown away.

The state after a rollback is the restored checkpoint plus the rollback records. Every later
checkpoint holds them; until one is written, the chief keeps the list in `rollbacks.json` next
to the checkpoints (written atomically), and a resume from the restored checkpoint applies the
rollbacks recorded there after it (`adopt_recorded`). So a resume after a rollback continues
exactly, and the count that `max_rollbacks` limits survives a restart.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from callbacks.callback_list import CallbackList
from harness import storage
from harness.errors import SetupError, StorageError, UsageError
from harness.run_state import RunState

if TYPE_CHECKING:
    from harness.trainer import Trainer

log = logging.getLogger(__name__)

RECORD = "rollbacks.json"


def _record_path(trainer: Trainer) -> str:
    return f"{trainer.checkpointer.directory}/{RECORD}"


def roll_back(trainer: Trainer, state: RunState, callbacks: CallbackList, lr_factor: float, reason: str) -> None:
    """Restores the newest checkpoint and records the rollback (every worker, at the same decision point)."""
    if trainer.checkpointer is None or trainer.last_checkpoint is None:
        raise UsageError(f"a rollback was asked ({reason}) but there is no training checkpoint to roll back to "
                         "(it needs a model_dir, and a first checkpoint)", argument="request_rollback")
    blown_step, blown_position = state.global_step, state.global_step + state.data_offset
    earlier = list(state.rollbacks)  # including those after the checkpoint: the count never goes back
    step, path = trainer.last_checkpoint
    trainer.checkpointer.sync()
    try:
        progress = trainer.checkpointer.restore(path)
    except Exception as e:
        raise SetupError(f"cannot roll back to {path}: {storage.cause(e)}") from None
    state.restore(trainer.restored_global_step(), progress)
    callbacks.set_state(progress["callbacks"])
    since = earlier[len(state.rollbacks):]  # rollbacks to this same checkpoint before this one
    scale = (since[-1]["lr_scale"] if since else trainer.learning_rate.scale_value()) * lr_factor
    trainer.learning_rate.set_scale(scale)
    start = state.global_step + sum(stop - begin for begin, stop in (r["skipped"] for r in earlier))
    state.rollbacks = [*earlier, {"step": blown_step, "restored": state.global_step, "skipped": [start, blown_position],
                                  "lr_scale": trainer.learning_rate.scale_value(), "reason": reason}]
    if trainer.cluster.is_chief:
        storage.write_text(_record_path(trainer), json.dumps(state.rollbacks, indent=1) + "\n",
                           note="the checkpoints are intact")
    log.warning("Rolled back (%s): restored %s (step %d); the data of steps %d-%d is skipped%s (rollback %d).",
                reason, path, state.global_step, state.global_step + 1, blown_step,
                f", learning rate x{lr_factor:g}" if lr_factor != 1.0 else "", len(state.rollbacks))


def _read_record(path: str) -> list[dict[str, Any]]:
    try:
        text = storage.read_text(path)
        records = json.loads(text) if text is not None else []
    except (StorageError, ValueError) as e:
        log.warning("%s is unreadable (%s); ignoring it.", path, storage.cause(e))
        return []
    return records if isinstance(records, list) and all(isinstance(r, dict) for r in records) else []


def adopt_recorded(trainer: Trainer, state: RunState) -> None:
    """After a resume: applies the rollbacks recorded after the restored checkpoint was written (see module doc)."""
    if trainer.checkpointer is None:
        return
    recorded = _read_record(_record_path(trainer))
    mine = state.rollbacks
    extra = recorded[len(mine):]
    if not extra or recorded[:len(mine)] != mine or any(r.get("restored") != state.global_step for r in extra):
        return  # nothing after this checkpoint (or a record of another history)
    state.rollbacks = [*mine, *extra]
    trainer.learning_rate.set_scale(extra[-1]["lr_scale"])
    log.warning("Applying %d rollback(s) made after this checkpoint was written (%s): the data of steps up to %d "
                "is skipped.", len(extra), RECORD, max(r["step"] for r in extra))
