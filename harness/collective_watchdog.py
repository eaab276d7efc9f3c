"""One thread that bounds how long a call may wait on a stuck peer (`collective_timeout_s`).

TensorFlow's own bound, `CommunicationOptions(timeout_seconds=T)`, starts two threads per
collective that sleep for T seconds: measured, 501 all-reduces on 2 workers leave 1,000 more
threads alive, so a job at one step per call holds hundreds of thousands within T = 600 s and
dies when the system refuses more. Here the strategy's collectives have no timeout; one daemon
thread watches the calls that wait on peers (the compiled training and evaluation loops, the
decision and metric all-reduces) and, when one has run longer than T, aborts this process's
collectives as TensorFlow's timeout would: the waiting call fails with DeadlineExceededError,
which `harness.cluster.peer_error` turns into one line. Inert until `start` (one process).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any


class CollectiveWatchdog:
    """Aborts the collectives of a call that has waited longer than the timeout; one per process."""

    def __init__(self) -> None:
        self.timeout_s: float | None = None
        self._since: float | None = None  # when the outermost watched call began
        self._thread: threading.Thread | None = None

    def start(self, timeout_s: float | None) -> None:
        """Watches from now on with this timeout (None: off); starts the thread once per process."""
        self.timeout_s = timeout_s
        if timeout_s is not None and self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="collective-watchdog", daemon=True)
            self._thread.start()

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        if self.timeout_s is None or self._since is not None:  # off, or inside a watched call already
            yield
            return
        self._since = time.monotonic()
        try:
            yield
        finally:
            self._since = None

    def watched(self, call: Callable[..., Any]) -> Callable[..., Any]:
        """`call`, run inside `watching()`."""
        def run(*args: Any, **kwargs: Any) -> Any:
            with self.watching():
                return call(*args, **kwargs)
        return run

    def _watch(self) -> None:
        from harness import tf_compat

        while True:
            timeout, since = self.timeout_s, self._since
            if timeout is not None and since is not None and time.monotonic() - since > timeout:
                self._since = None  # once per call
                tf_compat.abort_collectives(f"a collective waited longer than collective_timeout_s ({timeout:g} s)")
            time.sleep(min(1.0, (timeout or 10.0) / 10))


WATCHDOG = CollectiveWatchdog()
