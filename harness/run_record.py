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


def _rounded(value: Any) -> Any:
    """Floats at 7 significant digits, for display (a float32 setting reads 0.05, not 0.05000000074505806)."""
    if isinstance(value, float):
        return float(f"{value:.7g}")
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def _short(value: Any) -> str:
    text = json.dumps(_rounded(value), sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def differences(recorded: Mapping[str, Any], current: Mapping[str, Any],
                prefix: str = "") -> list[tuple[str, Any, Any]]:
    """`(name, recorded value, current value)` for every name whose values differ (a missing one is None).

    Nested mappings are compared key by key, with dotted names (`optimizer.learning_rate`).
    """
    diffs = []
    for name in sorted(set(recorded) | set(current)):
        old, new = recorded.get(name), current.get(name)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            diffs += differences(old, new, f"{prefix}{name}.")
        elif old != new:
            diffs.append((f"{prefix}{name}", old, new))
    return diffs


def describe(diffs: list[tuple[str, Any, Any]], flags: bool = False, most: int = 6) -> str:
    dash = "--" if flags else ""
    shown = ", ".join(f"{dash if '.' not in name else ''}{name} {_short(old)} -> {_short(new)}"
                      for name, old, new in diffs[:most])
    return shown + (f" and {len(diffs) - most} more" if len(diffs) > most else "")


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
        detail = ", ".join(f"{dash if '.' not in name else ''}{name} is {_short(new)} here but {_short(old)} on "
                           "the chief" for name, old, new in self.diffs[:6])
        return f"{self.me} was started with other settings than the chief: {detail}; start every task of a job " \
               "with the same flags"


def check_resume(recorded: Record | None, current: Record, model_dir: str,
                 defaults: Mapping[str, Any] | None = None) -> list[tuple[str, Any, Any]]:
    """Raises `SettingsChanged` when the mathematics differ; returns the layout differences (to log).

    A setting the record does not have (written before the setting existed) counts as its
    default in `defaults`, so a new setting left at its default never refuses an older run.
    """
    if recorded is None:
        return []
    older = {kind: {**{k: v for k, v in normalise(dict(defaults or {})).items() if k in current[kind]},
                    **recorded.get(kind, {})} for kind in (MATH, LAYOUT)}
    math = differences(older[MATH], current[MATH])
    if math:
        raise SettingsChanged(model_dir, math)
    return differences(older[LAYOUT], current[LAYOUT])


def check_same_job(chief: Record, mine: Record, me: str, ignore: tuple[str, ...] = ()) -> None:
    """Raises `SettingsDifferAcrossTasks` when this task was started with other settings than the chief."""
    diffs = [d for kind in (MATH, LAYOUT) for d in differences(chief[kind], mine[kind]) if d[0] not in ignore]
    if diffs:
        raise SettingsDifferAcrossTasks(me, diffs)
