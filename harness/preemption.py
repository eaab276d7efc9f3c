"""Preemption: SIGTERM or Ctrl-C ends the current K-step loop, saves, and stops every worker.

Cloud TPU VMs and spot VMs send SIGTERM before they are taken away, and Kubernetes does
before it evicts a pod; Ctrl-C sends SIGINT. The handler only records the signal; the
trainer votes "save and stop" at the next decision point, so all workers save the same
step even when only one of them was signalled. A second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import signal
import threading

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: saved and stopped; rerun the same command to resume


class PreemptionWatcher:
    """Records SIGTERM/SIGINT while installed (a context manager; main thread only, else inert)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame):
        del frame
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.received = signal.Signals(signum).name

    def __enter__(self) -> PreemptionWatcher:
        self.received = None
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
