"""Dispatches the hooks to a list of callbacks and gathers their checkpointable state."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from callbacks.base import Callback, CallbackContext

log = logging.getLogger(__name__)


class CallbackList:
    """Calls each hook on every callback, in order; itself not a `Callback` so it cannot be nested by mistake."""

    def __init__(self, callbacks: Iterable[Callback] = ()):
        if isinstance(callbacks, Callback):
            callbacks = [callbacks]
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"{cb!r} is not a callbacks.Callback; subclass callbacks.Callback "
                                "(or wrap functions in callbacks.LambdaCallback)")

    def __iter__(self) -> Iterator[Callback]:
        return iter(self.callbacks)

    def set_context(self, context: CallbackContext) -> None:
        for cb in self.callbacks:
            cb.set_context(context)

    def saver_index(self, callback: Callback) -> int:
        """The callback's slot in the decision vector: 0 is the trainer's checkpoint, then the callbacks."""
        for i, cb in enumerate(self.callbacks):
            if cb is callback:
                return i + 1
        raise ValueError(f"{callback!r} is not one of this run's callbacks")

    def wants_batch_logs(self, step: int) -> bool:
        return any(cb.wants_batch_logs(step) for cb in self.callbacks)

    def _call(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(*args)

    def on_train_begin(self, logs=None): self._call("on_train_begin", logs)
    def on_train_end(self, logs=None): self._call("on_train_end", logs)
    def on_epoch_begin(self, epoch, logs=None): self._call("on_epoch_begin", epoch, logs)
    def on_epoch_end(self, epoch, logs=None): self._call("on_epoch_end", epoch, logs)
    def on_train_batch_begin(self, step, logs=None): self._call("on_train_batch_begin", step, logs)
    def on_train_batch_end(self, step, logs=None): self._call("on_train_batch_end", step, logs)
    def on_test_begin(self, logs=None): self._call("on_test_begin", logs)
    def on_test_end(self, logs=None): self._call("on_test_end", logs)

    def _keys(self) -> list[str]:
        """`ClassName` (`ClassName#2` for a second one): stable when other callbacks are added or removed."""
        seen: Counter[str] = Counter()
        keys = []
        for cb in self.callbacks:
            name = type(cb).__name__
            seen[name] += 1
            keys.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
        return keys

    def get_state(self) -> dict[str, Any]:
        return {key: cb.get_state() for key, cb in zip(self._keys(), self.callbacks)}

    def set_state(self, state: dict[str, Any]) -> None:
        for key, cb in zip(self._keys(), self.callbacks):
            if key in state:
                cb.set_state(state[key])
            elif cb.get_state():
                log.warning("No saved state for callback %s: it starts fresh on resume.", key)

    def get_config(self) -> dict[str, Any]:
        """The settings of the callbacks that shape the run (their `get_config()`), by key."""
        return {key: config for key, cb in zip(self._keys(), self.callbacks) if (config := cb.get_config())}
