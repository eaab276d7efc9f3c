"""The throughput sweep: each contender's cost per step per strategy, model and steps_per_execution.

For each strategy and model the contenders are built and each times its first step (trace +
compile). Then, for each K, they train side by side in turns (`benchmarks.interleave`):
slices of a few K-step calls, a random order every turn, one warm-up epoch and then the
timed epochs. A row holds a contender's medians over epochs (steps/s by the wall clock, CPU
ms per step by the process's CPU time); the harness's row (and each feature row: the harness
with gradient accumulation or an EMA, also against the plain harness) holds its speed relative to each
other contender (the other's cost over its own, from slices paired by epoch and position:
median and 95% bootstrap interval, on both clocks, see `interleave.compare`). A contender
that raises is recorded as "fails" with the error.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import harness
from benchmarks import interleave, noise_floor, one_cpu
from benchmarks.failures import describe
from benchmarks.harness_fit import HarnessFit
from benchmarks.interleave import Pacer
from benchmarks.keras_fit import KerasFit
from benchmarks.minimal_loop import MinimalLoop
from benchmarks.settings import (
    CONTENDERS,
    FEATURE_CONTENDERS,
    FIRST_STEP_CONTENDERS,
    NOISE_CONTENDER,
    PRIMARY_CLOCK,
    ModelSpec,
    Settings,
)
from benchmarks.timing import median
from benchmarks.workload import Workload

Row = dict[str, Any]
CLOCKS = ("cpu", "wall")


def build(name: str, workload: Workload, model_dir: str):
    if name in ("minimal", NOISE_CONTENDER):
        return MinimalLoop(workload, name=name)
    if name == "minimal_checkpoint":
        return MinimalLoop(workload, checkpoint_dir=model_dir)
    if name == "harness":
        return HarnessFit(workload, model_dir)
    if name in FEATURE_CONTENDERS:
        keyword, value = FEATURE_CONTENDERS[name]
        return HarnessFit(workload, model_dir, write_graph=False, **{keyword: value})
    return KerasFit(workload, model_dir)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000


def contender_row(workload: Workload, name: str, k: int, steps_per_epoch: int, calls_per_slice: int,
                  pacer: Pacer | None, error: str | None) -> Row:
    spec = workload.spec
    costs = [pacer.costs[e] for e in sorted(pacer.costs)] if pacer is not None and error is None else []
    ok = error is None and bool(costs)
    if error is None and not costs:
        error = "no timed epoch"
    steps_per_sec = median([steps_per_epoch / c.wall_s for c in costs]) if ok else None
    return {
        "benchmark": "throughput", "contender": name, "strategy": workload.strategy_name,
        "model": workload.model_name, "steps_per_execution": k, "replicas": workload.strategy.num_replicas_in_sync,
        "global_batch_size": spec.global_batch_size, "input_shape": list(spec.input_shape),
        "status": "ok" if ok else "fails", "error": None if ok else error,
        "steps_per_sec": steps_per_sec,
        "examples_per_sec": steps_per_sec * spec.global_batch_size if ok else None,
        "cpu_ms_per_step": median([c.cpu_s / steps_per_epoch * 1000 for c in costs]) if ok else None,
        "wall_ms_per_step": median([c.wall_s / steps_per_epoch * 1000 for c in costs]) if ok else None,
        "epoch_end_ms": _ms(median([c.end_wall_s for c in costs if c.end_wall_s is not None])) if ok else None,
        "epoch_end_cpu_ms": _ms(median([c.end_cpu_s for c in costs if c.end_cpu_s is not None])) if ok else None,
        "setup_s": pacer.setup_s if ok else None,
        "handover_ms": _ms(pacer.handover_wall_s / max(1, len(pacer.slices))) if ok else None,
        "handover_cpu_ms": _ms(pacer.handover_cpu_s / max(1, len(pacer.slices))) if ok else None,
        "steps_per_epoch": steps_per_epoch, "calls_per_slice": calls_per_slice,
        "slices_per_epoch": steps_per_epoch // (calls_per_slice * k), "timed_epochs": len(costs),
        "samples_wall_s": [c.wall_s for c in costs], "samples_cpu_s": [c.cpu_s for c in costs],
    }


def compare(rows: dict[str, Row], pacers: dict[str, Pacer], name: str, others: tuple[str, ...]) -> None:
    """Adds `name`'s speed relative to each of `others` to its row: `vs_<other>` (median, primary clock),
    `vs_<other>_ci95`, and both clocks under `ratios`."""
    row = rows[name]
    row["measure"] = PRIMARY_CLOCK
    row.setdefault("ratios", {clock: {} for clock in CLOCKS})
    for other in others:
        ok = other in rows and row["status"] == "ok" and rows[other]["status"] == "ok"
        for clock in CLOCKS:
            row["ratios"][clock][other] = interleave.compare(pacers[name], pacers[other], clock) if ok else None
        primary = row["ratios"][PRIMARY_CLOCK][other]
        row[f"vs_{other}"] = primary["median"] if primary else None
        row[f"vs_{other}_ci95"] = primary["ci95"] if primary else None


def measure(workload: Workload, contenders: dict[str, Any], k: int, spec: ModelSpec, errors: dict[str, str],
            probe_seconds: float, order_shift: int, log: Callable[[str], None]) -> tuple[dict[str, Row], dict]:
    """One setting: every contender in turns; (rows by contender, pacers)."""
    probe = None
    if spec.slice_seconds is not None and "minimal" in contenders:
        probe = contenders["minimal"].probe(k, probe_seconds)
    calls_per_slice = spec.calls_per_slice(k, probe)
    steps_per_epoch = spec.epoch_steps(k, calls_per_slice, probe)
    turns = interleave.Turns(calls_per_slice=calls_per_slice, timed_epochs=spec.epochs, seed=order_shift)
    running = {name: c for name, c in contenders.items() if name not in errors}
    started = time.perf_counter()
    pacers = turns.run({name: functools.partial(c.train, steps_per_execution=k, steps_per_epoch=steps_per_epoch,
                                                epochs=turns.epochs) for name, c in running.items()})
    turns_s = time.perf_counter() - started
    rows = {}
    for name in contenders:
        pacer = pacers.get(name)
        error = errors.get(name) or (pacer.error if pacer else None)
        rows[name] = contender_row(workload, name, k, steps_per_epoch, calls_per_slice, pacer, error)
    others = tuple(n for n in ("minimal", "minimal_checkpoint", "keras") if n in rows)
    if "harness" in rows:
        compare(rows, pacers, "harness", others)
    for name in FEATURE_CONTENDERS:  # the feature's speed relative to the plain harness, and to the others
        if name in rows:
            compare(rows, pacers, name, (*others, "harness"))
    if "minimal_checkpoint" in rows and "minimal" in rows:  # the checkpoint's cost: its speed relative to minimal
        compare(rows, pacers, "minimal_checkpoint", ("minimal",))
        if rows["minimal_checkpoint"]["status"] == "ok" and rows["minimal"]["status"] == "ok":
            rows["minimal_checkpoint"]["checkpoint_ms_per_epoch"] = (rows["minimal_checkpoint"]["epoch_end_ms"]
                                                                     - rows["minimal"]["epoch_end_ms"])
    for name, row in rows.items():
        if row["status"] == "ok":
            extra = ""
            if row.get("vs_minimal_checkpoint") is not None:
                lo, hi = row["vs_minimal_checkpoint_ci95"]
                extra = f"  vs minimal+checkpoint {row['vs_minimal_checkpoint']:.3f} [{lo:.3f}, {hi:.3f}]"
            log(f"  {workload.strategy_name}/{workload.model_name} K={k:<3d} {name:18s} "
                f"{row['steps_per_sec']:9.1f} steps/s {row['cpu_ms_per_step']:8.3f} CPU ms/step{extra}")
        else:
            log(f"  {workload.strategy_name}/{workload.model_name} K={k:<3d} {name:18s} fails: {row['error']}")
    timed = sum(sum(r["samples_wall_s"]) for r in rows.values())
    handover = [(r["handover_ms"], r["handover_cpu_ms"]) for r in rows.values() if r["handover_ms"] is not None]
    log(f"  ({steps_per_epoch} steps/epoch, {calls_per_slice} calls/slice, {spec.epochs} timed epochs; the turns took "
        f"{turns_s:.1f} s, {timed:.1f} s of them timed, statistics {time.perf_counter() - started - turns_s:.1f} s; "
        f"a hand-over: {max(h[0] for h in handover) if handover else 0:.2f} ms wall, "
        f"{max(h[1] for h in handover) if handover else 0:.2f} ms CPU at most)")
    return rows, pacers


def first_step_row(workload: Workload, name: str, seconds: float | None, error: str | None) -> Row:
    return {"benchmark": "first_step", "contender": name, "strategy": workload.strategy_name,
            "model": workload.model_name, "steps_per_execution": 1, "seconds": seconds,
            "status": "ok" if error is None else "fails", "error": error}


def build_all(workload: Workload, names: tuple[str, ...], workdir: str,
              log: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, str], list[Row]]:
    """Builds each contender and times its first step: (contenders, build errors, first-step rows)."""
    contenders: dict[str, Any] = {}
    errors: dict[str, str] = {}
    first_steps: list[Row] = []
    for name in names:
        seconds = error = None
        try:
            contender = build(name, workload, os.path.join(workdir, workload.strategy_name, workload.model_name, name))
            seconds = contender.first_step()
            contenders[name] = contender
        except Exception as e:  # a contender that cannot run is a result
            errors[name] = error = describe(e)
            contenders[name] = None
        if name in FIRST_STEP_CONTENDERS:
            first_steps.append(first_step_row(workload, name, seconds, error))
            log(f"  first step {name:8s} {workload.strategy_name}/{workload.model_name}: "
                + (f"{seconds:.2f}s" if error is None else f"fails ({error})"))
    return contenders, errors, first_steps


def run(settings: Settings, workdir: str, log: Callable[[str], None] = _log,
        with_noise: bool = True, pin: bool = True) -> tuple[list[Row], list[Row], list[Row]]:
    """(throughput rows, first-step rows, noise-floor rows): the noise floor is a second minimal loop in the
    first setting of the sweep, taking its turns with the others. With `pin`, the one-replica settings run
    on one CPU (`benchmarks.one_cpu`; rows say which in `pinned_cpu`)."""
    rows: list[Row] = []
    first_steps: list[Row] = []
    noise: list[Row] = []
    shift = 0
    for strategy_name in settings.strategies:
        with one_cpu.one_cpu(pin and strategy_name == "default") as cpu:
            if cpu is not None:
                log(f"{strategy_name}: the contenders' turns run with every thread on CPU {cpu}")
            done = len(rows), len(noise)
            shift = _sweep_strategy(settings, strategy_name, workdir, log, with_noise, rows, first_steps, noise,
                                    shift)
            for row in rows[done[0]:] + noise[done[1]:]:
                row["pinned_cpu"] = cpu
    return rows, first_steps, noise


def _sweep_strategy(settings: Settings, strategy_name: str, workdir: str, log: Callable[[str], None],
                    with_noise: bool, rows: list[Row], first_steps: list[Row], noise: list[Row], shift: int) -> int:
    """Every model and K of one strategy; appends to the lists, returns the next order shift."""
    strategy = harness.build_strategy(strategy_name, num_cpu_devices=2)
    for spec in settings.chosen_models():
        workload = Workload(strategy_name, strategy, spec)
        log(f"throughput: {strategy_name} / {spec.name} (global batch {spec.global_batch_size}, "
            f"{spec.epochs} timed epochs per setting)")
        names = CONTENDERS + tuple(FEATURE_CONTENDERS) + ((NOISE_CONTENDER,) if with_noise and not noise else ())
        contenders, errors, f = build_all(workload, names, workdir, log)
        first_steps += f
        for k in settings.steps_per_execution:
            chosen = {n: c for n, c in contenders.items() if (n != NOISE_CONTENDER or not noise)
                      and (n not in FEATURE_CONTENDERS or k in settings.feature_steps_per_execution)}
            by_name, pacers = measure(workload, chosen, k, spec, errors, settings.probe_seconds, shift, log)
            if NOISE_CONTENDER in by_name:
                noise.append(noise_floor.row(workload, k, by_name, pacers, settings.noise_band))
                noise_floor.log_row(noise[-1], log)
                by_name.pop(NOISE_CONTENDER)
            rows += by_name.values()
            shift += 1
    return shift
