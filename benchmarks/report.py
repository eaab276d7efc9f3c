"""The Markdown report of a benchmark run, and the targets the harness is held to."""

from __future__ import annotations

from typing import Any

from benchmarks.settings import CONTENDERS

Row = dict[str, Any]

TARGET_VS_MINIMAL = 0.97  # harness / minimal loop, every K, default callbacks on
TARGET_VS_KERAS_MLP_K1 = 1.5  # harness / Keras fit, small MLP, K=1
TARGET_VS_KERAS = 1.0  # harness / Keras fit, wherever Keras runs
TARGET_ASYNC_STALL = 0.10  # async checkpoint stall / synchronous save time

NAMES = {"minimal": "minimal loop", "harness": "harness", "keras": "Keras fit"}


def _key(row: Row) -> tuple:
    return row["strategy"], row["model"], row["steps_per_execution"]


def throughput_cells(rows: list[Row]) -> dict[tuple, dict[str, Row]]:
    """{(strategy, model, K): {contender: row}} in run order."""
    cells: dict[tuple, dict[str, Row]] = {}
    for row in rows:
        if row["benchmark"] == "throughput":
            cells.setdefault(_key(row), {})[row["contender"]] = row
    return cells


def ratio(a: Row | None, b: Row | None) -> float | None:
    """a's speed over b's: the harness row's paired ratio (median over repeats) when it has one."""
    if not a or not b or a["status"] != "ok" or b["status"] != "ok":
        return None
    paired = a.get(f"vs_{b['contender']}")
    return paired if paired is not None else a["steps_per_sec"] / b["steps_per_sec"]


def keras_target(model: str, k: int) -> float:
    return TARGET_VS_KERAS_MLP_K1 if (model == "mlp" and k == 1) else TARGET_VS_KERAS


def _mark(value: float | None, target: float) -> str:
    if value is None:
        return "–"
    return f"{value:.2f} {'✓' if value >= target else '✗'}"


def _speed(row: Row | None, field: str = "steps_per_sec") -> str:
    if row is None:
        return "–"
    if row["status"] != "ok":
        return "fails"
    value = row[field]
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def throughput_table(rows: list[Row]) -> list[str]:
    lines = ["| strategy | model | K | global batch | steps / epoch | minimal steps/s | harness steps/s | "
             "Keras fit steps/s | harness / minimal | harness / Keras | minimal ex/s | harness ex/s | Keras ex/s |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    failures: dict[tuple[str, str], list[str]] = {}  # (contender, error) -> where
    for (strategy, model, k), cell in throughput_cells(rows).items():
        first = next(iter(cell.values()))
        harness = cell.get("harness")
        lines.append(
            f"| {strategy} | {model} | {k} | {first['global_batch_size']} | {first['steps_per_epoch']} | "
            f"{_speed(cell.get('minimal'))} | {_speed(harness)} | "
            f"{_speed(cell.get('keras'))} | {_mark(ratio(harness, cell.get('minimal')), TARGET_VS_MINIMAL)} | "
            f"{_mark(ratio(harness, cell.get('keras')), keras_target(model, k))} | "
            f"{_speed(cell.get('minimal'), 'examples_per_sec')} | {_speed(harness, 'examples_per_sec')} | "
            f"{_speed(cell.get('keras'), 'examples_per_sec')} |")
        for row in cell.values():
            if row["status"] != "ok":
                failures.setdefault((row["contender"], row["error"] or "unknown error"), []).append(
                    f"{strategy}/{model}/K={k}")
    for (name, error), places in failures.items():
        lines += ["", f"fails: {NAMES[name]} at {', '.join(places)}: `{error}`"]
    return lines


def per_contender_table(rows: list[Row], field: str, scale: float, digits: int) -> list[str]:
    """One throughput-row field per contender, e.g. the epoch-end cost in ms."""
    lines = ["| strategy | model | K | minimal | harness | Keras fit |", "|---|---|--:|--:|--:|--:|"]
    for (strategy, model, k), cell in throughput_cells(rows).items():
        values = []
        for name in CONTENDERS:
            row = cell.get(name)
            ok = row and row["status"] == "ok" and row[field] is not None
            failed = "fails" if row and row["status"] != "ok" else "–"
            values.append(f"{row[field] * scale:.{digits}f}" if ok else failed)
        lines.append(f"| {strategy} | {model} | {k} | {' | '.join(values)} |")
    return lines


def first_step_table(rows: list[Row]) -> list[str]:
    lines = ["| strategy | model | minimal | harness | Keras fit |", "|---|---|--:|--:|--:|"]
    cells: dict[tuple, dict[str, Row]] = {}
    for row in rows:
        if row["benchmark"] == "first_step":
            cells.setdefault((row["strategy"], row["model"]), {})[row["contender"]] = row
    for (strategy, model), cell in cells.items():
        values = [f"{cell[n]['seconds']:.2f} s" if n in cell and cell[n]["status"] == "ok" else "fails"
                  for n in CONTENDERS]
        lines.append(f"| {strategy} | {model} | {' | '.join(values)} |")
    return lines


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


def targets(rows: list[Row]) -> list[str]:
    """One line per target: met or missed, and where."""
    cells = throughput_cells(rows)
    vs_min = {key: ratio(c.get("harness"), c.get("minimal")) for key, c in cells.items()}
    vs_keras = {key: ratio(c.get("harness"), c.get("keras")) for key, c in cells.items()}
    lines = []

    def summary(name: str, values: dict, target_of) -> None:
        measured = {k: v for k, v in values.items() if v is not None}
        if not measured:
            return
        missed = [f"{s}/{m}/K={k}: {v:.2f}" for (s, m, k), v in measured.items() if v < target_of(m, k)]
        lines.append(f"- {name}: {'met' if not missed else 'missed at ' + '; '.join(missed)} "
                     f"(min {min(measured.values()):.2f} over {len(measured)} settings)")

    summary(f"harness / minimal loop >= {TARGET_VS_MINIMAL}", vs_min, lambda m, k: TARGET_VS_MINIMAL)
    mlp_k1 = {key: v for key, v in vs_keras.items() if key[1] == "mlp" and key[2] == 1}
    summary(f"harness / Keras fit >= {TARGET_VS_KERAS_MLP_K1} (MLP, K=1)", mlp_k1, lambda m, k: TARGET_VS_KERAS_MLP_K1)
    summary(f"harness / Keras fit >= {TARGET_VS_KERAS} (wherever Keras runs)", vs_keras, lambda m, k: TARGET_VS_KERAS)
    for row in rows:
        if row["benchmark"] == "noise_floor":
            lines.append(f"- noise floor: the minimal loop against itself, alternated the same way "
                         f"({row['strategy']}/{row['model']}/K={row['steps_per_execution']}, "
                         f"{row['repeats']} repeats): "
                         f"median {row['ratio_median']:.2f}, range {row['ratio_min']:.2f}-{row['ratio_max']:.2f}; "
                         "a ratio within that range of its target cannot be told apart from it on this machine")
    ckpt = {r["mode"]: r for r in rows if r["benchmark"] == "checkpoint"}
    if "sync" in ckpt and ckpt["sync"]["status"] == "ok":
        sync_time = ckpt["sync"]["total_s"]
        for mode in ("async",):
            row = ckpt.get(mode)
            if row is None:
                continue
            if row["status"] != "ok":
                lines.append(f"- async checkpoint stall <= {TARGET_ASYNC_STALL:.0%} of the sync save: missed, "
                             f"`{mode}` fails ({row['error'][:90]}...)")
                continue
            blocked, lost = row["blocked_s"] / sync_time, row["stall_s"] / sync_time
            lines.append(f"- async checkpoint stall <= {TARGET_ASYNC_STALL:.0%} of the sync save ({mode}): blocked "
                         f"{blocked:.1%} {'met' if blocked <= TARGET_ASYNC_STALL else 'missed'}; training time "
                         f"lost incl. the background write {lost:.1%} "
                         f"{'met' if lost <= TARGET_ASYNC_STALL else 'missed'}")
    return lines


METHOD = """\
## Method

- Same for every contender: the model (same initial weights), the strategy object, SGD (lr 0.01), sparse
  categorical cross-entropy from logits, and the data: one in-memory synthetic batch per replica, repeated
  (`distribute_datasets_from_function`), so the numbers measure the training loop, not an input pipeline.
  `default` is TensorFlow's default strategy (1 replica); `mirrored` uses 2 logical CPU devices.
- minimal: one `tf.function` running K steps in a `tf.range` loop (forward, per-example loss averaged
  over the global batch, gradients, SGD update, running loss and accuracy sums read once per epoch);
  no callbacks, no checkpoints.
- harness: `harness.Trainer.fit` with the default callbacks of `scripts/train.py` (TensorBoard,
  CSVLogger, ProgressBar into a buffer) and its training-state checkpoint at every epoch end.
- Keras fit: `model.compile(..., metrics=["accuracy"], steps_per_execution=K)`, `model.fit(verbose=1)`
  (progress bar into a buffer) with TensorBoard, CSVLogger and BackupAndRestore (Keras's training-state
  checkpoint, every epoch).
- One measurement is one training call of 2 epochs (1 in the tiny smoke run); the first is the warm-up and
  is not timed. An epoch lasts about 2 s of the minimal loop (its speed is probed per strategy and K; 0.3 s
  in the quick run), rounded to a multiple of K, so per-epoch costs are amortised over a short but
  realistic epoch; the epoch-end table gives them in ms, to rescale to other epoch lengths.
- Time to first step: from the training call (the first loop call for the minimal loop) to the end of
  the first step, K=1, after a throwaway warm-up of TensorFlow and Keras in the same process.
"""


def markdown(rows: list[Row], machine: dict[str, Any], settings_name: str) -> str:
    out = [f"# Benchmarks: harness vs a minimal loop vs Keras fit ({settings_name} run)", "",
           f"- Machine: {machine['cpu']}, {machine['cores']} cores, no GPU; {machine['platform']}",
           f"- Date: {machine['date']}; TensorFlow {machine['tensorflow']}, Keras {machine['keras']}, "
           f"Python {machine['python']}; harness commit {machine['harness_commit']}",
           f"- Command: `{machine['command']}`", "",
           "## Training throughput", "",
           "Medians over repeats; the contenders run back to back in each repeat, in an order rotated every "
           "repeat, and a ratio is the median over repeats of the harness's speed over the other's in that repeat. "
           "Default callbacks on for the harness and Keras fit; a checkpoint at every epoch end.", "",
           *throughput_table(rows), "", "## Targets", "", *targets(rows), "",
           "## Time to first step (trace + compile + one step, from the training call)", "",
           *first_step_table(rows), "",
           "## Epoch end (ms, median): metrics, callbacks and the checkpoint, from the last batch hook to the next "
           "epoch", "", *per_contender_table(rows, "epoch_end_s", 1000, 1), "",
           "## Set-up cost of one training call (s; its warm-up epoch minus a steady epoch)", "",
           *per_contender_table(rows, "call_overhead_s", 1, 3), ""]
    if any(r["benchmark"] == "checkpoint" for r in rows):
        out += ["## Checkpoint stall (medians)", "", *checkpoint_table(rows), ""]
    if any(r["benchmark"] == "dispatch" for r in rows):
        out += ["## Callback dispatch (medians, no logs)", "", *dispatch_table(rows), ""]
    out += [METHOD]
    return "\n".join(out)
