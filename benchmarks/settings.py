"""How big a benchmark run is: the models, epoch lengths and repeats of `full`, `quick` and `tiny`."""

from __future__ import annotations

import dataclasses

STRATEGIES = ("default", "mirrored")
STEPS_PER_EXECUTION = (1, 10, 100)
CONTENDERS = ("minimal", "harness", "keras")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model of the throughput sweep and the size of one measurement on it.

    A measurement is one training call of `epochs` epochs; the first epoch is the warm-up
    (it absorbs the per-call set-up: iterator, writers, graph export) and the others are
    timed (with `epochs=1`, the tiny smoke setting, that one epoch is timed, set-up and all).
    An epoch has `steps_per_epoch` steps, rounded up to a multiple of K (at least K).
    """

    name: str
    input_shape: tuple[int, ...]
    global_batch_size: int
    steps_per_epoch: int
    epochs: int
    repeats: int
    num_classes: int = 10

    def epoch_steps(self, steps_per_execution: int) -> int:
        k = steps_per_execution
        return max(k, -(-self.steps_per_epoch // k) * k)


@dataclasses.dataclass(frozen=True)
class Settings:
    name: str
    models: tuple[ModelSpec, ...]
    checkpoint_kernel: int  # the checkpoint-stall model has one kernel x kernel float32 Dense kernel
    checkpoint_repeats: int
    dispatch_calls: int
    dispatch_repeats: int
    strategies: tuple[str, ...] = STRATEGIES
    steps_per_execution: tuple[int, ...] = STEPS_PER_EXECUTION

    def model(self, name: str) -> ModelSpec:
        return next(m for m in self.models if m.name == name)


FULL = Settings(
    name="full",
    models=(ModelSpec("mlp", (8, 8, 1), 64, steps_per_epoch=1000, epochs=3, repeats=5),
            ModelSpec("resnet", (16, 16, 3), 32, steps_per_epoch=100, epochs=2, repeats=3)),
    checkpoint_kernel=5000, checkpoint_repeats=5, dispatch_calls=20000, dispatch_repeats=5)

QUICK = Settings(
    name="quick",
    models=(ModelSpec("mlp", (8, 8, 1), 64, steps_per_epoch=200, epochs=2, repeats=3),
            ModelSpec("resnet", (8, 8, 3), 16, steps_per_epoch=20, epochs=2, repeats=1)),
    checkpoint_kernel=5000, checkpoint_repeats=2, dispatch_calls=5000, dispatch_repeats=3)

TINY = Settings(
    name="tiny",
    models=(ModelSpec("mlp", (8, 8, 1), 8, steps_per_epoch=10, epochs=1, repeats=1),
            ModelSpec("resnet", (8, 8, 3), 2, steps_per_epoch=2, epochs=1, repeats=1)),
    checkpoint_kernel=500, checkpoint_repeats=1, dispatch_calls=200, dispatch_repeats=1)

SETTINGS = {s.name: s for s in (FULL, QUICK, TINY)}
