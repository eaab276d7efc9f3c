"""How cost grows with the work: an MLP of two hidden layers from about 10k to 10M parameters.

For each width, on the default strategy (one process, one replica):
- `curve_throughput`: the four contenders in turns at K=1 (as the throughput sweep, fewer
  epochs): steps/s and CPU ms per step;
- `curve_first_step`: each contender's time to first step (trace + compile + one step);
- `curve_checkpoint`: the harness's training-state checkpoint, synchronous and asynchronous:
  the time a save blocks the caller, the time until it is on disk, the time to restore it
  (`Checkpointer.restore_newest`), and its size on disk (medians over repeats, after one
  untimed save per mode).
The 2-worker cluster's cost over one process against K comes from `benchmarks.cluster`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

import harness
from benchmarks import throughput
from benchmarks.failures import describe
from benchmarks.settings import CONTENDERS, CurveSpec
from benchmarks.timing import median, now
from benchmarks.workload import Workload, parameters

Row = dict[str, Any]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def checkpoint_rows(workload: Workload, repeats: int, workdir: str, log: Callable[[str], None]) -> list[Row]:
    rows = []
    for mode in ("sync", "async"):
        row: Row = {"benchmark": "curve_checkpoint", "mode": mode, "model": workload.model_name,
                    "parameters": parameters(workload.spec.input_shape, workload.spec.num_classes,
                                             workload.spec.width), "repeats": repeats, "status": "ok", "error": None}
        try:
            model, optimizer = workload.build()
            trainer = harness.Trainer(workload.strategy, model, optimizer,
                                      keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None),
                                      global_batch_size=workload.global_batch_size,
                                      model_dir=os.path.join(workdir, "curves", workload.model_name, mode),
                                      async_checkpoint=mode == "async")
            samples = []
            for step in range(1, repeats + 2):  # the first save of each mode is a warm-up (host copies, traces)
                trainer.state.global_step = step
                start = now()
                path = trainer.write_checkpoint("{}")
                blocked = now() - start
                trainer.checkpointer.sync()
                total = now() - start
                start = now()
                trainer.checkpointer.restore_newest(lambda path, progress: None)
                restore = now() - start
                size = sum(tf.io.gfile.stat(f).length for f in tf.io.gfile.glob(f"{path}.*"))
                if step > 1:
                    samples.append({"blocked_s": blocked, "save_s": total, "restore_s": restore, "bytes": size})
            for key in ("blocked_s", "save_s", "restore_s", "bytes"):
                row[key] = median([s[key] for s in samples])
        except Exception as e:  # a mode that cannot run is a result
            row.update(status="fails", error=describe(e), blocked_s=None, save_s=None, restore_s=None, bytes=None)
        rows.append(row)
        if row["status"] == "ok":
            log(f"  checkpoint {mode:5s} {row['parameters']:>10,d} params: blocks {row['blocked_s'] * 1000:8.1f} ms, "
                f"on disk {row['save_s'] * 1000:8.1f} ms, restore {row['restore_s'] * 1000:8.1f} ms, "
                f"{row['bytes'] / 1e6:.2f} MB")
        else:
            log(f"  checkpoint {mode:5s} fails: {row['error']}")
    return rows


def run(spec: CurveSpec, probe_seconds: float, workdir: str, log: Callable[[str], None] = _log) -> list[Row]:
    strategy = harness.build_strategy("default")
    rows: list[Row] = []
    for shift, width in enumerate(spec.widths):
        model_spec = dataclasses.replace(spec.throughput, width=width)
        workload = Workload("default", strategy, model_spec)
        size = parameters(model_spec.input_shape, model_spec.num_classes, width)
        log(f"curves: MLP of width {width} ({size:,d} parameters)")
        contenders, errors, first_steps = throughput.build_all(workload, CONTENDERS,
                                                               os.path.join(workdir, "curves"), log)
        for row in first_steps:
            rows.append({**row, "benchmark": "curve_first_step", "parameters": size})
        by_name, _ = throughput.measure(workload, contenders, 1, model_spec, errors, probe_seconds, shift, log)
        for row in by_name.values():
            rows.append({**row, "benchmark": "curve_throughput", "parameters": size})
        del contenders
        rows += checkpoint_rows(workload, spec.checkpoint_repeats, workdir, log)
    return rows
