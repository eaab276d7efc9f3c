"""Every thread of this process on one CPU while contenders take turns (like `taskset`, but for a section).

On this 2-core VM, TensorFlow's hand-offs between the caller's thread and its inter-op threads
cost more when they cross cores, and where the scheduler places the threads lasts for seconds:
a 12-call slice of the minimal MLP loop took 12-21 ms of CPU time (a 17% spread of the paired
ratio per slice), and a contender could be 20% dearer than its identical copy for a whole
epoch. On one CPU the same slice takes 8-9 ms and the noise floor's interval narrows from
about ±4% to about ±1%. Every contender gets the same CPU, so the ratios compare like with
like; `--all_cpus` measures without it. New threads inherit the mask; leaving the section
puts every thread back on the CPUs it had. Only for one-replica settings: TensorFlow sizes the
thread pools it creates by the CPUs the process may use, and pinned, Keras fit's step on 2
mirrored replicas hung (its collective waits for a thread that never comes).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def _threads() -> list[int]:
    return [int(tid) for tid in os.listdir("/proc/self/task")]


def _pin_all(cpus: set[int]) -> None:
    for tid in _threads():
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:  # the thread has exited meanwhile
            pass


def available() -> bool:
    return hasattr(os, "sched_setaffinity") and os.path.isdir("/proc/self/task")


@contextlib.contextmanager
def one_cpu(enabled: bool = True) -> Iterator[int | None]:
    """Pins every thread of the process to one CPU (the last one it may use); yields it, or None when off."""
    if not enabled or not available():
        yield None
        return
    before = os.sched_getaffinity(0)
    cpu = max(before)
    _pin_all({cpu})
    try:
        yield cpu
    finally:
        _pin_all(before)
