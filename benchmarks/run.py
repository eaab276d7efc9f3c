#!/usr/bin/env python3
"""Benchmarks the harness against a minimal tf.function loop and Keras 3 fit, side by side.

  python benchmarks/run.py --out results.json          # the full run (about 20 minutes on 2 cores)
  python benchmarks/run.py --quick --out results.json  # a short run (under 2 minutes)
  python benchmarks/run.py --tiny --out results.json   # the smoke-test size (numbers mean nothing)

For the same model, in-memory synthetic data and strategy (default: 1 replica; mirrored: 2
logical CPUs), it measures steps/s and examples/s of (a) a minimal hand-written loop,
(b) `harness.Trainer.fit` with its default callbacks and a checkpoint each epoch and (c)
Keras `model.fit` with the equivalent Keras callbacks, for steps_per_execution 1, 10, 100,
on a small MLP and the ResNet-style model; the contenders alternate and rows hold medians.
Also: time to first step, checkpoint stall of sync vs async saves of a 100 MB model, and
the per-hook cost of the callback dispatch.

Prints a Markdown report; `--out` writes the JSON: a list of rows, each with a "benchmark"
field. "throughput" rows have contender (minimal, harness, keras), strategy, model,
steps_per_execution, steps_per_sec (median), examples_per_sec, status ("ok" or "fails"),
error, the samples and the set-up cost of a training call. "first_step", "checkpoint",
"dispatch" and "machine" rows hold the other measurements and where they were taken.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging as pylogging
import os
import shutil
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import harness

NUM_CPU_DEVICES = 2
harness.configure_cpu_devices(NUM_CPU_DEVICES)  # before TensorFlow initialises its devices

from absl import logging

from benchmarks import checkpoint_stall, dispatch, machine, noise_floor, report, settings, throughput
from benchmarks.workload import Workload


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a short run (under 2 minutes)")
    size.add_argument("--tiny", action="store_true", help="the smoke-test size: checks it runs, numbers mean nothing")
    parser.add_argument("--out", help="write the rows as JSON to this file")
    parser.add_argument("--markdown", help="also write the Markdown report to this file")
    parser.add_argument("--repeats", type=int, help="measurements per contender and setting (default: per model)")
    parser.add_argument("--models", nargs="+", choices=[m.name for m in settings.FULL.models],
                        help="these models (default: both; mlp for --quick and --tiny)")
    parser.add_argument("--strategies", nargs="+", choices=settings.STRATEGIES, help="only these strategies")
    parser.add_argument("--steps_per_execution", nargs="+", type=int, help="only these K (default: 1 10 100)")
    parser.add_argument("--skip", nargs="+", default=[], choices=["noise", "throughput", "checkpoint", "dispatch"],
                        help="sections to leave out")
    parser.add_argument("--workdir", help="where the runs write checkpoints and logs (default: a temporary "
                                          "directory, deleted afterwards)")
    return parser.parse_args(argv)


def chosen_settings(args: argparse.Namespace) -> settings.Settings:
    chosen = settings.TINY if args.tiny else settings.QUICK if args.quick else settings.FULL
    models = chosen.models
    if args.repeats:
        models = tuple(dataclasses.replace(m, repeats=args.repeats) for m in models)
    return dataclasses.replace(chosen, models=models, default_models=tuple(args.models or chosen.default_models),
                               strategies=tuple(args.strategies or chosen.strategies),
                               steps_per_execution=tuple(args.steps_per_execution or chosen.steps_per_execution))


_START = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - _START:6.1f}s] {message}", file=sys.stderr, flush=True)


def warm_up(chosen: settings.Settings, workdir: str) -> None:
    """Pays TensorFlow's and Keras's one-off costs on a throwaway model, so no contender's first step does."""
    spec = settings.TINY.model("mlp")
    for strategy_name in chosen.strategies:
        workload = Workload(strategy_name, harness.build_strategy(strategy_name, num_cpu_devices=NUM_CPU_DEVICES),
                            spec)
        for name in settings.CONTENDERS:
            throughput.build(name, workload, os.path.join(workdir, "warm-up", strategy_name, name)).first_step()


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    chosen = chosen_settings(args)
    logging.set_verbosity(logging.ERROR)  # the harness's own warnings (e.g. async checkpoint skips) are results here
    pylogging.getLogger("tensorflow").setLevel(pylogging.ERROR)
    warnings.filterwarnings("ignore", message=".*shuffle=True.*")
    workdir = args.workdir or tempfile.mkdtemp(prefix="harness-benchmarks-")
    started = time.monotonic()
    rows: list[dict] = []
    try:
        log(f"benchmarks ({chosen.name}): warming up")
        warm_up(chosen, workdir)
        if "noise" not in args.skip:
            spec = chosen.model("mlp")
            log(f"noise floor: the minimal loop twice, default / mlp, K=1, {spec.repeats} repeats")
            rows += noise_floor.run(Workload("default", harness.build_strategy("default"), spec), 1, spec.repeats,
                                    chosen.probe_seconds, log)
        if "throughput" not in args.skip:
            throughput_rows, first_steps = throughput.run(chosen, workdir, log)
            rows += throughput_rows + first_steps
        if "checkpoint" not in args.skip:
            log(f"checkpoint stall: a {chosen.checkpoint_kernel}x{chosen.checkpoint_kernel} float32 kernel")
            rows += checkpoint_stall.run(chosen.checkpoint_kernel, chosen.checkpoint_repeats, workdir, log)
        if "dispatch" not in args.skip:
            log("callback dispatch")
            strategy = harness.build_strategy("default")
            rows += dispatch.run(Workload("default", strategy, settings.TINY.model("mlp")), chosen.dispatch_calls,
                                 chosen.dispatch_repeats, workdir, log)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    about = machine.describe(ROOT, [sys.argv[0], *argv])
    about.update(benchmark="machine", settings=chosen.name, seconds=round(time.monotonic() - started, 1),
                 num_cpu_devices=NUM_CPU_DEVICES)
    text = report.markdown(rows, about, chosen.name)
    print(text)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump([about, *rows], f, indent=1)
            f.write("\n")
    log(f"benchmarks ({chosen.name}) done in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
