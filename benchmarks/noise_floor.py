"""The noise floor: the same minimal loop measured twice, alternated like the contenders.

On a shared machine the speed of one loop drifts by more than the harness's overhead. Two
identical minimal loops (A and B) are measured in alternating order, exactly as the
contenders are, and the median and range of B's speed over A's in the same repeat is
reported: a harness / minimal ratio inside that range cannot be told from 1.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from benchmarks.minimal_loop import MinimalLoop
from benchmarks.timing import median
from benchmarks.workload import Workload


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(workload: Workload, steps_per_execution: int, repeats: int, probe_seconds: float,
        log: Callable[[str], None] = _log) -> list[dict[str, Any]]:
    spec, k = workload.spec, steps_per_execution
    loops = {"A": MinimalLoop(workload), "B": MinimalLoop(workload)}
    for loop in loops.values():
        loop.first_step()
    steps_per_epoch = spec.epoch_steps(k, loops["A"].probe(k, probe_seconds) if spec.epoch_seconds else None)
    ratios = []
    for repeat in range(repeats):
        speeds = {}
        for name in ("A", "B") if repeat % 2 == 0 else ("B", "A"):
            speeds[name] = loops[name].measure(k, steps_per_epoch, spec.epochs).steps_per_sec
        ratios.append(speeds["B"] / speeds["A"])
    row = {"benchmark": "noise_floor", "contender": "minimal", "strategy": workload.strategy_name,
           "model": spec.name, "steps_per_execution": k, "steps_per_epoch": steps_per_epoch, "repeats": repeats,
           "ratio_median": median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
           "samples_ratio": ratios, "status": "ok", "error": None}
    log(f"  noise floor (minimal / minimal): median {row['ratio_median']:.3f}, "
        f"range {row['ratio_min']:.3f}-{row['ratio_max']:.3f} over {repeats} repeats")
    return [row]
