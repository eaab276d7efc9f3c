#!/usr/bin/env python3
"""Trains a model with a tf.distribute strategy and strategy-aware callbacks.

  python scripts/train.py --strategy=mirrored --num_cpu_devices=2 --model_dir=runs/digits

Every flag is a field of `harness.run_config.RunConfig`; see README.md for the list and outputs.
The flags are parsed and checked before TensorFlow starts, so a usage error is immediate.
Exit codes: 0 done, 1 failure (one `error:` line), 2 usage error (bad flag or TF_CONFIG),
75 stopped by a signal (rerun the same command to resume).
"""

import dataclasses
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from absl import app, flags, logging

from harness.preemption import EXIT_PREEMPTED, WATCHER, Interrupted

WATCHER.install()  # from here on a signal ends the process with exit 75 and one line, never a traceback

from harness import console
from harness.cluster_env import default_output_dirs
from harness.errors import SetupError, UsageError
from harness.run_config import RunConfig
from harness.strategy import resolve_job

FLAGS = flags.FLAGS


def define_flags(config_type: type = RunConfig) -> None:
    """One flag per `RunConfig` field: same name, default, help and choices."""
    for field in dataclasses.fields(config_type):
        kind, default, help_text = field.type.split(" | ")[0], field.default, field.metadata["help"]
        if field.metadata["choices"]:
            flags.DEFINE_enum(field.name, default, list(field.metadata["choices"]), help_text)
        elif kind == "bool":
            flags.DEFINE_bool(field.name, default, help_text)
        elif kind == "int":
            flags.DEFINE_integer(field.name, default, help_text)
        elif kind == "float":
            flags.DEFINE_float(field.name, default, help_text)
        else:
            flags.DEFINE_string(field.name, default, help_text)


define_flags()


def config_from_flags() -> RunConfig:
    """The flags as a RunConfig; on Vertex AI, its output directories fill the ones not given as flags."""
    values = {f.name: FLAGS[f.name].value for f in dataclasses.fields(RunConfig)}
    for name, directory in default_output_dirs(os.environ).items():
        if not FLAGS[name].present:
            values[name] = directory
    return RunConfig(**values)


def describe_cluster(config: RunConfig) -> None:
    """Prints this task's place in the job as one JSON object (no TensorFlow, no connection)."""
    job = resolve_job(config.strategy, **config.cluster_flags())
    print(json.dumps({**job.describe(), "strategy": config.strategy, **config.output_dirs()}, sort_keys=True))


def fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def preempted_message(summary: dict) -> str:
    """A true line about what the signal left behind: the checkpoint that holds the stopped state, or none."""
    signal, step = summary["signal"], summary["global_step"]
    if summary["checkpoint_step"] == step:
        saved = f"saved at step {step} in {summary['checkpoint']}"
    elif summary["checkpoint"]:
        saved = (f"step {step} could not be saved; the newest checkpoint is {summary['checkpoint']} "
                 f"(step {summary['checkpoint_step']})")
    elif step == 0:
        saved = "stopped before the first step; nothing to save"
    else:
        saved = f"stopped at step {step} before any checkpoint could be saved; a rerun starts over"
    finished = (f" The run had also finished: {summary['stop_reason']}; a rerun has nothing left to do."
                if summary["stop_reason"] else " Rerun the same command to resume.")
    return f"Preempted by {signal}: {saved}.{finished}"


def main(argv) -> int:
    if len(argv) > 1:
        return fail(f"unexpected argument {argv[1]!r}; every setting is a flag such as --epochs=5 "
                    "(see --help)", 2)
    config = config_from_flags()
    console.configure(show_tensorflow=config.tf_log)
    if not FLAGS["verbosity"].present:  # TensorFlow's and TFDS's absl lines only with --tf_log (or --verbosity)
        logging.set_verbosity(logging.INFO if config.tf_log else logging.ERROR)
    try:
        config.validate()
        if config.describe_cluster:
            describe_cluster(config)
            return 0
        resolve_job(config.strategy, warn=False, **config.cluster_flags())  # TF_CONFIG and cluster flags: no TF yet
        from harness import run as run_lib  # TensorFlow starts here, after the flags are known to be good

        summary = run_lib.run(config)
    except UsageError as e:
        return fail(e.as_flag(), 2)
    except (SetupError, OSError) as e:
        return fail(str(e), 1)
    except Interrupted as e:
        print(f"Stopped by {e.signal_name} {e.outcome}.", file=sys.stderr, flush=True)
        return EXIT_PREEMPTED
    if summary["signal"]:
        print(preempted_message(summary), file=sys.stderr, flush=True)
        return EXIT_PREEMPTED
    epochs = summary["epochs_completed"]
    print(f"Done: global step {summary['global_step']}, {epochs} epoch{'s' * (epochs != 1)}, "
          f"stop reason: {summary['stop_reason'] or 'none'}", flush=True)
    for kind, path in summary["exported"].items():
        print(f"Exported {kind}: {path}", flush=True)
    return 0


HELP = ("--help", "-h", "-?", "--helpshort")


def print_help() -> None:
    """This script's flags first (absl lists its own too; those are under --helpfull)."""
    print((__doc__ or "").strip() + "\n")
    print("Flags (each a field of harness.run_config.RunConfig):")
    print("  --flagfile: Read more flags from this file (one --name=value per line).")
    print("\n".join(line for line in FLAGS.main_module_help().splitlines()
                    if line.strip() and not line.strip().endswith(".py:")))
    print("\nabsl's own flags (--verbosity, --logtostderr, ...): --helpfull")


def parse_flags(argv: list[str]) -> list[str]:
    if any(arg in HELP for arg in argv[1:]):
        print_help()
        sys.exit(0)
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"error: {str(e).splitlines()[0]}; see --help", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    try:
        app.run(main, flags_parser=parse_flags)
    except Interrupted as e:  # during start-up, before main
        print(f"Stopped by {e.signal_name} {e.outcome}.", file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
