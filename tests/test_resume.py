"""Exact resume with real processes: killed (SIGKILL) or preempted (SIGTERM) runs, rerun with the
same command, end bitwise-equal to an uninterrupted run, with the same logs."""

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

from harness.launch import LocalCluster, local_cluster
from harness.preemption import EXIT_PREEMPTED
from tests.conftest import ROOT

pytestmark = pytest.mark.slow
TRAIN = [sys.executable, os.path.join(ROOT, "scripts/train.py")]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
SEED = int(os.environ.get("RESUME_TEST_SEED", random.randrange(1_000_000)))
# K=2 with a checkpoint every 5 steps: cadence saves mid-epoch (at 6) and on an epoch's last loop (at 10, where
# the epoch end's state is saved); min_delta 0.5 makes the plateau reduce the rate and early stopping count,
# and stop at the last epoch: their state must resume exactly too.
FLAGS = ["--deterministic", "--epochs=4", "--steps_per_epoch=10", "--steps_per_execution=2",
         "--checkpoint_every_n_steps=5", "--max_to_keep=50", "--update_freq=2", "--min_delta=0.5",
         "--reduce_lr_on_plateau_patience=1", "--early_stopping_patience=3"]
STRATEGIES = {"default": ["--strategy=default"], "mirrored": ["--strategy=mirrored", "--num_cpu_devices=2"]}


def log_path(model_dir):
    return f"{model_dir}.log"


def start(args, model_dir):
    log = open(log_path(model_dir), "a")
    return subprocess.Popen([*TRAIN, *args, f"--model_dir={model_dir}"], env=ENV, stdout=log,
                            stderr=subprocess.STDOUT, text=True)


def checkpoint_steps(model_dir):
    state = tf.train.get_checkpoint_state(f"{model_dir}/checkpoints")
    return [int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths] if state else []


def interrupt_at_random_step(process, model_dir, sig, rng):
    """Sends `sig` at a random moment after this process's first checkpoint, before the run ends."""
    before = max(checkpoint_steps(model_dir), default=-1)
    while max(checkpoint_steps(model_dir), default=-1) <= before and process.poll() is None:
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 0.6))
    process.send_signal(sig)
    return process.wait(timeout=120)


def variables(model_dir):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(f"{model_dir}/checkpoints"))
    return {k: reader.get_tensor(k) for k in training_state_keys(reader)}


def training_state_keys(reader):
    """Everything but checkpoint bookkeeping (the object graph, the manager's save counter)."""
    return [k for k in reader.get_variable_to_shape_map() if "OBJECT_GRAPH" not in k and "save_counter" not in k]


def mismatch(a, b, path="") -> str | None:
    """Where two JSON values differ (None when equal); floats within 1e-6 relative.

    A resumed epoch's running metric sums are restored as one total spread over the replicas,
    so that epoch's mean can differ from the uninterrupted run's in the last bits of a float.
    """
    if isinstance(a, dict):
        if not isinstance(b, dict) or a.keys() != b.keys():
            return f"{path}: keys {sorted(a)} != {sorted(b) if isinstance(b, dict) else b!r}"
        return next((m for k in a if (m := mismatch(a[k], b[k], f"{path}.{k}"))), None)
    if isinstance(a, list):
        if not isinstance(b, list) or len(a) != len(b):
            return f"{path}: {a!r} != {b!r}"
        return next((m for i, (x, y) in enumerate(zip(a, b)) if (m := mismatch(x, y, f"{path}[{i}]"))), None)
    if isinstance(a, float):
        return None if b == pytest.approx(a, rel=1e-6) else f"{path}: {a!r} != {b!r}"
    return None if a == b else f"{path}: {a!r} != {b!r}"


def close(a, b):
    return mismatch(a, b) is None


def without_timings(progress):
    """A checkpoint's progress record without the straggler view's measured seconds (they differ run to run)."""
    progress["callbacks"].get("RunSummary", {}).pop("workers", None)
    return progress


def read_csv(path):
    header, *rows = csv.reader(open(path))
    return [header, *([row[0], *map(float, row[1:])] for row in rows)]


def assert_same_run(resumed, reference):
    """Bitwise-equal weights and optimizer state; CSV, TensorBoard and summary.json as if never interrupted."""
    a, b = variables(resumed), variables(reference)
    assert sorted(a) == sorted(b)
    for key in a:
        if isinstance(a[key], bytes):  # the progress JSON: position, callback state, history
            ours, theirs = without_timings(json.loads(a[key])), without_timings(json.loads(b[key]))
            assert close(ours, theirs), mismatch(ours, theirs)
        elif "train_metrics" not in key:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    header, *rows = read_csv(f"{resumed}/metrics.csv")
    reference_header, *reference_rows = read_csv(f"{reference}/metrics.csv")
    assert header == reference_header and close(rows, reference_rows)
    for name, tag in (("train", "epoch_loss"), ("train", "batch_loss"), ("validation", "epoch_accuracy")):
        events = []
        for run in (resumed, reference):
            accumulator = EventAccumulator(f"{run}/tensorboard/{name}", size_guidance={"tensors": 0})
            accumulator.Reload()
            events.append([(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in accumulator.Tensors(tag)])
        steps = [s for s, _ in events[0]]
        assert steps == sorted(set(steps)) == [s for s, _ in events[1]], (name, tag)
        assert [v for _, v in events[0]] == pytest.approx([v for _, v in events[1]], rel=1e-6)
    summaries = [json.loads(open(f"{run}/summary.json").read()) for run in (resumed, reference)]
    assert close(summaries[0]["history"], summaries[1]["history"])
    assert summaries[0]["global_step"] == summaries[1]["global_step"] == 40


@pytest.fixture(scope="module")
def references(tmp_path_factory, data_dir):
    """Uninterrupted runs, one per strategy, started together (two cores)."""
    root = tmp_path_factory.mktemp("reference")
    runs = {name: start([*flags, *FLAGS, f"--data_dir={data_dir}"], f"{root}/{name}")
            for name, flags in STRATEGIES.items()}
    for name, process in runs.items():
        assert process.wait(timeout=600) == 0, open(log_path(f"{root}/{name}")).read()[-3000:]
    return {name: f"{root}/{name}" for name in runs}


@pytest.mark.parametrize("strategy, sig", [("default", signal.SIGKILL), ("mirrored", signal.SIGKILL),
                                           ("mirrored", signal.SIGTERM)])
def test_interrupted_run_resumes_exactly(tmp_path, data_dir, references, strategy, sig):
    rng = random.Random(SEED)
    print(f"RESUME_TEST_SEED={SEED}")
    args = [*STRATEGIES[strategy], *FLAGS, f"--data_dir={data_dir}"]
    model_dir = str(tmp_path / "run")
    for attempt in range(2):  # interrupted twice: the second time a resumed run is interrupted
        code = interrupt_at_random_step(start(args, model_dir), model_dir, sig, rng)
        log = open(log_path(model_dir)).read()
        if code == 0:
            if attempt == 0:
                pytest.skip(f"the run finished before the signal (seed {SEED})")
            break
        if sig == signal.SIGTERM:
            assert code == EXIT_PREEMPTED, log[-3000:]
            saved = int(log.split("Preempted by SIGTERM: saved at step ")[-1].split(" ")[0])
            assert max(checkpoint_steps(model_dir)) == saved  # no lost step: saved where it stopped
        else:
            assert code == -signal.SIGKILL
    assert start(args, model_dir).wait(timeout=600) == 0, open(log_path(model_dir)).read()[-3000:]
    assert "Resuming from" in open(log_path(model_dir)).read()
    assert_same_run(model_dir, references[strategy])


def run_cluster(args, model_dir, interrupt=None, rng=None):
    log = open(log_path(model_dir), "a")
    cluster = LocalCluster([*TRAIN, "--strategy=multi_worker_mirrored", *args, f"--model_dir={model_dir}"],
                           local_cluster(2), out=log, grace_s=30, env={"TF_CPP_MIN_LOG_LEVEL": "2"})
    cluster.start()
    if interrupt:
        victim = cluster._task("worker:1").process
        while not checkpoint_steps(model_dir) and victim.poll() is None:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.6))
        victim.send_signal(interrupt)
    code = cluster.wait()
    log.close()
    return code


@pytest.mark.multiprocess
def test_cluster_resumes_exactly_after_a_worker_is_killed_or_preempted(tmp_path, data_dir):
    rng = random.Random(SEED)
    args = [*FLAGS, f"--data_dir={data_dir}"]
    reference = str(tmp_path / "reference")
    assert run_cluster(args, reference) == 0, open(log_path(reference)).read()[-3000:]
    for sig in (signal.SIGKILL, signal.SIGTERM):
        model_dir = str(tmp_path / signal.Signals(sig).name)
        code = run_cluster(args, model_dir, interrupt=sig, rng=rng)
        log = open(log_path(model_dir)).read()
        if code == 0:
            continue  # finished before the signal
        if sig == signal.SIGTERM:  # one worker was signalled; both saved the same step and stopped
            assert code == EXIT_PREEMPTED, log[-3000:]
            saved = [int(line.split("saved at step ")[1].split(" ")[0]) for line in log.splitlines()
                     if "Preempted by SIGTERM: saved at step" in line]
            assert len(saved) == 2 and saved[0] == saved[1] == max(checkpoint_steps(model_dir))
        assert run_cluster(args, model_dir) == 0, open(log_path(model_dir)).read()[-3000:]
        assert_same_run(model_dir, reference)


def test_early_stopping_interrupted_mid_patience_stops_at_the_same_epoch(tmp_path, data_dir):
    args = ["--strategy=default", "--deterministic", "--epochs=12", "--steps_per_epoch=5", f"--data_dir={data_dir}",
            "--early_stopping_patience=2", "--monitor=val_loss", "--min_delta=0.2", "--learning_rate=3e-4",
            "--tensorboard=false"]
    reference = str(tmp_path / "reference")
    assert start(args, reference).wait(timeout=600) == 0
    summary = json.loads(open(f"{reference}/summary.json").read())
    stopped = summary["epochs_completed"]
    assert summary["stop_reason"].startswith("early stopping") and stopped < 12
    model_dir = str(tmp_path / "run")  # killed after the epoch before the stop: patience half used
    process = start(args, model_dir)
    while f"Epoch {stopped - 1}/12 " not in open(log_path(model_dir)).read():
        assert process.poll() is None, open(log_path(model_dir)).read()[-3000:]
        time.sleep(0.05)
    while (stopped - 1) * 5 not in checkpoint_steps(model_dir):
        time.sleep(0.05)
    process.kill()
    process.wait()
    if json.loads(open(f"{model_dir}/summary.json").read())["epochs_completed"] >= stopped:
        pytest.skip("the run reached the stop before the kill")
    assert start(args, model_dir).wait(timeout=600) == 0
    resumed = json.loads(open(f"{model_dir}/summary.json").read())
    assert resumed["epochs_completed"] == stopped
    assert resumed["stop_reason"] == summary["stop_reason"] and close(resumed["history"], summary["history"])


def test_a_save_killed_midway_leaves_the_previous_checkpoint(tmp_path):
    model_dir = str(tmp_path / "run")
    job = [sys.executable, os.path.join(ROOT, "tests/slow_save_job.py"), model_dir]
    process = subprocess.Popen(job, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    directory = f"{model_dir}/checkpoints"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # wait for a second save to be under way, then kill it
        names = os.listdir(directory) if os.path.isdir(directory) else []
        if checkpoint_steps(model_dir) and any("_temp" in n for n in names):
            break
        time.sleep(0.005)
    process.kill()
    process.wait()
    complete = max(checkpoint_steps(model_dir))
    result = subprocess.run([*job, "--resume_only"], env=ENV, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert f"RESUMED {complete}" in output
    assert "Found leftovers of an interrupted save" in output, output[-3000:]


def test_async_checkpoints_equal_synchronous_ones(tmp_path, digits):
    from harness import TrainInput
    from tests.conftest import make_trainer, strategy

    for mode in ("sync", "async"):
        trainer = make_trainer(strategy("mirrored", 2), digits, model_dir=str(tmp_path / mode),
                               async_checkpoint=mode == "async", checkpoint_every_n_steps=4, optimizer="adam",
                               checkpoint_max_to_keep=None)
        trainer.fit(TrainInput(digits.train_examples, digits.num_train_examples, 32), epochs=2, steps_per_epoch=6)
    assert checkpoint_steps(str(tmp_path / "sync")) == checkpoint_steps(str(tmp_path / "async")) == [4, 6, 8, 12]
    for step in (4, 8, 12):
        readers = [tf.train.load_checkpoint(str(tmp_path / mode / f"checkpoints/ckpt-{step}")) for mode in
                   ("sync", "async")]
        keys = training_state_keys(readers[0])
        assert sorted(keys) == sorted(training_state_keys(readers[1]))
        for key in keys:
            a, b = readers[0].get_tensor(key), readers[1].get_tensor(key)
            assert (a == b) if isinstance(a, bytes) else np.array_equal(a, b), key


def test_export_loads_and_predicts_in_a_fresh_process(tmp_path, data_dir):
    export_dir = str(tmp_path / "export")
    result = subprocess.run([*TRAIN, "--strategy=mirrored", "--num_cpu_devices=2", "--epochs=3",
                             f"--data_dir={data_dir}", f"--model_dir={tmp_path / 'run'}", f"--export_dir={export_dir}"],
                            env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    check = f"""
import json, sys
sys.path.insert(0, {ROOT!r})
import keras, numpy as np, tensorflow as tf
import harness
source = harness.load_source("digits", {data_dir!r})
x, y = next(iter(source.eval_examples().batch(297)))
x = tf.cast(x, tf.float32) / 255.0
saved_model = tf.saved_model.load({export_dir!r} + "/saved_model")
served = saved_model.serve(x).numpy()
keras_model = keras.models.load_model({export_dir!r} + "/model.keras").predict(x, verbose=0)
print(json.dumps({{"max_diff": float(np.abs(served - keras_model).max()),
                   "accuracy": float((served.argmax(-1) == y.numpy()).mean())}}))
"""
    loaded = subprocess.run([sys.executable, "-c", check], env=ENV, capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    outcome = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert outcome["max_diff"] < 1e-5 and outcome["accuracy"] > 0.8


def test_a_corrupt_newest_checkpoint_is_reported_and_the_previous_one_used(tmp_path, digits, caplog):
    from harness import TrainInput
    from tests.conftest import make_trainer, strategy

    data = TrainInput(digits.train_examples, digits.num_train_examples, 32)
    make_trainer(strategy("mirrored", 2), digits, model_dir=str(tmp_path)).fit(data, epochs=2, steps_per_epoch=5)
    assert checkpoint_steps(str(tmp_path)) == [5, 10]
    data_file = tmp_path / "checkpoints/ckpt-10.data-00000-of-00001"
    data_file.write_bytes(data_file.read_bytes()[:100])  # truncated, as by a full disk
    trainer = make_trainer(strategy("mirrored", 2), digits, model_dir=str(tmp_path))
    with caplog.at_level("WARNING"):
        trainer.fit(data, epochs=3, steps_per_epoch=5)
    assert any("ckpt-10 is unreadable" in r.getMessage() for r in caplog.records)
    assert any("Resuming from" in r.getMessage() and "ckpt-5 " in r.getMessage() for r in caplog.records)
    assert trainer.global_step == 15 and trainer.history.epoch == [0, 1, 2]


def test_accumulation_and_ema_resume_exactly_after_a_kill_and_refuse_another_decay(tmp_path, data_dir):
    """scripts/train.py with --gradient_accumulation_steps and --ema_decay, SIGKILLed after its first checkpoint:
    the rerun ends bitwise-equal (weights, optimizer, averages) to an uninterrupted run; another decay is refused."""
    rng = random.Random(SEED)
    flags = [*STRATEGIES["mirrored"], "--deterministic", "--epochs=2", "--steps_per_epoch=10",
             "--steps_per_execution=2", "--checkpoint_every_n_steps=3", "--gradient_accumulation_steps=4",
             "--ema_decay=0.9", "--tensorboard=false", "--progress=false", f"--data_dir={data_dir}"]
    run, reference = str(tmp_path / "run"), str(tmp_path / "reference")
    uninterrupted = start(flags, reference)
    code = interrupt_at_random_step(start(flags, run), run, signal.SIGKILL, rng)
    assert uninterrupted.wait(timeout=600) == 0, open(log_path(reference)).read()[-3000:]
    if code == 0:
        pytest.skip(f"the run finished before the kill (seed {SEED})")
    assert start(flags, run).wait(timeout=600) == 0, open(log_path(run)).read()[-3000:]
    assert "Resuming from" in open(log_path(run)).read()
    a, b = variables(run), variables(reference)
    assert sorted(a) == sorted(b) and [k for k in a if k.startswith("ema/averages/")]
    for key in a:
        if not isinstance(a[key], bytes) and "train_metrics" not in key:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    summary = json.loads(open(f"{run}/summary.json").read())
    assert (summary["ema_decay"], summary["evaluated_with"], summary["gradient_accumulation_steps"]) == (0.9, "ema", 4)
    refused = subprocess.run([*TRAIN, *[f for f in flags if not f.startswith("--ema_decay")], "--ema_decay=0.99",
                              f"--model_dir={run}"], env=ENV, capture_output=True, text=True, timeout=300)
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
    assert refused.returncode == 2 and len(errors) == 1 and "--ema_decay 0.9 -> 0.99" in errors[0], refused.stderr
