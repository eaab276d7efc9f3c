"""A monitored metric: its direction, what counts as an improvement, and the checks users need."""

from __future__ import annotations

import logging
import math

log = logging.getLogger(__name__)


MODES = ("auto", "min", "max")
_HIGHER_IS_BETTER = ("acc", "auc", "precision", "recall", "f1", "iou")


MONITOR_FREQS = ("epoch", "validation")  # when a monitoring callback acts: each epoch end, or each validation


def validate_mode(mode: str, owner: str) -> None:
    if mode not in MODES:
        raise ValueError(f"{owner}: unknown mode {mode!r}; use 'auto', 'min' or 'max'")


def check_monitor_freq(freq: str, monitor: str, owner: str, option: str = "monitor_freq") -> None:
    """`freq` is 'epoch' or 'validation'; acting per validation needs a validation metric (`val_...`)."""
    if freq not in MONITOR_FREQS:
        raise ValueError(f"{owner}: {option} must be 'epoch' or 'validation', got {freq!r}")
    if freq == "validation" and not monitor.startswith("val_"):
        raise ValueError(f"{owner}: {option}='validation' acts on validation metrics, but monitor is {monitor!r}; "
                         f"monitor a val_ metric (e.g. 'val_{monitor}')")


class Monitor:
    """Tracks one metric of the logs for a callback (EarlyStopping, ModelCheckpoint, ReduceLROnPlateau).

    Improvement follows Keras: in `min` mode `current < reference - min_delta`, in `max` mode
    `current > reference + min_delta`; `auto` picks `max` for accuracy-like names and `min`
    otherwise. A monitor that is not a metric of the run is an error at train begin; one
    that is valid but absent from the logs (e.g. `val_loss` without validation data) gets a
    single warning, as in Keras.
    """

    def __init__(self, name: str, mode: str, min_delta: float, owner: str):
        validate_mode(mode, owner)
        if not math.isfinite(min_delta):  # a NaN would make every comparison false: never an improvement
            raise ValueError(f"{owner}: min_delta must be a finite number, got {min_delta}")
        self.name, self.owner, self.min_delta = name, owner, abs(min_delta)
        if mode == "auto":
            mode = "max" if any(k in name.removeprefix("val_") for k in _HIGHER_IS_BETTER) else "min"
        self.mode = mode
        self._warned = False

    def check_known(self, metric_names: tuple[str, ...], logged_names: tuple[str, ...]) -> None:
        """Raises for a monitor that no run could log; warns once for one this run does not log."""
        if self.name in logged_names:
            return
        if self.name not in metric_names:
            raise ValueError(f"{self.owner}: monitor {self.name!r} is not a metric of this run; "
                             f"choose one of {', '.join(metric_names)}")
        self._warn_missing(logged_names)

    def _warn_missing(self, available) -> None:
        if not self._warned:
            self._warned = True
            log.warning("%s is conditioned on %r, which is not in the logs (available: %s); it does nothing.",
                        self.owner, self.name, ", ".join(available))

    def value(self, logs: dict[str, float] | None) -> float | None:
        """The monitored value in `logs`, or None (with a single warning) when absent."""
        logs = logs or {}
        if self.name not in logs:
            self._warn_missing(tuple(logs))
            return None
        return float(logs[self.name])

    def is_improvement(self, current: float, reference: float | None) -> bool:
        if reference is None:
            return not math.isnan(current)
        if self.mode == "min":
            return current < reference - self.min_delta
        return current > reference + self.min_delta

    def better(self, a: float, b: float) -> bool:
        """Strictly better, without `min_delta` (for thresholds)."""
        return a < b if self.mode == "min" else a > b
