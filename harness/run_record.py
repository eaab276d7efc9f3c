"""A run's recorded settings: what a resume, and every worker of a job, must agree on.

A record is `{"math": {...}, "layout": {...}}`. `math` holds what shapes the weights (the
model, the optimiser, the loss, the data and its order, the decisions of the callbacks); a
resume that changes any of it would silently train a different run, so it is refused with
the list of differences and the two ways forward. `layout` holds how the same mathematics is
carried out (strategy, replicas, workers, steps per call, logging): a resume may change it,
and the change is logged in one line. The workers of one job must agree on both.

Pure Python: values are JSON-normalised, so a record read back from a checkpoint compares
equal to the one it was written from.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from harness.errors import UsageError

MATH, LAYOUT = "math", "layout"
Record = dict[str, dict[str, Any]]


def normalise(value: Any) -> Any:
    """The JSON round trip of `value` (tuples become lists, numpy scalars numbers, others strings)."""
    return json.loads(json.dumps(value, sort_keys=True, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return str(value)


def make_record(math: Mapping[str, Any], layout: Mapping[str, Any]) -> Record:
    return normalise({MATH: dict(math), LAYOUT: dict(layout)})


def merge(base: Record, override: Record | None) -> Record:
    """`base` with `override`'s entries (by name, in either kind) taking their place."""
    if not override:
        return base
    names = set(override[MATH]) | set(override[LAYOUT])
    return {kind: {**{k: v for k, v in base[kind].items() if k not in names}, **override[kind]}
            for kind in (MATH, LAYOUT)}


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """`(name, recorded value, current value)` for every name whose values differ (a missing one is None)."""
    names = sorted(set(recorded) | set(current))
    return [(n, recorded.get(n), current.get(n)) for n in names if recorded.get(n) != current.get(n)]


def describe(diffs: list[tuple[str, Any, Any]], flags: bool = False) -> str:
    prefix = "--" if flags else ""
    return ", ".join(f"{prefix}{name} {_short(old)} -> {_short(new)}" for name, old, new in diffs)


class _SettingsError(UsageError):
    """An error listing settings by name; on the command line the names read as flags."""

    def __init__(self, diffs: list[tuple[str, Any, Any]]):
        self.diffs = diffs
        super().__init__(self._render(False))

    def _render(self, flags: bool) -> str:
        raise NotImplementedError

    def as_flag(self) -> str:
        return self._render(True)


class SettingsChanged(_SettingsError):
    """A resume whose settings change the mathematics of the recorded run."""

    def __init__(self, model_dir: str, diffs: list[tuple[str, Any, Any]]):
        self.model_dir = model_dir
        super().__init__(diffs)

    def _render(self, flags: bool) -> str:
        dash = "--" if flags else ""
        return (f"{dash}model_dir {self.model_dir} holds a run with other settings, which would change what it "
                f"computes: {describe(self.diffs, flags)}; rerun with the recorded settings to resume it, or use a "
                f"new {dash}model_dir (or {'--fresh' if flags else 'fresh=True'} to discard it)")


class SettingsDifferAcrossTasks(_SettingsError):
    """A task of a multi-worker job started with other settings than the chief."""

    def __init__(self, me: str, diffs: list[tuple[str, Any, Any]]):
        self.me = me
        super().__init__(diffs)

    def _render(self, flags: bool) -> str:
        dash = "--" if flags else ""
        detail = ", ".join(f"{dash}{name} is {_short(new)} here but {_short(old)} on the chief"
                           for name, old, new in self.diffs)
        return f"{self.me} was started with other settings than the chief: {detail}; start every task of a job " \
               "with the same flags"


def check_resume(recorded: Record | None, current: Record, model_dir: str) -> list[tuple[str, Any, Any]]:
    """Raises `SettingsChanged` when the mathematics differ; returns the layout differences (to log)."""
    if recorded is None:
        return []
    math = differences(recorded.get(MATH, {}), current[MATH])
    if math:
        raise SettingsChanged(model_dir, math)
    return differences(recorded.get(LAYOUT, {}), current[LAYOUT])


def check_same_job(chief: Record, mine: Record, me: str, ignore: tuple[str, ...] = ()) -> None:
    """Raises `SettingsDifferAcrossTasks` when this task was started with other settings than the chief."""
    diffs = [d for kind in (MATH, LAYOUT) for d in differences(chief[kind], mine[kind]) if d[0] not in ignore]
    if diffs:
        raise SettingsDifferAcrossTasks(me, diffs)
