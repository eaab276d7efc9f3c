"""The straggler view: how the workers' busy times compare, in one place for every callback that shows it.

A worker's busy time since it last reported it (a decision point: every loop's, or with callbacks
that are all `identical_on_every_worker` every 8 steps or so, see `harness.controller`) is its own
time outside the K-step loop (its hooks, its host) plus the fastest worker's time inside it. The
steps' own collectives make every worker wait for the slowest inside the loop (where a worker's
wait for one slow outside it lands too, when no decision point waits for everyone), so the loop
counts alike for all; a worker that is slow outside it stands out, and one slow inside it slows
everyone.
"""

from __future__ import annotations

from collections.abc import Sequence

SLOW = 1.2  # shown in the progress line when the slowest takes 20% longer than the fastest


def summarize(seconds: Sequence[float]) -> dict[str, float | int]:
    """min, mean and max of the workers' times, and the index of the slowest worker."""
    slowest = max(range(len(seconds)), key=lambda i: seconds[i])
    return {"min": min(seconds), "mean": sum(seconds) / len(seconds), "max": seconds[slowest], "slowest": slowest}


def is_uneven(summary: dict[str, float | int]) -> bool:
    return summary["max"] > SLOW * summary["min"]
