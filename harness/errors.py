"""Errors that end a run with one clear line instead of a traceback.

`UsageError` means the user asked for something invalid (a bad argument, flag or TF_CONFIG):
the command-line exit code is 2. `SetupError` means the request was valid but this machine
or cluster cannot carry it out (no TPU, data set not prepared, a peer worker lost, storage
that cannot be written): exit code 1. Both messages say what to do about it.

A library error names the library argument (`steps_per_execution must be >= 1`); the command
line, whose flags have the same names, shows it as a flag (`--steps_per_execution must be >= 1`).
"""

from __future__ import annotations


class UsageError(ValueError):
    """An invalid argument, flag or environment setting; the message names the fix.

    `UsageError("must be >= 1, got 0", argument="epochs")` reads "epochs must be >= 1, got 0";
    `as_flag()` reads "--epochs must be >= 1, got 0".
    """

    def __init__(self, message: str, *, argument: str | None = None):
        self.message, self.argument = message, argument
        super().__init__(f"{argument} {message}" if argument else message)

    def as_flag(self) -> str:
        return f"--{self.argument} {self.message}" if self.argument else self.message


class SetupError(RuntimeError):
    """A valid request that this machine or cluster cannot carry out; the message says why."""


class StorageError(SetupError):
    """A file or directory that cannot be read or written; the message names the path and the cause."""
