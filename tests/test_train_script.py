"""scripts/train.py end to end, in fresh processes: it learns, writes summary.json, and exits
with 2 on usage errors and 1 on setup errors, with one clear line."""

import json
import os

import pytest

from tests.conftest import run_script

pytestmark = pytest.mark.slow


def test_mirrored_on_two_cpus_learns_digits(tmp_path, data_dir):
    model_dir = tmp_path / "run"
    result = run_script("scripts/train.py", "--strategy=mirrored", "--num_cpu_devices=2", "--epochs=8",
                        f"--model_dir={model_dir}", f"--data_dir={data_dir}", "--steps_per_execution=4")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((model_dir / "summary.json").read_text())
    assert summary["strategy"] == "mirrored"
    assert (summary["num_replicas"], summary["num_workers"]) == (2, 1)
    assert summary["epochs_completed"] == 8 and summary["global_step"] == 8 * (1500 // 64)
    assert summary["stop_reason"] is None
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert len(summary["history"][key]) == 8
    # "Learned": >= 0.9 validation accuracy on the 297 held-out digits (10 classes, chance is 0.1).
    assert summary["final_metrics"]["val_accuracy"] >= 0.9

    again = run_script("scripts/train.py", "--strategy=mirrored", "--num_cpu_devices=2", "--epochs=8",
                       f"--model_dir={model_dir}", f"--data_dir={data_dir}")
    assert again.returncode == 0 and "Nothing to do: the run in" in again.stderr, again.stderr[-3000:]
    assert json.loads((model_dir / "summary.json").read_text())["global_step"] == summary["global_step"]


@pytest.mark.parametrize("args, env, code, message", [
    (["--strategy=mirrored", "--num_cpu_devices=2", "--global_batch_size=63"], {}, 2,
     "does not split evenly over 2 replicas"),
    (["--strategy=nope"], {}, 2, "flag --strategy=nope"),
    (["--strategy=multi_worker_mirrored"], {"TF_CONFIG": '{"cluster": {"worker": ["127.0.0.1:1"]}, '
                                                        '"task": {"type": "worker", "index": 3}}'}, 2,
     "index 3 is out of range"),
    (["--strategy=tpu", "--tpu=local"], {}, 1, "no TPU found for --tpu=local"),
])
def test_bad_runs_exit_with_a_code_and_one_clear_line(tmp_path, data_dir, args, env, code, message):
    result = run_script("scripts/train.py", *args, f"--model_dir={tmp_path}", f"--data_dir={data_dir}", env=env)
    assert result.returncode == code, result.stderr[-3000:]
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr[-3000:]
    assert not os.path.exists(tmp_path / "summary.json")
