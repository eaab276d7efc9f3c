#!/usr/bin/env python3
"""PNG plots of how cost grows, from a benchmark run's rows (matplotlib).

  python -m benchmarks.plots benchmarks/RESULTS.json            # writes the PNGs next to the JSON
  python -m benchmarks.plots results.json --dir=some/where

Writes `curve_throughput.png` (steps/s and CPU ms per step against parameters),
`curve_checkpoint.png` (save, restore and size against parameters, sync and async),
`curve_first_step.png` (time to first step against parameters) and `curve_cluster.png` (a
2-worker cluster's time per step over one process's at the same global batch, against K).
Each states the machine it was measured on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from benchmarks.settings import CONTENDER_NAMES as NAMES

Row = dict[str, Any]
MISSING = ("error: the plots need matplotlib, which is not installed; install it with `pip install -e \".[bench]\"` "
           "(or `pip install matplotlib`)")


class MissingMatplotlib(RuntimeError):
    pass


def require_matplotlib():
    """matplotlib.pyplot with the Agg backend; MissingMatplotlib (one line) when it is not installed."""
    try:
        import matplotlib  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise MissingMatplotlib(MISSING) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    return plt


def machine_line(machine: Row) -> str:
    load = machine.get("load_average")
    load_text = f", load {load[0]:.1f}" if load else ""
    return (f"Measured on {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores{load_text}; "
            f"TensorFlow {machine.get('tensorflow', '?')}, Keras {machine.get('keras', '?')}; "
            f"{machine.get('date', '?')}; harness {machine.get('harness_commit', '?')}; "
            f"{machine.get('settings', '?')} run")


def _by(rows: list[Row], benchmark: str) -> list[Row]:
    return [r for r in rows if r.get("benchmark") == benchmark and r.get("status") == "ok"]


def _series(rows: list[Row], key: str, field: str) -> dict[str, tuple[list[float], list[float]]]:
    out: dict[str, tuple[list[float], list[float]]] = {}
    for row in sorted(rows, key=lambda r: r["parameters"]):
        if row.get(field) is not None:
            xs, ys = out.setdefault(row[key], ([], []))
            xs.append(row["parameters"])
            ys.append(row[field])
    return out


def _finish(plt, fig, machine: Row, path: str) -> str:
    fig.text(0.5, 0.01, machine_line(machine), ha="center", va="bottom", fontsize=7, color="0.3")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _log_axes(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def write(rows: list[Row], directory: str) -> list[str]:
    """Writes every plot that `rows` has data for into `directory`; returns their paths."""
    plt = require_matplotlib()
    os.makedirs(directory, exist_ok=True)
    machine = next((r for r in rows if r.get("benchmark") == "machine"), {})
    written = []
    through = _by(rows, "curve_throughput")
    if through:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
        for field, ax, label in (("steps_per_sec", axes[0], "steps/s (wall clock)"),
                                 ("cpu_ms_per_step", axes[1], "CPU ms per step (user + system)")):
            for name, (xs, ys) in _series(through, "contender", field).items():
                ax.plot(xs, ys, marker="o", label=NAMES.get(name, name))
            _log_axes(ax, "parameters", label, f"{label}, K=1, default strategy, batch "
                      f"{through[0]['global_batch_size']}")
        written.append(_finish(plt, fig, machine, os.path.join(directory, "curve_throughput.png")))
    first = _by(rows, "curve_first_step")
    if first:
        fig, ax = plt.subplots(figsize=(6.5, 4.4))
        for name, (xs, ys) in _series(first, "contender", "seconds").items():
            ax.plot(xs, ys, marker="o", label=NAMES.get(name, name))
        _log_axes(ax, "parameters", "seconds", "time to first step (trace + compile + one step)")
        written.append(_finish(plt, fig, machine, os.path.join(directory, "curve_first_step.png")))
    ckpt = _by(rows, "curve_checkpoint")
    if ckpt:
        fig, axes = plt.subplots(1, 3, figsize=(14, 4.4))
        for mode, style in (("sync", "-"), ("async", "--")):
            mine = [r for r in ckpt if r["mode"] == mode]
            for field, label in (("save_s", "until on disk"), ("blocked_s", "blocks the loop")):
                if mode == "sync" and field == "blocked_s":
                    continue  # the same as on disk
                for _, (xs, ys) in _series(mine, "mode", field).items():
                    axes[0].plot(xs, [y * 1000 for y in ys], style, marker="o", label=f"{mode}: {label}")
            for _, (xs, ys) in _series(mine, "mode", "restore_s").items():
                axes[1].plot(xs, [y * 1000 for y in ys], style, marker="o", label=f"{mode}")
            for _, (xs, ys) in _series(mine, "mode", "bytes").items():
                axes[2].plot(xs, [y / 1e6 for y in ys], style, marker="o", label=f"{mode}")
        _log_axes(axes[0], "parameters", "ms", "checkpoint save")
        _log_axes(axes[1], "parameters", "ms", "checkpoint restore (restore_newest)")
        _log_axes(axes[2], "parameters", "MB", "checkpoint size on disk")
        written.append(_finish(plt, fig, machine, os.path.join(directory, "curve_checkpoint.png")))
    cost = sorted(_by(rows, "cluster_cost"), key=lambda r: r["steps_per_execution"])
    if cost:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
        ks = [r["steps_per_execution"] for r in cost]
        axes[0].plot(ks, [r["cluster_ms_per_step"] for r in cost], marker="o", label="2-worker cluster")
        axes[0].plot(ks, [r["single_ms_per_step"] for r in cost], marker="o", label="one process")
        _log_axes(axes[0], "K (steps per execution)", "ms per step (wall)",
                  f"harness loop + decision point, global batch {cost[0]['global_batch_size']}")
        medians = [r["cost"] for r in cost]
        errors = [[m - r["cost_ci95"][0] for m, r in zip(medians, cost)],
                  [r["cost_ci95"][1] - m for m, r in zip(medians, cost)]]
        axes[1].errorbar(ks, medians, yerr=errors, marker="o", capsize=3, label="cluster / one process (95% CI)")
        axes[1].axhline(1.0, color="0.5", lw=0.8)
        _log_axes(axes[1], "K (steps per execution)", "time per step, cluster / one process",
                  "cost of a 2-worker cluster (127.0.0.1) over one process")
        written.append(_finish(plt, fig, machine, os.path.join(directory, "curve_cluster.png")))
    return written


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="the JSON that benchmarks/run.py --out wrote")
    parser.add_argument("--dir", help="where to write the PNGs (default: next to the JSON)")
    args = parser.parse_args(argv)
    with open(args.results, encoding="utf-8") as f:
        rows = json.load(f)
    try:
        paths = write(rows, args.dir or os.path.dirname(os.path.abspath(args.results)))
    except MissingMatplotlib as e:
        print(e, file=sys.stderr)
        return 1
    print("\n".join(paths) if paths else "no curve rows in " + args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
