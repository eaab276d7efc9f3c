"""The settings a `fit` records about itself, so that a resume or a peer worker can be checked.

The trainer knows the mathematics it runs without being told: the model's variables and
dtype policy, the optimizer's and the loss's configuration, the global batch, the epoch
length, gradient accumulation, the EMA's decay (its averages are in the checkpoint), the
training data's order, and the configuration of the callbacks that decide
(`Callback.get_config`). The user's own settings (a `RunConfig`, or a mapping of
hyper-parameters) are added on top, by name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from callbacks.callback_list import CallbackList
from harness import run_record
from harness.context import FitPlan

if TYPE_CHECKING:
    from harness.trainer import Trainer


def _without_name(config: Mapping[str, Any]) -> dict[str, Any]:
    """A Keras object's configuration without its name (numbered per process: `sgd_1`), nested ones too."""
    return {k: _without_name(v) if isinstance(v, Mapping) else v for k, v in config.items() if k != "name"}


def _loss_config(loss: Any) -> Any:
    if hasattr(loss, "get_config"):
        return {"class": type(loss).__name__, **_without_name(loss.get_config())}
    return getattr(loss, "__qualname__", type(loss).__name__)


def user_record(settings: Any) -> run_record.Record | None:
    """A `RunConfig` records its math and layout fields; a plain mapping counts as mathematics."""
    if settings is None:
        return None
    if hasattr(settings, "recorded"):
        recorded = settings.recorded()
        return run_record.make_record(recorded[run_record.MATH], recorded[run_record.LAYOUT])
    if isinstance(settings, Mapping):
        return run_record.make_record(settings, {})
    if dataclasses.is_dataclass(settings):
        return run_record.make_record(dataclasses.asdict(settings), {})
    raise TypeError(f"settings must be a RunConfig or a mapping of names to values, got {type(settings).__name__}")


def settings_defaults(settings: Any) -> dict[str, Any]:
    """The default of each of a `RunConfig`'s settings (for records written before a setting existed)."""
    if not dataclasses.is_dataclass(settings):
        return {}
    return {f.name: f.default for f in dataclasses.fields(settings) if f.default is not dataclasses.MISSING}


def settings_record(trainer: Trainer, plan: FitPlan, callbacks: CallbackList, train_data: Any,
                    settings: Any) -> run_record.Record:
    model = trainer.model
    math = {
        "global_batch_size": plan.global_batch_size,
        "steps_per_epoch": plan.steps_per_epoch,
        "model": {"class": type(model).__name__, "dtype_policy": model.dtype_policy.name,
                  "variables": [[v.name, list(v.shape), str(v.dtype)] for v in model.variables]},
        "optimizer": {"class": type(trainer.optimizer).__name__, **_without_name(trainer.optimizer_config)},
        "loss": _loss_config(trainer.loss),
        "metrics": list(plan.metric_names),
        "callbacks": callbacks.get_config(),
    }
    if hasattr(train_data, "describe"):
        math["train_data"] = train_data.describe()
    # Recorded only when on, so that runs recorded before these options existed still resume.
    if trainer.accumulation_steps > 1:
        math["gradient_accumulation_steps"] = trainer.accumulation_steps
    if trainer.ema is not None:
        math["ema_decay"] = trainer.ema.decay
    if plan.validation_every_n_steps:  # (when the callbacks act per validation, it shapes the run)
        math["validation_every_n_steps"] = plan.validation_every_n_steps
    layout = {"strategy": type(trainer.strategy).__name__, "num_replicas": trainer.cluster.num_replicas,
              "num_workers": trainer.cluster.num_workers, "steps_per_execution": plan.steps_per_execution,
              "jit_compile": trainer.jit_compile, "epochs": plan.epochs}
    return run_record.merge(run_record.make_record(math, layout), user_record(settings))
