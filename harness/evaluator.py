"""The evaluator task: every training checkpoint evaluated once, beside the training cluster.

`tf_keras` had `SidecarEvaluator` and Orbit has `evaluate_continuously`; Keras 3 has neither.
A process whose task type is `evaluator` (TF_CONFIG, Vertex AI's workerpool3,
`--task_type=evaluator`) runs the same `scripts/train.py` but never joins the training cluster
(tensorflow issue 46169: an evaluator that joins hangs the job). It is never the chief and
writes only its own files:

- `<model_dir>/evaluator/evaluations.jsonl`: one JSON object per evaluated checkpoint (`step`,
  `epoch` (1-based: the epoch its step belongs to), `epochs_completed`, `checkpoint`, `stop_reason`,
  every `val_*` metric). It is the record of what was done: a line is added (the file rewritten atomically)
  after the checkpoint's other outputs, so a restarted evaluator skips exactly what it holds.
- `<tensorboard_dir>/evaluator`: `epoch_<metric>` scalars at the checkpoint's global step, the
  names training's `validation/` curves use, so TensorBoard overlays them.
- With `--evaluator_export_best`: `<model_dir>/evaluator/best/` (SavedModel, `.keras` and
  `evaluation.json`), the best checkpoint so far by `--monitor`/`--mode`.

Finding checkpoints: `Checkpointer.candidates()` (not as chief: it repairs and removes nothing)
lists the complete ones; a save in progress is not complete and waits for the next poll. Every
new one is evaluated oldest first, so a slow evaluator catches up through all of them; one
deleted by retention (`--max_to_keep`) before it was read is reported in one line and skipped,
and so is a range of steps deleted before the evaluator even listed them. The data set and the
model are built at the first checkpoint: the evaluator is outside the cluster and cannot wait
for the chief's word that the data set is prepared, but a checkpoint means it is.

The end: the run is finished when a checkpoint's progress or `model_dir/run.json` says so
(`epochs_completed >= --epochs`, or a `stop_reason`); the chief writes run.json after its last
checkpoint, so reading run.json before listing sees every checkpoint of a finished run. Or
`--eval_timeout_s` passes without a new checkpoint. A signal raises `Interrupted` (exit 75).
"""

from __future__ import annotations

import json
import logging
import signal
import time
from typing import Any

import keras
import tensorflow as tf

from callbacks.monitor import Monitor
from harness import storage
from harness.checkpointing import Checkpointer, read_progress, step_of
from harness.cluster import ClusterInfo
from harness.cluster_env import ResolvedCluster
from harness.data import EvalInput, load_source
from harness.errors import SetupError, UsageError
from harness.export import export_model
from harness.models import build_model, build_optimizer
from harness.preemption import WATCHER, Interrupted
from harness.run_config import MIXED_PRECISION, RunConfig
from harness.run_state import read_run_file
from harness.strategy import MULTI_WORKER, build_strategy
from harness.trainer import Trainer

log = logging.getLogger(__name__)

DIRECTORY = "evaluator"  # under model_dir and under tensorboard_dir
EVALUATIONS = "evaluations.jsonl"
POLL_S = 1.0  # how often the checkpoint directory is listed
# Settings that decide what an evaluation means; a checkpoint recorded with other values is refused.
_MUST_MATCH = ("dataset", "model", "mixed_precision")


def evaluation_strategy(config: RunConfig) -> str:
    """`mirrored` over this host's devices when training is (multi-worker) mirrored and there are several, else
    `default`.

    One process, always: a multi-worker strategy needs the training cluster, which the evaluator
    must not join, and a TPU belongs to the training job (evaluating on the host is the sidecar's
    usual place). Several local devices (GPUs, or `--num_cpu_devices` on a CPU host) share the
    evaluation batches; the metrics are (sum, count) pairs, so the numbers do not depend on it.
    """
    if config.strategy not in ("mirrored", MULTI_WORKER):
        return "default"
    gpus = len(tf.config.list_physical_devices("GPU"))
    devices = gpus or (config.num_cpu_devices or 1)
    if devices < 2 or config.global_batch_size % devices or (config.jit_compile and not gpus):
        return "default"  # one device, a batch that does not split, or XLA on logical CPUs (one device only)
    return "mirrored"


def read_evaluations(path: str) -> list[dict[str, Any]]:
    """The records of `evaluations.jsonl` (none when it does not exist); a damaged line is a clear error."""
    records = []
    for number, line in enumerate((storage.read_text(path) or "").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            record["step"] = int(record["step"])
        except (ValueError, KeyError, TypeError):
            raise SetupError(f"{path} is damaged at line {number}; move it away (the evaluator then evaluates "
                             "every checkpoint on disk again)") from None
        records.append(record)
    return records


class Evaluator:
    """Watches one run's checkpoint directory and evaluates each new checkpoint once (see the module doc)."""

    def __init__(self, config: RunConfig, job: ResolvedCluster, *, poll_s: float = POLL_S):
        self.config, self.job, self.poll_s = config, job, poll_s
        dirs = config.output_dirs()
        self.checkpoint_dir = dirs["checkpoint_dir"]
        self.directory = f"{config.model_dir}/{DIRECTORY}"
        self.log_dir = f"{dirs['tensorboard_dir']}/{DIRECTORY}"
        self.path = f"{self.directory}/{EVALUATIONS}"
        self.export_dir = f"{self.directory}/best"
        # Lists only: not the chief, so it never rewrites the state file or removes a save in progress.
        self.lister = Checkpointer(tf.train.Checkpoint(), self.checkpoint_dir, is_chief=False, max_to_keep=None)
        self.monitor = Monitor(config.monitor, config.mode, 0.0, "--evaluator_export_best")
        self.records: list[dict[str, Any]] = []
        self.skipped: dict[int, str] = {}  # step -> why (deleted before it was read, unreadable)
        self.gaps: list[tuple[int, int]] = []  # (a, b): any checkpoint between steps a and b was deleted unseen
        self._newest_seen: int | None = None  # the newest step listed so far
        self.evaluated = 0  # by this process
        self.exported: dict[str, str] = {}
        self.trainer: Trainer | None = None  # built at the first checkpoint
        self.strategy_name: str | None = None
        self.eval_input: EvalInput | None = None
        self._writer: tf.summary.SummaryWriter | None = None

    # ----- start, loop, end ---------------------------------------------------------------------

    def start(self) -> None:
        """Checks what can be checked before waiting: options, the output directory, earlier evaluations."""
        if self.job.task_index != 0:
            raise UsageError(f"this is evaluator:{self.job.task_index}, but a job runs one evaluator (index 0): "
                             "each would evaluate every checkpoint into the same files; list one evaluator")
        if self.config.evaluator_export_best and not self.config.monitor.startswith("val_"):
            raise UsageError(f"is {self.config.monitor!r}, but the evaluator exports the best checkpoint by a "
                             "validation metric; pass e.g. --monitor=val_loss", argument="monitor")
        if self.config.fresh:
            for path in (self.directory, self.log_dir):  # the evaluator's own outputs only
                storage.remove_quietly(path)
        storage.check_writable_directory(self.directory, "the evaluations")
        self.records = read_evaluations(self.path)
        self._newest_seen = max((r["step"] for r in self.records), default=None)
        if self.records:
            log.warning("Evaluator: %d checkpoint(s) already evaluated in %s (up to step %d); skipping them.",
                        len(self.records), self.path, max(r["step"] for r in self.records))
        self._say(f"Evaluator: watching {self.checkpoint_dir} for checkpoints; evaluations go to {self.path}.")

    def run(self) -> dict[str, Any]:
        """Evaluates until the run is finished and its final checkpoint evaluated, or until the timeout."""
        last_new = time.monotonic()
        while True:
            final_step = self._finished_step()  # before listing: a finished run's checkpoints are all on disk
            for path in self._pending():
                record = self._evaluate(path)
                last_new = time.monotonic()
                if record is not None and self._ends_run(record):
                    return self._end(f"evaluated the final checkpoint (step {record['step']}) of the finished run")
            newest = max(self.records, key=lambda r: r["step"], default=None)
            if final_step is None and newest is not None and self._ends_run(newest):
                final_step = newest["step"]  # evaluated by an earlier run of the evaluator
            if final_step is not None:
                return self._end(f"the run is finished (step {final_step}) and every checkpoint on disk is evaluated")
            waited = time.monotonic() - last_new
            if waited >= self.config.eval_timeout_s:
                log.warning("Evaluator: timed out waiting: no new checkpoint in %s for %.0fs (--eval_timeout_s); "
                            "stopping.", self.checkpoint_dir, waited)
                return self._end(f"timed out waiting for a new checkpoint ({self.config.eval_timeout_s:g}s)")
            time.sleep(self.poll_s)  # a signal raises Interrupted here at once

    def _end(self, reason: str) -> dict[str, Any]:
        """A summary shaped as the training run's (scripts/train.py prints its `Done:` line from it)."""
        if self._writer is not None:
            self._writer.close()
        newest = max(self.records, key=lambda r: r["step"], default={})
        replicas = self.trainer.cluster.num_replicas if self.trainer else None
        return {"task": "evaluator", "strategy": self.strategy_name, "num_replicas": replicas, "signal": None,
                "preempted": False, "stop_reason": reason, "global_step": newest.get("step", 0),
                "epochs_completed": newest.get("epochs_completed", 0), "evaluated": self.evaluated,
                "skipped": dict(self.skipped),
                "gaps": list(self.gaps), "evaluations": self.path, "last_evaluation": newest or None,
                "best": self._best(), "exported": self.exported, "checkpoint": newest.get("checkpoint"),
                "checkpoint_step": newest.get("step")}

    # ----- which checkpoints, and when the run is finished --------------------------------------

    def _pending(self) -> list[str]:
        """Complete checkpoints not evaluated nor skipped yet, oldest first.

        When every checkpoint listed is newer than the newest one seen before and retention's window
        (`--max_to_keep`) is full, the evaluator fell behind: any checkpoint written in between was deleted
        before it could be seen, which is reported in one line.
        """
        listed = list(reversed(self.lister.candidates()))
        if listed:
            oldest, newest = step_of(listed[0]), step_of(listed[-1])
            if (self._newest_seen is not None and oldest > self._newest_seen + 1
                    and len(listed) >= self.config.max_to_keep):
                log.warning("Evaluator: fell behind training: any checkpoint after step %d and before step %d "
                            "was deleted by retention (--max_to_keep=%d) before the evaluator could see it.",
                            self._newest_seen, oldest, self.config.max_to_keep)
                self.gaps.append((self._newest_seen, oldest))
            self._newest_seen = max(newest, self._newest_seen if self._newest_seen is not None else newest)
        done = {r["step"] for r in self.records} | set(self.skipped)
        return [path for path in listed if step_of(path) not in done]

    def _ends_run(self, record: dict[str, Any]) -> bool:
        return bool(record.get("stop_reason")) or record["epochs_completed"] >= self.config.epochs

    def _finished_step(self) -> int | None:
        """The final global step when run.json says this run (of `--epochs` epochs) is finished, else None."""
        finished = (read_run_file(self.config.model_dir) or {}).get("finished")
        if not isinstance(finished, dict):
            return None
        if finished.get("stop_reason") or finished.get("epochs_completed", 0) >= self.config.epochs:
            return int(finished.get("global_step", 0))
        return None  # an earlier run's record, resumed with more epochs

    # ----- one checkpoint ---------------------------------------------------------------------------

    def _evaluate(self, path: str) -> dict[str, Any] | None:
        """Restores and evaluates one checkpoint, writes its outputs; None when it was skipped."""
        trainer = self._build()
        progress = self._read(path)
        if progress is None:
            return None
        metrics = trainer.evaluate(self.eval_input, self.eval_input.steps)
        done = int(progress["epochs_completed"])
        record = {"step": step_of(path), "epoch": done + (1 if progress.get("step_in_epoch") else 0),
                  "epochs_completed": done, "checkpoint": path,
                  "stop_reason": progress.get("stop_reason"),
                  **{f"val_{name}": float(value) for name, value in metrics.items()}}
        with WATCHER.deferring():  # a signal now waits until the record is complete
            self._write_tensorboard(record)
            exported = self._export_if_best(record)
            self._append(record)
        if WATCHER.received:
            raise Interrupted(signal.Signals(WATCHER.received).name)
        self.evaluated += 1
        values = ", ".join(f"{k}={v:.4f}" for k, v in record.items() if k.startswith("val_"))
        best = f"; the best so far, exported to {self.export_dir}" if exported else ""
        self._say(f"Evaluated step {record['step']} ({record['epochs_completed']} epochs done): {values} "
                  f"[{path}]{best}")
        return record

    def _read(self, path: str) -> dict[str, Any] | None:
        """Reads the checkpoint's progress record and restores its variables; None (reported) if it cannot."""
        for attempt in range(2):
            restoring = False
            try:
                progress = read_progress(path)
                self._check_settings(path, progress)
                restoring = True
                self.trainer.checkpoint.read(path).assert_existing_objects_matched().expect_partial()
                return progress
            except UsageError:
                raise
            except Exception as e:  # a deleted or damaged file fails in many ways: NotFound, DataLoss, ...
                failure = e
            # A readable checkpoint whose variables do not fit the model: the evaluator's flags are wrong.
            mismatch = restoring and isinstance(failure, (AssertionError, ValueError))
            if not _on_disk(path):
                return self._skip(path, f"deleted before it could be read (retention: the chief keeps the newest "
                                        f"--max_to_keep={self.config.max_to_keep}); the evaluator fell behind training")
            if mismatch:
                raise SetupError(f"checkpoint {path} does not match the evaluator's model and optimizer "
                                 f"({storage.cause(failure)}); start the evaluator with the training job's flags")
            if attempt == 0:
                time.sleep(self.poll_s)  # a file system that shows a new file late: try once more
        return self._skip(path, f"unreadable ({storage.cause(failure)})")

    def _skip(self, path: str, why: str) -> None:
        log.warning("Evaluator: skipped %s (step %d): %s.", path, step_of(path), why)
        self.skipped[step_of(path)] = why
        return None

    def _check_settings(self, path: str, progress: dict[str, Any]) -> None:
        recorded = ((progress.get("settings") or {}).get("math") or {})
        for name in _MUST_MATCH:  # (a run trained through the Python API records its own kinds of values)
            if isinstance(recorded.get(name), str) and recorded[name] != getattr(self.config, name):
                raise UsageError(f"checkpoint {path} was trained with --{name}={recorded[name]}, but this evaluator "
                                 f"has --{name}={getattr(self.config, name)}; start it with the training job's flags")

    # ----- outputs --------------------------------------------------------------------------------

    def _write_tensorboard(self, record: dict[str, Any]) -> None:
        if not self.config.tensorboard:
            return
        if self._writer is None:
            storage.makedirs(self.log_dir)
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default(step=record["step"]):
            for name, value in record.items():
                if name.startswith("val_"):
                    tf.summary.scalar(f"epoch_{name[4:]}", value)
        self._writer.flush()

    def _best(self) -> dict[str, Any] | None:
        best = None
        for record in sorted(self.records, key=lambda r: r["step"]):
            value = record.get(self.monitor.name)
            if value is not None and self.monitor.is_improvement(value, None if best is None else best[1]):
                best = (record, value)
        if best is None:
            return None
        record, value = best
        return {"monitor": self.monitor.name, "value": value, "step": record["step"],
                "epochs_completed": record["epochs_completed"], "checkpoint": record["checkpoint"]}

    def _export_if_best(self, record: dict[str, Any]) -> bool:
        """Exports the restored model when it beats every earlier evaluation (before its line is written, so a
        restart redoes an export that was cut short)."""
        if not self.config.evaluator_export_best:
            return False
        best, value = self._best(), record.get(self.monitor.name)
        if value is None or not self.monitor.is_improvement(value, best["value"] if best else None):
            return False
        with self.trainer.evaluated_weights():  # the EMA, as training's validation evaluates it
            self.exported = export_model(self.trainer.model, self.export_dir, is_chief=True)
        storage.write_json(f"{self.export_dir}/evaluation.json", {**record, "monitor": self.monitor.name,
                                                                   "mode": self.monitor.mode})
        log.info("Evaluator: exported step %d (%s=%.6g) to %s.", record["step"], self.monitor.name, value,
                 self.export_dir)
        return True

    def _append(self, record: dict[str, Any]) -> None:
        """Adds a line by rewriting the whole file atomically: a reader never sees half a line."""
        lines = [json.dumps(r, sort_keys=True) for r in (*self.records, record)]
        storage.write_text(self.path, "\n".join(lines) + "\n")
        self.records.append(record)

    def _say(self, line: str) -> None:
        if self.config.progress:
            print(line, flush=True)

    # ----- the model ------------------------------------------------------------------------------

    def _build(self) -> Trainer:
        """The data, model, optimizer and trainer, built at the first checkpoint: by then the chief has
        prepared the data set (the evaluator cannot wait for its word: it is outside the cluster)."""
        if self.trainer is not None:
            return self.trainer
        config = self.config
        name = self.strategy_name = evaluation_strategy(config)
        strategy = build_strategy(name, num_cpu_devices=config.num_cpu_devices if name == "mirrored" else None,
                                  cluster=self.job)
        source = load_source(config.dataset, config.data_dir, download=config.download_data)
        if source.eval_examples is None:
            raise SetupError(f"data set {config.dataset!r} has no validation or test split: the evaluator has "
                             "nothing to evaluate; use a data set with one, or run no evaluator task")
        self.eval_input = EvalInput(source.eval_examples, source.num_eval_examples, config.global_batch_size)
        previous_policy = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy(MIXED_PRECISION[config.mixed_precision])
        try:
            with strategy.scope():
                model = build_model(config.model, source.input_shape, source.num_classes)
                optimizer = build_optimizer(config.optimizer, config.learning_rate)
            cluster = ClusterInfo(num_workers=1, worker_index=0, is_chief=False,
                                  num_replicas=strategy.num_replicas_in_sync, task_type="evaluator",
                                  task_index=self.job.task_index)
            # The loss harness.run trains with; the evaluator only reads checkpoints, it never saves any.
            self.trainer = Trainer(strategy, model, optimizer,
                                   keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None),
                                   global_batch_size=config.global_batch_size,
                                   steps_per_execution=config.steps_per_execution, jit_compile=config.jit_compile,
                                   model_dir=config.model_dir, checkpoint_dir=self.checkpoint_dir, cluster=cluster,
                                   ema_decay=config.ema_decay)  # evaluates the checkpoint's EMA, as training does
        finally:
            keras.mixed_precision.set_global_policy(previous_policy)
        log.info("Evaluator: strategy %s with %d replica(s).", name, strategy.num_replicas_in_sync)
        return self.trainer


def _on_disk(path: str) -> bool:
    """The checkpoint's index and data files are still there (retention deletes the index first)."""
    return tf.io.gfile.exists(f"{path}.index") and bool(tf.io.gfile.glob(f"{path}.data-*"))


def evaluate_continuously(config: RunConfig, job: ResolvedCluster, *, poll_s: float = POLL_S) -> dict[str, Any]:
    """Runs the evaluator task of `config`'s run (see the module doc); returns its summary.

    SIGTERM/SIGINT raise `Interrupted` (scripts/train.py exits 75 with one line); every evaluation
    finished before it is recorded, and a rerun continues after the last one.
    """
    evaluator = Evaluator(config, job, poll_s=poll_s)
    installed_here = not WATCHER.installed
    WATCHER.install()
    try:
        evaluator.start()
        return evaluator.run()
    except Interrupted as e:  # what scripts/train.py says after "Stopped by SIGTERM "
        e.outcome = (f"in the evaluator ({evaluator.evaluated} checkpoint(s) evaluated by this run, every one "
                     f"recorded in {evaluator.path}); rerun the same command to continue after the last one")
        raise
    finally:
        if installed_here:
            WATCHER.uninstall()
