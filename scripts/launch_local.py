#!/usr/bin/env python3
"""Runs a multi-worker job on this machine: one process per task, on 127.0.0.1.

  python scripts/launch_local.py --num_workers=2 -- --num_cpu_devices=2 --model_dir=runs/mw
  python scripts/launch_local.py --num_workers=2 --evaluator --max_restarts=3 -- --model_dir=runs/mw
  python scripts/launch_local.py --num_workers=2 --script=my_train.py -- --my_flag=1

The launcher's flags come before `--`; everything after it goes to every task. A task runs
scripts/train.py (`--strategy=multi_worker_mirrored` is added unless given; any other strategy
is refused), or with --script your own script, with exactly the arguments after `--`. Each task
gets its TF_CONFIG: --chief adds a separate chief task, --evaluator one evaluator task that the
cluster of every TF_CONFIG lists too. Output lines are prefixed with their task.

When a task fails, the others get --grace_s to stop, then SIGTERM, then SIGKILL after
--kill_after_s. With --max_restarts=N every task is then started again on new ports, up to N
times (training resumes from its last checkpoint); usage errors (exit 2) and preemptions (75)
are never restarted. Ctrl-C or SIGTERM is forwarded to every task; a second Ctrl-C kills them.

Exit codes: 0 done; 2 usage error; 75 preempted (saved; rerun the same command to resume);
130 after a second Ctrl-C; else the first failing task's code (128 + N if killed by signal N).
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from absl import app, flags

from harness.errors import UsageError
from harness.launch import EXIT_USAGE, launch, script_command, train_args

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_workers", 2, "Worker tasks to start.")
flags.DEFINE_bool("chief", False, "Also start a separate chief task (which trains too).")
flags.DEFINE_bool("evaluator", False, "Also start one evaluator task (it does not train; every TF_CONFIG lists it).")
flags.DEFINE_string("script", None, "Run this Python script in every task instead of scripts/train.py, with "
                    "exactly the arguments after --.")
flags.DEFINE_integer("max_restarts", 0, "After a task fails (not a usage error or preemption), restart every "
                     "task on new ports up to this many times.")
flags.DEFINE_float("grace_s", 30.0, "After a task fails, how long the others get to exit before SIGTERM.")
flags.DEFINE_float("kill_after_s", 10.0, "After SIGTERM, how long before SIGKILL.")

TRAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py")
USAGE = "launch_local.py [launcher flags] -- [flags of every task]"


def usage_error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def main(argv):
    try:
        command = (script_command(FLAGS.script, argv[1:]) if FLAGS.script
                   else script_command(TRAIN, train_args(argv[1:])))
        return launch(command, num_workers=FLAGS.num_workers, with_chief=FLAGS.chief,
                      with_evaluator=FLAGS.evaluator, max_restarts=FLAGS.max_restarts, grace_s=FLAGS.grace_s,
                      kill_after_s=FLAGS.kill_after_s)
    except UsageError as e:
        usage_error(str(e))


def parse_flags(argv):
    """Parses the launcher's flags, those before `--`; returns the program and the arguments of every task."""
    own, tasks_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    try:
        extra = FLAGS(own)[1:]
    except flags.UnrecognizedFlagError as e:
        usage_error(f"{e}; put the tasks' flags after `--`: {USAGE}")
    except flags.Error as e:
        usage_error(f"{str(e).replace(chr(10), ' ')}; pass --help to see the flags")
    except SystemExit:  # absl's --help and --helpfull exit 1 after printing the help
        sys.exit(0)
    if extra:
        usage_error(f"unexpected argument {extra[0]!r} before `--`; put the tasks' flags after `--`: {USAGE}")
    return [argv[0], *tasks_args]


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
