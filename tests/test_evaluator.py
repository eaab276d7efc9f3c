"""The evaluator task: every training checkpoint evaluated once, in order, equal to an offline evaluation,
written only into its own files; the real thing beside a 2-worker job started by the local launcher."""

import hashlib
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

import harness
from harness import evaluator as evaluator_lib
from harness.checkpointing import step_of
from harness.cluster_env import resolve_cluster
from harness.launch import launch
from harness.preemption import EXIT_PREEMPTED, WATCHER, Interrupted
from harness.run import RunConfig, run
from tests.conftest import ROOT, SPARSE_CE

TRAIN = [sys.executable, os.path.join(ROOT, "scripts/train.py")]
EVALUATOR_TF_CONFIG = json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                                  "task": {"type": "evaluator", "index": 0}})
TINY = {"epochs": 2, "steps_per_epoch": 5, "checkpoint_every_n_steps": 2, "max_to_keep": 100, "global_batch_size": 32,
        "progress": False}


def config(model_dir, data_dir, **overrides):
    return RunConfig(**{"strategy": "default", "model_dir": str(model_dir), "data_dir": data_dir, **TINY,
                        **overrides})


def checkpoints_on_disk(checkpoint_dir):
    names = tf.io.gfile.glob(f"{checkpoint_dir}/ckpt-*.index")
    return sorted(int(re.search(r"ckpt-(\d+)\.index$", n).group(1)) for n in names)


def contents(directory):
    """Every file under `directory` by relative path, with a digest of its bytes."""
    return {os.path.relpath(os.path.join(d, f), directory): hashlib.sha256(open(os.path.join(d, f), "rb").read())
            .hexdigest() for d, _, fs in os.walk(directory) for f in fs}


def evaluations(model_dir):
    path = os.path.join(model_dir, "evaluator", "evaluations.jsonl")
    return [json.loads(line) for line in open(path).read().splitlines()] if os.path.exists(path) else []


def offline_evaluation(path, source, global_batch_size):
    """The checkpoint's model, restored into a fresh model with tf.train.Checkpoint, on the same EvalInput;
    sums in float64 outside TensorFlow's loop."""
    model = harness.build_model("mlp", source.input_shape, source.num_classes)
    tf.train.Checkpoint(model=model).read(path).expect_partial()
    loss = correct = count = 0.0
    for features, labels, weights in harness.EvalInput(source.eval_examples, source.num_eval_examples,
                                                       global_batch_size)(tf.distribute.InputContext()):
        logits = model(features, training=False)
        mask = weights.numpy() > 0
        loss += float(np.sum(SPARSE_CE(labels, logits).numpy().astype(np.float64)[mask]))
        correct += float(np.sum((np.argmax(logits.numpy(), axis=-1) == labels.numpy())[mask]))
        count += float(mask.sum())
    return {"val_loss": loss / count, "val_accuracy": correct / count}


def assert_equal_to_offline(records, checkpoint_dir, source, global_batch_size, steps):
    by_step = {r["step"]: r for r in records}
    for step in steps:
        expected = offline_evaluation(f"{checkpoint_dir}/ckpt-{step}", source, global_batch_size)
        for name, value in expected.items():
            assert by_step[step][name] == pytest.approx(value, abs=1e-6), (step, name)


@pytest.mark.slow
def test_every_checkpoint_is_evaluated_once_in_order_and_equals_an_offline_evaluation(tmp_path, data_dir, digits,
                                                                                      monkeypatch):
    model_dir = tmp_path / "run"
    trained = run(config(model_dir, data_dir))
    checkpoint_dir = f"{model_dir}/checkpoints"
    steps = checkpoints_on_disk(checkpoint_dir)
    assert trained["global_step"] == 10 and len(steps) >= 5
    training_files = contents(model_dir)

    monkeypatch.setenv("TF_CONFIG", EVALUATOR_TF_CONFIG)
    summary = run(config(model_dir, data_dir, strategy="multi_worker_mirrored", eval_timeout_s=60))
    assert summary["task"] == "evaluator" and summary["evaluated"] == len(steps) and not summary["skipped"]
    assert summary["stop_reason"] == "evaluated the final checkpoint (step 10) of the finished run"
    records = evaluations(model_dir)
    assert [r["step"] for r in records] == steps  # each once, in order of global step
    assert [r["epochs_completed"] for r in records] == [s // 5 for s in steps]  # epochs completed at that checkpoint
    assert [r["epoch"] for r in records] == [-(-s // 5) for s in steps]  # the (1-based) epoch of that step
    assert {r["checkpoint"] for r in records} == {f"{checkpoint_dir}/ckpt-{s}" for s in steps}
    assert set(records[0]) == {"step", "epoch", "epochs_completed", "checkpoint", "stop_reason", "val_loss",
                               "val_accuracy"}
    assert_equal_to_offline(records, checkpoint_dir, digits, 32, steps)
    # The last epoch's validation, as training logged it, is the final checkpoint's evaluation.
    assert records[-1]["val_loss"] == pytest.approx(trained["history"]["val_loss"][-1], abs=1e-6)

    events = EventAccumulator(str(model_dir / "tensorboard" / "evaluator"))
    events.Reload()
    for tag, metric in (("epoch_loss", "val_loss"), ("epoch_accuracy", "val_accuracy")):
        scalars = [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in events.Tensors(tag)]
        assert scalars == [(r["step"], pytest.approx(r[metric], abs=1e-6)) for r in records], tag
    # The evaluator wrote only its own files.
    now = contents(model_dir)
    assert {f: c for f, c in now.items() if not f.startswith(("evaluator/", "tensorboard/evaluator/"))} == \
        training_files

    monkeypatch.setenv("TF_CONFIG", EVALUATOR_TF_CONFIG)
    again = run(config(model_dir, data_dir, strategy="multi_worker_mirrored", eval_timeout_s=60))
    assert again["evaluated"] == 0 and evaluations(model_dir) == records  # a second run adds nothing
    assert again["stop_reason"] == "the run is finished (step 10) and every checkpoint on disk is evaluated"

    # An evaluator stopped after two evaluations continues with the third.
    jsonl = model_dir / "evaluator" / "evaluations.jsonl"
    jsonl.write_text("".join(line + "\n" for line in jsonl.read_text().splitlines()[:2]))
    monkeypatch.setenv("TF_CONFIG", EVALUATOR_TF_CONFIG)
    resumed = run(config(model_dir, data_dir, strategy="multi_worker_mirrored", eval_timeout_s=60))
    assert resumed["evaluated"] == len(steps) - 2
    continued = evaluations(model_dir)
    assert [r["step"] for r in continued] == steps and continued[:2] == records[:2]
    for before, after in zip(records[2:], continued[2:]):
        assert after["val_loss"] == pytest.approx(before["val_loss"], abs=1e-6)


@pytest.mark.slow
def test_a_checkpoint_deleted_before_it_was_read_is_reported_and_skipped(tmp_path, data_dir, caplog, monkeypatch):
    model_dir = tmp_path / "run"
    run(config(model_dir, data_dir, epochs=1))
    checkpoint_dir = f"{model_dir}/checkpoints"
    steps = checkpoints_on_disk(checkpoint_dir)
    read = evaluator_lib.read_progress

    def retention_first(path):  # the chief's retention deletes the second checkpoint just before it is read
        if step_of(path) == steps[1]:
            for name in tf.io.gfile.glob(f"{path}.*"):
                tf.io.gfile.remove(name)
        return read(path)

    monkeypatch.setattr(evaluator_lib, "read_progress", retention_first)
    job = resolve_cluster({"TF_CONFIG": EVALUATOR_TF_CONFIG})
    with caplog.at_level("WARNING"):
        summary = evaluator_lib.evaluate_continuously(config(model_dir, data_dir, epochs=1), job, poll_s=0.1)
    assert [r["step"] for r in evaluations(model_dir)] == [s for s in steps if s != steps[1]]
    assert list(summary["skipped"]) == [steps[1]]
    reported = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(reported) == 1 and f"ckpt-{steps[1]} (step {steps[1]}): deleted before it could be read" in reported[0]


@pytest.mark.slow
def test_checkpoints_deleted_before_it_listed_them_are_reported_as_a_gap(tmp_path, data_dir, caplog):
    model_dir = tmp_path / "run"
    run(config(model_dir, data_dir, epochs=1, checkpoint_every_n_steps=1, max_to_keep=2))
    assert checkpoints_on_disk(f"{model_dir}/checkpoints") == [4, 5]
    (model_dir / "evaluator").mkdir()  # an earlier run of the evaluator saw step 1 only, then stopped
    (model_dir / "evaluator" / "evaluations.jsonl").write_text(json.dumps(
        {"step": 1, "epochs_completed": 0, "checkpoint": f"{model_dir}/checkpoints/ckpt-1", "stop_reason": None,
         "val_loss": 2.3, "val_accuracy": 0.1}) + "\n")
    job = resolve_cluster({"TF_CONFIG": EVALUATOR_TF_CONFIG})
    with caplog.at_level("WARNING"):
        summary = evaluator_lib.evaluate_continuously(config(model_dir, data_dir, epochs=1, max_to_keep=2), job,
                                                      poll_s=0.1)
    assert [r["step"] for r in evaluations(model_dir)] == [1, 4, 5] and summary["gaps"] == [(1, 4)]
    assert any("any checkpoint after step 1 and before step 4 was deleted by retention (--max_to_keep=2)"
               in r.getMessage() for r in caplog.records)


def test_without_a_new_checkpoint_it_times_out_and_a_signal_interrupts_it(tmp_path, data_dir):
    job = resolve_cluster({"TF_CONFIG": EVALUATOR_TF_CONFIG})
    start = time.monotonic()
    summary = evaluator_lib.evaluate_continuously(config(tmp_path, data_dir, eval_timeout_s=0.5), job, poll_s=0.1)
    assert summary["stop_reason"] == "timed out waiting for a new checkpoint (0.5s)" and summary["evaluated"] == 0
    assert time.monotonic() - start < 5

    installed_here = not WATCHER.installed
    WATCHER.install()  # (so that the SIGTERM below can never reach pytest itself)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        timer.start()
        with pytest.raises(Interrupted) as caught:
            evaluator_lib.evaluate_continuously(config(tmp_path, data_dir, eval_timeout_s=60), job, poll_s=0.1)
    finally:
        timer.cancel()
        if installed_here:
            WATCHER.uninstall()
    assert caught.value.signal_name == "SIGTERM" and "in the evaluator (0 checkpoint(s)" in caught.value.outcome


def test_the_evaluator_refuses_checkpoints_of_another_configuration(tmp_path, data_dir):
    model_dir = tmp_path / "run"
    run(config(model_dir, data_dir, epochs=1, checkpoint_every_n_steps=None))
    job = resolve_cluster({"TF_CONFIG": EVALUATOR_TF_CONFIG})
    with pytest.raises(harness.UsageError, match="trained with --model=mlp, but this evaluator has --model=cnn"):
        evaluator_lib.evaluate_continuously(config(model_dir, data_dir, epochs=1, model="cnn"), job, poll_s=0.1)
    with pytest.raises(harness.UsageError, match="--monitor=val_loss"):
        evaluator_lib.evaluate_continuously(config(model_dir, data_dir, monitor="loss", evaluator_export_best=True),
                                            job, poll_s=0.1)


@pytest.mark.slow
def test_on_two_local_devices_it_evaluates_mirrored_and_exports_the_best_checkpoint(tmp_path, data_dir, digits):
    model_dir = tmp_path / "run"
    run(config(model_dir, data_dir, epochs=3, checkpoint_every_n_steps=None))
    job = resolve_cluster({"TF_CONFIG": EVALUATOR_TF_CONFIG})
    summary = evaluator_lib.evaluate_continuously(
        config(model_dir, data_dir, epochs=3, strategy="mirrored", num_cpu_devices=2, monitor="val_accuracy",
               evaluator_export_best=True), job, poll_s=0.1)
    assert (summary["strategy"], summary["num_replicas"]) == ("mirrored", 2)
    records = evaluations(model_dir)
    assert [r["step"] for r in records] == [5, 10, 15]
    assert_equal_to_offline(records, f"{model_dir}/checkpoints", digits, 32, [5, 10, 15])
    best = max(records, key=lambda r: (r["val_accuracy"], -r["step"]))  # the first of equals
    assert summary["best"]["step"] == best["step"]
    exported = json.loads((model_dir / "evaluator" / "best" / "evaluation.json").read_text())
    assert exported["step"] == best["step"] and exported["monitor"] == "val_accuracy"
    import keras

    model = keras.models.load_model(model_dir / "evaluator" / "best" / "model.keras")
    assert offline_evaluation_of(model, digits) == pytest.approx(best["val_accuracy"], abs=1e-6)


@pytest.mark.parametrize("flags, expected", [
    ({"strategy": "multi_worker_mirrored", "num_cpu_devices": 2}, "mirrored"),
    ({"strategy": "mirrored", "num_cpu_devices": 2}, "mirrored"),
    ({"strategy": "mirrored"}, "default"),  # one device
    ({"strategy": "mirrored", "num_cpu_devices": 2, "jit_compile": True}, "default"),  # XLA: one CPU device
    ({"strategy": "mirrored", "num_cpu_devices": 3}, "default"),  # 32 does not split over 3
    ({"strategy": "tpu", "num_cpu_devices": 2}, "default"),
    ({"strategy": "one_device", "num_cpu_devices": 2}, "default"),
])
def test_the_evaluator_strategy_is_one_process(flags, expected):
    assert evaluator_lib.evaluation_strategy(RunConfig(global_batch_size=32, **flags)) == expected


def offline_evaluation_of(model, source):
    correct = count = 0
    for features, labels, weights in harness.EvalInput(source.eval_examples, source.num_eval_examples,
                                                       32)(tf.distribute.InputContext()):
        mask = weights.numpy() > 0
        correct += int(np.sum((np.argmax(model(features).numpy(), axis=-1) == labels.numpy())[mask]))
        count += int(mask.sum())
    return correct / count


@pytest.mark.slow
@pytest.mark.multiprocess
def test_an_evaluator_task_beside_two_workers(tmp_path, data_dir, digits):
    model_dir = tmp_path / "cluster"
    out = io.StringIO()
    code = launch([*TRAIN, "--strategy=multi_worker_mirrored", f"--model_dir={model_dir}", f"--data_dir={data_dir}",
                   "--epochs=3", "--steps_per_epoch=12", "--checkpoint_every_n_steps=3", "--max_to_keep=4",
                   "--global_batch_size=32", "--eval_timeout_s=120"],
                  num_workers=2, with_evaluator=True, out=out, env={"TF_CPP_MIN_LOG_LEVEL": "2"})
    output = out.getvalue()
    assert code == 0, output[-4000:]
    evaluator_lines = [line for line in output.splitlines() if line.startswith("[evaluator:0] ")]
    assert any("stop reason: evaluated the final checkpoint (step 36) of the finished run" in line
               for line in evaluator_lines), "\n".join(evaluator_lines[-20:])

    checkpoint_dir = f"{model_dir}/checkpoints"
    written = set(range(3, 37, 3))  # every 3 steps; the epoch ends (12, 24, 36) are among them
    on_disk = checkpoints_on_disk(checkpoint_dir)
    records = evaluations(model_dir)
    evaluated = [r["step"] for r in records]
    skipped = {int(m) for line in evaluator_lines for m in re.findall(r"skipped \S+ \(step (\d+)\): deleted", line)}
    unseen = {step for line in evaluator_lines for a, b in re.findall(r"after step (\d+) and before step (\d+) was "
                                                                       r"deleted", line)
              for step in range(int(a) + 1, int(b))}
    assert evaluated == sorted(set(evaluated)) and set(evaluated) <= written  # once each, in order
    assert set(on_disk) <= set(evaluated) and on_disk[-1] == 36  # every checkpoint still on disk was evaluated
    assert not skipped & set(evaluated) and skipped <= written - set(on_disk)  # the others were deleted first
    assert written <= set(evaluated) | skipped | unseen, "\n".join(evaluator_lines)  # and each one reported
    assert not unseen & (set(evaluated) | skipped)
    assert_equal_to_offline(records, checkpoint_dir, digits, 32, on_disk)

    files = sorted(os.path.relpath(os.path.join(d, f), model_dir) for d, _, fs in os.walk(model_dir) for f in fs)
    evaluator_files = [f for f in files if f.startswith(("evaluator/", "tensorboard/evaluator/"))]
    assert "evaluator/evaluations.jsonl" in evaluator_files
    assert any(f.startswith("tensorboard/evaluator/events") for f in evaluator_files)
    assert not [f for f in evaluator_files if "tmp" in f]
    # Training's outputs are the chief's: the same files as a run without an evaluator would have.
    training_files = [f for f in files if f not in evaluator_files]
    assert {f.split("/")[0] for f in training_files} == {"checkpoints", "tensorboard", "metrics.csv", "summary.json",
                                                         "run.json"}
    assert not [f for f in training_files if f.startswith("tensorboard/") and
                not f.startswith(("tensorboard/train/", "tensorboard/validation/"))]


@pytest.mark.slow
def test_the_script_as_an_evaluator_exits_75_on_sigterm(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_CONFIG": EVALUATOR_TF_CONFIG}
    process = subprocess.Popen([*TRAIN, f"--model_dir={tmp_path}", "--dataset=synthetic"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()  # "Evaluator: watching ..." once it waits
        assert line.startswith("Evaluator: watching"), line
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == EXIT_PREEMPTED, stderr[-2000:]
    assert "Stopped by SIGTERM in the evaluator (0 checkpoint(s) evaluated" in stderr
    assert "Traceback" not in stderr
