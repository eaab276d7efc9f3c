"""Checks on what a `Trainer` is given (its model, strategy and options): one clear line before any step."""

from __future__ import annotations

import logging

import keras
import tensorflow as tf

from harness.errors import UsageError

log = logging.getLogger(__name__)


def check_created_in_scope(strategy: tf.distribute.Strategy, model: keras.Model) -> None:
    for variable in model.variables:
        if not strategy.extended.variable_created_in_scope(getattr(variable, "value", variable)):
            raise UsageError(f"variable {variable.path} was not created under strategy.scope(); "
                             "build the model inside `with strategy.scope():`")


def _layers(layer: keras.layers.Layer):
    yield layer
    for child in getattr(layer, "layers", ()):
        yield from _layers(child)


def warn_unsynchronised_batch_norm(model: keras.Model, num_replicas: int) -> None:
    """Per-replica batch statistics make N replicas compute something else than one device, and their
    moving statistics drift apart (evaluation then depends on the replica read, and a resume changes it)."""
    unsynced = [layer.name for layer in _layers(model) if isinstance(layer, keras.layers.BatchNormalization)
                and not layer.synchronized]
    if num_replicas > 1 and unsynced:
        log.warning("%d BatchNormalization layer(s) of %s (%s...) are not synchronised: on %d replicas each "
                    "normalises with its own batch and keeps its own moving statistics; build them with "
                    "keras.layers.BatchNormalization(synchronized=True).", len(unsynced), model.name,
                    unsynced[0], num_replicas)


def check_xla_devices(strategy: tf.distribute.Strategy) -> None:
    if strategy.num_replicas_in_sync == 1:
        return
    devices = strategy.extended.worker_devices
    if len(devices) > 1 and all("CPU" in d.upper() for d in devices):
        raise UsageError("cannot run several replicas on logical CPU devices (XLA compiles them all for CPU:0); "
                         "use it with one CPU replica, or on GPUs or TPUs", argument="jit_compile")


def positive_or_none(**values: float | None) -> None:
    for name, value in values.items():
        if value is not None and not 0 < value < float("inf"):
            raise UsageError(f"must be > 0, got {value}", argument=name)
