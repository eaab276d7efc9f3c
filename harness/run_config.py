"""`RunConfig`: every setting of a run, one field per `scripts/train.py` flag of the same name.

Pure Python (no TensorFlow): the command line parses and checks every flag before TensorFlow
starts, so a usage error costs milliseconds. Each field says what it is for (its flag's
help) and whether changing it on resume changes the mathematics of the run:

- `MATH`: the model, the optimisation, the data and the decisions that shape the weights. A
  resumed run with a different value is refused (see `harness.run_record`).
- `LAYOUT`: how the same mathematics is carried out or observed (strategy, replicas,
  steps per call, logging, checkpoint cadence). A change is allowed and logged.
- `LOCAL`: where this invocation reads and writes (model_dir, fresh); never recorded.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from callbacks.monitor import MODES, MONITOR_FREQS
from callbacks.schedules import SCHEDULES
from harness.errors import UsageError
from harness.metrics import METRICS, log_names
from harness.models import MODELS, OPTIMIZERS
from harness.strategy import STRATEGIES

MATH, LAYOUT, LOCAL = "math", "layout", "local"
MIXED_PRECISION = {"none": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
DEFAULT_DATASET = "digits"
MAX_SEED = 2**32 - 1
ON_NAN = ("stop", "rollback")
ROLLBACK_DEFAULTS = {"divergence_threshold": None, "rollback_lr_factor": 1.0, "max_rollbacks": 3}


def _field(default: Any, help: str, kind: str = LAYOUT, choices: tuple[str, ...] | None = None) -> Any:
    return dataclasses.field(default=default, metadata={"help": help, "kind": kind, "choices": choices})


@dataclasses.dataclass
class RunConfig:
    """Every setting of a run; each field is the `scripts/train.py` flag of the same name."""

    strategy: str = _field("mirrored", "tf.distribute strategy.", choices=STRATEGIES)
    num_cpu_devices: int | None = _field(None, "Split a GPU-less host's CPU into this many replicas "
                                         "(per worker with multi_worker_mirrored).")
    tpu: str | None = _field(None, "TPU for --strategy=tpu: 'local', a name, or grpc://host:port.")
    collective_timeout_s: float = _field(600.0, "Fail a training loop, decision or metric read that waits "
                                         "longer than this on a peer (stuck without failing).")
    cluster_join_timeout_s: float = _field(300.0, "Fail when not every task joins in time.")
    heartbeat_timeout_s: float = _field(10.0, "A task silent this long is lost: every task fails.")
    worker_hosts: str | None = _field(None, "The training tasks' host:port list, chief first, or a pattern such as "
                                      "'train-{index}.svc:2222' with --num_workers (overrides TF_CONFIG and the "
                                      "platform's variables).", LOCAL)
    num_workers: int | None = _field(None, "How many training tasks a --worker_hosts pattern expands to.", LOCAL)
    task_type: str | None = _field(None, "This task's type with --worker_hosts: worker (default) or evaluator.",
                                   LOCAL, ("worker", "evaluator"))
    task_index: int | None = _field(None, "This task's index in --worker_hosts (default: JOB_COMPLETION_INDEX).",
                                    LOCAL)
    port: int | None = _field(None, "Base port of the tasks under SLURM (default 8888), and of --worker_hosts "
                              "entries without one.", LOCAL)
    tf_log: bool = _field(False, "Show TensorFlow's own log lines (its C++ start-up lines, its Python warnings), "
                          "for debugging.", LOCAL)
    describe_cluster: bool = _field(False, "Print this task's place in the job as one JSON object and exit, "
                                    "without training or connecting.", LOCAL)
    dataset: str = _field(DEFAULT_DATASET, "'digits' (offline, default), 'synthetic', or a TFDS name.", MATH)
    data_dir: str | None = _field(None, "TFDS data directory (default: TFDS's, ~/tensorflow_datasets).")
    download_data: bool = _field(False, "Let TFDS download a catalog data set (needs network).")
    global_batch_size: int = _field(64, "Batch size summed over all replicas.", MATH)
    epochs: int = _field(10, "Number of epochs.")
    steps_per_epoch: int = _field(0, "Steps per epoch; 0 means one pass over the data.", MATH)
    model: str = _field("mlp", "Model architecture.", MATH, tuple(MODELS))
    optimizer: str = _field("adam", "Optimizer.", MATH, tuple(OPTIMIZERS))
    learning_rate: float = _field(1e-3, "Base learning rate.", MATH)
    steps_per_execution: int = _field(1, "Steps per compiled loop call (K).")
    gradient_accumulation_steps: int = _field(1, "Micro-batches per update: each update sums the gradients of this "
                                              "many micro-batches of global_batch_size / N examples (less memory, "
                                              "the same update).", MATH)
    ema_decay: float | None = _field(None, "Keep an exponential moving average of the weights with this decay (e.g. "
                                     "0.999) for validation, best checkpoints and the export; unset: off.", MATH)
    mixed_precision: str = _field("none", "Mixed precision policy.", MATH, tuple(MIXED_PRECISION))
    jit_compile: bool = _field(False, "Compile the step with XLA.")
    seed: int = _field(0, f"Seed for weights and data order, 0..{MAX_SEED}.", MATH)
    deterministic: bool = _field(False, "Enable TensorFlow op determinism (bitwise reproducible).")
    model_dir: str = _field("runs/default", "Where checkpoints, logs and summary.json go (gs:// works; default "
                            "AIP_MODEL_DIR on Vertex AI).", LOCAL)
    checkpoint_dir: str | None = _field(None, "Training checkpoints (default <model_dir>/checkpoints, or "
                                        "AIP_CHECKPOINT_DIR on Vertex AI).", LOCAL)
    tensorboard_dir: str | None = _field(None, "TensorBoard event files (default <model_dir>/tensorboard, or "
                                         "AIP_TENSORBOARD_LOG_DIR on Vertex AI).", LOCAL)
    fresh: bool = _field(False, "Start over: delete this harness's outputs in --model_dir instead of resuming.",
                         LOCAL)
    max_to_keep: int = _field(3, "Training checkpoints (and best checkpoints) to keep.")
    checkpoint_every_n_steps: int | None = _field(None, "Also checkpoint every N global steps (epoch ends always).")
    checkpoint_every_n_seconds: float | None = _field(None, "Also checkpoint every T seconds (the chief's clock).")
    async_checkpoint: bool = _field(False, "Write checkpoints in the background.")
    export_dir: str = _field("", "At the end, export a SavedModel and a .keras file here.")
    # The evaluator task (TF_CONFIG task type `evaluator`; see harness/evaluator.py).
    eval_timeout_s: float = _field(600.0, "Evaluator task: stop (exit 0) after this many seconds without a new "
                                   "checkpoint.", LOCAL)
    evaluator_export_best: bool = _field(False, "Evaluator task: export the best checkpoint by --monitor/--mode to "
                                         "<model_dir>/evaluator/best.", LOCAL)
    # Callbacks.
    progress: bool = _field(True, "Progress bar (live on a terminal, periodic lines otherwise).")
    tensorboard: bool = _field(True, "TensorBoard event files under <model_dir>/tensorboard.")
    update_freq: int = _field(0, "TensorBoard batch summaries every N steps; 0: per epoch.")
    histogram_freq: int = _field(0, "TensorBoard weight histograms every N epochs; 0: off.")
    profile_steps: str = _field("", "Profile the global steps 'start,stop' into TensorBoard.")
    csv_log: bool = _field(True, "One CSV row per epoch in <model_dir>/metrics.csv.")
    terminate_on_nan: bool = _field(True, "Stop all workers when the loss is NaN or infinite.", MATH)
    monitor: str = _field("val_loss", "Metric for early stopping, best checkpoints and plateaus: "
                          f"{', '.join(log_names(tuple(METRICS))[:-1])}.", MATH)
    mode: str = _field("auto", "Whether --monitor should go down (min) or up (max); auto: from its name.", MATH,
                       MODES)
    min_delta: float = _field(0.0, "Smallest change of --monitor that counts as an improvement "
                              "(early stopping and plateaus).", MATH)
    early_stopping_patience: int | None = _field(None, "Stop after this many epochs without improvement; unset: off.",
                                                 MATH)
    restore_best_weights: bool = _field(False, "With early stopping, end on the best weights.", MATH)
    save_best_only: bool = _field(False, "Also save weights when --monitor improves, in <model_dir>/best/epoch<N> "
                                  "(the newest --max_to_keep).")
    lr_schedule: str = _field("constant", "Per-step learning-rate schedule.", MATH, SCHEDULES)
    warmup_steps: int = _field(0, "Linear learning-rate warm-up steps.", MATH)
    decay_steps: int = _field(0, "Schedule decay steps; 0: the rest of the run (step: a third).", MATH)
    lr_decay_rate: float = _field(0.1, "Factor per decay period of --lr_schedule=step.", MATH)
    reduce_lr_on_plateau_patience: int | None = _field(None, "Reduce the learning rate after this many flat "
                                                       "epochs; unset: off.", MATH)
    reduce_lr_factor: float = _field(0.1, "Factor of each plateau reduction, in (0, 1).", MATH)
    min_lr: float = _field(0.0, "Plateau reductions never go below this learning rate.", MATH)
    validation_every_n_steps: int | None = _field(None, "Also validate at every multiple of N global steps (epoch "
                                                  "ends always); unset: at epoch ends only.", MATH)
    monitor_every: str = _field("epoch", "When early stopping, plateaus and best checkpoints look at --monitor: "
                                "after every epoch, or after every validation (--validation_every_n_steps too; "
                                "patience then counts validations).", MATH, MONITOR_FREQS)
    on_nan: str = _field("stop", "On a non-finite loss: stop (with --terminate_on_nan), or roll back to the last "
                         "checkpoint, skip the data that blew up and train on.", MATH, ON_NAN)
    divergence_threshold: float | None = _field(None, "With --on_nan=rollback, also roll back when the loss exceeds "
                                                "this.", MATH)
    rollback_lr_factor: float = _field(1.0, "With --on_nan=rollback, multiply the learning rate by this at every "
                                       "rollback, in (0, 1].", MATH)
    max_rollbacks: int = _field(3, "With --on_nan=rollback, give up (one line, then stop) when the loss blows up "
                                "again after this many rollbacks.", MATH)

    def validate(self) -> None:
        """Raises `UsageError` naming the first invalid field and the fix; needs no TensorFlow."""
        for f in dataclasses.fields(self):
            value, choices = getattr(self, f.name), f.metadata["choices"]
            if choices and value is not None and value not in choices:
                raise UsageError(f"is {value!r}; choose one of {', '.join(choices)}", argument=f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise UsageError(f"must be a finite number, got {value}", argument=f.name)
        _at_least(self, 1, "epochs", "steps_per_execution", "global_batch_size", "max_to_keep", "num_cpu_devices",
                  "checkpoint_every_n_steps")
        _at_least(self, 1, "num_workers", "port", "gradient_accumulation_steps")
        _at_least(self, 0, "task_index", "steps_per_epoch", "update_freq", "histogram_freq", "warmup_steps",
                  "decay_steps", "early_stopping_patience", "reduce_lr_on_plateau_patience", "min_delta", "min_lr")
        _positive(self, "learning_rate", "lr_decay_rate", "checkpoint_every_n_seconds", "collective_timeout_s",
                  "cluster_join_timeout_s", "heartbeat_timeout_s", "eval_timeout_s")
        if not 0 <= self.seed <= MAX_SEED:
            raise UsageError(f"must be in 0..{MAX_SEED}, got {self.seed}", argument="seed")
        if not 0 < self.reduce_lr_factor < 1:
            raise UsageError(f"must be in (0, 1), got {self.reduce_lr_factor}", argument="reduce_lr_factor")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise UsageError(f"must be in (0, 1), e.g. 0.999, got {self.ema_decay}", argument="ema_decay")
        if self.global_batch_size % self.gradient_accumulation_steps:
            raise UsageError(f"is {self.gradient_accumulation_steps}, but global_batch_size {self.global_batch_size} "
                             f"does not split into {self.gradient_accumulation_steps} micro-batches; use a multiple",
                             argument="gradient_accumulation_steps")
        if not self.model_dir:
            raise UsageError("must not be empty", argument="model_dir")
        self._validate_monitoring_and_recovery()
        known = log_names(tuple(METRICS))
        if self.monitor not in known:
            raise UsageError(f"is {self.monitor!r}, not a metric of this run; choose one of {', '.join(known)}",
                             argument="monitor")
        self.profile_range()

    def _validate_monitoring_and_recovery(self) -> None:
        _at_least(self, 1, "validation_every_n_steps")
        _at_least(self, 0, "max_rollbacks")
        if not 0 < self.rollback_lr_factor <= 1:
            raise UsageError(f"must be in (0, 1], got {self.rollback_lr_factor}", argument="rollback_lr_factor")
        if self.monitor_every == "validation" and not self.monitor.startswith("val_"):
            raise UsageError(f"is validation, which acts on validation metrics, but monitor is {self.monitor!r}; "
                             f"monitor val_{self.monitor}", argument="monitor_every")
        for name, default in ROLLBACK_DEFAULTS.items():
            if self.on_nan != "rollback" and getattr(self, name) != default:
                raise UsageError(f"acts only with on_nan=rollback (on_nan is {self.on_nan})", argument=name)

    def cluster_flags(self) -> dict[str, Any]:
        """The flags that place this task in a job (see `harness.cluster_env.resolve_cluster`)."""
        return {"worker_hosts": self.worker_hosts, "num_workers": self.num_workers, "task_type": self.task_type,
                "task_index": self.task_index, "port": self.port}

    def output_dirs(self) -> dict[str, str]:
        """Where this run writes: model_dir, and its checkpoint and TensorBoard directories."""
        return {"model_dir": self.model_dir,
                "checkpoint_dir": self.checkpoint_dir or f"{self.model_dir}/checkpoints",
                "tensorboard_dir": self.tensorboard_dir or f"{self.model_dir}/tensorboard"}

    def profile_range(self) -> tuple[int, int]:
        """`profile_steps` as (start, stop) global steps; (0, 0) when off."""
        if not self.profile_steps:
            return (0, 0)
        try:
            start, stop = (int(v) for v in self.profile_steps.split(","))
        except ValueError:
            raise UsageError(f"must be 'start,stop' global steps, got {self.profile_steps!r}",
                             argument="profile_steps") from None
        if not 0 <= start <= stop:
            raise UsageError(f"must be 'start,stop' with 0 <= start <= stop, got {self.profile_steps!r}",
                             argument="profile_steps")
        return (start, stop)

    def recorded(self) -> dict[str, dict[str, Any]]:
        """The fields a run records in its model_dir, by kind (`MATH` and `LAYOUT`)."""
        out: dict[str, dict[str, Any]] = {MATH: {}, LAYOUT: {}}
        for f in dataclasses.fields(self):
            if f.metadata["kind"] != LOCAL:
                out[f.metadata["kind"]][f.name] = getattr(self, f.name)
        return out


def _at_least(config: RunConfig, minimum: int, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value is not None and value < minimum:
            raise UsageError(f"must be >= {minimum}, got {value}", argument=name)


def _positive(config: RunConfig, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value is not None and not value > 0:
            raise UsageError(f"must be > 0, got {value}", argument=name)
