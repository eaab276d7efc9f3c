"""The benchmarks: their statistics, turns and verdicts as pure logic (fast), and benchmarks/run.py end to
end at a tiny size in a fresh process (slow), so the suite never rots.

The end-to-end tests check that the run finished and produced every row and field (intervals, the
minimal + checkpoint contender, the feature rows, the verdicts, the 2-worker cluster, the curves),
never a speed.
"""

import importlib.util
import json
import os
import subprocess
import sys
import threading
import types

import numpy as np
import pytest

from benchmarks import interleave, one_cpu, report, targets
from tests.conftest import ROOT, run_script

CURVE_CONTENDERS = ("minimal", "minimal_checkpoint", "harness", "keras")
CONTENDERS = (*CURVE_CONTENDERS, "harness_accumulation", "harness_ema")  # the features: in the sweep only
FIRST_STEP_CONTENDERS = ("minimal", "harness", "keras")


def run_benchmark(tmp_path, *args):
    out = tmp_path / "results.json"
    result = run_script("benchmarks/run.py", "--tiny", f"--out={out}", f"--workdir={tmp_path / 'work'}", *args,
                        timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())
    return result.stdout, rows


def by(rows, benchmark):
    return [r for r in rows if r["benchmark"] == benchmark]


def is_interval(ci, median):
    return isinstance(ci, list) and len(ci) == 2 and ci[0] <= median <= ci[1]


# ----- statistics, turns and verdicts (no training) -------------------------------------------------------------


def test_one_cpu_pins_every_thread_and_new_ones_and_puts_them_back():
    if not one_cpu.available():
        pytest.skip("no sched_setaffinity here")
    before = os.sched_getaffinity(0)
    waiting, stop = threading.Thread(target=lambda: stop.wait()), threading.Event()
    waiting.start()
    with one_cpu.one_cpu() as cpu:
        assert cpu == max(before)
        born_inside = {}
        child = threading.Thread(target=lambda: born_inside.update(mask=os.sched_getaffinity(0)))
        child.start()
        child.join()
        assert born_inside["mask"] == {cpu}
        assert os.sched_getaffinity(waiting.native_id) == os.sched_getaffinity(0) == {cpu}
    assert os.sched_getaffinity(waiting.native_id) == os.sched_getaffinity(0) == before
    stop.set()
    waiting.join()
    with one_cpu.one_cpu(enabled=False) as cpu:
        assert cpu is None and os.sched_getaffinity(0) == before


def test_bootstrap_interval_of_the_median():
    values = [1.0, 1.02, 0.98, 1.01, 0.99, 1.03, 0.97]
    low, high = interleave.bootstrap_median_ci(values)
    assert low <= np.median(values) <= high and high - low < 0.05
    assert interleave.bootstrap_median_ci(values) == [low, high]  # seeded: the same interval every time
    assert interleave.bootstrap_median_ci([2.0] * 5) == [2.0, 2.0]
    assert interleave.bootstrap_median_ci([]) is None


def test_paired_estimate_weights_loop_and_epoch_end_slices():
    a = np.array([[1.0, 1.0, 4.0], [1.0, 1.0, 4.0]])  # epochs x slices; the last slice holds the epoch end
    b = a * np.array([1.1, 1.1, 1.5])  # the loop 10% dearer, the epoch end 50%
    estimate, loop, end = (float(x[0]) for x in interleave.paired_estimate(a, b))
    assert loop == pytest.approx(1.1) and end == pytest.approx(1.5)
    assert estimate == pytest.approx((1.1 * 2 + 1.5 * 4) / 6)


def _pacer(slices):
    return types.SimpleNamespace(slices=[(epoch, cost, cost) for epoch, costs in enumerate(slices, 1)
                                         for cost in costs])


def test_compare_is_the_other_cost_over_its_own_with_an_interval():
    rng = np.random.default_rng(0)
    a = rng.uniform(1.0, 1.2, (12, 4))
    ratio = interleave.compare(_pacer(a), _pacer(a * 1.25), "cpu")
    assert ratio["median"] == pytest.approx(1.25) and ratio["ci95"] == pytest.approx([1.25, 1.25])
    assert ratio["epochs"] == 12 and ratio["slices_per_epoch"] == 4
    noisy = interleave.compare(_pacer(a), _pacer(a * rng.uniform(0.95, 1.05, a.shape)), "wall")
    assert noisy["ci95"][0] <= noisy["median"] <= noisy["ci95"][1] and 0.95 < noisy["median"] < 1.05
    assert interleave.compare(_pacer(a), _pacer([]), "cpu") is None  # nothing paired


def test_turns_interleave_contenders_one_at_a_time_and_time_only_the_timed_epochs():
    turns = interleave.Turns(calls_per_slice=2, timed_epochs=3)
    trace = []

    def body(name):
        def train(pacer):
            for _ in range(turns.epochs):
                pacer.epoch_begin()
                for call in range(4):  # 4 calls: 2 slices an epoch
                    pacer.loop_begin()
                    trace.append((name, pacer.epoch, call))
                pacer.batch_done()
            pacer.finish()
        return train

    def broken(pacer):
        pacer.epoch_begin()
        pacer.loop_begin()
        raise ValueError("boom")

    pacers = turns.run({"a": body("a"), "b": body("b"), "c": broken})
    for name in ("a", "b"):
        assert sorted(pacers[name].costs) == [1, 2, 3]  # epoch 0 is the warm-up
        assert all(cost.slices == 2 and cost.end_cpu_s is not None for cost in pacers[name].costs.values())
        assert len(pacers[name].slices) == 6 and pacers[name].error is None
    assert pacers["c"].error == "ValueError: boom"
    runs = [trace[i][0] for i in range(0, len(trace), 2)]  # a slice is 2 calls of one contender, never mixed
    assert all(trace[i][0] == trace[i + 1][0] for i in range(0, len(trace), 2))
    assert runs.count("a") == runs.count("b") == 8


def _harness_row(key, **ratios):
    strategy, model, k = key
    row = {"benchmark": "throughput", "contender": "harness", "strategy": strategy, "model": model,
           "steps_per_execution": k, "status": "ok", "ratios": {"cpu": {}, "wall": {}}}
    for other, (median, low, high) in ratios.items():
        row["ratios"]["cpu"][other] = {"median": median, "ci95": [low, high]}
    return row


def test_verdicts_check_the_bound_of_the_interval():
    rows = [_harness_row(("default", "mlp", 10), minimal_checkpoint=(1.0, 0.98, 1.02), keras=(1.3, 1.2, 1.4)),
            _harness_row(("mirrored", "mlp", 10), minimal_checkpoint=(0.99, 0.96, 1.01)),
            {"benchmark": "cluster", "status": "ok", "overhead": 0.01, "overhead_ci95": [0.005, 0.015],
             "decision_ms": 0.1, "step_ms": 10.0, "repeats": 12},
            {"benchmark": "noise_floor", "status": "ok", "band": 0.03, "ratio_median": 1.0, "ratio_ci95": [0.99, 1.01],
             "within_band": True, "wall_ratio_median": 1.0, "wall_ratio_ci95": [0.9, 1.1], "wall_within_band": False,
             "repeats": 15, "strategy": "default", "model": "mlp", "steps_per_execution": 1}]
    lines = report.verdicts(rows)
    minimal, = [line for line in lines if "minimal + checkpoint" in line]
    assert minimal.startswith("VERDICT FAIL") and "1 of 2 settings" in minimal
    assert "mirrored/mlp/K=10 0.99 [0.96, 1.01] (median meets it; not resolved)" in minimal
    keras, = [line for line in lines if "harness >= Keras fit" in line]
    assert keras.startswith("VERDICT PASS") and "1.30 [1.20, 1.40]" in keras
    decision, = [line for line in lines if "decision point" in line]
    assert decision.startswith("VERDICT PASS") and f"<= {targets.DECISION_OVERHEAD:.0%}" in decision
    noise, = [line for line in lines if "noise floor" in line]
    assert noise.startswith("VERDICT PASS") and "1.0000 [0.9900, 1.0100]" in noise
    rows[2]["overhead_ci95"] = [0.015, 0.025]  # the median meets it, the interval's upper bound does not
    assert any(line.startswith("VERDICT FAIL: decision point") for line in report.verdicts(rows))


# ----- benchmarks/run.py --tiny, end to end (slow) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    stdout, rows = run_benchmark(path)
    return path, stdout, rows


@pytest.mark.slow
def test_tiny_run_produces_every_row(tiny):
    _, stdout, rows = tiny
    assert "| strategy | model | K |" in stdout and "## Checkpoint stall" in stdout and "## Noise floor" in stdout
    assert "### Training features" in stdout
    machine, = by(rows, "machine")
    assert machine["settings"] == "tiny" and machine["tensorflow"] and machine["keras"] and machine["command"]
    assert machine["measure"] == "cpu" and len(machine["load_average"]) == 3 and len(machine["load_average_end"]) == 3

    throughput = {(r["strategy"], r["model"], r["steps_per_execution"], r["contender"]): r
                  for r in by(rows, "throughput")}
    expected = {(s, "mlp", k, c) for s in ("default", "mirrored") for k in (1, 10) for c in CONTENDERS}
    assert set(throughput) == expected
    for key, row in throughput.items():
        assert row["status"] in ("ok", "fails"), row
        if row["status"] == "ok":
            assert row["steps_per_sec"] > 0 and row["examples_per_sec"] > 0 and row["error"] is None, row
            assert row["cpu_ms_per_step"] > 0 and row["wall_ms_per_step"] > 0 and row["epoch_end_ms"] > 0, row
            assert row["timed_epochs"] == len(row["samples_cpu_s"]) == len(row["samples_wall_s"]) >= 1, row
        else:
            assert row["steps_per_sec"] is None and row["error"], row
        if key[3] != "keras":  # only Keras fit is allowed to fail (on 2 replicas with K > 1)
            assert row["status"] == "ok", row
        assert (row["pinned_cpu"] is not None) == (key[0] == "default"), row  # one CPU: one-replica settings only
    assert "the default settings' turns ran with every thread on CPU" in stdout and "mirrored on every CPU" in stdout

    for (strategy, model, k, contender), row in throughput.items():
        if contender == "harness":
            keras_ok = throughput[(strategy, model, k, "keras")]["status"] == "ok"
            for other in ("minimal", "minimal_checkpoint", "keras"):
                if other == "keras" and not keras_ok:
                    assert row["vs_keras"] is None and row["vs_keras_ci95"] is None, row
                    continue
                assert row[f"vs_{other}"] > 0 and is_interval(row[f"vs_{other}_ci95"], row[f"vs_{other}"]), row
                for clock in ("cpu", "wall"):
                    ratio = row["ratios"][clock][other]
                    assert is_interval(ratio["ci95"], ratio["median"]) and ratio["per_epoch"], row
        if contender in ("harness_accumulation", "harness_ema"):  # a feature's cost: against the plain harness
            assert row["vs_harness"] > 0 and is_interval(row["vs_harness_ci95"], row["vs_harness"]), row
        if contender == "minimal_checkpoint":  # the checkpoint's cost, apart
            assert row["vs_minimal"] > 0 and is_interval(row["vs_minimal_ci95"], row["vs_minimal"]), row
            assert row["checkpoint_ms_per_epoch"] is not None, row

    first_steps = {(r["strategy"], r["contender"]): r for r in by(rows, "first_step")}
    assert set(first_steps) == {(s, c) for s in ("default", "mirrored") for c in FIRST_STEP_CONTENDERS}
    assert all(r["status"] == "ok" and r["seconds"] > 0 for r in first_steps.values())

    checkpoint = {r["mode"]: r for r in by(rows, "checkpoint")}
    assert checkpoint["sync"]["status"] == "ok" and checkpoint["sync"]["blocked_s"] > 0
    assert checkpoint["async"]["status"] in ("ok", "fails")

    noise, = by(rows, "noise_floor")
    assert noise["status"] == "ok" and noise["ratio_median"] > 0 and noise["band"] == 0.03
    assert is_interval(noise["ratio_ci95"], noise["ratio_median"])
    assert is_interval(noise["wall_ratio_ci95"], noise["wall_ratio_median"])

    hooks = {(r["contender"], r["hook"]) for r in by(rows, "dispatch")}
    assert {("harness", "on_train_batch_end"), ("harness", "decision point"), ("keras", "on_train_batch_end")} <= hooks
    assert all(r["us_per_call"] > 0 for r in by(rows, "dispatch"))


@pytest.mark.slow
def test_tiny_run_measures_a_two_worker_cluster(tiny):
    _, _, rows = tiny
    decision, = by(rows, "cluster")
    assert decision["status"] == "ok", decision["error"]
    # The decision point's cost is what it adds to fit's loop (a difference of two timings: it may come out < 0).
    assert decision["workers"] == 2 and np.isfinite(decision["decision_ms"]) and decision["step_ms"] > 0
    assert is_interval(decision["overhead_ci95"], decision["overhead"]) and decision["target"] == 0.02
    cost, = by(rows, "cluster_cost")
    assert cost["status"] == "ok" and cost["steps_per_execution"] == 1
    assert cost["cluster_ms_per_step"] > 0 and cost["single_ms_per_step"] > 0
    assert is_interval(cost["cost_ci95"], cost["cost"])


@pytest.mark.slow
def test_tiny_run_prints_every_verdict(tiny):
    _, stdout, rows = tiny
    lines = [line for line in stdout.splitlines() if "VERDICT " in line]
    targets = ("harness / (minimal + checkpoint) >= 0.97", "harness >= Keras fit", "decision point <= 2%",
               "noise floor", "async checkpoint")
    for target in targets:
        line, = [line for line in lines if target in line]
        assert "VERDICT PASS: " in line or "VERDICT FAIL: " in line, line
        assert "[" in line or "async" in line, line  # the numbers, with their interval
    verdicts = by(rows, "verdict")
    assert len(verdicts) == len(lines) and all(isinstance(v["passed"], bool) for v in verdicts)


@pytest.mark.slow
def test_tiny_run_measures_the_curves_and_plots_them(tiny):
    path, _, rows = tiny
    throughput = by(rows, "curve_throughput")
    assert {r["contender"] for r in throughput} == set(CURVE_CONTENDERS)
    assert all(r["status"] == "ok" and r["parameters"] > 0 and r["cpu_ms_per_step"] > 0 for r in throughput)
    assert {r["contender"] for r in by(rows, "curve_first_step")} == set(FIRST_STEP_CONTENDERS)
    checkpoint = {r["mode"]: r for r in by(rows, "curve_checkpoint")}
    assert set(checkpoint) == {"sync", "async"}
    assert all(r["status"] == "ok" and r["save_s"] > 0 and r["restore_s"] > 0 and r["bytes"] > 0
               for r in checkpoint.values())

    plots_dir = path / "plots"
    result = subprocess.run([sys.executable, "-m", "benchmarks.plots", str(path / "results.json"),
                             f"--dir={plots_dir}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    if importlib.util.find_spec("matplotlib") is None:  # one clear line, no traceback
        assert result.returncode == 1 and result.stderr.strip().startswith("error: the plots need matplotlib")
        assert len(result.stderr.strip().splitlines()) == 1
        return
    assert result.returncode == 0, result.stderr[-2000:]
    names = {"curve_throughput.png", "curve_first_step.png", "curve_checkpoint.png", "curve_cluster.png"}
    assert names <= {p.name for p in plots_dir.iterdir()}
    assert all((plots_dir / name).stat().st_size > 1000 for name in names)


@pytest.mark.slow
def test_tiny_resnet_runs_for_every_contender(tmp_path):
    _, rows = run_benchmark(tmp_path, "--models", "resnet", "--strategies", "default", "--steps_per_execution", "1",
                            "--skip", "noise", "cluster", "checkpoint", "dispatch", "curves")
    throughput = by(rows, "throughput")
    assert sorted(r["contender"] for r in throughput) == sorted(CONTENDERS)
    assert all(r["model"] == "resnet" and r["status"] == "ok" and r["steps_per_sec"] > 0 for r in throughput)
    assert not by(rows, "checkpoint") and not by(rows, "dispatch") and not by(rows, "noise_floor")
    assert not by(rows, "cluster") and not by(rows, "curve_throughput")
