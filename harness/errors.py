"""Errors that end a run with one clear line instead of a traceback.

`UsageError` means the user asked for something invalid (a bad flag value, a bad TF_CONFIG):
the command-line exit code is 2. `SetupError` means the request was valid but this machine
cannot carry it out (no TPU, data set not prepared, a peer worker lost): exit code 1.
Both messages say what to do about it.
"""


class UsageError(ValueError):
    """An invalid argument, flag or environment setting; the message names the fix."""

    ag_pass_through = True  # raised while tracing: AutoGraph re-raises it unchanged


class SetupError(RuntimeError):
    """A valid request that this machine or cluster cannot carry out; the message says why."""

    ag_pass_through = True
