#!/usr/bin/env python3
"""Benchmarks the harness against a minimal tf.function loop and Keras 3 fit, side by side.

  python benchmarks/run.py --out results.json          # the full run (about 45 minutes on 2 cores)
  python benchmarks/run.py --quick --out results.json  # a short run (about 5 minutes on 2 quiet cores)
  python benchmarks/run.py --tiny --out results.json   # the smoke-test size (numbers mean nothing)
  python benchmarks/run.py --quick --curves --plots benchmarks --out benchmarks/RESULTS.json \
      --markdown benchmarks/RESULTS.md                   # the quick run with the curves and their PNGs
  python benchmarks/run.py --curves --skip noise throughput checkpoint dispatch --plots DIR  # only the curves

For the same model, in-memory synthetic data and strategy (default: 1 replica; mirrored: 2
logical CPUs), it measures the cost per step (wall clock and CPU time) of (a) a minimal
hand-written loop, (a') the same with a per-epoch checkpoint, (b) `harness.Trainer.fit` with
its default callbacks and a checkpoint each epoch (also with gradient accumulation, and with an
EMA of the weights) and (c) Keras `model.fit` with the
equivalent Keras callbacks, for steps_per_execution 1, 10, 100, on a small MLP and the
ResNet-style model. The contenders take turns in short slices (`benchmarks/interleave.py`);
each ratio is a median over epochs with a 95% bootstrap interval, and a noise floor (the
minimal loop against a copy of itself) says what the machine resolves. Also: a 2-worker
cluster on 127.0.0.1 (the decision point's overhead, and the cluster's cost over one process
per K), time to first step, checkpoint stall of sync vs async saves of a 100 MB model, the
per-hook cost of the callback dispatch and, in the full run (or with --curves), how cost
grows with model size and the cluster's cost against K (`--plots DIR` draws them: matplotlib,
the optional extra `pip install -e ".[bench]"`; nothing else needs it).

Prints the verdict lines (`VERDICT PASS|FAIL: target: numbers`) and a Markdown report;
`--out` writes the JSON: a list of rows, each with a "benchmark" field: "machine",
"throughput" (one per contender, strategy, model and K; the harness's has `vs_minimal`,
`vs_minimal_checkpoint`, `vs_keras` and their `_ci95` intervals; the feature rows "harness_accumulation"
and "harness_ema" also `vs_harness`), "noise_floor" (with
`ratio_ci95`), "cluster", "cluster_cost", "first_step", "checkpoint", "dispatch", "verdict",
and "curve_throughput", "curve_first_step", "curve_checkpoint".
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

from benchmarks import (
    checkpoint_stall,
    cluster,
    curves,
    dispatch,
    machine,
    noise_floor,
    one_cpu,
    plots,
    report,
    settings,
    throughput,
)
from benchmarks.workload import Workload

SECTIONS = ("noise", "throughput", "cluster", "checkpoint", "dispatch", "curves")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a short run (under 5 minutes)")
    size.add_argument("--tiny", action="store_true", help="the smoke-test size: checks it runs, numbers mean nothing")
    parser.add_argument("--curves", action="store_true",
                        help="also the size curves and the cluster's cost against K (always in the full run)")
    parser.add_argument("--out", help="write the rows as JSON to this file")
    parser.add_argument("--markdown", help="also write the Markdown report to this file")
    parser.add_argument("--plots", help="write the PNG plots of the curves into this directory (needs matplotlib)")
    parser.add_argument("--epochs", type=int, help="timed epochs per setting (default: per model and run size)")
    parser.add_argument("--models", nargs="+", choices=[m.name for m in settings.FULL.models],
                        help="these models (default: both; mlp for --quick and --tiny)")
    parser.add_argument("--strategies", nargs="+", choices=settings.STRATEGIES, help="only these strategies")
    parser.add_argument("--steps_per_execution", nargs="+", type=int, help="only these K (default: 1 10 100)")
    parser.add_argument("--all_cpus", action="store_true",
                        help="let the one-replica settings of the throughput sweep use every CPU (default: all "
                             "the threads on one CPU, which resolves their ratios far more finely; see "
                             "benchmarks/one_cpu.py)")
    parser.add_argument("--skip", nargs="+", default=[], choices=SECTIONS, help="sections to leave out")
    parser.add_argument("--workdir", help="where the runs write checkpoints and logs (default: a temporary "
                                          "directory, deleted afterwards)")
    return parser.parse_args(argv)


def chosen_settings(args: argparse.Namespace) -> settings.Settings:
    chosen = settings.TINY if args.tiny else settings.QUICK if args.quick else settings.FULL
    models = chosen.models
    if args.epochs:
        models = tuple(dataclasses.replace(m, epochs=args.epochs) for m in models)
    with_curves = chosen.with_curves or args.curves
    cluster = chosen.cluster
    if with_curves:  # the cluster's cost against K is one of the curves
        cluster = dataclasses.replace(cluster, steps_per_execution=chosen.curves.cluster_steps_per_execution)
    return dataclasses.replace(chosen, models=models, default_models=tuple(args.models or chosen.default_models),
                               strategies=tuple(args.strategies or chosen.strategies),
                               steps_per_execution=tuple(args.steps_per_execution or chosen.steps_per_execution),
                               with_curves=with_curves, cluster=cluster)


_START = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - _START:6.1f}s] {message}", file=sys.stderr, flush=True)


def warm_up(chosen: settings.Settings, workdir: str) -> None:
    """Pays TensorFlow's and Keras's one-off costs on a throwaway model, so no contender's first step does."""
    spec = settings.TINY.model("mlp")
    for strategy_name in chosen.strategies:
        workload = Workload(strategy_name, harness.build_strategy(strategy_name, num_cpu_devices=NUM_CPU_DEVICES),
                            spec)
        for name in settings.FIRST_STEP_CONTENDERS:
            throughput.build(name, workload, os.path.join(workdir, "warm-up", strategy_name, name)).first_step()


def measure(args: argparse.Namespace, chosen: settings.Settings, workdir: str) -> list[dict]:
    rows: list[dict] = []
    if chosen.warm_up:
        log(f"benchmarks ({chosen.name}): warming up")
        warm_up(chosen, workdir)
    with_noise = "noise" not in args.skip
    if "throughput" not in args.skip:
        throughput_rows, first_steps, noise = throughput.run(chosen, workdir, log, with_noise=with_noise,
                                                             pin=not args.all_cpus)
        rows += noise + throughput_rows + first_steps
    elif with_noise:
        spec = chosen.model("mlp")
        log("noise floor: the minimal loop against a copy of itself, default / mlp, K=1")
        with one_cpu.one_cpu(not args.all_cpus) as cpu:
            noise = noise_floor.run(Workload("default", harness.build_strategy("default"), spec), 1,
                                    chosen.probe_seconds, chosen.noise_band, workdir, log)
        rows += [{**row, "pinned_cpu": cpu} for row in noise]
    if "cluster" not in args.skip:
        log(f"2-worker cluster on 127.0.0.1: decision point at K=1, cluster / one process at K="
            f"{', '.join(map(str, chosen.cluster.steps_per_execution))}")
        rows += cluster.run(chosen.cluster, workdir, log)
    if "checkpoint" not in args.skip:
        log(f"checkpoint stall: a {chosen.checkpoint_kernel}x{chosen.checkpoint_kernel} float32 kernel")
        rows += checkpoint_stall.run(chosen.checkpoint_kernel, chosen.checkpoint_repeats, workdir, log)
    if "dispatch" not in args.skip:
        log("callback dispatch")
        strategy = harness.build_strategy("default")
        rows += dispatch.run(Workload("default", strategy, settings.TINY.model("mlp")), chosen.dispatch_calls,
                             chosen.dispatch_repeats, workdir, log)
    if chosen.with_curves and "curves" not in args.skip:
        rows += curves.run(chosen.curves, chosen.probe_seconds, workdir, log)
    return rows


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    chosen = chosen_settings(args)
    if args.plots:
        try:
            plots.require_matplotlib()  # before minutes of measuring, not after
        except plots.MissingMatplotlib as e:
            print(e, file=sys.stderr)
            return 2
    logging.set_verbosity(logging.ERROR)  # the harness's own warnings (e.g. async checkpoint skips) are results here
    pylogging.getLogger("tensorflow").setLevel(pylogging.ERROR)
    warnings.filterwarnings("ignore", message=".*shuffle=True.*")
    workdir = args.workdir or tempfile.mkdtemp(prefix="harness-benchmarks-")
    started = time.monotonic()
    load = [round(x, 2) for x in os.getloadavg()]
    try:
        rows = measure(args, chosen, workdir)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    about = machine.describe(ROOT, [sys.argv[0], *argv])
    about.update(benchmark="machine", settings=chosen.name, seconds=round(time.monotonic() - started, 1),
                 num_cpu_devices=NUM_CPU_DEVICES, measure=settings.PRIMARY_CLOCK, load_average=load,
                 load_average_end=[round(x, 2) for x in os.getloadavg()])
    lines = report.verdicts(rows)
    rows += [{"benchmark": "verdict", "passed": line.startswith("VERDICT PASS"), "line": line} for line in lines]
    written = plots.write([about, *rows], args.plots) if args.plots else []
    markdown_dir = os.path.dirname(os.path.abspath(args.markdown)) if args.markdown else os.getcwd()
    text = report.markdown(rows, about, chosen.name, [os.path.relpath(p, markdown_dir) for p in written])
    print(text)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump([about, *rows], f, indent=1)
            f.write("\n")
    for line in lines:
        log(line)
    for path in written:
        log(f"wrote {os.path.relpath(path)}")
    log(f"benchmarks ({chosen.name}) done in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
