"""A failed file operation in one line: the path, the cause, and what to do about it.

TensorFlow's and the operating system's messages run long (a TensorFlow error names the op and
the device first) and never say what to do. Reduced here, so that a full disk reads

    cannot write metrics.csv: No space left on device; free some space

The callbacks raise `FileFailure` (an `OSError`); `harness.storage` words its `StorageError`
the same way (callbacks never import the harness, so the wording lives here).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import tensorflow as tf

_NO_SPACE = "free some space"
_NOT_WRITABLE = "make it writable or choose another path"
IN_THE_WAY = "move it away or choose another path"
_NETWORK = "check the network connection and the storage's address"
# Known causes (matched case-insensitively in a message) and their fixes, most specific first.
_FIXES = {
    "No space left on device": _NO_SPACE,
    "Disk quota exceeded": _NO_SPACE,
    "Read-only file system": _NOT_WRITABLE,
    "Permission denied": _NOT_WRITABLE,
    "Operation not permitted": _NOT_WRITABLE,
    "Not a directory": "a file stands where a directory belongs; " + IN_THE_WAY,
    "Is a directory": IN_THE_WAY,
    "File exists": IN_THE_WAY,
    "No such file or directory": "check the path",
    "Input/output error": "check the storage device",
    "Could not resolve host": _NETWORK,
    "Connection refused": _NETWORK,
    "Network is unreachable": _NETWORK,
}
_UNSUPPORTED = "not implemented"  # TensorFlow: "File system scheme 's3' not implemented (file: ...)"
_GENERIC_FIX = "check the path, its permissions and free space"


class FileFailure(OSError):
    """A file operation of a callback failed; the message is one line naming the path, the cause and the fix."""


def _first_line(text: str) -> str:
    first = (text.strip().splitlines() or [""])[0]
    return re.sub(r"\s+", " ", first)[:160]


def cause(error: BaseException) -> str:
    """A short cause for a failed file operation, e.g. 'No space left on device'."""
    text = str(error)
    for known in _FIXES:
        if known.lower() in text.lower():
            return known
    return _first_line(re.sub(r"\{\{[^}]*\}\}\s*", "", text)) or type(error).__name__


def fix_for(reason: str) -> str:
    if _UNSUPPORTED in reason:
        return "use a local path or a file system TensorFlow supports, such as gs://"
    return next((fix for known, fix in _FIXES.items() if known.lower() in reason.lower()), _GENERIC_FIX)


def message(action: str, path: str, error: BaseException | str, note: str = "", fix: str = "") -> str:
    """`cannot <action> <path>: <cause>; <fix>[ (<note>)]`; the fix follows from the cause unless given."""
    reason = error if isinstance(error, str) else cause(error)
    return f"cannot {action} {path}: {reason}; {fix or fix_for(reason)}" + (f" ({note})" if note else "")


@contextlib.contextmanager
def failing_as_file_failure(action: str, path: str, note: str = "") -> Iterator[None]:
    """Turns a file-system error inside the block into one `FileFailure` line."""
    try:
        yield
    except FileFailure:
        raise
    except (OSError, tf.errors.OpError) as e:
        raise FileFailure(message(action, path, e, note)) from None
