#!/usr/bin/env python3
"""Trains a model with a tf.distribute strategy and strategy-aware callbacks.

  python scripts/train.py --strategy=mirrored --num_cpu_devices=2 --model_dir=runs/digits

Every flag is a field of `harness.run.RunConfig`; see README.md for the list and outputs.
Exit codes: 0 success, 1 failure, 2 usage error (bad flag or TF_CONFIG), 75 preempted (saved;
rerun the same command to resume).
"""

import logging as pylogging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from absl import app, flags, logging  # noqa: E402

from harness import run as run_lib  # noqa: E402
from harness.errors import SetupError, UsageError  # noqa: E402
from harness.preemption import EXIT_PREEMPTED  # noqa: E402
from harness.strategy import STRATEGIES  # noqa: E402

_D = run_lib.RunConfig()
FLAGS = flags.FLAGS
flags.DEFINE_enum("strategy", _D.strategy, STRATEGIES, "tf.distribute strategy.")
flags.DEFINE_integer("num_cpu_devices", None, "Split a GPU-less host's CPU into this many replicas.")
flags.DEFINE_string("tpu", None, "TPU for --strategy=tpu: 'local', a name, or grpc://host:port.")
flags.DEFINE_float("collective_timeout_s", None, "Fail a multi-worker collective after this many seconds.")
flags.DEFINE_float("cluster_join_timeout_s", _D.cluster_join_timeout_s, "Fail when not every task joins in time.")
flags.DEFINE_float("heartbeat_timeout_s", _D.heartbeat_timeout_s, "A task silent this long is lost: every task fails.")
flags.DEFINE_string("dataset", _D.dataset, "'digits' (offline, default), 'synthetic', or a TFDS name.")
flags.DEFINE_string("data_dir", None, "TFDS data directory (default: TFDS's, ~/tensorflow_datasets).")
flags.DEFINE_bool("download_data", _D.download_data, "Let TFDS download a catalog data set (needs network).")
flags.DEFINE_integer("global_batch_size", _D.global_batch_size, "Batch size summed over all replicas.")
flags.DEFINE_integer("epochs", _D.epochs, "Number of epochs.")
flags.DEFINE_integer("steps_per_epoch", _D.steps_per_epoch, "Steps per epoch; 0 means one pass over the data.")
flags.DEFINE_enum("model", _D.model, ["mlp", "cnn", "resnet"], "Model architecture.")
flags.DEFINE_enum("optimizer", _D.optimizer, ["sgd", "momentum", "adam", "adamw", "rmsprop"], "Optimizer.")
flags.DEFINE_float("learning_rate", _D.learning_rate, "Base learning rate.")
flags.DEFINE_integer("steps_per_execution", _D.steps_per_execution, "Steps per compiled loop call (K).")
flags.DEFINE_enum("mixed_precision", _D.mixed_precision, list(run_lib.MIXED_PRECISION), "Mixed precision policy.")
flags.DEFINE_bool("jit_compile", _D.jit_compile, "Compile the step with XLA.")
flags.DEFINE_integer("seed", _D.seed, "Seed for weights and data order.")
flags.DEFINE_bool("deterministic", _D.deterministic, "Enable TensorFlow op determinism (bitwise reproducible).")
flags.DEFINE_string("model_dir", _D.model_dir, "Where checkpoints, logs and summary.json go (gs:// works).")
flags.DEFINE_bool("fresh", _D.fresh, "Start over: delete this harness's outputs in --model_dir instead of resuming.")
flags.DEFINE_integer("max_to_keep", _D.max_to_keep, "Training checkpoints to keep.")
flags.DEFINE_integer("checkpoint_every_n_steps", None, "Also checkpoint every N global steps (epoch ends always).")
flags.DEFINE_float("checkpoint_every_n_seconds", None, "Also checkpoint every T seconds (the chief's clock).")
flags.DEFINE_bool("async_checkpoint", _D.async_checkpoint, "Write checkpoints in the background.")
flags.DEFINE_string("export_dir", _D.export_dir, "At the end, export a SavedModel and a .keras file here.")
# Callbacks.
flags.DEFINE_bool("progress", _D.progress, "Progress bar (live on a terminal, periodic lines otherwise).")
flags.DEFINE_bool("tensorboard", _D.tensorboard, "TensorBoard event files under <model_dir>/tensorboard.")
flags.DEFINE_integer("update_freq", _D.update_freq, "TensorBoard batch summaries every N steps; 0: per epoch.")
flags.DEFINE_integer("histogram_freq", _D.histogram_freq, "TensorBoard weight histograms every N epochs; 0: off.")
flags.DEFINE_string("profile_steps", _D.profile_steps, "Profile the global steps 'start,stop' into TensorBoard.")
flags.DEFINE_bool("csv_log", _D.csv_log, "One CSV row per epoch in <model_dir>/metrics.csv.")
flags.DEFINE_bool("terminate_on_nan", _D.terminate_on_nan, "Stop all workers when the loss is NaN or infinite.")
flags.DEFINE_string("monitor", _D.monitor, "Metric for early stopping, best checkpoints and plateau: "
                    "loss, accuracy, val_loss, val_accuracy.")
flags.DEFINE_enum("mode", _D.mode, ["auto", "min", "max"], "Whether --monitor should go down or up.")
flags.DEFINE_float("min_delta", _D.min_delta, "Smallest change of --monitor that counts as an improvement.")
flags.DEFINE_integer("early_stopping_patience", None, "Stop after this many epochs without improvement; unset: off.")
flags.DEFINE_bool("restore_best_weights", _D.restore_best_weights, "With early stopping, end on the best weights.")
flags.DEFINE_bool("save_best_only", _D.save_best_only, "Also save weights when --monitor improves, in "
                  "<model_dir>/best/epoch<N> (the newest --max_to_keep).")
flags.DEFINE_enum("lr_schedule", _D.lr_schedule, ["constant", "cosine", "linear", "step"], "Per-step LR schedule.")
flags.DEFINE_integer("warmup_steps", _D.warmup_steps, "Linear learning-rate warm-up steps.")
flags.DEFINE_integer("decay_steps", _D.decay_steps, "Schedule decay steps; 0: the rest of the run (step: a third).")
flags.DEFINE_float("lr_decay_rate", _D.lr_decay_rate, "Factor per decay period of --lr_schedule=step.")
flags.DEFINE_integer("reduce_lr_on_plateau_patience", None, "Reduce the LR after this many flat epochs; unset: off.")
flags.DEFINE_float("reduce_lr_factor", _D.reduce_lr_factor, "Factor of each plateau reduction, in (0, 1).")
flags.DEFINE_float("min_lr", _D.min_lr, "Plateau reductions never go below this learning rate.")


def config_from_flags() -> run_lib.RunConfig:
    return run_lib.RunConfig(**{f.name: getattr(FLAGS, f.name) for f in run_lib.dataclasses.fields(run_lib.RunConfig)})


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:  # the progress bar is the default output; --verbosity=0 for INFO logs
        logging.set_verbosity(logging.WARNING)
        pylogging.getLogger("tensorflow").setLevel(pylogging.WARNING)
    try:
        summary = run_lib.run(config_from_flags())
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if summary["preempted"]:
        print(f"Preempted: saved at step {summary['global_step']}; rerun the same command to resume "
              f"(exit code {EXIT_PREEMPTED}).", file=sys.stderr)
        return EXIT_PREEMPTED
    return 0


def parse_flags(argv):
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}\nPass --help to see the flags.", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
