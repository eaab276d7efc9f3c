"""Strategy-aware callbacks: they write only on the chief, decide from logs aggregated over all
replicas and workers, and take every decision at the same step on every worker."""

from callbacks.base import Callback, CallbackContext
from callbacks.callback_list import CallbackList
from callbacks.history import History

__all__ = ["Callback", "CallbackContext", "CallbackList", "History"]
