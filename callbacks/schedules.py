"""Per-step learning-rate schedules, evaluated in graph from the global step.

Each is a callable `schedule(step) -> rate` on tensors; values match the corresponding
`keras.optimizers.schedules` (CosineDecay with warm-up, ExponentialDecay with staircase,
PolynomialDecay with power 1). Any Keras `LearningRateSchedule` works in their place.
`get_config()` describes a schedule completely: a run records it, and a resume with another
schedule is refused. TensorFlow is imported on first use, so `SCHEDULES` is cheap to read.
"""

from __future__ import annotations

import math
from typing import Any


def _tf():
    import tensorflow as tf

    return tf


class Schedule:
    """Base class: `__call__(step)` returns the float32 rate for the update at `step`."""

    def __call__(self, step):
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        """The schedule's class and arguments (JSON-serialisable)."""
        return {"class": type(self).__name__, **{k: (v.get_config() if isinstance(v, Schedule) else v)
                                                 for k, v in vars(self).items()}}


def _check(**values: float) -> None:
    for name, value in values.items():
        if not 0 <= value < math.inf:
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")


def _check_steps(decay_steps: int) -> None:
    if decay_steps < 1:
        raise ValueError(f"decay_steps must be >= 1, got {decay_steps}")


class Warmup(Schedule):
    """Linear warm-up from `initial_learning_rate` to `after(warmup_steps)`, then `after(step)`.

    Like the warm-up of `keras.optimizers.schedules.CosineDecay`, it counts the decay of
    `after` from the end of the warm-up.
    """

    def __init__(self, after: Schedule, warmup_steps: int, initial_learning_rate: float = 0.0):
        _check(warmup_steps=warmup_steps, initial_learning_rate=initial_learning_rate)
        self.after, self.warmup_steps, self.initial_learning_rate = after, warmup_steps, initial_learning_rate

    def __call__(self, step):
        tf = _tf()
        step = tf.cast(step, tf.float32)
        if not self.warmup_steps:
            return self.after(step)
        target = self.after(tf.constant(0.0))
        fraction = step / float(self.warmup_steps)
        warm = self.initial_learning_rate + fraction * (target - self.initial_learning_rate)
        return tf.where(step < self.warmup_steps, warm, self.after(step - self.warmup_steps))


class Cosine(Schedule):
    """Cosine decay from `initial_learning_rate` to `alpha * initial_learning_rate` over `decay_steps`."""

    def __init__(self, initial_learning_rate: float, decay_steps: int, alpha: float = 0.0):
        _check(initial_learning_rate=initial_learning_rate, alpha=alpha)
        _check_steps(decay_steps)
        self.initial_learning_rate, self.decay_steps, self.alpha = initial_learning_rate, decay_steps, alpha

    def __call__(self, step):
        tf = _tf()
        fraction = tf.minimum(tf.cast(step, tf.float32), float(self.decay_steps)) / float(self.decay_steps)
        cosine = 0.5 * (1.0 + tf.cos(math.pi * fraction))
        return self.initial_learning_rate * ((1.0 - self.alpha) * cosine + self.alpha)


class StepDecay(Schedule):
    """Multiplies the rate by `decay_rate` every `decay_steps` steps (Keras's staircase ExponentialDecay)."""

    def __init__(self, initial_learning_rate: float, decay_steps: int, decay_rate: float):
        _check(initial_learning_rate=initial_learning_rate, decay_rate=decay_rate)
        _check_steps(decay_steps)
        self.initial_learning_rate, self.decay_steps, self.decay_rate = initial_learning_rate, decay_steps, decay_rate

    def __call__(self, step):
        tf = _tf()
        exponent = tf.floor(tf.cast(step, tf.float32) / float(self.decay_steps))
        return self.initial_learning_rate * tf.pow(tf.constant(self.decay_rate, tf.float32), exponent)


class Linear(Schedule):
    """Linear decay from `initial_learning_rate` to `end_learning_rate` over `decay_steps`, then constant."""

    def __init__(self, initial_learning_rate: float, decay_steps: int, end_learning_rate: float = 0.0):
        _check(initial_learning_rate=initial_learning_rate, end_learning_rate=end_learning_rate)
        _check_steps(decay_steps)
        self.initial_learning_rate, self.decay_steps = initial_learning_rate, decay_steps
        self.end_learning_rate = end_learning_rate

    def __call__(self, step):
        tf = _tf()
        fraction = tf.minimum(tf.cast(step, tf.float32), float(self.decay_steps)) / float(self.decay_steps)
        return (self.initial_learning_rate - self.end_learning_rate) * (1.0 - fraction) + self.end_learning_rate


class Constant(Schedule):
    def __init__(self, learning_rate: float):
        _check(learning_rate=learning_rate)
        self.learning_rate = learning_rate

    def __call__(self, step):
        tf = _tf()
        return tf.constant(self.learning_rate, tf.float32)


SCHEDULES = ("constant", "cosine", "linear", "step")


def build_schedule(name: str, learning_rate: float, *, total_steps: int, warmup_steps: int = 0,
                   decay_steps: int | None = None, decay_rate: float = 0.1) -> Schedule:
    """The schedule `--lr_schedule` names; decay runs over what is left after the warm-up."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    decay = decay_steps or max(1, total_steps - warmup_steps)
    base = {"constant": lambda: Constant(learning_rate),
            "cosine": lambda: Cosine(learning_rate, decay),
            "linear": lambda: Linear(learning_rate, decay),
            "step": lambda: StepDecay(learning_rate, decay_steps or max(1, total_steps // 3), decay_rate)}[name]()
    return Warmup(base, warmup_steps) if warmup_steps else base
