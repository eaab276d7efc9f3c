"""The outer loop of one `Trainer.fit`: resume, epochs, callbacks, and the decision points.

Orbit splits its controller (the outer loop) from its runner (the step); so does the harness:
the `Trainer` owns the step and the compiled K-step loop, the `Controller` owns the order of
hooks and decisions. At every decision point the votes of this worker's callbacks and its own
(a signal, the checkpoint cadence) are agreed with every worker into one `Decision`, and the
loop acts on that decision only.

Mid-epoch, a separate agreement would cost one all-reduce per loop (at one step per loop, as
much as the step). When every callback is `identical_on_every_worker`, the requests at a loop's
decision point (its callbacks', the step cadence's) are the same on every worker, so they need
no agreement: only a point where one is made agrees at once, and so does an epoch's last loop
(its busy times reach `on_epoch_end`). What only this worker knows (a signal, its busy time,
the chief's clock for timed checkpoints) rides instead on the next loop that crosses a multiple
of READ_EVERY_STEPS, in its gradient all-reduce (`Trainer.run_train_loop(votes=...)`,
`harness.riding_votes`), and is acted on at that loop's point by every worker: a signal waits at
most one loop and 8 steps more, and every action still happens at one step everywhere.

One state per step: the checkpoint at global step S holds the state after everything of step
S ran, its epoch end included when S ends an epoch. So at the decision point after an epoch's
last loop, saves and signals wait for the epoch end (which follows at once); only a stop
acts there. A step-wise validation at S (`harness.validation_schedule`) runs before the
decision point of the loop that ends at S, so a checkpoint at S holds its outcome too (the
callbacks' counters, the validation history). A rollback (`harness.rollback`) makes the state
at the restored step that checkpoint plus the rollback's record.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from callbacks.base import Callback
from callbacks.cadence import crosses_multiple
from callbacks.callback_list import CallbackList
from callbacks.history import History
from harness import rollback, run_record
from harness.cluster import failure_to_raise
from harness.context import FitPlan, TrainerContext
from harness.data import DatasetFn, check_input_batch_size
from harness.decision_maker import DecisionMaker, agree_settings
from harness.decisions import Decision, Votes
from harness.errors import SetupError, UsageError
from harness.preemption import WATCHER, Interrupted
from harness.run_state import read_run_file, write_run_file
from harness.trainer_settings import settings_defaults, settings_record
from harness.validation_schedule import ValidationSchedule

if TYPE_CHECKING:
    from harness.trainer import Trainer

log = logging.getLogger(__name__)

EPOCH_BEGIN, LOOP, LAST_LOOP, EPOCH_END = "epoch begin", "loop", "last loop of the epoch", "epoch end"
NOTHING = Decision()  # what a mid-epoch point decides when no worker asked anything (see Controller._agree)
READ_EVERY_STEPS = 8  # lagged, a loop that crosses a multiple of this carries the votes (see _agree)
_fits = itertools.count()  # the n-th fit of this process: the same on every worker of a job
SETTINGS_TIMEOUT_S = 600.0  # how long a worker waits for the chief to publish its settings


class Controller:
    """Runs one `fit`: the trainer's step in epochs, with callbacks and agreed decisions."""

    def __init__(self, trainer: Trainer, train_data: DatasetFn, *, epochs: int, steps_per_epoch: int,
                 validation_data: DatasetFn | None, validation_steps: int | None,
                 callbacks: Sequence[Callback] | Callback, resume: bool, validation_every_n_steps: int | None = None):
        for name, value in (("epochs", epochs), ("steps_per_epoch", steps_per_epoch)):
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"must be an integer >= 1, got {value!r}", argument=name)
        if validation_data is not None and not validation_steps:
            raise UsageError("needs validation_steps (e.g. harness.EvalInput(...).steps)", argument="validation_data")
        check_input_batch_size(train_data, trainer.global_batch_size, "train_data")
        check_input_batch_size(validation_data, trainer.global_batch_size, "validation_data")
        self.trainer, self.train_data, self.resume = trainer, train_data, resume
        self.validation_data, self.validation_steps = validation_data, validation_steps
        self.validation = ValidationSchedule(validation_every_n_steps, validation_data is not None)
        self.callbacks = CallbackList([trainer.history, *CallbackList(callbacks)])
        self.plan = FitPlan(epochs=epochs, steps_per_epoch=steps_per_epoch,
                            steps_per_execution=trainer.steps_per_execution,
                            global_batch_size=trainer.global_batch_size, has_validation=validation_data is not None,
                            metric_names=tuple(trainer.metric_fns), model_dir=trainer.model_dir,
                            validation_every_n_steps=validation_every_n_steps)
        self.state, self.cluster = trainer.state, trainer.cluster
        self.maker = DecisionMaker(trainer.strategy, self.cluster, num_savers=1 + len(self.callbacks.callbacks))
        self.settings = settings_record(trainer, self.plan, self.callbacks, train_data, trainer.settings)
        self._carried = Votes()  # saves and a signal agreed after an epoch's last loop, acted on at its end
        self._saved_step = trainer.last_checkpoint[0] if trainer.last_checkpoint else None
        self._cadence_from, self._saved_at = trainer.global_step, time.monotonic()
        self._departed = time.monotonic()  # when this worker last reported its busy time (see _riding_votes)
        self._in_loop = 0.0  # ... and how long it has been in the K-step loop's calls since
        self._rolled_back = False  # a rollback restored a checkpoint: the input pipeline starts again
        # Mid-epoch, what only this worker knows rides on the next loop's call (see the module doc):
        self.lagged = self.cluster.num_workers > 1 and all(cb.identical_on_every_worker
                                                           for cb in self.callbacks.callbacks)
        self._arrived: tf.Tensor | None = None  # every worker's votes, as the last call summed them (unread)
        self._sent = Votes()  # the busy times this worker's votes carried in that call

    @property
    def history(self) -> History:
        return self.trainer.history

    # ----- the whole fit ----------------------------------------------------------------------

    def run(self) -> History:
        self.trainer.trained_in_last_fit = False
        with WATCHER.deferring():
            try:
                context = self._start()
                if context is not None:
                    self._train(context)
            except Interrupted as e:  # a second Ctrl-C: no save
                saved = self.trainer.last_checkpoint
                e.outcome = (f"at step {self.state.global_step} without saving; rerun the same command to resume "
                             + (f"from {saved[1]} (step {saved[0]})" if saved else "from the start"))
                raise self._report(e) from None
            except BaseException as e:
                raise self._report(e) from None
        return self.history

    def _report(self, error: BaseException) -> BaseException:
        """The error to raise here; in a multi-worker job, the others learn of it at once."""
        return failure_to_raise(self.cluster, error, flags=hasattr(self.trainer.settings, "recorded"))

    def _start(self) -> TrainerContext | None:
        """Agrees on settings, resumes, and says whether there is anything left to train."""
        trainer, state = self.trainer, self.state
        agree_settings(self.cluster, self.settings, attempt=str(next(_fits)), timeout_s=SETTINGS_TIMEOUT_S,
                       ignore=("data_dir", "download_data"))
        restored = None
        if self.resume and trainer.checkpointer is not None:
            restored = trainer.checkpointer.restore_newest(self._check_resume)
        context = TrainerContext(cluster=self.cluster, plan=self.plan, state=state,
                                 learning_rate=trainer.learning_rate, saver=trainer.saver, callbacks=self.callbacks,
                                 history=self.history, optimizer=trainer.optimizer, resumed=restored is not None)
        self.callbacks.set_context(context)
        self.context = context
        context.last_checkpoint_step = trainer.last_checkpoint[0] if trainer.last_checkpoint else None
        if restored is not None:
            path, progress = restored
            state.restore(trainer.restored_global_step(), progress)
            self.callbacks.set_state(progress["callbacks"])
            rollback.adopt_recorded(trainer, state)
            trainer.last_checkpoint = (state.global_step, path)
            self._saved_step = self._cadence_from = context.last_checkpoint_step = state.global_step
        self._adopt_finished_record()
        if not self.maker.all_equal(state.global_step * 2 + int(state.finished(self.plan.epochs))):
            raise SetupError(f"the workers resumed from different checkpoints (this one at step {state.global_step}); "
                             "every worker must see the same model_dir (shared storage such as gs://)")
        if state.finished(self.plan.epochs):
            log.warning("Nothing to do: the run in %s already finished (%d epochs, step %d, stop reason: %s); "
                        "use a new model_dir or --fresh to train again.", self.plan.model_dir,
                        state.epochs_completed, state.global_step, state.stop_reason or "none")
            return None
        if restored is not None:
            log.warning("Resuming from %s at step %d (epoch %d, step %d of the epoch).", restored[0],
                        state.global_step, state.epochs_completed + 1, state.step_in_epoch)
        if trainer.model_dir and self.cluster.is_chief:
            write_run_file(trainer.model_dir, self.settings, None)
        return context

    def _check_resume(self, path: str, progress: dict) -> None:
        changed = run_record.check_resume(progress.get("settings"), self.settings, self.plan.model_dir or "",
                                          settings_defaults(self.trainer.settings))
        if changed:
            log.warning("Resuming %s with changed settings that keep the mathematics: %s.", path,
                        run_record.describe(changed))

    def _adopt_finished_record(self) -> None:
        """A stop that no checkpoint could hold (non-finite weights, before an epoch end) is in run.json."""
        record = read_run_file(self.plan.model_dir) if self.plan.model_dir else None
        finished = (record or {}).get("finished") or {}
        if finished.get("stop_reason") and finished.get("global_step", -1) >= self.state.global_step:
            self.state.stop_reason = finished["stop_reason"]

    # ----- the epochs -------------------------------------------------------------------------

    def _train(self, context: TrainerContext) -> None:
        trainer, state, plan, callbacks = self.trainer, self.state, self.plan, self.callbacks
        trainer.trained_in_last_fit = True
        callbacks.on_train_begin()
        iterator = None
        logs: dict[str, float] = {}
        while not state.finished(plan.epochs) and state.signal is None:
            if iterator is None or self._rolled_back:  # (after a rollback: past the data it skipped)
                iterator = None
                iterator, self._rolled_back = iter(trainer.distribute(self.train_data, state.global_step +
                                                                      state.data_offset)), False
            context.epoch = epoch = state.epochs_completed
            if state.step_in_epoch == 0:
                trainer.train_metrics.reset()
            callbacks.on_epoch_begin(epoch)
            if self._decide(context, EPOCH_BEGIN).stop:
                break
            if self._rolled_back:
                continue
            if not self._train_epoch(context, iterator):
                if self._rolled_back:
                    continue
                break
            logs = self._epoch_logs()
            state.epochs_completed, state.step_in_epoch = epoch + 1, 0
            callbacks.on_epoch_end(epoch, logs)
            context.request_checkpoint()
            self._decide(context, EPOCH_END)
        closing = time.monotonic()
        iterator = None  # tf.data's destructor joins the input pipeline's threads: here, timed, not at a later GC
        waited = time.monotonic() - closing
        if waited > 1.0:
            log.info("Waited %.1f s for the input pipeline's threads to stop.", waited)
        callbacks.on_train_end(logs)
        if trainer.checkpointer is not None:
            trainer.checkpointer.sync()
        if trainer.model_dir and self.cluster.is_chief and state.finished(plan.epochs):
            write_run_file(trainer.model_dir, self.settings, state)

    def _train_epoch(self, context: TrainerContext, iterator) -> bool:
        """The K-step loops of one epoch; False when training stops before its end."""
        trainer, state, plan, callbacks = self.trainer, self.state, self.plan, self.callbacks
        while state.step_in_epoch < plan.steps_per_epoch:
            k = self.validation.loop_length(state.global_step, min(plan.steps_per_execution,
                                                                   plan.steps_per_epoch - state.step_in_epoch))
            wants_logs = callbacks.wants_batch_logs(state.global_step + k)
            callbacks.on_train_batch_begin(state.global_step)
            self.run_loop(iterator, k)
            state.global_step += k
            state.step_in_epoch += k
            callbacks.on_train_batch_end(state.global_step, trainer.train_metrics.result() if wants_logs else {})
            last = state.step_in_epoch == plan.steps_per_epoch
            if not last and self.validation.due(state.global_step):
                self._validate()
            if self._decide(context, LAST_LOOP if last else LOOP).stop or self._rolled_back:
                return False
        return True

    def run_loop(self, iterator, k: int) -> None:
        """One call of the trainer's K-step loop; lagged, it carries this worker's last votes (see the module doc)."""
        started, step = time.monotonic(), self.state.global_step
        if self.lagged and crosses_multiple(step, step + k, READ_EVERY_STEPS):
            self._arrived = self.trainer.run_train_loop(iterator, k, self._riding_votes())
        else:
            self.trainer.run_train_loop(iterator, k)
        self._in_loop += time.monotonic() - started

    def _validate(self) -> dict[str, float]:
        """One validation at the current step; its `val_` logs go to `on_validation_end` (and are returned)."""
        val = self.trainer.evaluate(self.validation_data, self.validation_steps, self.callbacks)
        logs = {f"val_{name}": value for name, value in val.items()}
        self.callbacks.on_validation_end(self.state.global_step, logs)
        return logs

    def _epoch_logs(self) -> dict[str, float]:
        trainer = self.trainer
        logs = trainer.train_metrics.result()
        if self.validation_data is not None:
            logs.update(self._validate())
        logs["lr"] = trainer.learning_rate.current(self.state.global_step)
        return logs

    # ----- decision points --------------------------------------------------------------------

    def _local_votes(self, point: str) -> Votes:
        """What only this worker knows: a signal it received, its busy time, the chief's clock for timed saves."""
        local = Votes(signal=WATCHER.received, seconds=time.monotonic() - self._departed - self._in_loop,
                      loop_seconds=self._in_loop, savers={0} if self._timed_save_due() else set())
        if point in (EPOCH_BEGIN, EPOCH_END):
            local.seconds = local.loop_seconds = 0.0  # the straggler view counts the loops' busy time only
        return local

    def _riding_votes(self) -> np.ndarray:
        """What this worker asks now (a signal, a timed save: both stay asked until acted on), and its busy
        times since it last reported them, to ride on a loop's call (see _agree)."""
        self._sent = self._local_votes(LOOP)
        self._departed, self._in_loop = time.monotonic(), 0.0
        return self.maker.encode(self._sent, self.maker.riding_layout)

    def _timed_save_due(self) -> bool:
        """The chief's clock decides timed checkpoints; the agreement makes every worker save."""
        every_seconds = self.trainer.checkpoint_every_n_seconds
        return bool(every_seconds and self.cluster.is_chief and time.monotonic() - self._saved_at >= every_seconds)

    def _shared_votes(self, votes: Votes) -> None:
        """Adds what every worker knows alike: checkpoints every N steps, and what an epoch's last loop carried."""
        if self._carried.ask_anything:
            votes.savers |= self._carried.savers
            votes.signal = votes.signal or self._carried.signal
            self._carried = Votes()
        every_steps = self.trainer.checkpoint_every_n_steps
        if every_steps and crosses_multiple(self._cadence_from, self.state.global_step, every_steps):
            votes.savers.add(0)

    def _agree(self, votes: Votes, point: str) -> tuple[Decision, bool]:
        """The decision at this point, and whether it was agreed here (else it rode on the last loop's call).

        Lagged, every worker's votes (what it asks, its busy times) ride on the loops that cross a
        multiple of READ_EVERY_STEPS (the same loops on every worker; the others carry nothing) and
        are acted on at that loop's point, where their sum is read (a host sync). An agreed point
        asks again what a worker still asks; of what rode on the loop before it, only the busy times
        count (this worker adds its own back).
        """
        arrived, self._arrived = self._arrived, None
        self._shared_votes(votes)
        if point == LOOP and not votes.ask_anything:
            if self.lagged:
                if arrived is None:
                    return NOTHING, False
                return self.maker.riding_layout.decode(self.maker.summed(arrived)), False
            if self.cluster.num_workers == 1 and not WATCHER.received and not self._timed_save_due():
                return NOTHING, False  # alone and nothing asked: most loops of one process, kept short
        local, sent = self._local_votes(point), (self._sent if arrived is not None else Votes())
        votes.signal, votes.savers = votes.signal or local.signal, votes.savers | local.savers
        votes.seconds += local.seconds + sent.seconds
        votes.loop_seconds += local.loop_seconds + sent.loop_seconds
        return self.maker.agree(votes), True

    def _decide(self, context: TrainerContext, point: str) -> Decision:
        """Agrees on this point's votes with every worker and acts on the decision (see the module doc)."""
        votes = context.take_votes()
        decision, agreed = self._agree(votes, point)
        if decision is NOTHING:  # mid-epoch, nothing asked (anywhere, when lagged): most loops, kept short
            return decision
        if agreed:  # the busy times so far went with it
            self._departed, self._in_loop = time.monotonic(), 0.0
        self._record_worker_seconds(context, decision, point)
        if decision.rollback:
            return self._roll_back(decision, votes)
        state, before_epoch_end = self.state, point == LAST_LOOP
        if decision.lr_base is not None:
            self.trainer.learning_rate.set_base(decision.lr_base)
        if decision.lr_scale is not None:
            self.trainer.learning_rate.set_scale(decision.lr_scale)
        if decision.stop_reason is not None and state.stop_reason is None:
            state.stop_reason = decision.stop_reason
        if before_epoch_end and decision.stop_reason is None:  # saves and signals wait for the epoch end
            self._carried = Votes(signal=decision.signal, savers=set(decision.savers))
            return Decision()
        if decision.signal and state.signal is None:
            state.signal = decision.signal_name
        if before_epoch_end:  # a stop before the epoch end: that state is never checkpointed (see module doc)
            savers = set(decision.savers) - {0}
        else:
            savers = set(decision.savers) | ({0} if decision.stop else set())
        for saver in sorted(savers):
            if saver == 0:
                self._save_checkpoint()
            else:
                self.callbacks.callbacks[saver - 1].on_save()
        return decision

    def _roll_back(self, decision: Decision, votes: Votes) -> Decision:
        """Restores the newest checkpoint everywhere (see harness.rollback); the other requests of this point go."""
        reason = votes.rollback_reason or f"asked by worker {decision.rollback_voters[0]}"
        rollback.roll_back(self.trainer, self.state, self.callbacks, decision.rollback_lr_factor, reason)
        self._saved_step = self._cadence_from = self.state.global_step  # that checkpoint + the record: this state
        self._carried, self._rolled_back = Votes(), True
        self.callbacks.on_rollback(self.state.global_step)
        if decision.signal and self.state.signal is None:  # nothing to save: the checkpoint and the record hold it
            self.state.signal = decision.signal_name
        return Decision(signal=decision.signal, signalled=decision.signalled)

    def _record_worker_seconds(self, context: TrainerContext, decision: Decision, point: str) -> None:
        """Keeps the straggler view for callbacks: the last loop's busy times, and this epoch's sums."""
        if self.cluster.num_workers == 1 or point == EPOCH_END:
            return
        if point == EPOCH_BEGIN:
            context.worker_seconds, context.epoch_worker_seconds = (), tuple(0.0 for _ in decision.seconds)
            return
        if not any(decision.seconds):  # nothing reported here
            return
        context.worker_seconds = decision.seconds
        context.epoch_worker_seconds = tuple(a + b for a, b in zip(context.epoch_worker_seconds or
                                                                   (0.0,) * len(decision.seconds), decision.seconds))

    def _save_checkpoint(self) -> None:
        """Saves the training state at this step, unless it is saved already (the same state) or cannot be."""
        trainer, state = self.trainer, self.state
        if trainer.checkpointer is None or state.global_step == 0 or self._saved_step == state.global_step:
            return  # (the same decision on every worker: a save reads synchronised variables collectively)
        if not trainer.weights_are_finite():
            log.warning("Not saving a checkpoint at step %d: the model has non-finite weights.",
                        state.global_step)
            return
        path = trainer.write_checkpoint(state.progress(self.callbacks.get_state(), self.settings))
        self._saved_step = self._cadence_from = self.context.last_checkpoint_step = state.global_step
        self._saved_at = time.monotonic()
        trainer.last_checkpoint = (state.global_step, path)
