"""The Markdown report of a benchmark run, and the verdicts: the targets the harness is held to, checked."""

from __future__ import annotations

import os
from typing import Any

from benchmarks import targets
from benchmarks.settings import CONTENDER_NAMES as NAMES
from benchmarks.settings import CONTENDERS, FEATURE_CONTENDERS, PRIMARY_CLOCK

Row = dict[str, Any]


CLOCK_NAMES = {"cpu": "CPU time", "wall": "wall clock"}


def _key(row: Row) -> tuple:
    return row["strategy"], row["model"], row["steps_per_execution"]


def _where(key: tuple) -> str:
    return "/".join(map(str, key[:2])) + f"/K={key[2]}"


def throughput_cells(rows: list[Row], benchmark: str = "throughput") -> dict[tuple, dict[str, Row]]:
    """{(strategy, model, K): {contender: row}} in run order."""
    cells: dict[tuple, dict[str, Row]] = {}
    for row in rows:
        if row["benchmark"] == benchmark:
            cells.setdefault(_key(row), {})[row["contender"]] = row
    return cells


def ratio_of(row: Row | None, other: str, clock: str = PRIMARY_CLOCK) -> dict | None:
    """{median, ci95} of `row`'s speed relative to `other` on `clock`, or None."""
    if not row or row["status"] != "ok":
        return None
    return ((row.get("ratios") or {}).get(clock) or {}).get(other)


def fmt_ci(value: float | None, ci: list[float] | None, digits: int = 2, percent: bool = False) -> str:
    if value is None:
        return "–"
    f = (lambda v: f"{v:.{max(digits - 2, 1)}%}") if percent else (lambda v: f"{v:.{digits}f}")
    return f"{f(value)} [{f(ci[0])}, {f(ci[1])}]" if ci else f(value)


def _mark(r: dict | None, target: float | None) -> str:
    if r is None:
        return "–"
    text = fmt_ci(r["median"], r["ci95"])
    if target is None:
        return text
    return f"{text} {'✓' if r['ci95'] and r['ci95'][0] >= target else '✗'}"


def _speed(row: Row | None, field: str = "steps_per_sec") -> str:
    if row is None:
        return "–"
    if row["status"] != "ok":
        return "fails"
    value = row[field]
    if value is None:
        return "–"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.3f}"


# ----- verdicts --------------------------------------------------------------------------------------------------


def _verdict(passed: bool, target: str, details: str) -> str:
    return f"VERDICT {'PASS' if passed else 'FAIL'}: {target}: {details}"


def _lower_bound_verdict(target_text: str, values: dict[tuple, dict], target: float) -> str | None:
    if not values:
        return None
    missed = {k: v for k, v in values.items() if not v["ci95"] or v["ci95"][0] < target}
    worst = min(values.items(), key=lambda kv: kv[1]["ci95"][0] if kv[1]["ci95"] else -1)
    if missed:
        unresolved = [k for k, v in missed.items() if v["median"] >= target]
        details = (f"missed in {len(missed)} of {len(values)} settings: "
                   + "; ".join(f"{_where(k)} {fmt_ci(v['median'], v['ci95'])}"
                               + (" (median meets it; not resolved)" if k in unresolved else "")
                               for k, v in missed.items()))
    else:
        details = (f"met in all {len(values)} settings; lowest {_where(worst[0])} "
                   f"{fmt_ci(worst[1]['median'], worst[1]['ci95'])}")
    return _verdict(not missed, target_text, details)


def verdicts(rows: list[Row]) -> list[str]:
    """One line per target: PASS or FAIL, with the numbers (never hidden)."""
    cells = throughput_cells(rows)
    clock = CLOCK_NAMES[PRIMARY_CLOCK]
    lines = []
    vs_ckpt = {k: r for k, c in cells.items() if (r := ratio_of(c.get("harness"), "minimal_checkpoint"))}
    line = _lower_bound_verdict(f"harness / (minimal + checkpoint) >= {targets.VS_MINIMAL} in every setting "
                                f"(lower bound of the 95% interval, {clock})", vs_ckpt, targets.VS_MINIMAL)
    lines += [line] if line else []
    vs_keras = {k: r for k, c in cells.items() if (r := ratio_of(c.get("harness"), "keras"))}
    line = _lower_bound_verdict(f"harness >= Keras fit wherever fit runs (lower bound >= {targets.VS_KERAS:.2f}, "
                                f"{clock})", vs_keras, targets.VS_KERAS)
    lines += [line] if line else []
    mlp_k1 = {k: v for k, v in vs_keras.items() if k[1] == "mlp" and k[2] == 1}
    line = _lower_bound_verdict(f"harness / Keras fit >= {targets.VS_KERAS_MLP_K1} on the MLP at K=1 "
                                f"(lower bound, {clock})", mlp_k1, targets.VS_KERAS_MLP_K1)
    lines += [line] if line else []
    for row in rows:
        if row["benchmark"] == "cluster":
            target = f"decision point <= {targets.DECISION_OVERHEAD:.0%} of the step at K=1 on a 2-worker cluster " \
                     "(upper bound of the 95% interval, wall clock)"
            if row["status"] != "ok":
                lines.append(_verdict(False, target, f"not measured: {row['error']}"))
                continue
            passed = row["overhead_ci95"][1] <= targets.DECISION_OVERHEAD
            lines.append(_verdict(passed, target, f"{fmt_ci(row['overhead'], row['overhead_ci95'], 3, True)} "
                                  f"({row['decision_ms']:.3f} ms per decision, {row['step_ms']:.3f} ms per one-step "
                                  f"loop, {row['repeats']} rounds)"))
        if row["benchmark"] == "noise_floor":
            band = row["band"]
            target = (f"noise floor (minimal loop / itself, same protocol) within ±{band:.0%} "
                      f"(95% interval, {clock})")
            if row["status"] != "ok":
                lines.append(_verdict(False, target, f"not measured: {row['error']}"))
                continue
            other = "wall" if PRIMARY_CLOCK == "cpu" else "cpu"
            lines.append(_verdict(row["within_band"], target,
                                  f"{fmt_ci(row['ratio_median'], row['ratio_ci95'], 4)} over {row['repeats']} epochs "
                                  f"at {_where(_key(row))}; by {CLOCK_NAMES[other]}: "
                                  f"{fmt_ci(row[f'{other}_ratio_median'], row[f'{other}_ratio_ci95'], 4)} "
                                  f"({'within' if row[f'{other}_within_band'] else 'outside'} the band)"))
    ckpt = {r["mode"]: r for r in rows if r["benchmark"] == "checkpoint"}
    if ckpt.get("sync", {}).get("status") == "ok" and "async" in ckpt:
        target = f"async checkpoint blocks the loop <= {targets.ASYNC_STALL:.0%} of a synchronous save"
        row = ckpt["async"]
        if row["status"] != "ok":
            lines.append(_verdict(False, target, f"async saves fail: {row['error']}"))
        else:
            blocked = row["blocked_s"] / ckpt["sync"]["total_s"]
            lost = row["stall_s"] / ckpt["sync"]["total_s"]
            lines.append(_verdict(blocked <= targets.ASYNC_STALL, target,
                                  f"{blocked:.1%} ({row['megabytes']:.0f} MB; training time lost including the "
                                  f"background write: {lost:.1%}; {row['repeats']} repeats)"))
    return lines


# ----- tables ------------------------------------------------------------------------------------------------------


def speed_table(rows: list[Row], benchmark: str = "throughput") -> list[str]:
    names = list(CONTENDERS)
    lines = ["| strategy | model | K | steps / epoch | " + " | ".join(f"{NAMES[n]} steps/s" for n in names) + " | "
             + " | ".join(f"{NAMES[n]} CPU ms/step" for n in names) + " |",
             "|---|---|--:|--:|" + "--:|" * (2 * len(names))]
    for (strategy, model, k), cell in throughput_cells(rows, benchmark).items():
        first = next(iter(cell.values()))
        lines.append(f"| {strategy} | {model} | {k} | {first['steps_per_epoch']} | "
                     + " | ".join(_speed(cell.get(n)) for n in names) + " | "
                     + " | ".join(_speed(cell.get(n), "cpu_ms_per_step") for n in names) + " |")
    return lines


def ratio_table(rows: list[Row], clock: str) -> list[str]:
    lines = ["| strategy | model | K | harness / (minimal + checkpoint) | harness / minimal | harness / Keras fit | "
             "checkpoint: (minimal + checkpoint) / minimal |", "|---|---|--:|--:|--:|--:|--:|"]
    for key, cell in throughput_cells(rows).items():
        harness = cell.get("harness")
        keras_target = targets.VS_KERAS_MLP_K1 if key[1] == "mlp" and key[2] == 1 else targets.VS_KERAS
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | "
                     f"{_mark(ratio_of(harness, 'minimal_checkpoint', clock), targets.VS_MINIMAL)} | "
                     f"{_mark(ratio_of(harness, 'minimal', clock), None)} | "
                     f"{_mark(ratio_of(harness, 'keras', clock), keras_target)} | "
                     f"{_mark(ratio_of(cell.get('minimal_checkpoint'), 'minimal', clock), None)} |")
    return lines


def features_table(rows: list[Row]) -> list[str]:
    """The harness with a training feature on, against the plain harness and minimal + checkpoint (CPU time)."""
    lines = ["| strategy | model | K | feature | steps/s | CPU ms/step | feature / plain harness | "
             "feature / (minimal + checkpoint) |", "|---|---|--:|---|--:|--:|--:|--:|"]
    for (strategy, model, k), cell in throughput_cells(rows).items():
        for name in FEATURE_CONTENDERS:
            row = cell.get(name)
            if row is not None:
                lines.append(f"| {strategy} | {model} | {k} | {NAMES[name]} | {_speed(row)} | "
                             f"{_speed(row, 'cpu_ms_per_step')} | {_mark(ratio_of(row, 'harness'), None)} | "
                             f"{_mark(ratio_of(row, 'minimal_checkpoint'), None)} |")
    return lines if len(lines) > 2 else []


def failures(rows: list[Row]) -> list[str]:
    found: dict[tuple[str, str], list[str]] = {}
    for key, cell in throughput_cells(rows).items():
        for row in cell.values():
            if row["status"] != "ok":
                found.setdefault((row["contender"], row["error"] or "unknown error"), []).append(_where(key))
    return [f"fails: {NAMES.get(n, n)} at {', '.join(where)}: `{error}`" for (n, error), where in found.items()]


def per_contender_table(rows: list[Row], field: str, fmt: str) -> list[str]:
    """One throughput-row field per contender, e.g. the epoch-end cost in ms."""
    lines = ["| strategy | model | K | " + " | ".join(NAMES[n] for n in CONTENDERS) + " |",
             "|---|---|--:|" + "--:|" * len(CONTENDERS)]
    for (strategy, model, k), cell in throughput_cells(rows).items():
        values = []
        for name in CONTENDERS:
            row = cell.get(name)
            values.append("–" if row is None else "fails" if row["status"] != "ok" or row.get(field) is None
                          else format(row[field], fmt))
        lines.append(f"| {strategy} | {model} | {k} | {' | '.join(values)} |")
    return lines


def first_step_table(rows: list[Row]) -> list[str]:
    names = ("minimal", "harness", "keras")
    lines = ["| strategy | model | " + " | ".join(NAMES[n] for n in names) + " |", "|---|---|--:|--:|--:|"]
    cells: dict[tuple, dict[str, Row]] = {}
    for row in rows:
        if row["benchmark"] == "first_step":
            cells.setdefault((row["strategy"], row["model"]), {})[row["contender"]] = row
    for (strategy, model), cell in cells.items():
        values = [f"{cell[n]['seconds']:.2f} s" if n in cell and cell[n]["status"] == "ok" else "fails"
                  for n in names]
        lines.append(f"| {strategy} | {model} | {' | '.join(values)} |")
    return lines


def noise_table(rows: list[Row]) -> list[str]:
    lines = ["| setting | epochs | steps / epoch | CPU time: median [95% CI] | range | wall clock: median [95% CI] | "
             "range | band |", "|---|--:|--:|--:|--:|--:|--:|--:|"]
    for row in rows:
        if row["benchmark"] != "noise_floor" or row["status"] != "ok":
            continue
        by = {c: (row["ratio_median"], row["ratio_ci95"], row["ratio_min"], row["ratio_max"], row["within_band"])
              if c == PRIMARY_CLOCK else (row[f"{c}_ratio_median"], row[f"{c}_ratio_ci95"], row[f"{c}_ratio_min"],
                                          row[f"{c}_ratio_max"], row[f"{c}_within_band"]) for c in ("cpu", "wall")}
        cells = [f"{fmt_ci(m, ci, 4)} {'✓' if ok else '✗'} | {lo:.3f}-{hi:.3f}" for m, ci, lo, hi, ok in by.values()]
        lines.append(f"| {_where(_key(row))} | {row['repeats']} | {row['steps_per_epoch']} | {' | '.join(cells)} | "
                     f"±{row['band']:.0%} |")
    return lines


def cluster_tables(rows: list[Row]) -> list[str]:
    out = []
    for row in rows:
        if row["benchmark"] == "cluster":
            if row["status"] != "ok":
                out += [f"The cluster job failed: `{row['error']}`", ""]
                continue
            out += ["| decision point per call (added) | one-step loop per call | decision / step (wall) | "
                    "decision / step (worker 0's CPU) | rounds | target |", "|--:|--:|--:|--:|--:|--:|",
                    f"| {row['decision_ms']:.3f} ms | {row['step_ms']:.3f} ms | "
                    f"{fmt_ci(row['overhead'], row['overhead_ci95'], 3, True)} | "
                    f"{fmt_ci(row['cpu_overhead'], row['cpu_overhead_ci95'], 3, True)} | {row['repeats']} | "
                    f"<= {row['target']:.0%} |", ""]
            if row.get("exit_error"):
                out += [f"After reporting every block, {row['exit_error']}.", ""]
            if row.get("threads_end") is not None:
                out += [f"Worker 0's threads: {row['threads_start']} after its first fit, {row['threads_end']} at the "
                        "end (the collective timeout is one watchdog thread: see `benchmarks/cluster_job.py`).", ""]
    cost = [r for r in rows if r["benchmark"] == "cluster_cost" and r["status"] == "ok"]
    if cost:
        out += ["| K | cluster ms/step | one process ms/step | cluster / one process (wall) | "
                "cluster / one process (worker 0's CPU) | rounds |", "|--:|--:|--:|--:|--:|--:|"]
        for r in sorted(cost, key=lambda r: r["steps_per_execution"]):
            out.append(f"| {r['steps_per_execution']} | {r['cluster_ms_per_step']:.3f} | "
                       f"{r['single_ms_per_step']:.3f} | {fmt_ci(r['cost'], r['cost_ci95'])} | "
                       f"{fmt_ci(r['cpu_cost'], r['cpu_cost_ci95'])} | "
                       f"{r['repeats']} |")
        out.append("")
    return out


def _seconds(value: float | None) -> str:
    return "–" if value is None else (f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s")


def checkpoint_table(rows: list[Row]) -> list[str]:
    ckpt = [r for r in rows if r["benchmark"] == "checkpoint"]
    if not ckpt:
        return []
    sync = next((r for r in ckpt if r["mode"] == "sync" and r["status"] == "ok"), None)
    lines = ["| save | MB | blocks the loop | training time lost (blocked + slower steps after) | on disk after | "
             "blocked / sync save | lost / sync save |", "|---|--:|--:|--:|--:|--:|--:|"]
    for row in ckpt:
        if row["status"] != "ok":
            first = row["first_save"]
            where = f"fails from the 2nd save (1st save: {_seconds(first['blocked_s'])})" if first else "fails"
            lines.append(f"| {row['mode']} | {row['megabytes']:.0f} | {where} | – | – | – | – |")
            continue
        relative = [f"{row[k] / sync['total_s']:.1%}" if sync and row["mode"] != "sync" else "–"
                    for k in ("blocked_s", "stall_s")]
        lines.append(f"| {row['mode']} | {row['megabytes']:.0f} | {_seconds(row['blocked_s'])} | "
                     f"{_seconds(row['stall_s'])} | {_seconds(row['total_s'])} | {relative[0]} | {relative[1]} |")
    for row in ckpt:
        if row["status"] != "ok":
            lines += ["", f"fails: {row['mode']}: `{row['error']}`"]
    return lines


def dispatch_table(rows: list[Row]) -> list[str]:
    disp = [r for r in rows if r["benchmark"] == "dispatch"]
    if not disp:
        return []
    lines = ["| dispatch | hook | µs per call |", "|---|---|--:|"]
    for row in disp:
        lines.append(f"| {NAMES[row['contender']]} | {row['hook']} | {row['us_per_call']:.2f} |")
    return lines


def curve_tables(rows: list[Row]) -> list[str]:
    through = [r for r in rows if r["benchmark"] == "curve_throughput"]
    out = []
    if through:
        sizes = sorted({r["parameters"] for r in through})
        out += ["| parameters | " + " | ".join(f"{NAMES[n]} steps/s" for n in CONTENDERS) + " | "
                + " | ".join(f"{NAMES[n]} CPU ms/step" for n in CONTENDERS) + " | harness / (minimal + checkpoint) |",
                "|--:|" + "--:|" * (2 * len(CONTENDERS) + 1)]
        for size in sizes:
            cell = {r["contender"]: r for r in through if r["parameters"] == size}
            out.append(f"| {size:,d} | " + " | ".join(_speed(cell.get(n)) for n in CONTENDERS) + " | "
                       + " | ".join(_speed(cell.get(n), "cpu_ms_per_step") for n in CONTENDERS) + " | "
                       + _mark(ratio_of(cell.get("harness"), "minimal_checkpoint"), None) + " |")
        out.append("")
    first = [r for r in rows if r["benchmark"] == "curve_first_step"]
    if first:
        names = ("minimal", "harness", "keras")
        out += ["| parameters | " + " | ".join(f"{NAMES[n]} first step" for n in names) + " |", "|--:|--:|--:|--:|"]
        for size in sorted({r["parameters"] for r in first}):
            cell = {r["contender"]: r for r in first if r["parameters"] == size}
            out.append(f"| {size:,d} | " + " | ".join(
                f"{cell[n]['seconds']:.2f} s" if n in cell and cell[n]["status"] == "ok" else "fails" for n in names)
                + " |")
        out.append("")
    ckpt = [r for r in rows if r["benchmark"] == "curve_checkpoint"]
    if ckpt:
        out += ["| parameters | mode | blocks the loop | on disk after | restore | size |", "|--:|---|--:|--:|--:|--:|"]
        for r in sorted(ckpt, key=lambda r: (r["parameters"], r["mode"] != "sync")):
            if r["status"] != "ok":
                out.append(f"| {r['parameters']:,d} | {r['mode']} | fails: `{r['error']}` | | | |")
                continue
            out.append(f"| {r['parameters']:,d} | {r['mode']} | {_seconds(r['blocked_s'])} | {_seconds(r['save_s'])} | "
                       f"{_seconds(r['restore_s'])} | {r['bytes'] / 1e6:.2f} MB |")
        out.append("")
    return out


METHOD = """\
## Method

- Same for every contender: the model (same initial weights), the strategy object, SGD (lr 0.01), sparse
  categorical cross-entropy from logits, and the data: one in-memory synthetic batch per replica, repeated
  (`distribute_datasets_from_function`), so the numbers measure the training loop, not an input pipeline.
  `default` is TensorFlow's default strategy (1 replica); `mirrored` uses 2 logical CPU devices.
- minimal: one `tf.function` running K steps in a `tf.range` loop (forward, per-example loss averaged
  over the global batch, gradients, SGD update, running loss and accuracy sums read once per epoch);
  no callbacks, no checkpoints. minimal + checkpoint: the same, plus a synchronous
  `tf.train.CheckpointManager.save` (max_to_keep=3) of model, optimizer, step and sums at every epoch end,
  the work the harness does there; harness / (minimal + checkpoint) is the harness's own overhead.
- harness: `harness.Trainer.fit` with the default callbacks of `scripts/train.py` (TensorBoard,
  CSVLogger, ProgressBar into a buffer) and its training-state checkpoint at every epoch end.
- Training features (issue 13): the same harness with `gradient_accumulation_steps=2` (each update: 2
  micro-batches of half the global batch, the same examples) and with `ema_decay=0.999`, each a contender
  of its own; their ratio to the plain harness is the feature's cost.
- Keras fit: `model.compile(..., metrics=["accuracy"], steps_per_execution=K)`, `model.fit(verbose=1)`
  (progress bar into a buffer) with TensorBoard, CSVLogger and BackupAndRestore (Keras's training-state
  checkpoint, every epoch).
- Protocol (`benchmarks/interleave.py`): the contenders run side by side in one process, each in a thread
  of its own, but only one at a time: they take turns in slices of a few K-step calls (about 15 ms of the
  minimal loop; one call when a call takes longer), in a random order every turn (seeded), so that load
  changes on this shared machine hit all of them alike and no contender always follows the same one.
  An epoch is a whole number of slices (about 0.5 s of the minimal loop; 0.2 s in the quick run), its
  last slice holding the epoch end (metrics, callbacks, checkpoint); each contender trains one untimed
  warm-up epoch, then the timed epochs. Clocks: the wall clock and the process's CPU time
  (`time.process_time`: user + system time of all its threads; the waiting contenders are blocked and use
  none), read when a contender gets its turn and when it hands over. Unless `--all_cpus`, every thread
  of the process runs on one CPU while the one-replica (`default`) settings take turns
  (`benchmarks/one_cpu.py`): on 2 cores TensorFlow's hand-offs between threads cost more across cores,
  and where the scheduler placed the threads lasted seconds, so a contender could cost 20% more than its
  identical copy for a whole epoch; pinned, the noise floor's interval narrows from about ±4% to about
  ±1%, and a small step costs less CPU time (those steps/s are one core's). The `mirrored` settings run
  on every CPU: pinned, Keras fit's 2-replica step hung (TensorFlow sizes the thread pools it creates by
  the CPUs the process may use).
- A ratio is the other contender's cost over the harness's (the harness's speed relative to it), from
  slices paired by epoch and position (they ran within one turn of the scheduler): the median of the
  per-slice ratios of the loop slices and the median of those of the last slices (epoch ends), weighted by
  the other contender's typical cost of each kind. Its 95% interval is the percentile bootstrap over
  epochs (4,000 resamples of whole epochs). The JSON rows also keep the per-epoch ratios and the ratio of
  the totals (`ratios.<clock>.<other>`): a cost that comes in fewer than half of the slices of its kind
  (e.g. the progress bar's line every 15 s) is in those, not in the median. Targets are checked on the
  interval's bound.
- CPU time is the primary measure: on this shared 2-core VM the wall clock also counts the time other
  processes hold the cores, and with 2 replicas a step's wall time is mostly waiting for a core (see the
  noise floor and the wall-clock ratios). Both are in the JSON rows (`ratios.cpu`, `ratios.wall`).
- Noise floor: a second, identical minimal loop takes its turns with the contenders in the first setting;
  its ratio to the first should be 1, and its interval says what this machine can resolve.
- 2-worker cluster: two real processes on 127.0.0.1 started through `harness.launch`, each one replica
  under MultiWorkerMirroredStrategy (`benchmarks/cluster_job.py`). Blocks alternate (ABBA) with a barrier
  before each: blocks of 8 one-step loops as `fit` runs them (`controller.run_loop`, one call of which
  carries the worker's votes in its gradient all-reduce, each followed by its decision point
  `controller._decide`) against blocks of 8 bare one-step loop calls, interleaved (AB, BA), the median
  block of each kind per round; the difference is the decision's overhead. And, per K, the cluster's
  K-step loop + decision point against the same on one process with the whole global batch. Wall clock
  of worker 0 (a collective mostly waits for the other worker).
- Time to first step: from the training call (the first loop call for the minimal loop) to the end of
  the first step, K=1, after a throwaway warm-up of TensorFlow and Keras in the same process.
"""


def pinning_line(rows: list[Row]) -> str:
    """Which settings' turns ran with every thread on one CPU (`benchmarks/one_cpu.py`)."""
    timed = [r for r in rows if r["benchmark"] in ("throughput", "noise_floor")]
    pinned = sorted({(r["strategy"], r["pinned_cpu"]) for r in timed if r.get("pinned_cpu") is not None})
    if not pinned:
        return "- CPUs: every setting's turns ran on every CPU"
    others = sorted({r["strategy"] for r in timed if r.get("pinned_cpu") is None})
    where = "; ".join(f"the {name} settings' turns ran with every thread on CPU {cpu}" for name, cpu in pinned)
    return f"- CPUs: {where} (`benchmarks/one_cpu.py`)" + (f"; {', '.join(others)} on every CPU" if others else "")


def markdown(rows: list[Row], machine: dict[str, Any], settings_name: str, plots: list[str] = ()) -> str:
    """The report; `plots` are image paths relative to where the Markdown file goes."""
    load = machine.get("load_average") or [float("nan")] * 3
    load_end = machine.get("load_average_end") or [float("nan")] * 3
    out = [f"# Benchmarks: harness vs a minimal loop vs Keras fit ({settings_name} run)", "",
           f"- Machine: {machine['cpu']}, {machine['cores']} cores, no GPU; {machine['platform']}; load average "
           f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} at the start, {load_end[0]:.2f} / {load_end[1]:.2f} / "
           f"{load_end[2]:.2f} at the end (1 / 5 / 15 min)",
           f"- Date: {machine['date']}; TensorFlow {machine['tensorflow']}, Keras {machine['keras']}, "
           f"Python {machine['python']}; harness commit {machine['harness_commit']}; took {machine.get('seconds')} s",
           f"- Command: `{machine['command']}`", pinning_line(rows), "",
           "## Verdicts", "", *(f"- `{line}`" for line in verdicts(rows)), ""]
    if any(r["benchmark"] == "throughput" for r in rows):
        out += ["## Training throughput", "",
                "Medians over the timed epochs: steps/s by the wall clock, CPU ms per step by the process's CPU "
                "time. Default callbacks on for the harness and Keras fit; a checkpoint at every epoch end for "
                "them and for minimal + checkpoint.", "", *speed_table(rows), "", *failures(rows), "",
                "### Ratios by CPU time (the primary measure): median [95% bootstrap interval] over epochs", "",
                "Each is the harness's speed relative to the other (the other's CPU time per epoch over the "
                "harness's); the last column is the checkpoint's cost. ✓/✗: the interval's lower bound against "
                f"the target ({targets.VS_MINIMAL} for minimal + checkpoint; {targets.VS_KERAS_MLP_K1} for Keras fit "
                f"on the MLP at K=1, else {targets.VS_KERAS}).", "", *ratio_table(rows, "cpu"), "",
                "### The same ratios by the wall clock", "", *ratio_table(rows, "wall"), ""]
        features = features_table(rows)
        if features:
            out += ["### Training features (issue 13): the harness with gradient accumulation or an EMA of the "
                    "weights", "",
                    "Same global batch and K (an update is 2 micro-batches of half the batch with accumulation); "
                    "ratios by CPU time, median [95% interval]: below 1 is the feature's cost.", "", *features, ""]
    if any(r["benchmark"] == "noise_floor" for r in rows):
        out += ["## Noise floor: the minimal loop against an identical copy, in the same turns", "",
                *noise_table(rows), ""]
    if any(r["benchmark"] in ("cluster", "cluster_cost") for r in rows):
        out += ["## 2-worker cluster on 127.0.0.1 (harness.launch, one replica per worker)", "",
                *cluster_tables(rows)]
    if any(r["benchmark"] == "throughput" for r in rows):
        out += ["## Epoch end (ms, wall, median): metrics, callbacks and the checkpoint, from the last batch hook to "
                "the next epoch", "", *per_contender_table(rows, "epoch_end_ms", ".1f"), "",
                "## Set-up of a training call (s, wall: from the call to its first K-step call)", "",
                *per_contender_table(rows, "setup_s", ".3f"), "",
                "## Time to first step (trace + compile + one step, from the training call)", "",
                *first_step_table(rows), ""]
    if any(r["benchmark"] == "checkpoint" for r in rows):
        out += ["## Checkpoint stall (medians)", "", *checkpoint_table(rows), ""]
    if any(r["benchmark"] == "dispatch" for r in rows):
        out += ["## Callback dispatch (medians, no logs)", "", *dispatch_table(rows), ""]
    if any(r["benchmark"].startswith("curve_") for r in rows) or plots:
        out += ["## How cost grows (default strategy, K=1; an MLP of two hidden layers of growing width)", "",
                *(f"![{os.path.splitext(os.path.basename(p))[0]}]({p})" for p in plots),
                "" if plots else "", *curve_tables(rows)]
    out += [METHOD]
    return "\n".join(out)
