"""Shared fixtures. TensorFlow starts once per test session, its CPU split into 4 logical
devices so that 1, 2 and 4 replicas can be tested in one process."""

import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import pytest
import tensorflow as tf

import harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CPU_DEVICES = 4
harness.configure_cpu_devices(NUM_CPU_DEVICES)
tf.config.experimental.enable_op_determinism()

SPARSE_CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A TFDS data dir with the offline `digits` data set prepared (once per session)."""
    path = str(tmp_path_factory.mktemp("tfds"))
    harness.load_source("digits", path)
    return path


@pytest.fixture(scope="session")
def digits(data_dir):
    return harness.load_source("digits", data_dir)


def strategy(name: str, replicas: int | None = None) -> tf.distribute.Strategy:
    return harness.build_strategy(name, num_cpu_devices=replicas)


def make_trainer(strat, source, *, global_batch_size=32, seed=0, optimizer="sgd", learning_rate=0.1,
                 model="mlp", trainer_cls=harness.Trainer, **kwargs) -> harness.Trainer:
    """A small model and optimizer built in `strat`'s scope, with identical initial weights for a given seed."""
    keras.utils.set_random_seed(seed)
    with strat.scope():
        m = harness.build_model(model, source.input_shape, source.num_classes)
        opt = harness.build_optimizer(optimizer, learning_rate)
    return trainer_cls(strat, m, opt, SPARSE_CE, global_batch_size=global_batch_size, **kwargs)


def run_script(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Runs a script of this repository in a fresh Python process."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    full_env.pop("TF_CONFIG", None) if "TF_CONFIG" not in (env or {}) else None
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=timeout)

