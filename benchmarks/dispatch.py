"""Per-hook cost of the callback dispatch: microseconds per call, with the default callbacks.

The harness's `CallbackList` holds what `Trainer.fit` builds with the default callbacks
(History, TensorBoard, CSVLogger, ProgressBar), in the state it has mid-epoch: each hook
the loop calls once per K-step call is timed over N calls with no logs, as is the decision
point (`Trainer._decide`, one worker) and each callback alone. For comparison, Keras's
`CallbackList` with the equivalent Keras callbacks (`logs=None`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import sys
from collections.abc import Callable
from typing import Any

import keras

from benchmarks.harness_fit import HarnessFit, _Stamper
from benchmarks.keras_fit import KerasFit
from benchmarks.timing import median, rotated, time_calls
from benchmarks.workload import Workload
from callbacks import CallbackList
from harness.controller import LOOP

Row = dict[str, Any]
STEPS_PER_EPOCH = 1000


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _harness_hooks(workload: Workload, workdir: str) -> tuple[dict[str, Callable[[], Any]], Callable[[], None]]:
    contender = HarnessFit(workload, os.path.join(workdir, "dispatch-harness"))
    contender.first_step()  # a real fit: the trainer's callback list, context and decision maker
    trainer = contender.trainer
    controller = trainer.controller
    context = controller.context
    context.plan = dataclasses.replace(context.plan, steps_per_epoch=STEPS_PER_EPOCH)  # a real epoch's length
    # The default list: History, TensorBoard, CSVLogger, ProgressBar (without the benchmark's timing callback).
    callbacks = controller.callbacks = CallbackList([cb for cb in controller.callbacks
                                                     if not isinstance(cb, _Stamper)])
    step = trainer.global_step + 1
    callbacks.on_train_begin()
    callbacks.on_epoch_begin(trainer.epochs_completed)
    callbacks.on_train_batch_end(step, {})  # the first batch end exports the graph: not a per-call cost
    hooks: dict[str, Callable[[], Any]] = {
        "wants_batch_logs": lambda: callbacks.wants_batch_logs(step),
        "on_train_batch_begin": lambda: callbacks.on_train_batch_begin(step),
        "on_train_batch_end": lambda: callbacks.on_train_batch_end(step, {}),
        "decision point": lambda: controller._decide(context, LOOP),  # pylint: disable=protected-access
    }
    for cb in callbacks.callbacks[1:]:  # each callback alone (after History), all three hooks
        alone = CallbackList([cb])
        hooks[f"{type(cb).__name__} (3 hooks)"] = (
            lambda alone=alone: (alone.wants_batch_logs(step), alone.on_train_batch_begin(step),
                                 alone.on_train_batch_end(step, {})))
    return hooks, lambda: callbacks.on_train_end({})


def _keras_hooks(workload: Workload, workdir: str) -> tuple[dict[str, Callable[[], Any]], Callable[[], None]]:
    contender = KerasFit(workload, os.path.join(workdir, "dispatch-keras"))
    contender.first_step()
    user = contender.callbacks()  # TB, CSV, BackupAndRestore, History, ProgbarLogger
    callbacks = keras.callbacks.CallbackList(user, add_history=True, add_progbar=True, model=contender.model,
                                             verbose=1, epochs=1, steps=STEPS_PER_EPOCH)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        callbacks.on_train_begin()
        callbacks.on_epoch_begin(0)
        callbacks.on_train_batch_end(0)
    hooks = {"on_train_batch_begin": lambda: callbacks.on_train_batch_begin(1),
             "on_train_batch_end": lambda: callbacks.on_train_batch_end(1)}
    return hooks, lambda: callbacks.on_train_end()


def run(workload: Workload, calls: int, repeats: int, workdir: str, log: Callable[[str], None] = _log) -> list[Row]:
    rows: list[Row] = []
    for contender, make in (("harness", _harness_hooks), ("keras", _keras_hooks)):
        hooks, finish = make(workload, workdir)
        samples: dict[str, list[float]] = {name: [] for name in hooks}
        with contextlib.redirect_stdout(io.StringIO()):
            for repeat in range(repeats):
                for name in rotated(list(hooks), repeat):
                    samples[name].append(time_calls(hooks[name], calls) * 1e6)
            finish()
        for name, values in samples.items():
            rows.append({"benchmark": "dispatch", "contender": contender, "hook": name, "us_per_call": median(values),
                         "calls": calls, "repeats": repeats, "samples_us_per_call": values, "status": "ok",
                         "error": None})
            log(f"  dispatch {contender:7s} {name:32s} {median(values):8.2f} us/call")
    return rows
