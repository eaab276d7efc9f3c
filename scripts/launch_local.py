#!/usr/bin/env python3
"""Runs a multi-worker job on this machine: one train.py process per task, on 127.0.0.1.

  python scripts/launch_local.py --num_workers=2 -- --num_cpu_devices=2 --model_dir=runs/mw

Everything after `--` goes to scripts/train.py (`--strategy=multi_worker_mirrored` is added
unless given). Output lines are prefixed with their task; Ctrl-C stops every task; the exit
code is that of the first task that failed.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from absl import app, flags  # noqa: E402

from harness.errors import UsageError  # noqa: E402
from harness.launch import launch  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_workers", 2, "Worker tasks to start.")
flags.DEFINE_bool("chief", False, "Also start a separate chief task (which trains too).")
flags.DEFINE_float("grace_s", 30.0, "After a task fails, how long the others get to exit before SIGTERM.")
flags.DEFINE_float("kill_after_s", 10.0, "After SIGTERM, how long before SIGKILL.")

TRAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py")


def main(argv):
    train_flags = argv[1:]
    if not any(f.startswith("--strategy") for f in train_flags):
        train_flags.insert(0, "--strategy=multi_worker_mirrored")
    try:
        return launch([sys.executable, TRAIN, *train_flags], num_workers=FLAGS.num_workers, with_chief=FLAGS.chief,
                      grace_s=FLAGS.grace_s, kill_after_s=FLAGS.kill_after_s)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    app.run(main)
