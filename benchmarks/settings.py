"""How big a benchmark run is: the models, epoch lengths and repeats of `full`, `quick` and `tiny`."""

from __future__ import annotations

import dataclasses
import math

STRATEGIES = ("default", "mirrored")
STEPS_PER_EXECUTION = (1, 10, 100)
CONTENDERS = ("minimal", "harness", "keras")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model of the throughput sweep and the size of one measurement on it.

    A measurement is one training call of `epochs` epochs; the first epoch is the warm-up
    (it absorbs the per-call set-up: iterator, writers, graph export) and the others are
    timed (with `epochs=1`, the tiny smoke setting, that one epoch is timed, set-up and all).
    An epoch lasts about `epoch_seconds` of the minimal loop (its speed is probed for each
    strategy and K), or `steps_per_epoch` steps when `epoch_seconds` is None; either way a
    multiple of K. The per-epoch costs (checkpoint, summaries, CSV) are amortised over it.
    """

    name: str
    input_shape: tuple[int, ...]
    global_batch_size: int
    epochs: int
    repeats: int
    epoch_seconds: float | None = None
    steps_per_epoch: int = 0
    num_classes: int = 10

    def epoch_steps(self, steps_per_execution: int, minimal_steps_per_sec: float | None = None) -> int:
        k = steps_per_execution
        if self.epoch_seconds is not None and minimal_steps_per_sec:
            steps = self.epoch_seconds * minimal_steps_per_sec
        else:
            steps = self.steps_per_epoch or k
        return max(k, math.ceil(steps / k) * k)


@dataclasses.dataclass(frozen=True)
class Settings:
    name: str
    models: tuple[ModelSpec, ...]
    default_models: tuple[str, ...]
    probe_seconds: float  # how long the minimal loop runs to size the epochs
    checkpoint_kernel: int  # the checkpoint-stall model has one kernel x kernel float32 Dense kernel
    checkpoint_repeats: int
    dispatch_calls: int
    dispatch_repeats: int
    strategies: tuple[str, ...] = STRATEGIES
    steps_per_execution: tuple[int, ...] = STEPS_PER_EXECUTION

    def model(self, name: str) -> ModelSpec:
        return next(m for m in self.models if m.name == name)

    def chosen_models(self) -> tuple[ModelSpec, ...]:
        return tuple(m for m in self.models if m.name in self.default_models)


FULL = Settings(
    name="full",
    models=(ModelSpec("mlp", (8, 8, 1), 64, epochs=2, repeats=7, epoch_seconds=2.0),
            ModelSpec("resnet", (16, 16, 3), 32, epochs=2, repeats=3, epoch_seconds=2.0)),
    default_models=("mlp", "resnet"), probe_seconds=0.5,
    checkpoint_kernel=5000, checkpoint_repeats=5, dispatch_calls=20000, dispatch_repeats=5)

# The ResNet takes about a minute just to trace for every contender, strategy and K: quick
# runs the MLP unless asked (--models mlp resnet). Its 0.3 s epochs weigh the per-epoch costs
# (checkpoint, summaries) about 7 times more than the full run's 2 s epochs.
QUICK = Settings(
    name="quick",
    models=(ModelSpec("mlp", (8, 8, 1), 64, epochs=2, repeats=3, epoch_seconds=0.3),
            ModelSpec("resnet", (8, 8, 3), 16, epochs=2, repeats=1, epoch_seconds=0.3)),
    default_models=("mlp",), probe_seconds=0.1,
    checkpoint_kernel=5000, checkpoint_repeats=1, dispatch_calls=5000, dispatch_repeats=3)

TINY = Settings(
    name="tiny",
    models=(ModelSpec("mlp", (8, 8, 1), 8, epochs=1, repeats=1, steps_per_epoch=10),
            ModelSpec("resnet", (8, 8, 3), 2, epochs=1, repeats=1, steps_per_epoch=2)),
    default_models=("mlp",), probe_seconds=0.0,
    checkpoint_kernel=500, checkpoint_repeats=1, dispatch_calls=200, dispatch_repeats=1)

SETTINGS = {s.name: s for s in (FULL, QUICK, TINY)}
