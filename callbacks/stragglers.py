"""The straggler view: how the workers' busy times compare, in one place for every callback that shows it.

A worker's busy time is its time between two decision points, without the wait at the
second one: its K-step loop and its hooks. The steps' own collectives make every worker wait
for the slowest inside the loop, so a worker that is slow outside it (its callbacks, its host)
stands out; one that is slow inside it makes everyone's loop slow alike.
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
