"""Multi-worker contracts with real processes: the local launcher starts one process per task on
127.0.0.1, talking tf.distribute's gRPC collectives."""

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

from harness import TrainInput
from harness.launch import LocalCluster, launch, local_cluster, tf_config
from harness.run import RunConfig, run
from tests.conftest import ROOT, make_trainer
from tests.conftest import strategy as tf_strategy
from tests.test_custom_steps import EXAMPLES, one_step

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]
TRAIN = [sys.executable, os.path.join(ROOT, "scripts/train.py"), "--strategy=multi_worker_mirrored"]
ENV = {"TF_CPP_MIN_LOG_LEVEL": "2"}


def files_under(path):
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)


def run_cluster(args, num_workers=2):
    out = io.StringIO()
    code = launch([*TRAIN, *args], num_workers=num_workers, out=out, env=ENV)
    return code, out.getvalue()


def lines_of(output, task):
    prefix = f"[{task}] "
    return [line[len(prefix):] for line in output.splitlines() if line.startswith(prefix)]


def single_process(tmp_path, data_dir, replicas, **flags):
    summary = run(RunConfig(strategy="mirrored", num_cpu_devices=replicas, model_dir=str(tmp_path / "single"),
                            data_dir=data_dir, progress=False, **flags))
    return summary


def test_two_workers_match_one_process_and_only_the_chief_writes(tmp_path, data_dir):
    model_dir, fresh_data = tmp_path / "cluster", tmp_path / "tfds"
    flags = {"epochs": 3, "steps_per_execution": 4, "save_best_only": True, "update_freq": 5}
    code, output = run_cluster([f"--model_dir={model_dir}", f"--data_dir={fresh_data}", "--epochs=3",
                                "--steps_per_execution=4", "--save_best_only", "--update_freq=5"])
    assert code == 0, output[-4000:]
    done = [line for line in output.splitlines() if "Done: " in line]
    assert [d.split("] ", 1)[1] for d in done] == ["Done: global step 69, 3 epochs, stop reason: none"] * 2
    # The chief prepared the data set; the other worker waited for it.
    assert any("Building digits (1,797 examples, offline)" in line for line in lines_of(output, "worker:0"))
    assert not any("Building" in line or "prepared" in line for line in lines_of(output, "worker:1"))

    files = files_under(model_dir)
    assert not [f for f in files if "tmp" in f or "worker" in f]
    for name in ("train", "validation"):  # one event file and one session-start mark, from the chief
        assert len([f for f in files if f.startswith(f"tensorboard/{name}/events") and f.endswith(".v2")]) == 1
        assert len([f for f in files if f.startswith(f"tensorboard/{name}/events") and f.endswith(".restart")]) == 1
    rows = list(csv.reader(open(model_dir / "metrics.csv")))
    assert [r[0] for r in rows] == ["epoch", "1", "2", "3"]
    cluster = json.loads((model_dir / "summary.json").read_text())
    assert (cluster["num_workers"], cluster["num_replicas"]) == (2, 2)

    # Tolerance 1e-5 relative: the same global batches, only the order of float additions differs.
    single = single_process(tmp_path, data_dir, 2, **flags)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert cluster["history"][key] == pytest.approx(single["history"][key], rel=1e-5), key
    best = sorted(f for f in files if f.startswith("best/") and f.endswith(".index"))
    assert best and best == sorted(f for f in files_under(tmp_path / "single") if f.startswith("best/")
                                   and f.endswith(".index"))


def test_two_workers_with_two_cpu_replicas_each_match_four_replicas(tmp_path, data_dir):
    code, output = run_cluster([f"--model_dir={tmp_path / 'cluster'}", f"--data_dir={data_dir}", "--epochs=2",
                                "--num_cpu_devices=2", "--tensorboard=false"])
    assert code == 0, output[-4000:]
    cluster = json.loads((tmp_path / "cluster/summary.json").read_text())
    assert (cluster["num_workers"], cluster["num_replicas"]) == (2, 4)
    single = single_process(tmp_path, data_dir, 4, epochs=2, tensorboard=False)
    assert cluster["history"]["loss"] == pytest.approx(single["history"]["loss"], rel=1e-5)
    assert cluster["history"]["val_accuracy"] == pytest.approx(single["history"]["val_accuracy"], rel=1e-5)


def test_a_separate_chief_task_writes_the_outputs(tmp_path):
    out = io.StringIO()
    code = launch([*TRAIN, f"--model_dir={tmp_path}", "--dataset=synthetic", "--epochs=1", "--steps_per_epoch=5"],
                  num_workers=1, with_chief=True, out=out, env=ENV)
    assert code == 0, out.getvalue()[-4000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["num_workers"], summary["global_step"]) == (2, 5)
    assert "[chief:0] Epoch 1/1" in out.getvalue() and "[worker:0] Epoch" not in out.getvalue()


def test_every_worker_takes_every_decision_at_the_same_step(tmp_path, data_dir, digits):
    out = io.StringIO()
    code = launch([sys.executable, os.path.join(ROOT, "tests/multi_worker_job.py"), str(tmp_path), data_dir],
                  num_workers=2, out=out, env=ENV)
    assert code == 0, out.getvalue()[-4000:]
    results = {}
    for line in out.getvalue().splitlines():
        if "RESULT " in line:
            r = json.loads(line.split("RESULT ", 1)[1])
            results[(r["phase"], r["worker"])] = r
    # A stop voted on worker 1 alone (at the loop ending at step 8) stops both workers there.
    assert results[("vote", 0)]["step"] == results[("vote", 1)]["step"] == 8
    # The agreed decision carries the voter's reason to every worker.
    assert results[("vote", 0)]["stop_reason"] == results[("vote", 1)]["stop_reason"] == "worker 1 voted at step 8"
    # NaN on worker 1's data only: the aggregated loss is NaN on both, both stop at the same step.
    assert results[("nan", 0)]["step"] == results[("nan", 1)]["step"] == 6
    assert all(results[("nan", w)]["stop_reason"].startswith("non-finite loss") for w in (0, 1))
    # Early stopping: both stop after the second epoch.
    assert results[("early", 0)]["epochs"] == results[("early", 1)]["epochs"] == 2
    assert results[("early", 0)]["stop_reason"] == results[("early", 1)]["stop_reason"]
    # Only the harness's callbacks (each identical_on_every_worker): a loop's decision point needs no all-reduce
    # of its own unless a request is made: 1 at the start and 3 per epoch (its begin, last loop and end) instead of
    # one per loop (1 + 7 per epoch); the training is the same.
    assert [results[(p, w)]["lagged"] for p in ("lagged", "agreed") for w in (0, 1)] == [True, True, False, False]
    assert [results[("lagged", w)]["all_reduces"] for w in (0, 1)] == [7, 7], results
    assert [results[("agreed", w)]["all_reduces"] for w in (0, 1)] == [15, 15], results
    assert results[("lagged", 0)]["weights"] == pytest.approx(results[("agreed", 0)]["weights"], rel=1e-6)
    # A signal on worker 1 alone after step 4, lagged: it rides on the next loops' calls, which are read at the loop
    # crossing a multiple of READ_EVERY_STEPS (8): both workers save step 8 and stop.
    for w in (0, 1):
        assert (results[("signal", w)]["preempted"], results[("signal", w)]["step"]) == (True, 8), results
        assert results[("signal", w)]["saved"] == 8
    for phase in ("vote", "nan", "early", "signal"):
        assert not [f for f in files_under(tmp_path / phase) if "tmp" in f]
    # The README's custom steps make the same update on a 2-worker cluster as on one device.
    for trainer_cls in EXAMPLES:
        cluster = np.load(tmp_path / f"{trainer_cls.__name__}.npz")
        reference, _ = one_step(trainer_cls, "default", None, digits)
        for i, expected in enumerate(reference):
            np.testing.assert_allclose(cluster[f"arr_{i}"], expected, rtol=0, atol=1e-6)
    # Gradient accumulation: 4 micro-batches make the update of one global batch on 2 workers (SGD and Adam), with
    # one optimizer step per update; the EMA of the weights is the same too, and equals one process's.
    for name in ("SGD", "Adam"):
        one, four = (np.load(tmp_path / f"accumulate_{name}_{steps}.npz") for steps in (1, 4))
        for key in one:
            np.testing.assert_allclose(four[key], one[key], rtol=0, atol=1e-6, err_msg=f"{name} {key}")
        steps = results[(f"accumulate_{name}_4", 0)]["step"]  # the global step: one epoch's updates
        assert [results[(f"iterations_{name}_4", w)]["step"] for w in (0, 1)] == [steps, steps]
    reference = make_trainer(tf_strategy("mirrored", 2), digits, ema_decay=0.9, steps_per_execution=3)
    reference.fit(TrainInput(digits.train_examples, digits.num_train_examples, 32), epochs=1, steps_per_epoch=steps)
    four = np.load(tmp_path / "accumulate_SGD_4.npz")
    single = [*reference.model.get_weights(), *[v.numpy() for v in reference.ema.averages]]
    for i, expected in enumerate(single):
        np.testing.assert_allclose(four[f"arr_{i}"], expected, rtol=0, atol=1e-6)
    # The straggler view names the worker that is slow outside the step, in summary.json, TensorBoard and
    # the progress line; the others' busy time is the step alone (2 loops of 2 steps per epoch, 0.3 s asleep each;
    # the first epoch's also holds the tracing of the step).
    workers = json.loads((tmp_path / "straggler/summary.json").read_text())["workers"]
    assert [w["slowest"] for w in workers] == [1, 1] and workers[1]["max"] - workers[1]["min"] > 0.5, workers
    events = EventAccumulator(str(tmp_path / "straggler/tensorboard/train"), size_guidance={"tensors": 0})
    events.Reload()
    assert [float(tf.make_ndarray(e.tensor_proto)) for e in events.Tensors("workers/epoch_slowest")] == [1.0, 1.0]
    assert "slowest worker 1:" in "\n".join(lines_of(out.getvalue(), "worker:0"))
    # The collective timeout costs no thread per collective (TensorFlow's own held two per collective: +300 here).
    assert [results[("threads", w)]["grown"] < 40 for w in (0, 1)] == [True, True], results
    # A worker whose callback fails while its script lives on: the other stops at once, with the real cause.
    assert results[("failure", 1)]["type"] == "ValueError"
    assert results[("failure", 0)]["type"] == "SetupError"
    assert results[("failure", 0)]["error"] == "worker:1 failed: ValueError: user callback failed at step 4"
    assert results[("failure", 0)]["seconds"] < 10  # bound: the heartbeat timeout


def test_a_killed_worker_stops_the_job_quickly_and_a_rerun_resumes(tmp_path, data_dir):
    args = [*TRAIN, f"--model_dir={tmp_path / 'run'}", f"--data_dir={data_dir}", "--epochs=6"]
    out = io.StringIO()
    cluster = LocalCluster(args, local_cluster(2), out=out, grace_s=60, env=ENV)
    cluster.start()
    killed_at = []

    def kill_after_second_epoch():
        while "Epoch 2/6" not in out.getvalue():
            time.sleep(0.2)
        killed_at.append(time.monotonic())
        os.kill(cluster._task("worker:1").process.pid, signal.SIGKILL)

    threading.Thread(target=kill_after_second_epoch, daemon=True).start()
    code = cluster.wait()
    elapsed = time.monotonic() - killed_at[0]
    output = out.getvalue()
    assert code != 0
    assert elapsed < 60  # bound: heartbeat timeout (10 s) or the broken connection, plus exit
    assert re.search(r"\[worker:0\] error: lost worker:1 \(", output), output[-3000:]
    assert "[launcher] failed: worker:1 was killed by SIGKILL" in output

    code, output = run_cluster(args[len(TRAIN):])
    assert code == 0, output[-4000:]
    assert "Resuming from" in output and "Done: global step 138, 6 epochs" in output


def test_missing_and_duplicate_tasks_fail_fast_with_one_line(tmp_path):
    cluster = local_cluster(2)
    command = [*TRAIN, f"--model_dir={tmp_path}", "--cluster_join_timeout_s=5", "--dataset=synthetic"]
    env = {**os.environ, **ENV, "TF_CONFIG": tf_config(cluster, "worker", 0)}
    both = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]  # two processes claim worker:0; worker:1 never starts
    errors = []
    for process in both:
        _, err = process.communicate(timeout=120)
        lines = [line for line in err.splitlines() if line.startswith("error: ")]
        assert process.returncode == 1 and len(lines) == 1, err[-3000:]
        errors.append(lines[0])
    duplicate = [e for e in errors if "worker:0 cannot listen on port" in e and "same task index" in e]
    missing = [e for e in errors if e.startswith(f"error: worker:1 ({cluster['worker'][1]}) did not join within 5s")]
    assert len(duplicate) == len(missing) == 1, errors


def test_a_cluster_run_continues_in_one_process_as_the_same_run(tmp_path, data_dir):
    """2 workers for two epochs, then one process with 2 replicas: the same run as 4 epochs on the cluster."""
    flags = ["--steps_per_execution=2", "--tensorboard=false", "--progress=false", f"--data_dir={data_dir}"]
    code, output = run_cluster([f"--model_dir={tmp_path / 'run'}", "--epochs=2", *flags])
    assert code == 0, output[-4000:]
    resumed = subprocess.run([*TRAIN[:2], "--strategy=mirrored", "--num_cpu_devices=2", "--epochs=4", *flags,
                              f"--model_dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=600,
                             env={**os.environ, **ENV})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "changed settings that keep the mathematics" in resumed.stderr and "num_workers 2 -> 1" in resumed.stderr
    code, output = run_cluster([f"--model_dir={tmp_path / 'reference'}", "--epochs=4", *flags])
    assert code == 0, output[-4000:]
    ours, reference = (json.loads((tmp_path / name / "summary.json").read_text()) for name in ("run", "reference"))
    assert ours["global_step"] == reference["global_step"] == 4 * 23
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert ours["history"][key] == pytest.approx(reference["history"][key], rel=1e-5), key


def final_variables(model_dir):
    import tensorflow as tf

    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(f"{model_dir}/checkpoints"))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if "OBJECT_GRAPH" not in k and "save_counter" not in k and "progress" not in k and "train_metrics" not in k}


def assert_bitwise_equal(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


DETERMINISTIC = ["--deterministic", "--epochs=2", "--steps_per_epoch=10", "--steps_per_execution=2",
                 "--tensorboard=false", "--progress=false", "--checkpoint_every_n_steps=4"]


def test_a_vertex_cluster_spec_alone_trains_as_the_same_tf_config_job(tmp_path, data_dir):
    """Two processes given only Vertex AI's CLUSTER_SPEC (a chief pool and a worker pool), no TF_CONFIG."""
    flags = [*DETERMINISTIC, f"--data_dir={data_dir}"]
    out = io.StringIO()
    assert launch([*TRAIN, f"--model_dir={tmp_path / 'tf_config'}", *flags], num_workers=1, with_chief=True,
                  out=out, env=ENV) == 0, out.getvalue()[-3000:]
    from harness.launch import free_ports

    pools = {f"workerpool{p}": [f"127.0.0.1:{port}"] for p, port in enumerate(free_ports(2))}
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    processes = [subprocess.Popen([*TRAIN, f"--model_dir={tmp_path / 'vertex'}", *flags], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, env={**env, **ENV, "CLUSTER_SPEC": json.dumps(
                                      {"cluster": pools, "task": {"type": pool, "index": 0}, "job": "{}"})})
                 for pool in pools]
    for process in processes:
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output[-3000:]
        assert "Cluster from CLUSTER_SPEC" in output
    assert_bitwise_equal(final_variables(tmp_path / "vertex"), final_variables(tmp_path / "tf_config"))


def task_pid(model_dir, task_index, timeout_s=120):
    """The pid of the train.py process of worker `task_index` writing `model_dir` (found through /proc)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmdline = open(f"/proc/{pid}/cmdline").read()
                environ = open(f"/proc/{pid}/environ").read()
            except OSError:
                continue
            if f"--model_dir={model_dir}" in cmdline and f'"index": {task_index}}}' in environ:
                return int(pid)
        time.sleep(0.2)
    raise AssertionError(f"no worker {task_index} for {model_dir}")


def test_the_launcher_restarts_a_job_whose_worker_was_killed_and_it_ends_as_if_never_killed(tmp_path, data_dir):
    flags = [*DETERMINISTIC, f"--data_dir={data_dir}"]
    reference, run = tmp_path / "reference", tmp_path / "run"
    code, output = run_cluster([f"--model_dir={reference}", *flags])
    assert code == 0, output[-3000:]
    launcher = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", "launch_local.py"), "--num_workers=2",
                                 "--max_restarts=1", "--grace_s=20", "--", f"--model_dir={run}", *flags],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **ENV})
    victim = task_pid(run, 1)
    while not os.path.exists(run / "checkpoints" / "checkpoint") and launcher.poll() is None:
        time.sleep(0.1)
    os.kill(victim, signal.SIGKILL)
    output, _ = launcher.communicate(timeout=600)
    assert launcher.returncode == 0, output[-4000:]
    assert "restarting every task (restart 1 of 1)" in output and "Resuming from" in output
    assert_bitwise_equal(final_variables(run), final_variables(reference))


def test_a_peer_stuck_longer_than_the_collective_timeout_fails_the_other_with_one_line(tmp_path, data_dir):
    out = io.StringIO()
    launch([sys.executable, os.path.join(ROOT, "tests/multi_worker_job.py"), str(tmp_path), data_dir, "stuck"],
           num_workers=2, out=out, env=ENV)
    results = {r["worker"]: r for r in (json.loads(line.split("RESULT ", 1)[1])
                                        for line in out.getvalue().splitlines() if "RESULT " in line)}
    assert results[0]["type"] == "SetupError", out.getvalue()[-3000:]
    assert results[0]["error"].startswith("lost a peer task (a collective waited longer than --collective_timeout_s: "
                                          "a peer is stuck)"), results[0]
    assert 3 <= results[0]["seconds"] < 12  # the timeout (3 s), not the peer's stall (12 s)
