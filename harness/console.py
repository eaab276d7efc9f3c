"""What the person at the terminal sees: the harness's own lines, plain; TensorFlow's only when asked.

The harness and its callbacks log through the standard `logging` module (loggers `harness.*` and
`callbacks.*`); `configure` prints those as plain lines (no absl prefix). TensorFlow's native code
logs before absl initialises (`oneDNN custom operations are on`,
`Could not find cuda drivers`, `failed call to cuInit: ... UNKNOWN ERROR (303)`, which reads like
a crash) and ignores `TF_CPP_MIN_LOG_LEVEL` for those lines, even at 3. They are written to file
descriptor 2 by C++, so no Python logging setting reaches them: the process's stderr is replaced
by a pipe whose reader passes every line on except these. Python's own output is untouched, and
everything is flushed at exit. `--tf_log` (`configure(show_tensorflow=True)`) shows them all.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading

# A native log record (`I0000 00:00:1795911595.317410    2453 port.cc:153] ...`: the zeros are the date before
# absl initialises), absl's notice about those, and the continuation of cpu_feature_guard's two-line record.
NATIVE_LINE = re.compile(rb"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [\w.\-/]+\.(?:cc|cpp|h):\d+\] "
                         rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
                         rb"|To enable the following instructions: .* rebuild TensorFlow with the appropriate "
                         rb"compiler flags\.)")


def is_native_log(line: bytes) -> bool:
    return bool(NATIVE_LINE.match(line))


class NativeLogFilter:
    """While installed, file descriptor 2 is a pipe; a thread copies its lines to the real stderr, minus native logs."""

    def __init__(self):
        self._real_fd: int | None = None
        self._thread: threading.Thread | None = None

    def install(self) -> None:
        if self._real_fd is not None:
            return
        sys.stderr.flush()
        read_fd, write_fd = os.pipe()
        self._real_fd = os.dup(2)
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self._thread = threading.Thread(target=self._copy, args=(read_fd, self._real_fd), daemon=True,
                                        name="native-log-filter")
        self._thread.start()
        atexit.register(self.uninstall)

    @staticmethod
    def _copy(read_fd: int, real_fd: int) -> None:
        with os.fdopen(read_fd, "rb", buffering=0) as pipe:
            pending = b""
            while chunk := pipe.read(65536):
                *lines, pending = (pending + chunk).split(b"\n")
                kept = b"".join(line + b"\n" for line in lines if not is_native_log(line))
                if kept:
                    os.write(real_fd, kept)
            if pending and not is_native_log(pending):
                os.write(real_fd, pending)

    def uninstall(self, timeout_s: float = 5.0) -> None:
        """Puts the real stderr back and waits until every line written before is passed on."""
        if self._real_fd is None:
            return
        sys.stderr.flush()
        os.dup2(self._real_fd, 2)  # closes this process's end of the pipe: the reader sees the end
        if self._thread is not None:
            self._thread.join(timeout_s)
        os.close(self._real_fd)
        self._real_fd, self._thread = None, None


FILTER = NativeLogFilter()


OWN_LOGGERS = ("harness", "callbacks")


def configure(show_tensorflow: bool = False) -> None:
    """Plain lines for the harness's messages; TensorFlow's native and Python logs only with `show_tensorflow`.

    stdout writes whole lines: unbuffered (the launcher's `PYTHONUNBUFFERED`), a `print` is two writes, and a
    stderr line passed on between them, in a pipe that carries both, would land inside the printed line.
    """
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True, write_through=False)
    for name in OWN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(getattr(h, "plain", False) for h in logger.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            handler.plain = True
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    logging.getLogger("tensorflow").setLevel(logging.INFO if show_tensorflow else logging.ERROR)
    if not show_tensorflow:
        FILTER.install()
