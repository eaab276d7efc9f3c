"""The small models `--model` picks, and the optimizers `--optimizer` picks.

Each model returns float32 logits (its last layer computes in float32, so mixed precision
never feeds float16 logits to the loss).
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from harness.errors import UsageError


def mlp(input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """Two hidden layers: the quick model for the digits data set and for benchmarks."""
    return keras.Sequential([
        keras.Input(input_shape),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(num_classes, dtype="float32"),
    ], name="mlp")


def cnn(input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """Two convolutions and a dense head, for small images."""
    return keras.Sequential([
        keras.Input(input_shape),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(num_classes, dtype="float32"),
    ], name="cnn")


def _residual_block(x, filters: int, stride: int):
    shortcut = x
    y = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
    y = keras.layers.BatchNormalization()(y)
    y = keras.layers.ReLU()(y)
    y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
    y = keras.layers.BatchNormalization()(y)
    if stride != 1 or shortcut.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(filters, 1, strides=stride, use_bias=False)(shortcut)
        shortcut = keras.layers.BatchNormalization()(shortcut)
    return keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))


def resnet(input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """A ResNet-style network (three stages of two residual blocks), for benchmarks."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(2):
            x = _residual_block(x, filters, stride=2 if stage and not block else 1)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, dtype="float32")(x)
    return keras.Model(inputs, outputs, name="resnet")


MODELS: dict[str, Callable[[tuple[int, ...], int], keras.Model]] = {"mlp": mlp, "cnn": cnn, "resnet": resnet}

OPTIMIZERS: dict[str, Callable[[float], keras.optimizers.Optimizer]] = {
    "sgd": lambda lr: keras.optimizers.SGD(lr),
    "momentum": lambda lr: keras.optimizers.SGD(lr, momentum=0.9),
    "adam": lambda lr: keras.optimizers.Adam(lr),
    "adamw": lambda lr: keras.optimizers.AdamW(lr),
    "rmsprop": lambda lr: keras.optimizers.RMSprop(lr),
}


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """Builds `--model`; call inside `strategy.scope()`."""
    if name not in MODELS:
        raise UsageError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if name in ("cnn", "resnet") and len(input_shape) != 3:
        raise UsageError(f"--model={name} needs image inputs (height, width, channels), "
                         f"got shape {input_shape}; use --model=mlp")
    return MODELS[name](input_shape, num_classes)


def build_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    """Builds `--optimizer`; call inside `strategy.scope()`."""
    if name not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    if not learning_rate > 0:
        raise UsageError(f"--learning_rate must be > 0, got {learning_rate}")
    return OPTIMIZERS[name](learning_rate)
