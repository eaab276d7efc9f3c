"""A strategy-aware distributed training harness for TensorFlow.

The public names are loaded on first use (PEP 562), so that `import harness.run_config` or
`harness.launch` (flag parsing, the local launcher) never pays TensorFlow's start-up.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ClusterInfo": "harness.cluster",
    "parse_tf_config": "harness.cluster_env", "resolve_cluster": "harness.cluster_env",
    "RunConfig": "harness.run_config",
    "DataSource": "harness.data", "EvalInput": "harness.data", "TrainInput": "harness.data",
    "load_source": "harness.data", "per_replica_batch_size": "harness.data", "synthetic_source": "harness.data",
    "SetupError": "harness.errors", "UsageError": "harness.errors",
    "MeanMetrics": "harness.metrics", "sparse_categorical_accuracy": "harness.metrics",
    "build_model": "harness.models", "build_optimizer": "harness.models",
    "STRATEGIES": "harness.strategy", "build_strategy": "harness.strategy",
    "configure_cpu_devices": "harness.strategy",
    "Trainer": "harness.trainer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
