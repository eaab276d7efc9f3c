"""The same model, data and strategy for every contender: synthetic, in-memory batches.

Every contender reads the same `distribute_datasets_from_function` dataset: one fixed
per-replica batch repeated forever, so a measurement times the training loop, not an
input pipeline. Every contender builds its model from the same seed (same initial weights).
A spec with a `width` gets an MLP of two hidden layers of that width (the size curves).
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

import harness
from benchmarks.settings import ModelSpec
from harness.strategy import input_options

LEARNING_RATE = 0.01


def wide_mlp(input_shape: tuple[int, ...], num_classes: int, width: int) -> keras.Model:
    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),
                             keras.layers.Dense(width, activation="relu"), keras.layers.Dense(width, activation="relu"),
                             keras.layers.Dense(num_classes)], name=f"mlp{width}")


def parameters(input_shape: tuple[int, ...], num_classes: int, width: int) -> int:
    """The number of parameters of `wide_mlp` (without building it)."""
    inputs = 1
    for d in input_shape:
        inputs *= d
    return inputs * width + width + width * width + width + width * num_classes + num_classes


@dataclasses.dataclass
class Workload:
    strategy_name: str
    strategy: tf.distribute.Strategy
    spec: ModelSpec
    seed: int = 0

    def __post_init__(self):
        replicas = self.strategy.num_replicas_in_sync
        self.per_replica_batch_size = harness.per_replica_batch_size(self.spec.global_batch_size, replicas)
        rng = np.random.default_rng(self.seed)
        self._features = rng.standard_normal((self.per_replica_batch_size, *self.spec.input_shape)).astype("float32")
        self._labels = rng.integers(0, self.spec.num_classes, self.per_replica_batch_size).astype("int32")

    @property
    def model_name(self) -> str:
        return self.spec.name if self.spec.width is None else f"mlp{self.spec.width}"

    @property
    def global_batch_size(self) -> int:
        return self.spec.global_batch_size

    def build(self) -> tuple[keras.Model, keras.optimizers.Optimizer]:
        """A fresh model (same initial weights every time) and SGD optimizer, in the strategy's scope."""
        keras.utils.set_random_seed(self.seed)
        with self.strategy.scope():
            model = (harness.build_model(self.spec.name, self.spec.input_shape, self.spec.num_classes)
                     if self.spec.width is None else wide_mlp(self.spec.input_shape, self.spec.num_classes,
                                                              self.spec.width))
            optimizer = harness.build_optimizer("sgd", LEARNING_RATE)
        return model, optimizer

    def dataset_fn(self, input_context: tf.distribute.InputContext, start_step: int = 0) -> tf.data.Dataset:
        """Per-replica batches, endless (`start_step` is accepted so the harness never skips through it).

        Sized by the context, so that with gradient accumulation (a context with A times the replicas)
        each micro-batch is 1/A of the batch, as the harness asks of a dataset function."""
        del start_step  # every batch is the same
        size = input_context.get_per_replica_batch_size(self.spec.global_batch_size)
        return tf.data.Dataset.from_tensors((self._features[:size], self._labels[:size])).repeat()

    def distributed_dataset(self):
        """Distributed as the harness distributes its input (`harness.strategy.input_options`: on CPUs, not
        fetched "to the device", whose per-device iterators took tens of seconds to delete after a run)."""
        return self.strategy.distribute_datasets_from_function(self.dataset_fn, options=input_options(self.strategy))
