"""How big a benchmark run is: models, slices, epochs and repeats of `full`, `quick` and `tiny`."""

from __future__ import annotations

import dataclasses
import math

STRATEGIES = ("default", "mirrored")
STEPS_PER_EXECUTION = (1, 10, 100)
CONTENDERS = ("minimal", "minimal_checkpoint", "harness", "keras")
# The harness with a training feature on (issue 13), in the throughput sweep only: (Trainer keyword, value).
FEATURE_CONTENDERS = {"harness_accumulation": ("gradient_accumulation_steps", 2), "harness_ema": ("ema_decay", 0.999)}
CONTENDER_NAMES = {"minimal": "minimal loop", "minimal_checkpoint": "minimal + checkpoint", "harness": "harness",
                   "keras": "Keras fit", "harness_accumulation": "harness, gradient accumulation (A=2)",
                   "harness_ema": "harness, EMA of the weights"}
FIRST_STEP_CONTENDERS = ("minimal", "harness", "keras")
NOISE_CONTENDER = "minimal_again"  # a second, identical minimal loop: the noise floor
PRIMARY_CLOCK = "cpu"  # the ratios and verdicts use CPU time; wall time is reported beside it


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model of the throughput sweep and the size of its measurement.

    The contenders take turns in slices of about `slice_seconds` of the minimal loop (a whole
    number of K-step calls, at least one); an epoch is the whole number of slices closest to
    `epoch_seconds` (or `steps_per_epoch` steps, one call per slice, when `slice_seconds` is
    None: the tiny smoke size). Each contender trains one warm-up epoch and `epochs` timed ones.
    `width` builds a two-hidden-layer MLP of that width instead of `name` (the curves).
    """

    name: str
    input_shape: tuple[int, ...]
    global_batch_size: int
    epochs: int
    slice_seconds: float | None = None
    epoch_seconds: float = 0.0
    steps_per_epoch: int = 0
    num_classes: int = 10
    width: int | None = None

    def calls_per_slice(self, steps_per_execution: int, minimal_steps_per_sec: float | None = None) -> int:
        if self.slice_seconds is None or not minimal_steps_per_sec:
            return 1
        return max(1, round(self.slice_seconds * minimal_steps_per_sec / steps_per_execution))

    def epoch_steps(self, steps_per_execution: int, calls_per_slice: int,
                    minimal_steps_per_sec: float | None = None) -> int:
        """Steps per epoch: a whole number of slices (of `calls_per_slice` K-step calls)."""
        k = steps_per_execution
        if self.slice_seconds is None or not minimal_steps_per_sec:
            return max(k, math.ceil((self.steps_per_epoch or k) / k) * k)
        slice_seconds = calls_per_slice * k / minimal_steps_per_sec
        return calls_per_slice * k * max(1, round(self.epoch_seconds / slice_seconds))


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """The 2-worker cluster on 127.0.0.1: decision overhead at K=1, and its cost over one process per K."""

    steps_per_block: int  # one block: this many steps (K-step calls of the loop and the decision point)
    rounds: int  # blocks alternate (ABBA...) this many times per measurement
    steps_per_execution: tuple[int, ...]
    decision_rounds: int = 100  # the decision point: rounds of one-step calls with and without it, in pairs
    decision_pairs: int = 8  # ... each pair two blocks of READ_EVERY_STEPS (8) one-step calls


@dataclasses.dataclass(frozen=True)
class CurveSpec:
    """How cost grows: with model size (MLP widths, and the size of each measurement), and the 2-worker
    cluster's cost over one process with K (these K replace the run's cluster K)."""

    widths: tuple[int, ...]
    throughput: ModelSpec  # its width is replaced by each of `widths`
    checkpoint_repeats: int
    cluster_steps_per_execution: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Settings:
    name: str
    models: tuple[ModelSpec, ...]
    default_models: tuple[str, ...]
    probe_seconds: float  # how long the minimal loop runs to size the slices
    checkpoint_kernel: int  # the checkpoint-stall model has one kernel x kernel float32 Dense kernel
    checkpoint_repeats: int
    dispatch_calls: int
    dispatch_repeats: int
    cluster: ClusterSpec
    curves: CurveSpec
    noise_band: float  # the noise floor's 95% interval must lie within 1 +- this
    strategies: tuple[str, ...] = STRATEGIES
    steps_per_execution: tuple[int, ...] = STEPS_PER_EXECUTION
    feature_steps_per_execution: tuple[int, ...] = STEPS_PER_EXECUTION  # where FEATURE_CONTENDERS take part
    with_curves: bool = False  # measured by default (always with --curves)
    warm_up: bool = True  # pay TensorFlow's one-off costs on a throwaway model before the first steps are timed

    def model(self, name: str) -> ModelSpec:
        return next(m for m in self.models if m.name == name)

    def chosen_models(self) -> tuple[ModelSpec, ...]:
        return tuple(m for m in self.models if m.name in self.default_models)


# Widths of the curves' MLP (8x8 inputs, two hidden layers, 10 classes): 9.0k, 34k, 113k, 356k, 1.08M,
# 3.2M and 10.2M parameters.
CURVE_WIDTHS = (64, 150, 300, 560, 1000, 1750, 3150)

FULL = Settings(
    name="full",
    models=(ModelSpec("mlp", (8, 8, 1), 64, epochs=30, slice_seconds=0.015, epoch_seconds=0.5),
            ModelSpec("resnet", (16, 16, 3), 32, epochs=10, slice_seconds=0.015, epoch_seconds=1.0)),
    default_models=("mlp", "resnet"), probe_seconds=0.5,
    checkpoint_kernel=5000, checkpoint_repeats=5, dispatch_calls=20000, dispatch_repeats=5,
    cluster=ClusterSpec(steps_per_block=30, rounds=12, steps_per_execution=(1, 3, 10, 30, 100)),
    curves=CurveSpec(widths=CURVE_WIDTHS, checkpoint_repeats=3, cluster_steps_per_execution=(1, 3, 10, 30, 100),
                     throughput=ModelSpec("mlp", (8, 8, 1), 64, epochs=8, slice_seconds=0.015, epoch_seconds=0.3)),
    noise_band=0.02, with_curves=True)

# Quick: the MLP only (the ResNet takes about a minute just to trace for every contender,
# strategy and K; ask with --models mlp resnet). Its 0.2 s epochs weigh the per-epoch costs
# (checkpoint, summaries) 2.5 times as much as the full run's 0.5 s epochs, and it has fewer of them;
# the training features (gradient accumulation, EMA) take part at K=1 only.
QUICK = Settings(
    name="quick",
    models=(ModelSpec("mlp", (8, 8, 1), 64, epochs=15, slice_seconds=0.015, epoch_seconds=0.2),
            ModelSpec("resnet", (8, 8, 3), 16, epochs=5, slice_seconds=0.015, epoch_seconds=0.25)),
    default_models=("mlp",), probe_seconds=0.2,
    checkpoint_kernel=5000, checkpoint_repeats=1, dispatch_calls=5000, dispatch_repeats=3,
    cluster=ClusterSpec(steps_per_block=30, rounds=12, steps_per_execution=(1,), decision_rounds=50),
    curves=CurveSpec(widths=(64, 300, 1000, 3150), checkpoint_repeats=1, cluster_steps_per_execution=(1, 10, 100),
                     throughput=ModelSpec("mlp", (8, 8, 1), 64, epochs=4, slice_seconds=0.015, epoch_seconds=0.2)),
    noise_band=0.03, feature_steps_per_execution=(1,))

TINY = Settings(
    name="tiny",
    models=(ModelSpec("mlp", (8, 8, 1), 8, epochs=2, steps_per_epoch=10),
            ModelSpec("resnet", (8, 8, 3), 2, epochs=1, steps_per_epoch=2)),
    default_models=("mlp",), probe_seconds=0.0,
    checkpoint_kernel=500, checkpoint_repeats=1, dispatch_calls=200, dispatch_repeats=1,
    cluster=ClusterSpec(steps_per_block=2, rounds=2, steps_per_execution=(1,), decision_rounds=2, decision_pairs=2),
    curves=CurveSpec(widths=(16,), checkpoint_repeats=1, cluster_steps_per_execution=(1,),
                     throughput=ModelSpec("mlp", (8, 8, 1), 8, epochs=1, steps_per_epoch=4)),
    noise_band=0.03, with_curves=True, warm_up=False, steps_per_execution=(1, 10))

SETTINGS = {s.name: s for s in (FULL, QUICK, TINY)}
