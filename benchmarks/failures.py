"""How a failing contender is reported: the exception type and its one telling line."""

from __future__ import annotations

import re

_ROOT_ERROR = re.compile(r"^\(0\) [A-Z_]+:\s*(.+)$")  # "(0) INVALID_ARGUMENT:  You must feed..."
_INNER_ERROR = re.compile(r"^\w+(?:Error|Exception): (.+)$")  # "ValueError: tf.function only supports..."


def describe(error: BaseException) -> str:
    """`Type: message`, short enough for a table.

    TensorFlow's first root error ("(0) INVALID_ARGUMENT: ...") or the innermost "XError: ..."
    line of a traced error ("in user code: ..."), else the first line.
    """
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    root = next((m.group(1) for m in map(_ROOT_ERROR.match, lines) if m), None)
    inner = [m.group(1) for m in map(_INNER_ERROR.match, lines) if m]
    message = root or (inner[-1] if inner else None) or (lines[0] if lines else "")
    return f"{type(error).__name__}: {message[:200]}".rstrip(": ")
