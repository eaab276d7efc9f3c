"""LambdaCallback: any hook as a plain function."""

from __future__ import annotations

from collections.abc import Callable

from callbacks.base import Callback

_HOOKS = ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end", "on_train_batch_begin",
          "on_train_batch_end", "on_test_begin", "on_test_end")


class LambdaCallback(Callback):
    """Calls the given functions from the hooks of the same names (Keras's argument names).

    `on_train_batch_end` receives aggregated logs after every K-step loop, so giving it
    costs a metric read per loop; the other hooks are free.
    """

    def __init__(self, **hooks: Callable):
        unknown = sorted(set(hooks) - set(_HOOKS))
        if unknown:
            raise TypeError(f"LambdaCallback: unknown hook(s) {', '.join(unknown)}; use {', '.join(_HOOKS)}")
        self._hooks = hooks
        for name, fn in hooks.items():
            setattr(self, name, fn)

    def wants_batch_logs(self, step):
        return "on_train_batch_end" in self._hooks or "on_train_batch_begin" in self._hooks
