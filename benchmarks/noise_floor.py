"""The noise floor: the minimal loop against an identical copy of itself, in the same turns as the contenders.

Two identical minimal loops (`minimal` and `minimal_again`) take their turns with the other
contenders in the first setting of the sweep; the ratio of their costs, estimated exactly as the
contenders' ratios are (`interleave.compare`), should be 1. Its median and 95% bootstrap
interval say how finely this machine resolves a ratio with this protocol: the run's settings
name the band (±3% quick, ±2% full) the interval must lie within.
Without the throughput sweep (`--skip throughput`) the two loops take turns on their own.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from benchmarks import interleave
from benchmarks.interleave import Pacer
from benchmarks.settings import NOISE_CONTENDER, PRIMARY_CLOCK
from benchmarks.workload import Workload

Row = dict[str, Any]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def row(workload: Workload, k: int, rows: dict[str, Row], pacers: dict[str, Pacer], band: float) -> Row:
    a, b = rows["minimal"], rows[NOISE_CONTENDER]
    ok = a["status"] == "ok" and b["status"] == "ok"
    out: Row = {"benchmark": "noise_floor", "contender": "minimal", "strategy": workload.strategy_name,
                "model": workload.model_name, "steps_per_execution": k, "steps_per_epoch": a["steps_per_epoch"],
                "calls_per_slice": a["calls_per_slice"], "repeats": a["timed_epochs"], "measure": PRIMARY_CLOCK,
                "band": band, "status": "ok" if ok else "fails", "error": None if ok else (a["error"] or b["error"])}
    for clock in ("cpu", "wall"):
        summary = interleave.compare(pacers[NOISE_CONTENDER], pacers["minimal"], clock) if ok else None
        per_epoch = summary["per_epoch"] if summary else []
        prefix = "" if clock == PRIMARY_CLOCK else f"{clock}_"
        out[f"{prefix}ratio_median"] = summary["median"] if summary else None
        out[f"{prefix}ratio_ci95"] = summary["ci95"] if summary else None
        out[f"{prefix}ratio_min"] = min(per_epoch) if per_epoch else None  # of the per-epoch ratios
        out[f"{prefix}ratio_max"] = max(per_epoch) if per_epoch else None
        out[f"{prefix}samples_ratio"] = per_epoch
        out[f"{prefix}within_band"] = bool(summary and 1 - band <= summary["ci95"][0]
                                           and summary["ci95"][1] <= 1 + band)
    return out


def log_row(r: Row, log: Callable[[str], None] = _log) -> None:
    if r["status"] != "ok":
        log(f"  noise floor fails: {r['error']}")
        return
    lo, hi = r["ratio_ci95"]
    wlo, whi = r["wall_ratio_ci95"]
    log(f"  noise floor (minimal again / minimal, {r['repeats']} epochs): CPU {r['ratio_median']:.4f} "
        f"[{lo:.4f}, {hi:.4f}], wall {r['wall_ratio_median']:.4f} [{wlo:.4f}, {whi:.4f}]")


def run(workload: Workload, k: int, probe_seconds: float, band: float, workdir: str,
        log: Callable[[str], None] = _log) -> list[Row]:
    """The two minimal loops alone (when the throughput sweep is skipped)."""
    from benchmarks import throughput  # pylint: disable=import-outside-toplevel

    contenders, errors, _ = throughput.build_all(workload, ("minimal", NOISE_CONTENDER), workdir, log)
    rows, pacers = throughput.measure(workload, contenders, k, workload.spec, errors, probe_seconds, 0, log)
    result = row(workload, k, rows, pacers, band)
    log_row(result, log)
    return [result]
