"""The throughput sweep: steps/s of each contender per strategy, model and steps_per_execution.

For each strategy and model the three contenders are built (in an order that rotates from
one configuration to the next) and each times its first step (trace + compile). Then, for
each K, each contender runs `repeats` measurements, the contenders alternating in an order
rotated every repeat; a row holds the median, and the harness's row the medians over
repeats of its speed relative to each other contender in the same repeat. A contender that raises is recorded as
"fails" with the exception, and is not measured again at that K.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import harness
from benchmarks.failures import describe
from benchmarks.harness_fit import HarnessFit
from benchmarks.keras_fit import KerasFit
from benchmarks.minimal_loop import MinimalLoop
from benchmarks.settings import CONTENDERS, ModelSpec, Settings
from benchmarks.timing import median, rotated
from benchmarks.workload import Workload

Row = dict[str, Any]


def paired_ratio(by_repeat: list[dict[str, float]], a: str, b: str, errors: dict[str, str]) -> float | None:
    """Median over repeats of a's steps/s over b's in the same repeat: drifts in machine load cancel."""
    if a in errors or b in errors:
        return None
    return median([r[a] / r[b] for r in by_repeat if a in r and b in r])


def build(name: str, workload: Workload, model_dir: str):
    if name == "minimal":
        return MinimalLoop(workload)
    if name == "harness":
        return HarnessFit(workload, model_dir)
    return KerasFit(workload, model_dir)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _throughput_row(workload: Workload, name: str, k: int, spec: ModelSpec, steps_per_epoch: int, measurements,
                    error) -> Row:
    samples = [m.steps_per_sec for m in measurements]
    steps_per_sec = median(samples) if error is None else None
    return {
        "benchmark": "throughput", "contender": name, "strategy": workload.strategy_name, "model": spec.name,
        "steps_per_execution": k, "replicas": workload.strategy.num_replicas_in_sync,
        "global_batch_size": spec.global_batch_size, "input_shape": list(spec.input_shape),
        "steps_per_sec": steps_per_sec,
        "examples_per_sec": steps_per_sec * spec.global_batch_size if steps_per_sec is not None else None,
        "status": "ok" if error is None else "fails", "error": error,
        "repeats": len(samples), "samples_steps_per_sec": samples,
        "steps_per_epoch": steps_per_epoch, "timed_epochs": max(spec.epochs - 1, 1),
        "seconds_per_measurement": median([m.seconds for m in measurements]) if error is None else None,
        "call_overhead_s": median([m.call_overhead for m in measurements]) if error is None else None,
        "epoch_end_s": median([m.epoch_end_cost for m in measurements]) if error is None else None,
    }


def run_configuration(workload: Workload, k_values, workdir: str, order_shift: int, probe_seconds: float = 0.5,
                      log: Callable[[str], None] = _log) -> tuple[list[Row], list[Row]]:
    """All contenders on one strategy and model: (throughput rows, first-step rows)."""
    spec = workload.spec
    contenders: dict[str, Any] = {}
    build_errors: dict[str, str] = {}
    first_steps: list[Row] = []
    for name in rotated(CONTENDERS, order_shift):
        row = {"benchmark": "first_step", "contender": name, "strategy": workload.strategy_name, "model": spec.name,
               "steps_per_execution": 1, "seconds": None, "status": "ok", "error": None}
        try:
            contender = build(name, workload, os.path.join(workdir, workload.strategy_name, spec.name, name))
            row["seconds"] = contender.first_step()
            contenders[name] = contender
        except Exception as e:
            build_errors[name] = row["error"] = describe(e)
            row["status"] = "fails"
        first_steps.append(row)
        log(f"  first step {name:8s} {workload.strategy_name}/{spec.name}: "
            f"{row['seconds']:.2f}s" if row["seconds"] is not None else f"  first step {name}: fails ({row['error']})")
    rows: list[Row] = []
    for k in k_values:
        probe = None
        if spec.epoch_seconds is not None and "minimal" in contenders:
            probe = contenders["minimal"].probe(k, probe_seconds)
        steps_per_epoch = spec.epoch_steps(k, probe)
        errors: dict[str, str] = dict(build_errors)
        for name, contender in contenders.items():
            try:
                contender.prepare(k)
            except Exception as e:
                errors[name] = describe(e)
                log(f"  {name} fails at K={k}: {errors[name]}")
        measurements: dict[str, list] = {name: [] for name in CONTENDERS}
        by_repeat: list[dict[str, float]] = []  # steps/s of the contenders that ran back to back in one repeat
        for repeat in range(spec.repeats):
            by_repeat.append({})
            for name in rotated(CONTENDERS, repeat + order_shift):
                if name in errors:
                    continue
                try:
                    measurement = contenders[name].measure(k, steps_per_epoch, spec.epochs)
                except Exception as e:
                    errors[name] = describe(e)
                    log(f"  {name} fails at K={k}: {errors[name]}")
                    continue
                measurements[name].append(measurement)
                by_repeat[-1][name] = measurement.steps_per_sec
        for name in CONTENDERS:
            row = _throughput_row(workload, name, k, spec, steps_per_epoch, measurements[name], errors.get(name))
            if name == "harness":
                for other in ("minimal", "keras"):
                    row[f"vs_{other}"] = paired_ratio(by_repeat, name, other, errors)
            rows.append(row)
            speed = f"{row['steps_per_sec']:9.1f} steps/s" if row["status"] == "ok" else "    fails"
            log(f"  {workload.strategy_name}/{spec.name} K={k:<3d} {name:8s} {speed}  "
                f"samples {[f'{s:.0f}' for s in row['samples_steps_per_sec']]}, {steps_per_epoch} steps/epoch")
    return rows, first_steps


def run(settings: Settings, workdir: str, log: Callable[[str], None] = _log) -> tuple[list[Row], list[Row]]:
    rows: list[Row] = []
    first_steps: list[Row] = []
    shift = 0
    for strategy_name in settings.strategies:
        strategy = harness.build_strategy(strategy_name, num_cpu_devices=2)
        for spec in settings.chosen_models():
            log(f"throughput: {strategy_name} / {spec.name} (global batch {spec.global_batch_size}, "
                f"{spec.repeats} repeats)")
            r, f = run_configuration(Workload(strategy_name, strategy, spec), settings.steps_per_execution, workdir,
                                     shift, settings.probe_seconds, log)
            rows += r
            first_steps += f
            shift += 1
    return rows, first_steps
