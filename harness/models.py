"""The small models `--model` picks, and the optimizers `--optimizer` picks.

Each model returns float32 logits (its last layer computes in float32, so mixed precision
never feeds float16 logits to the loss). Batch normalisation is synchronised across replicas
(`synchronized=True`): every replica normalises with the global batch's statistics, so N
replicas compute what one device does, and the moving statistics never drift apart.

Keras is imported inside the builders so that reading the registries (flag parsing) does not
start TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from harness.errors import UsageError

if TYPE_CHECKING:
    import keras


def mlp(input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """Two hidden layers: the quick model for the digits data set and for benchmarks."""
    import keras

    return keras.Sequential([
        keras.Input(input_shape),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(num_classes, dtype="float32"),
    ], name="mlp")


def cnn(input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """Two convolutions and a dense head, for small images."""
    import keras

    return keras.Sequential([
        keras.Input(input_shape),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(num_classes, dtype="float32"),
    ], name="cnn")


def _batch_norm():
    import keras

    return keras.layers.BatchNormalization(synchronized=True)


def _residual_block(x, filters: int, stride: int):
    import keras

    shortcut = x
    y = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
    y = keras.layers.ReLU()(_batch_norm()(y))
    y = _batch_norm()(keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(y))
    if stride != 1 or shortcut.shape[-1] != filters:
        shortcut = _batch_norm()(keras.layers.Conv2D(filters, 1, strides=stride, use_bias=False)(shortcut))
    return keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))


def resnet(input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """A ResNet-style network (three stages of two residual blocks), for benchmarks."""
    import keras

    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.ReLU()(_batch_norm()(x))
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(2):
            x = _residual_block(x, filters, stride=2 if stage and not block else 1)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, dtype="float32")(x)
    return keras.Model(inputs, outputs, name="resnet")


MODELS: dict[str, Callable[[tuple[int, ...], int], keras.Model]] = {"mlp": mlp, "cnn": cnn, "resnet": resnet}
IMAGE_MODELS = ("cnn", "resnet")

# Optimizer name -> (Keras class name, extra constructor arguments).
OPTIMIZERS: dict[str, tuple[str, dict]] = {
    "sgd": ("SGD", {}),
    "momentum": ("SGD", {"momentum": 0.9}),
    "adam": ("Adam", {}),
    "adamw": ("AdamW", {}),
    "rmsprop": ("RMSprop", {}),
}


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """Builds `--model`; call inside `strategy.scope()`."""
    if name not in MODELS:
        raise UsageError(f"is unknown: {name!r}; choose one of {', '.join(MODELS)}", argument="model")
    if name in IMAGE_MODELS and len(input_shape) != 3:
        raise UsageError(f"{name!r} needs image inputs (height, width, channels), got shape {input_shape}; "
                         "use 'mlp'", argument="model")
    return MODELS[name](input_shape, num_classes)


def build_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    """Builds `--optimizer`; call inside `strategy.scope()`."""
    import keras

    if name not in OPTIMIZERS:
        raise UsageError(f"is unknown: {name!r}; choose one of {', '.join(OPTIMIZERS)}", argument="optimizer")
    if not 0 < learning_rate < float("inf"):
        raise UsageError(f"must be a finite number > 0, got {learning_rate}", argument="learning_rate")
    class_name, kwargs = OPTIMIZERS[name]
    return getattr(keras.optimizers, class_name)(learning_rate, **kwargs)
