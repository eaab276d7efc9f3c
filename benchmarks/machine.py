"""What the benchmark ran on: CPU, cores, date, versions, the harness commit and the command."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from typing import Any


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(root: str) -> str:
    """The commit of `root`, with "+dirty" when tracked files under harness/ or callbacks/ differ from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "harness", "callbacks"], cwd=root,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def describe(root: str, argv: list[str]) -> dict[str, Any]:
    import keras  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "harness_commit": git_commit(root),
        "command": " ".join(shlex.quote(a) for a in ["python", os.path.relpath(argv[0], root)
                                                      if os.path.isabs(argv[0]) else argv[0], *argv[1:]]),
        "python_executable": sys.executable,
    }
