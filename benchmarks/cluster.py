"""The 2-worker cluster on 127.0.0.1 (real processes, started through `harness.launch`): the decision
point's overhead at K=1, and the cost of the cluster over one process at the same global batch, per K
(one job per K).

`benchmarks/cluster_job.py` runs on both workers and reports every timed block; here the blocks
become ratios, round by round (the two kinds of a round ran interleaved or back to back): median and 95%
bootstrap interval. Both are measured by the wall clock of worker 0: a collective's cost is mostly
waiting for the other worker, which no CPU clock sees (worker 0's CPU time is reported beside it).
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from benchmarks import interleave, targets
from benchmarks.settings import ClusterSpec
from harness import launch

Row = dict[str, Any]
JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cluster_job.py")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _failure(output: str, code: int) -> str:
    lines = [line for line in output.splitlines() if "error" in line.lower() or "Error" in line]
    return f"the cluster job exited with code {code}" + (f": {lines[-1][:300]}" if lines else "")


def _ratios(samples: list[dict], a: str, b: str, clock: str) -> list[float]:
    """a's time over b's, round by round."""
    return [s[a][f"{clock}_s"] / s[b][f"{clock}_s"] for s in samples if a in s and b in s and s[b][f"{clock}_s"] > 0]


def _add_ratios(row: Row, field: str, samples: list[dict], a: str, b: str) -> Row:
    """`field` (wall clock) and `cpu_<field>`: a's time over b's, median and interval, and the samples."""
    for clock in ("wall", "cpu"):
        summary = interleave.summarize(_ratios(samples, a, b, clock))
        prefix = "" if clock == "wall" else "cpu_"
        row[f"{prefix}{field}"], row[f"{prefix}{field}_ci95"] = summary["median"], summary["ci95"]
        row[f"{prefix}samples_{field}"] = summary["samples"]
    return row


def _base(result: dict[str, Any]) -> Row:
    return {"workers": result["workers"], "replicas": result["replicas"],
            "global_batch_size": result["global_batch_size"], "status": "ok", "error": None,
            "threads_start": result.get("threads_start"), "threads_end": result.get("threads_end")}


def decision_row(result: dict[str, Any]) -> Row:
    """What the decision point adds to a one-step loop (fit's loop + decision over the bare loop, minus 1), at K=1,
    round by round."""
    n, decision = result["decision_calls"], result["decision"]

    def per_call_ms(clock: str, block: str) -> float:
        return interleave.median([(s[block][f"{clock}_s"] - (s["loop"][f"{clock}_s"] if block == "decide" else 0))
                                  / n * 1000 for s in decision])

    row: Row = {"benchmark": "cluster", **_base(result), "steps_per_execution": 1, "calls_per_round": n,
                "repeats": len(decision), "measure": "wall", "target": targets.DECISION_OVERHEAD,
                "decision_ms": per_call_ms("wall", "decide"), "step_ms": per_call_ms("wall", "loop"),
                "decision_cpu_ms": per_call_ms("cpu", "decide"), "step_cpu_ms": per_call_ms("cpu", "loop")}
    row = _add_ratios(row, "overhead", decision, "decide", "loop")
    for field in ("overhead", "cpu_overhead"):  # (loop + decision) / loop - 1
        row[field] -= 1
        row[f"{field}_ci95"] = [bound - 1 for bound in row[f"{field}_ci95"]]
    return row


def cost_row(result: dict[str, Any], k: int) -> Row:
    """The cluster's K-step loop + decision point over one process's, round by round."""
    samples = result["cost"][str(k)]
    steps = samples[0]["steps"] if samples else result["steps_per_block"]
    row: Row = {"benchmark": "cluster_cost", **_base(result), "steps_per_execution": k, "steps_per_block": steps,
                "repeats": len(samples), "measure": "wall",
                "cluster_ms_per_step": interleave.median([s["cluster"]["wall_s"] / steps * 1000 for s in samples]),
                "single_ms_per_step": interleave.median([s["single"]["wall_s"] / steps * 1000
                                                         for s in samples if "single" in s])}
    return _add_ratios(row, "cost", samples, "cluster", "single")


def failed_row(benchmark: str, k: int, error: str) -> Row:
    row: Row = {"benchmark": benchmark, "workers": 2, "status": "fails", "error": error, "measure": "wall",
                "steps_per_execution": k}
    if benchmark == "cluster":
        return {**row, "target": targets.DECISION_OVERHEAD, "overhead": None, "overhead_ci95": None,
                "decision_ms": None, "step_ms": None}
    return {**row, "cost": None, "cost_ci95": None}


def _job(spec: ClusterSpec, workdir: str, k: int, decision: bool) -> tuple[dict[str, Any] | None, str | None]:
    """One launch of the job on 2 workers: (its result, or None; the error it exited with, or None)."""
    out = io.StringIO()
    command = [sys.executable, JOB, f"--model_dir={os.path.join(workdir, 'cluster', f'k{k}')}",
               f"--steps_per_block={spec.steps_per_block}", f"--rounds={spec.rounds}", f"--steps_per_execution={k}",
               *([f"--decision_rounds={spec.decision_rounds}", f"--decision_pairs={spec.decision_pairs}",
                  "--decision"] if decision else [])]
    code = launch.launch(command, num_workers=2, out=out, env={"TF_CPP_MIN_LOG_LEVEL": "2"}, grace_s=10)
    text = out.getvalue()
    results = [line.split("RESULT ", 1)[1] for line in text.splitlines() if "RESULT " in line]
    return (json.loads(results[-1]) if results else None), (_failure(text, code) if code != 0 else None)


def run(spec: ClusterSpec, workdir: str, log: Callable[[str], None] = _log) -> list[Row]:
    """One job per K (fresh processes, see `benchmarks/cluster_job.py`), the first one also
    measuring the decision point."""
    rows: list[Row] = []
    for i, k in enumerate(spec.steps_per_execution):
        result, error = _job(spec, workdir, k, decision=i == 0)
        if result is None:
            log(f"  cluster fails at K={k}: {error}")
            rows += [failed_row("cluster", 1, error)] if i == 0 else []
            rows.append(failed_row("cluster_cost", k, error))
            continue
        mine = ([decision_row(result)] if i == 0 else []) + [cost_row(result, k)]
        if error:  # every block was measured and reported; the job failed afterwards: said, not hidden
            log(f"  cluster: {error} (after reporting every measurement)")
            for row in mine:
                row["exit_error"] = error
        if i == 0:
            d = mine[0]
            lo, hi = d["overhead_ci95"]
            log(f"  cluster decision point: {d['decision_ms']:.3f} ms per call, step {d['step_ms']:.3f} ms at K=1: "
                f"overhead {d['overhead']:.1%} [{lo:.1%}, {hi:.1%}]; worker 0's threads "
                f"{d['threads_start']} -> {d['threads_end']}")
        c = mine[-1]
        lo, hi = c["cost_ci95"]
        log(f"  cluster / one process, K={k}: {c['cluster_ms_per_step']:.3f} vs {c['single_ms_per_step']:.3f} "
            f"ms/step: {c['cost']:.2f}x [{lo:.2f}, {hi:.2f}]")
        rows += mine
    return rows
