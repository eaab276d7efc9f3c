"""Preemption: SIGTERM or Ctrl-C at any moment ends the run with exit 75 and a true message.

Cloud TPU VMs and spot VMs send SIGTERM before they are taken away, and Kubernetes does
before it evicts a pod; Ctrl-C sends SIGINT. While training, the handler only records the
signal: the trainer agrees "save and stop" at the next decision point, so every worker saves
the same step even when only one of them was signalled; a second Ctrl-C interrupts at once.
Outside training (start-up, data preparation) there is nothing to save, so a signal raises
`Interrupted` at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by a signal; rerun the same command to resume


class Interrupted(BaseException):
    """A signal ended the process at once (like KeyboardInterrupt, not an `Exception`).

    `outcome` says what it left behind; the training loop rewrites it when a second Ctrl-C
    interrupts training.
    """

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.outcome = "before training started; nothing to save. Rerun the same command to start"


class PreemptionWatcher:
    """Turns SIGTERM/SIGINT into a recorded request while training, and into `Interrupted` otherwise."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: int = 0  # the signal recorded while training (0: none)
        self._deferring = 0
        self._previous: dict[int, object] = {}

    @property
    def installed(self) -> bool:
        return bool(self._previous)

    def install(self) -> None:
        """Handles the signals from now on (main thread only; elsewhere the watcher is inert)."""
        if not self.installed and threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def uninstall(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum, frame):
        del frame
        if not self._deferring or (self.received and signum == signal.SIGINT):
            raise Interrupted(signal.Signals(signum).name)  # nothing to save yet, or a second Ctrl-C
        self.received = self.received or signum

    @contextlib.contextmanager
    def deferring(self) -> Iterator[PreemptionWatcher]:
        """While training: signals are recorded and acted on at the next decision point."""
        installed_here = not self.installed
        self.install()
        self._deferring += 1
        self.received = 0
        try:
            yield self
        finally:
            self._deferring -= 1
            if installed_here:
                self.uninstall()


WATCHER = PreemptionWatcher()  # one per process: signal handlers are process-wide
