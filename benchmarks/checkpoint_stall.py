"""Checkpoint stall: how long a save holds up the training loop, synchronous vs async.

The model has one `kernel x kernel` float32 Dense kernel (5000 x 5000: 100 MB of variables)
and each mode (`Trainer(async_checkpoint=False/True)`) has its own Trainer and checkpoint
directory. One sample is two saves. First `trainer.checkpointer.save(step)` then
`checkpointer.sync()`: `total_s`, until the checkpoint is on disk. Then, in a training loop:
five training steps (their median is the normal step time), a save (`blocked_s`: until
`save` returns), and training steps for about 0.6 s (`after_save_extra_s`: how much longer
they took than normal steps; an async save copies and writes in the background, on the same
2 cores). `stall_s`, the training time lost to the save, is blocked + that extra. One
warm-up save per mode (the first async save allocates its host copies), then the modes
alternate. A mode whose save raises is reported as "fails", with the error.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf

import harness
from benchmarks.failures import describe
from benchmarks.timing import median, now, rotated

BATCH = 8
AFTER_SAVE_S = 0.6  # train this long after a save returns, to see what an async save costs while it writes


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _Saver:
    """A Trainer on the big model, and a plain training step on it."""

    def __init__(self, mode: str, kernel: int, model_dir: str):
        self.mode = mode
        strategy = tf.distribute.get_strategy()
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = keras.Sequential([keras.Input((kernel,)), keras.layers.Dense(kernel, use_bias=False),
                                      keras.layers.Dense(10)], name="big_dense")
            optimizer = harness.build_optimizer("sgd", 1e-6)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
        self.trainer = harness.Trainer(strategy, model, optimizer, loss, global_batch_size=BATCH,
                                       model_dir=model_dir, async_checkpoint=mode != "sync")
        rng = np.random.default_rng(0)
        features = tf.constant(rng.standard_normal((BATCH, kernel)).astype("float32"))
        labels = tf.constant(rng.integers(0, 10, BATCH).astype("int32"))

        @tf.function
        def train_step():
            with tf.GradientTape() as tape:
                value = tf.reduce_mean(loss(labels, model(features, training=True)))
            optimizer.apply(tape.gradient(value, model.trainable_variables), model.trainable_variables)

        self.train_step = train_step
        self.megabytes = sum(v.numpy().nbytes for v in model.weights) / 1e6

    def _timed_steps(self, count: int) -> list[float]:
        times = []
        for _ in range(count):
            start = now()
            self.train_step()
            times.append(now() - start)
        return times

    def first_save(self, step: int) -> dict[str, float]:
        start = now()
        self.trainer.checkpointer.save(step)
        blocked = now() - start
        self.trainer.checkpointer.sync()
        return {"blocked_s": blocked, "total_s": now() - start}

    def sample(self, steps: Iterator[int]) -> dict[str, float]:
        start = now()  # a save on its own: how long until it is on disk
        self.trainer.checkpointer.save(next(steps))
        self.trainer.checkpointer.sync()
        total = now() - start
        step_time = median(self._timed_steps(5))
        after_steps = min(max(math.ceil(AFTER_SAVE_S / step_time), 3), 50)
        start = now()  # a save in the training loop: how long it blocks, and what it costs the steps after it
        self.trainer.checkpointer.save(next(steps))
        blocked = now() - start
        extra = sum(self._timed_steps(after_steps)) - after_steps * step_time
        self.trainer.checkpointer.sync()
        return {"blocked_s": blocked, "after_save_extra_s": extra, "stall_s": blocked + max(extra, 0.0),
                "total_s": total}


def run(kernel: int, repeats: int, workdir: str, log: Callable[[str], None] = _log) -> list[dict[str, Any]]:
    savers = {mode: _Saver(mode, kernel, os.path.join(workdir, f"checkpoint-{mode}")) for mode in ("sync", "async")}
    steps = itertools.count(1)
    samples: dict[str, list[dict[str, float]]] = {mode: [] for mode in savers}
    first: dict[str, dict[str, float]] = {}
    errors: dict[str, str] = {}
    for mode, saver in savers.items():  # warm-up: the first save of each mode (it allocates the host copies)
        try:
            first[mode] = saver.first_save(next(steps))
        except Exception as e:  # a contender that cannot run is a result
            errors[mode] = describe(e)
    for repeat in range(repeats + 1):  # one more: the first repeat of an async mode is its first copy (a trace)
        for mode in rotated(list(savers), repeat):
            if mode in errors:
                continue
            try:
                result = savers[mode].sample(steps)
            except Exception as e:
                errors[mode] = describe(e)
                continue
            if repeat:
                samples[mode].append(result)
    rows = []
    for mode, saver in savers.items():
        row: dict[str, Any] = {"benchmark": "checkpoint", "mode": mode, "megabytes": round(saver.megabytes, 1),
                               "repeats": len(samples[mode]), "status": "fails" if mode in errors else "ok",
                               "error": errors.get(mode), "first_save": first.get(mode)}
        for key in ("blocked_s", "after_save_extra_s", "stall_s", "total_s"):
            row[key] = median([s[key] for s in samples[mode]]) if mode not in errors else None
            row[f"samples_{key}"] = [s[key] for s in samples[mode]]
        rows.append(row)
        if mode in errors:
            log(f"  checkpoint {mode:5s} fails: {errors[mode]}")
        else:
            log(f"  checkpoint {mode:5s} {saver.megabytes:.0f} MB: blocked {row['blocked_s']:.3f}s, stall "
                f"{row['stall_s']:.3f}s, on disk after {row['total_s']:.3f}s")
    return rows
