"""benchmarks/run.py end to end at a tiny size, in fresh processes, so the suite never rots.

It checks that the run finished and produced every row, never a speed.
"""

import json

import pytest

from tests.conftest import run_script

pytestmark = pytest.mark.slow

CONTENDERS = ("minimal", "harness", "keras")


def run_benchmark(tmp_path, *args):
    out = tmp_path / "results.json"
    result = run_script("benchmarks/run.py", "--tiny", f"--out={out}", f"--workdir={tmp_path / 'work'}", *args,
                        timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())
    return result.stdout, rows


def by(rows, benchmark):
    return [r for r in rows if r["benchmark"] == benchmark]


def test_tiny_run_produces_every_row(tmp_path):
    stdout, rows = run_benchmark(tmp_path)
    assert "| strategy | model | K |" in stdout and "## Checkpoint stall" in stdout
    machine, = by(rows, "machine")
    assert machine["settings"] == "tiny" and machine["tensorflow"] and machine["keras"] and machine["command"]

    throughput = {(r["strategy"], r["model"], r["steps_per_execution"], r["contender"]): r
                  for r in by(rows, "throughput")}
    expected = {(s, "mlp", k, c) for s in ("default", "mirrored") for k in (1, 10, 100) for c in CONTENDERS}
    assert set(throughput) == expected
    for key, row in throughput.items():
        assert row["status"] in ("ok", "fails"), row
        if row["status"] == "ok":
            assert row["steps_per_sec"] > 0 and row["examples_per_sec"] > 0 and row["error"] is None, row
        else:
            assert row["steps_per_sec"] is None and row["error"], row
        if key[3] != "keras":  # only Keras fit is allowed to fail (on 2 replicas with K > 1)
            assert row["status"] == "ok", row

    first_steps = {(r["strategy"], r["contender"]): r for r in by(rows, "first_step")}
    assert set(first_steps) == {(s, c) for s in ("default", "mirrored") for c in CONTENDERS}
    assert all(r["status"] == "ok" and r["seconds"] > 0 for r in first_steps.values())

    checkpoint = {r["mode"]: r for r in by(rows, "checkpoint")}
    assert checkpoint["sync"]["status"] == "ok" and checkpoint["sync"]["blocked_s"] > 0
    assert checkpoint["async"]["status"] in ("ok", "fails")

    noise, = by(rows, "noise_floor")
    assert noise["status"] == "ok" and noise["ratio_median"] > 0

    hooks = {(r["contender"], r["hook"]) for r in by(rows, "dispatch")}
    assert {("harness", "on_train_batch_end"), ("harness", "decision point"), ("keras", "on_train_batch_end")} <= hooks
    assert all(r["us_per_call"] > 0 for r in by(rows, "dispatch"))


def test_tiny_resnet_runs_for_every_contender(tmp_path):
    _, rows = run_benchmark(tmp_path, "--models", "resnet", "--strategies", "default", "--steps_per_execution", "1",
                            "--skip", "noise", "checkpoint", "dispatch")
    throughput = by(rows, "throughput")
    assert sorted(r["contender"] for r in throughput) == sorted(CONTENDERS)
    assert all(r["model"] == "resnet" and r["status"] == "ok" and r["steps_per_sec"] > 0 for r in throughput)
    assert not by(rows, "checkpoint") and not by(rows, "dispatch") and not by(rows, "noise_floor")
