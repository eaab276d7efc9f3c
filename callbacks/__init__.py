"""Strategy-aware callbacks: they write only on the chief, decide from logs aggregated over all
replicas and workers, and take every decision at the same step on every worker.

The public names are loaded on first use (PEP 562), so that reading a registry such as
`callbacks.schedules.SCHEDULES` while parsing flags never pays TensorFlow's start-up.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Callback": "callbacks.base", "CallbackContext": "callbacks.base",
    "CallbackList": "callbacks.callback_list",
    "CSVLogger": "callbacks.csv_logger",
    "EarlyStopping": "callbacks.early_stopping",
    "History": "callbacks.history",
    "KerasCallback": "callbacks.keras_callbacks",
    "LambdaCallback": "callbacks.lambda_callback",
    "LearningRateScheduler": "callbacks.learning_rate_scheduler",
    "ModelCheckpoint": "callbacks.model_checkpoint",
    "ProgressBar": "callbacks.progress_bar",
    "ReduceLROnPlateau": "callbacks.reduce_lr_on_plateau",
    "RollbackOnNaN": "callbacks.rollback_on_nan",
    "RunSummary": "callbacks.run_summary",
    "TensorBoard": "callbacks.tensorboard",
    "TerminateOnNaN": "callbacks.terminate_on_nan",
    "schedules": "callbacks.schedules",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'callbacks' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    value = module if name == "schedules" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
