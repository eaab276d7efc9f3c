"""scripts/train.py across restarts, in fresh processes: a signal at any moment is exit 75 with one true
line; a rerun with flags that change the mathematics is refused (exit 2, one line, nothing written);
a rerun that changes only how the run is carried out continues it and says so; a finished run is a no-op."""

import os
import signal
import subprocess
import sys
import time

import pytest

from harness.launch import tf_config
from harness.preemption import EXIT_PREEMPTED
from tests.conftest import ROOT, run_script

pytestmark = pytest.mark.slow
TRAIN = os.path.join(ROOT, "scripts", "train.py")
BASE = ["--strategy=default", "--epochs=1", "--steps_per_epoch=5", "--progress=false"]


def snapshot(directory):
    return {os.path.join(d, f): os.path.getmtime(os.path.join(d, f)) for d, _, files in os.walk(directory)
            for f in files}


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


@pytest.mark.parametrize("sig, after_s", [(signal.SIGTERM, 0.5), (signal.SIGINT, 0.5), (signal.SIGTERM, 4.0)])
def test_a_signal_before_training_is_exit_75_and_one_true_line(tmp_path, data_dir, sig, after_s):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen([sys.executable, TRAIN, *BASE, f"--data_dir={data_dir}", f"--model_dir={tmp_path}"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(after_s)
    process.send_signal(sig)
    out, err = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("training finished before the signal")
    assert process.returncode == EXIT_PREEMPTED, err[-3000:]
    assert "Traceback" not in out + err
    assert f"Stopped by {signal.Signals(sig).name} before training started; nothing to save." in err or (
        f"Preempted by {signal.Signals(sig).name}: stopped before the first step; nothing to save." in err), err[-2000:]
    assert not (tmp_path / "checkpoints").exists()


def test_a_rerun_with_other_mathematics_is_refused_and_one_with_another_layout_continues(tmp_path, data_dir):
    model_dir = str(tmp_path / "run")
    common = [f"--data_dir={data_dir}", f"--model_dir={model_dir}"]
    first = run_script(TRAIN, *BASE, *common)
    assert first.returncode == 0, first.stderr[-3000:]
    before = snapshot(model_dir)
    for flags, difference in ((["--global_batch_size=32"], "--global_batch_size 64 -> 32"),
                              (["--optimizer=sgd"], '--optimizer "adam" -> "sgd"'),
                              (["--model=cnn"], '--model "mlp" -> "cnn"'),
                              (["--lr_schedule=cosine"], "--lr_schedule")):
        refused = run_script(TRAIN, *BASE, *common, *flags)
        lines = error_lines(refused)
        assert refused.returncode == 2 and len(lines) == 1, refused.stderr[-3000:]
        assert difference in lines[0] and "rerun with the recorded settings" in lines[0] and "--fresh" in lines[0]
        assert "Traceback" not in refused.stderr and snapshot(model_dir) == before
    again = run_script(TRAIN, *BASE, *common, "--steps_per_execution=2")  # finished: nothing to do, nothing written
    assert again.returncode == 0 and "Nothing to do" in again.stderr and snapshot(model_dir) == before
    longer = run_script(TRAIN, *[f for f in BASE if not f.startswith("--epochs")], "--epochs=2",
                        "--steps_per_execution=2", "--tensorboard=false", *common)
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert "changed settings that keep the mathematics: epochs 1 -> 2, steps_per_execution 1 -> 2, " \
           "tensorboard true -> false" in longer.stderr
    assert "Done: global step 10, 2 epochs" in longer.stdout


@pytest.mark.multiprocess
def test_workers_started_with_other_flags_fail_at_once_naming_the_flag_and_the_task(tmp_path, data_dir):
    from harness.launch import free_ports

    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    processes = []
    for index, extra in enumerate(([], ["--global_batch_size=32"])):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_CONFIG": tf_config(cluster, "worker", index)}
        processes.append(subprocess.Popen(
            [sys.executable, TRAIN, "--strategy=multi_worker_mirrored", "--epochs=1", "--steps_per_epoch=5",
             f"--data_dir={data_dir}", f"--model_dir={tmp_path}", "--progress=false", *extra],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    expected = ("worker:1 was started with other settings than the chief: --global_batch_size is 32 here but 64 "
                "on the chief")
    for process in processes:
        _, err = process.communicate(timeout=180)
        lines = [line for line in err.splitlines() if line.startswith("error: ")]
        assert process.returncode == 2 and len(lines) == 1 and expected in lines[0], err[-3000:]
        assert "Traceback" not in err
    assert not (tmp_path / "checkpoints").exists()
