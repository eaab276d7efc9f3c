"""Step cadences: "every N steps" when a loop advances the global step by K at a time."""

from __future__ import annotations


def crosses_multiple(previous: int, current: int, every: int) -> bool:
    """Whether a multiple of `every` lies in (previous, current]: the loop that ends at `current` passed one.

    With K steps per loop a multiple of N is rarely hit exactly; the action happens at the
    first loop end at or after it, and every worker computes the same answer.
    """
    return current // every > previous // every
