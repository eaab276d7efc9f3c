"""Strategy-aware callbacks: they write only on the chief, decide from logs aggregated over all
replicas and workers, and take every decision at the same step on every worker."""

from callbacks import schedules
from callbacks.base import Callback, CallbackContext
from callbacks.callback_list import CallbackList
from callbacks.csv_logger import CSVLogger
from callbacks.early_stopping import EarlyStopping
from callbacks.history import History
from callbacks.lambda_callback import LambdaCallback
from callbacks.learning_rate_scheduler import LearningRateScheduler
from callbacks.model_checkpoint import ModelCheckpoint
from callbacks.progress_bar import ProgressBar
from callbacks.reduce_lr_on_plateau import ReduceLROnPlateau
from callbacks.run_summary import RunSummary
from callbacks.tensorboard import TensorBoard
from callbacks.terminate_on_nan import TerminateOnNaN

__all__ = [
    "CSVLogger", "Callback", "CallbackContext", "CallbackList", "EarlyStopping", "History", "LambdaCallback",
    "LearningRateScheduler", "ModelCheckpoint", "ProgressBar", "ReduceLROnPlateau", "RunSummary", "TensorBoard",
    "TerminateOnNaN", "schedules",
]
