"""Dispatches the hooks to a list of callbacks and gathers their checkpointable state."""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from callbacks.base import Callback, CallbackContext

log = logging.getLogger(__name__)


def _keras_callback_type():
    """`keras.callbacks.Callback`, if Keras is loaded (an object cannot be a Keras callback otherwise)."""
    keras = sys.modules.get("keras")
    return keras.callbacks.Callback if keras is not None else None


def _expand(callbacks) -> list:
    """A bare callback (ours or Keras's), a `keras.callbacks.CallbackList`, or an iterable of them, as one list."""
    keras_type = _keras_callback_type()
    if isinstance(callbacks, Callback) or (keras_type is not None and isinstance(callbacks, keras_type)):
        callbacks = [callbacks]
    out = []
    for cb in callbacks:
        if keras_type is not None and isinstance(cb, sys.modules["keras"].callbacks.CallbackList):
            out.extend(cb.callbacks)
        else:
            out.append(cb)
    return out


def _as_callback(cb) -> Callback:
    if isinstance(cb, Callback):
        return cb
    keras_type = _keras_callback_type()
    if keras_type is not None and isinstance(cb, keras_type):
        from callbacks.keras_callbacks import KerasCallback

        return KerasCallback(cb)
    raise TypeError(f"{cb!r} is not a callbacks.Callback; subclass callbacks.Callback (or keras.callbacks.Callback), "
                    "or wrap functions in callbacks.LambdaCallback")


class CallbackList:
    """Calls each hook on every callback, in order; itself not a `Callback` so it cannot be nested by mistake.

    Accepts a bare callback too, and runs `keras.callbacks.Callback`s through `callbacks.KerasCallback`.
    """

    def __init__(self, callbacks: Iterable[Callback] | Callback = ()):
        self.callbacks = [_as_callback(cb) for cb in _expand(callbacks)]
        self._listeners: dict[str, list] = {}

    def _listening(self, hook: str) -> list:
        """The bound `hook` of each callback that has one of its own (the base class's do nothing): a hook
        runs around every K-step call, and a call of Python code cut short there is a few percent of a small step."""
        if hook not in self._listeners:
            base = getattr(Callback, hook)
            methods = (getattr(cb, hook) for cb in self.callbacks)
            self._listeners[hook] = [m for m in methods if getattr(m, "__func__", None) is not base]
        return self._listeners[hook]

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
        return any(wants(step) for wants in self._listening("wants_batch_logs"))

    def _call(self, hook: str, *args) -> None:
        for method in self._listening(hook):
            method(*args)

    def on_train_begin(self, logs=None): self._call("on_train_begin", logs)
    def on_train_end(self, logs=None): self._call("on_train_end", logs)
    def on_epoch_begin(self, epoch, logs=None): self._call("on_epoch_begin", epoch, logs)
    def on_epoch_end(self, epoch, logs=None): self._call("on_epoch_end", epoch, logs)
    def on_train_batch_begin(self, step, logs=None): self._call("on_train_batch_begin", step, logs)
    def on_train_batch_end(self, step, logs=None): self._call("on_train_batch_end", step, logs)
    def on_test_begin(self, logs=None): self._call("on_test_begin", logs)
    def on_test_end(self, logs=None): self._call("on_test_end", logs)
    def on_validation_end(self, step, logs=None): self._call("on_validation_end", step, logs)
    def on_rollback(self, step): self._call("on_rollback", step)

    def _keys(self) -> list[str]:
        """`ClassName` (`ClassName#2` for a second one): stable when other callbacks are added or removed."""
        seen: Counter[str] = Counter()
        keys = []
        for cb in self.callbacks:
            name = getattr(cb, "state_key", None) or type(cb).__name__  # a Keras callback: keras.<its class>
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
