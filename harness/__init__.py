"""A strategy-aware distributed training harness for TensorFlow."""

from harness.cluster import ClusterInfo, load_tf_config, parse_tf_config
from harness.data import DataSource, EvalInput, TrainInput, load_source, per_replica_batch_size, synthetic_source
from harness.errors import SetupError, UsageError
from harness.metrics import MeanMetrics, sparse_categorical_accuracy
from harness.models import build_model, build_optimizer
from harness.strategy import STRATEGIES, build_strategy, configure_cpu_devices
from harness.trainer import Trainer

__all__ = [
    "ClusterInfo", "DataSource", "EvalInput", "MeanMetrics", "STRATEGIES", "SetupError", "TrainInput", "Trainer",
    "UsageError", "build_model", "build_optimizer", "build_strategy", "configure_cpu_devices", "load_source",
    "load_tf_config", "parse_tf_config", "per_replica_batch_size", "sparse_categorical_accuracy", "synthetic_source",
]
