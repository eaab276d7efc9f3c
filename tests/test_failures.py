"""Every failure is one clear line, and nothing is lost (issue 11): a table of bad inputs, broken storage
and damaged files for scripts/train.py, scripts/launch_local.py and the Python API.

Each case checks the exit code (for the API, the exception type), exactly one `error:` line naming the input
or path and the fix, no traceback anywhere, nothing written for a usage error and, after a storage fault,
that the previous checkpoint still restores and no temporary file is left behind.

How the cases run, to stay fast:
- Usage errors of train.py and the launcher: fresh processes that never start TensorFlow (their whole output
  is the one line, which also shows that TensorFlow was not imported: it always logs at start-up).
- Storage faults and damaged files: `harness.run.run(RunConfig(...))` in this process, which is what
  train.py calls; train.py prints `error: <message>` and exits 1 for the `SetupError` or `OSError` it raises
  (2 for a `UsageError`), so a one-line message of the right type is that exit code and that line.
- A few end-to-end cases start TensorFlow processes (marked slow): the launcher, a download without network,
  unreachable storage, a full disk and asynchronous checkpoints, where the process boundary matters.
Full disks are a small tmpfs mounted here, read-only storage is `chattr +i` (root ignores permission bits);
both are skipped with the reason when this machine does not allow them.
"""

import dataclasses
import gc
import json
import math
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import keras
import pytest
import tensorflow as tf

import harness
from callbacks import CSVLogger, EarlyStopping, ModelCheckpoint, ReduceLROnPlateau, TensorBoard
from callbacks.base import Callback
from harness.checkpointing import read_progress
from harness.errors import SetupError, UsageError
from harness.run import run
from harness.run_config import RunConfig
from harness.strategy import resolve_job
from tests.conftest import make_trainer, run_script

TRAIN, LAUNCHER = "scripts/train.py", "scripts/launch_local.py"
TRACEBACK = "Traceback (most recent call last)"
TINY = {"dataset": "synthetic", "epochs": 1, "steps_per_epoch": 2, "model": "mlp", "progress": False,
        "strategy": "default"}
TINY_FLAGS = [f"--{name}={str(value).lower()}" for name, value in TINY.items()]
WORKER_1 = json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 1}})


def _has_network() -> bool:
    try:
        socket.getaddrinfo("storage.googleapis.com", 443)
        return True
    except OSError:
        return False


# The cases of unreachable storage and downloads assume a machine without network (as the test machines are).
needs_no_network = pytest.mark.skipif(_has_network(), reason="this machine has network: gs:// and downloads work")


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error: ")]


# ----- usage errors of scripts/train.py: exit 2, one line, nothing written, no TensorFlow ----------------------

FLOAT_FLAGS = [f.name for f in dataclasses.fields(RunConfig) if f.type.startswith("float")]
USAGE = {  # id: (arguments, environment, what the one line says)
    "learning rate inf": (["--learning_rate=inf"], {}, "--learning_rate must be a finite number, got inf"),
    "learning rate -inf": (["--learning_rate=-inf"], {}, "--learning_rate must be a finite number, got -inf"),
    "decay rate nan": (["--lr_decay_rate=nan"], {}, "--lr_decay_rate must be a finite number, got nan"),
    "heartbeat inf": (["--heartbeat_timeout_s=inf"], {}, "--heartbeat_timeout_s must be a finite number"),
    "join timeout inf": (["--cluster_join_timeout_s=inf"], {}, "--cluster_join_timeout_s must be a finite number"),
    "min_lr -inf": (["--min_lr=-inf"], {}, "--min_lr must be a finite number"),
    "learning rate 0": (["--learning_rate=0"], {}, "--learning_rate must be > 0, got 0.0"),
    "seed -1": (["--seed=-1"], {}, "--seed must be in 0..4294967295, got -1"),
    "seed 2**32": (["--seed=4294967296"], {}, "--seed must be in 0..4294967295, got 4294967296"),
    "stray argument": (["train"], {}, "unexpected argument 'train'; every setting is a flag such as --epochs=5"),
    "two stray arguments": (["a", "b"], {}, "unexpected argument 'a'"),
    "not an integer": (["--epochs=abc"], {}, "flag --epochs=abc"),
    "unknown flag": (["--epoch=3"], {}, "Unknown command line flag 'epoch'"),
    "unknown strategy": (["--strategy=horovod"], {}, "flag --strategy=horovod"),
    "unknown model": (["--model=vit"], {}, "flag --model=vit"),
    "unknown mode": (["--mode=sideways"], {}, "flag --mode=sideways"),
    "epochs 0": (["--epochs=0"], {}, "--epochs must be >= 1, got 0"),
    "batch 0": (["--global_batch_size=0"], {}, "--global_batch_size must be >= 1, got 0"),
    "K 0": (["--steps_per_execution=0"], {}, "--steps_per_execution must be >= 1, got 0"),
    "max_to_keep 0": (["--max_to_keep=0"], {}, "--max_to_keep must be >= 1, got 0"),
    "cpu devices 0": (["--num_cpu_devices=0"], {}, "--num_cpu_devices must be >= 1, got 0"),
    "checkpoint every 0 steps": (["--checkpoint_every_n_steps=0"], {}, "--checkpoint_every_n_steps must be >= 1"),
    "plateau factor 1.5": (["--reduce_lr_factor=1.5"], {}, "--reduce_lr_factor must be in (0, 1), got 1.5"),
    "profile range backwards": (["--profile_steps=9,3"], {}, "--profile_steps must be 'start,stop' with 0 <= start"),
    "profile range not numbers": (["--profile_steps=a"], {}, "--profile_steps must be 'start,stop' global steps"),
    "unknown monitor": (["--monitor=val_auc"], {}, "--monitor is 'val_auc', not a metric of this run"),
    "empty model_dir": (["--model_dir="], {}, "--model_dir must not be empty"),
    "missing flagfile": (["--flagfile=/nonexistent/flags"], {}, "Unable to open flagfile"),
    "task index -1": (["--task_index=-1"], {}, "--task_index must be >= 0, got -1"),
    "multi-worker without a cluster": (["--strategy=multi_worker_mirrored"], {},
                                       "--strategy=multi_worker_mirrored needs a cluster: set TF_CONFIG"),
    "cluster flag without multi-worker": (["--worker_hosts=a:1,b:1"], {},
                                          "--worker_hosts places this task in a multi-worker job"),
    "worker TF_CONFIG with mirrored": ([], {"TF_CONFIG": WORKER_1},
                                       "--strategy is mirrored, which trains in one process and would write as the "
                                       "chief, but TF_CONFIG says this process is worker:1"),
    "malformed TF_CONFIG for multi-worker": (["--strategy=multi_worker_mirrored"], {"TF_CONFIG": "{garbage"},
                                             "TF_CONFIG is not valid JSON"),
    "TF_CONFIG index out of range": (["--strategy=multi_worker_mirrored"], {"TF_CONFIG": json.dumps(
        {"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}})}, "index 3 is out of range"),
    "TF_CONFIG parameter server": (["--strategy=multi_worker_mirrored"], {"TF_CONFIG": json.dumps(
        {"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "ps", "index": 0}})}, "TF_CONFIG task type 'ps'"),
    "TF_CONFIG address twice": (["--strategy=multi_worker_mirrored"], {"TF_CONFIG": json.dumps(
        {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:1"]}, "task": {"type": "worker", "index": 0}})},
        "TF_CONFIG lists the address 127.0.0.1:1 more than once"),
    **{f"{name} nan": ([f"--{name}=nan"], {}, f"--{name} must be a finite number, got nan") for name in FLOAT_FLAGS},
}


@pytest.mark.parametrize("args, env, message", USAGE.values(), ids=USAGE.keys())
@pytest.mark.slow
def test_a_usage_error_of_train_py_is_one_line_exit_2_before_tensorflow_starts(tmp_path, args, env, message):
    model_dir = tmp_path / "run"
    result = run_script(TRAIN, f"--model_dir={model_dir}", *TINY_FLAGS[:-1], *args, env=env, timeout=60)
    assert result.returncode == 2, result.stderr[-3000:]
    # The whole output is the one line: TensorFlow, had it started, would have logged lines of its own.
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1, result.stderr[-3000:]
    assert error_lines(result.stderr) and message in result.stderr, result.stderr
    assert not model_dir.exists()


# ----- the launcher: its own usage errors, and its tasks' ---------------------------------------------------

LAUNCHER_USAGE = {  # id: (launcher arguments, what its one line says)
    "unknown launcher flag": (["--bogus", "--", "--epochs=1"], "'bogus'"),
    "training flag before --": (["--epochs=3"], "'epochs'"),
    "stray argument before --": (["extra", "--", "--epochs=1"], "'extra'"),
    "no workers": (["--num_workers=0", "--", "--epochs=1"], "--num_workers"),
    "grace nan": (["--grace_s=nan", "--", "--epochs=1"], "--grace_s"),
    "kill_after inf": (["--kill_after_s=inf", "--", "--epochs=1"], "--kill_after_s"),
    "negative restarts": (["--max_restarts=-1", "--", "--epochs=1"], "--max_restarts"),
    "single-process strategy": (["--", "--strategy=mirrored"], "'mirrored'"),
    "missing script": (["--script=no_such_script.py", "--"], "no_such_script.py"),
}


@pytest.mark.parametrize("args, message", LAUNCHER_USAGE.values(), ids=LAUNCHER_USAGE.keys())
def test_a_usage_error_of_the_launcher_is_one_line_exit_2(tmp_path, args, message):
    model_dir = tmp_path / "run"
    result = run_script(LAUNCHER, *args, *([f"--model_dir={model_dir}"] if "--" in args else []), timeout=60)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1, result.stderr[-3000:]
    assert error_lines(result.stderr) and message in result.stderr, result.stderr
    assert not model_dir.exists()


TASK_USAGE = {  # id: (the tasks' arguments, what each task's one line says)
    "tasks: epochs 0": (["--epochs=0"], "--epochs must be >= 1, got 0"),
    "tasks: learning rate nan": (["--learning_rate=nan"], "--learning_rate must be a finite number, got nan"),
    "tasks: stray argument": (["stray"], "unexpected argument 'stray'"),
    "tasks: seed out of range": (["--seed=-5"], "--seed must be in 0..4294967295, got -5"),
}


@pytest.mark.parametrize("args, message", TASK_USAGE.values(), ids=TASK_USAGE.keys())
def test_a_usage_error_of_the_tasks_reaches_the_launchers_summary(tmp_path, args, message):
    model_dir = tmp_path / "run"
    result = run_script(LAUNCHER, "--num_workers=2", "--", f"--model_dir={model_dir}", *args, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    for task in ("worker:0", "worker:1"):  # each task's own line, once, and nothing else from it
        lines = [line for line in output.splitlines() if line.startswith(f"[{task}] ")]
        assert len(lines) == 1 and lines[0].startswith(f"[{task}] error: ") and message in lines[0], output
    verdicts = [line for line in output.splitlines() if line.startswith("[launcher] failed: ")]
    assert len(verdicts) == 1 and message in verdicts[0], output
    assert TRACEBACK not in output and not model_dir.exists()


# ----- the Python API: library errors name library arguments -------------------------------------------------

def _trainer(strategy_name="default", replicas=None, **kwargs):
    return make_trainer(harness.build_strategy(strategy_name, num_cpu_devices=replicas), harness.synthetic_source(),
                        **kwargs)


def _train_input(batch=32):
    source = harness.synthetic_source()
    return harness.TrainInput(source.train_examples, source.num_train_examples, batch)


def _eval_input(batch=32):
    source = harness.synthetic_source()
    return harness.EvalInput(source.eval_examples, source.num_eval_examples, batch)


API = {  # id: (call, exception type, how its message starts)
    "Trainer K 0": (lambda: _trainer(steps_per_execution=0), UsageError, "steps_per_execution must be >= 1, got 0"),
    "Trainer every 0 steps": (lambda: _trainer(checkpoint_every_n_steps=0), UsageError,
                              "checkpoint_every_n_steps must be >= 1"),
    "Trainer every nan seconds": (lambda: _trainer(checkpoint_every_n_seconds=math.nan), UsageError,
                                  "checkpoint_every_n_seconds must be > 0"),
    "Trainer uneven batch": (lambda: _trainer("mirrored", 2, global_batch_size=33), UsageError,
                             "global_batch_size 33 does not split evenly over 2 replicas"),
    "Trainer XLA on CPU replicas": (lambda: _trainer("mirrored", 2, jit_compile=True), UsageError,
                                    "jit_compile cannot run several replicas on logical CPU devices"),
    "fit epochs 0": (lambda: _trainer().fit(_train_input(), epochs=0, steps_per_epoch=1), UsageError,
                     "epochs must be an integer >= 1, got 0"),
    "fit steps_per_epoch 0": (lambda: _trainer().fit(_train_input(), epochs=1, steps_per_epoch=0), UsageError,
                              "steps_per_epoch must be an integer >= 1, got 0"),
    "fit without validation_steps": (lambda: _trainer().fit(_train_input(), epochs=1, steps_per_epoch=1,
                                                            validation_data=_eval_input()), UsageError,
                                     "validation_data needs validation_steps"),
    "fit with another batch": (lambda: _trainer().fit(_train_input(64), epochs=1, steps_per_epoch=1), UsageError,
                               "train_data batches 64 examples per step but the trainer's global_batch_size is 32"),
    "evaluate 0 steps": (lambda: _trainer().evaluate(_eval_input(), 0), UsageError, "validation_steps must be >= 1"),
    "TrainInput batch too big": (lambda: harness.TrainInput(lambda: None, 10, 64), UsageError,
                                 "global_batch_size is 64, more than the 10 examples of the training split"),
    "EvalInput empty": (lambda: harness.EvalInput(lambda: None, 0, 64), UsageError, "the evaluation split is empty"),
    "build_strategy unknown": (lambda: harness.build_strategy("horovod"), UsageError, "strategy is unknown"),
    "build_strategy heartbeat nan": (lambda: harness.build_strategy("default", heartbeat_timeout_s=math.nan),
                                     UsageError, "heartbeat_timeout_s must be a finite number of seconds > 0"),
    "build_strategy without a cluster": (lambda: harness.build_strategy("multi_worker_mirrored"), UsageError,
                                         "strategy=multi_worker_mirrored needs a cluster"),
    "build_strategy tpu without address": (lambda: harness.build_strategy("tpu"), UsageError, "tpu needs a TPU"),
    "configure_cpu_devices 0": (lambda: harness.configure_cpu_devices(0), UsageError,
                                "num_cpu_devices must be >= 1, got 0"),
    "resolve_job cluster setting": (lambda: resolve_job("mirrored", {}, worker_hosts="a:1"), UsageError,
                                    "worker_hosts places this task in a multi-worker job"),
    "resolve_job worker TF_CONFIG": (lambda: resolve_job("default", {"TF_CONFIG": WORKER_1}), UsageError,
                                     "strategy is default, which trains in one process"),
    "RunConfig inf": (lambda: RunConfig(learning_rate=math.inf).validate(), UsageError,
                      "learning_rate must be a finite number, got inf"),
    "load_source unknown": (lambda: harness.load_source("no_such_data_set"), UsageError,
                            "unknown data set 'no_such_data_set'"),
    "EarlyStopping mode": (lambda: EarlyStopping(mode="sideways"), ValueError, "EarlyStopping: unknown mode"),
    "EarlyStopping min_delta nan": (lambda: EarlyStopping(min_delta=math.nan), ValueError,
                                    "EarlyStopping: min_delta must be a finite number"),
    "ReduceLROnPlateau factor": (lambda: ReduceLROnPlateau(factor=1.5), ValueError,
                                 "ReduceLROnPlateau: factor must be in (0, 1)"),
    "ReduceLROnPlateau min_lr nan": (lambda: ReduceLROnPlateau(min_lr=math.nan), ValueError,
                                     "ReduceLROnPlateau: min_lr must be a finite number >= 0"),
    "TensorBoard update_freq": (lambda: TensorBoard(update_freq=0), ValueError, "TensorBoard: update_freq must be"),
    "TensorBoard profile range": (lambda: TensorBoard(profile_batch=(5, 2)), ValueError,
                                  "TensorBoard: profile_batch must be"),
    "CSVLogger separator": (lambda: CSVLogger(separator=";;"), ValueError, "CSVLogger: separator must be one"),
    "ModelCheckpoint max_to_keep": (lambda: ModelCheckpoint("x.keras", max_to_keep=0), ValueError,
                                    "ModelCheckpoint: max_to_keep must be >= 1"),
}


@pytest.mark.parametrize("call, error_type, message", API.values(), ids=API.keys())
def test_an_api_error_names_the_argument_not_the_flag(call, error_type, message):
    with pytest.raises(error_type) as e:
        call()
    text = str(e.value)
    assert text.startswith(message) and "\n" not in text, text
    assert "--" not in text, text  # flags are the command line's words (UsageError.as_flag)


def test_run_refuses_bad_settings_before_writing_anything(tmp_path):
    with pytest.raises(UsageError, match="^epochs must be >= 1, got 0$"):
        run(RunConfig(**{**TINY, "epochs": 0}, model_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


def test_a_stale_tf_config_is_ignored_with_one_warning_by_single_process_strategies(caplog):
    assert resolve_job("mirrored", {"TF_CONFIG": "{garbage"}).source == "none"
    assert resolve_job("mirrored", {"TF_CONFIG": "{garbage"}, warn=False).source == "none"
    chief = json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}})
    assert resolve_job("default", {"TF_CONFIG": chief}).ignored_sources
    warnings = [r.getMessage() for r in caplog.records if "TF_CONFIG" in r.getMessage() or "tf_config" in
                r.getMessage()]
    assert len(warnings) == 2 and all("\n" not in w for w in warnings), warnings


# ----- storage faults and damaged files, through harness.run.run (what train.py runs) -----------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run of one epoch (checkpoint at step 2), copied by each case that damages a trained model_dir."""
    model_dir = tmp_path_factory.mktemp("trained") / "run"
    run(RunConfig(**TINY, model_dir=str(model_dir)))
    return model_dir


@pytest.fixture(scope="module")
def tmpfs(tmp_path_factory):
    """A 32 MB tmpfs, a disk that fills up (unmounted at the end); the reason instead when it cannot be mounted.

    (32 MB: in this process TensorBoard's graph export of a run holds every function traced meanwhile, MBs.)"""
    path = tmp_path_factory.mktemp("tmpfs")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32M", "tmpfs", str(path)], capture_output=True,
                             text=True)
    if mounted.returncode:
        yield f"cannot mount a tmpfs here ({mounted.stderr.strip()}); the full-disk cases need one"
        return
    yield path
    if subprocess.run(["umount", str(path)], capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def disk_of(tmpfs, name: str) -> Path:
    """A fresh directory on the tmpfs (or the skip reason)."""
    if isinstance(tmpfs, str):
        pytest.skip(tmpfs)
    disk = tmpfs / name
    shutil.rmtree(disk, ignore_errors=True)
    disk.mkdir()
    return disk


@pytest.fixture
def immutable():
    """`immutable(path)`: makes a file or directory read-only even for root (undone at the end)."""
    paths = []

    def make(path):
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"chattr +i does not work here ({done.stderr.strip()}): the read-only cases need it")
        paths.append(path)

    yield make
    for path in reversed(paths):
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)


def fill(directory: Path, leave_bytes: int = 0) -> None:
    """Fills the file system of `directory`, leaving about `leave_bytes` (a tmpfs counts whole pages)."""
    with open(directory / "filler", "ab", buffering=0) as f:
        free = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize - leave_bytes
        for size in (1 << 16, 4096, 1):
            while free >= size or not leave_bytes:
                try:
                    written = f.write(b"\0" * size)
                except OSError:
                    break
                free -= written
            if leave_bytes and free <= 0:
                break


class FillDisk(Callback):
    """Fills the disk at a hook of the run (user callbacks run before the built-in writers)."""

    def __init__(self, directory: Path, hook: str, leave_bytes: int = 0, step: int | None = None):
        self.directory, self.hook, self.leave_bytes, self.step = directory, hook, leave_bytes, step

    def _maybe_fill(self, hook, step=None):
        if hook == self.hook and (self.step is None or step == self.step):
            fill(self.directory, self.leave_bytes)

    def on_train_begin(self, logs=None):
        self._maybe_fill("train_begin")

    def on_train_batch_end(self, step, logs=None):
        self._maybe_fill("batch_end", step)

    def on_epoch_end(self, epoch, logs=None):
        self._maybe_fill("epoch_end")

    def on_train_end(self, logs=None):
        self._maybe_fill("train_end")


@dataclasses.dataclass
class Workspace:
    """Where a case runs: `model_dir` (a copy of the trained run unless the case starts fresh) and helpers."""

    root: Path
    model_dir: Path
    immutable: Callable[[Path], None]
    tmpfs: Callable[[], Path]
    disks: list[Path] = dataclasses.field(default_factory=list)


def _fresh(ws):
    shutil.rmtree(ws.model_dir)


def _replace(relative, kind):
    def prepare(ws):
        path = ws.model_dir / relative
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        path.mkdir() if kind == "dir" else path.write_text("x")
    return prepare


def _write(relative, content: bytes):
    return lambda ws: (ws.model_dir / relative).write_bytes(content)


def _under_file(ws):
    _fresh(ws)
    (ws.root / "a_file").write_text("x")
    return {"model_dir": str(ws.root / "a_file" / "run")}


def _file(ws):
    _fresh(ws)
    (ws.root / "a_file").write_text("x")
    return {"model_dir": str(ws.root / "a_file")}


def _read_only(relative=""):
    def prepare(ws):
        ws.immutable(ws.model_dir / relative if relative else ws.model_dir)
    return prepare


def _empty_read_only(ws):
    _fresh(ws)
    ws.model_dir.mkdir()
    ws.immutable(ws.model_dir)


def _read_only_parent(ws):
    _fresh(ws)
    (ws.root / "locked").mkdir()
    ws.immutable(ws.root / "locked")
    return {"model_dir": str(ws.root / "locked" / "run")}


def _export_to(kind):
    def prepare(ws):
        target = ws.root / "export"
        if kind == "file":
            target.write_text("x")
        elif kind == "under a file":
            target.write_text("x")
            target = target / "model"
        else:
            target.mkdir()
            ws.immutable(target)
        return {"export_dir": str(target)}
    return prepare


def _data_dir(kind):
    def prepare(ws):
        data_dir = ws.root / "tfds"
        if kind == "file":
            data_dir.write_text("x")
        else:
            data_dir.mkdir()
            ws.immutable(data_dir)
        return {"dataset": "digits", "data_dir": str(data_dir)}
    return prepare


def _on_tmpfs(leave_bytes=None, hook=None, step=None, **overrides):
    """Moves the trained run onto the tmpfs; fills it now (`leave_bytes`) or at a hook of the run."""
    def prepare(ws):
        disk = ws.tmpfs()
        shutil.copytree(ws.model_dir, disk / "run")
        shutil.rmtree(ws.model_dir)
        ws.model_dir = disk / "run"
        if hook is None:
            fill(disk, leave_bytes or 0)
            return {"model_dir": str(ws.model_dir), **overrides}
        return {"model_dir": str(ws.model_dir), "callbacks": [FillDisk(disk, hook, leave_bytes or 0, step)],
                **overrides}
    return prepare


def _export_on_tmpfs(ws):
    disk = ws.tmpfs()
    return {"export_dir": str(disk / "export"), "callbacks": [FillDisk(disk, "train_end")]}


# id: (prepare the workspace, what the one error line says ("{model_dir}": the case's), whether the run trained a
# step before failing, and the file that must hold the previous state).
FAULTS = {
    "model_dir is a file": (_file, ["cannot use ", "a_file: it is a file, not a directory; move it away"]),
    "model_dir under a file": (_under_file, ["a_file", "Not a directory"]),
    "model_dir cannot be created": (_read_only_parent, ["cannot create the directory", "Operation not permitted"]),
    "model_dir read-only (trained)": (_read_only(), ["cannot write {model_dir}/run.json: Operation not permitted; "
                                                     "make it writable or choose another path"]),
    "model_dir read-only (empty)": (_empty_read_only, ["cannot write {model_dir}/run.json: Operation not permitted"]),
    "model_dir unreachable (gs://)": (lambda ws: {"model_dir": "gs://harness-no-network-test/run"},
                                      ["gs://harness-no-network-test/run/checkpoints/checkpoint: Could not resolve "
                                       "host; check the network connection"]),
    "model_dir on an unknown file system": (lambda ws: {"model_dir": "s3://harness-test/run"},
                                            ["File system scheme 's3' not implemented", "use a local path"]),
    "checkpoints is a file": (_replace("checkpoints", "file"),
                              ["cannot use {model_dir}/checkpoints: it is a file, not a directory of checkpoints"]),
    "checkpoint list is a directory": (_replace("checkpoints/checkpoint", "dir"),
                                       ["cannot read {model_dir}/checkpoints/checkpoint: it is a directory"]),
    "checkpoints read-only": (_read_only("checkpoints"),
                              ["cannot write the checkpoint {model_dir}/checkpoints/ckpt-4: Operation not permitted"]),
    "summary.json is a directory": (_replace("summary.json", "dir"),
                                    ["cannot write {model_dir}/summary.json: it is a directory; move it away"]),
    "metrics.csv is a directory": (_replace("metrics.csv", "dir"),
                                   ["cannot write {model_dir}/metrics.csv: it is a directory; move it away"]),
    "run.json is a directory": (_replace("run.json", "dir"), ["cannot read {model_dir}/run.json: it is a directory"]),
    "tensorboard is a file": (_replace("tensorboard", "file"),
                              ["cannot write TensorBoard events to {model_dir}/tensorboard: Not a directory"]),
    "tensorboard/train is a file": (_replace("tensorboard/train", "file"),
                                    ["cannot write TensorBoard events to {model_dir}/tensorboard: Not a directory"]),
    "export_dir is a file": (_export_to("file"), ["export: it is a file, not a directory"]),
    "export_dir under a file": (_export_to("under a file"), ["cannot create the directory", "Not a directory"]),
    "export_dir read-only": (_export_to("read-only"), ["cannot write the export in", "Operation not permitted"]),
    "data_dir unreachable (gs://)": (lambda ws: {"dataset": "digits", "data_dir": "gs://harness-no-network-test/tfds"},
                                     ["cannot read the data set 'digits' in gs://harness-no-network-test/tfds: Could "
                                      "not resolve host"]),
    "best is a file": (lambda ws: ((ws.model_dir / "best").write_text("x"), {"save_best_only": True})[1],
                       ["cannot use {model_dir}/best: it is a file, not a directory"]),
    "data_dir is a file": (_data_dir("file"), ["cannot prepare the data set 'digits' in", "tfds: Not a directory"]),
    "data_dir read-only": (_data_dir("read-only"), ["cannot prepare the data set 'digits' in",
                                                    "tfds: Operation not permitted"]),
    "disk full before training": (_on_tmpfs(leave_bytes=0),
                                  ["cannot write {model_dir}/run.json: No space left on device; free some space"]),
    "disk full at a checkpoint": (_on_tmpfs(hook="batch_end", step=3, checkpoint_every_n_steps=1, tensorboard=False),
                                  ["cannot write the checkpoint {model_dir}/checkpoints/ckpt-3: No space left on "
                                   "device; free some space (earlier checkpoints are intact)"]),
    "disk full at an async checkpoint": (_on_tmpfs(hook="batch_end", step=3, leave_bytes=32 << 10,
                                                   checkpoint_every_n_steps=1, async_checkpoint=True,
                                                   tensorboard=False),
                                         ["No space left on device; free some space (earlier checkpoints are intact)"]),
    "disk full at the epoch-end checkpoint": (_on_tmpfs(hook="epoch_end", leave_bytes=32 << 10, tensorboard=False),
                                              ["cannot write the checkpoint {model_dir}/checkpoints/ckpt-4: No space"]),
    "disk full at TensorBoard's start": (_on_tmpfs(hook="train_begin"),
                                         ["cannot write TensorBoard events to {model_dir}/tensorboard: No space left "
                                          "on device; free some space"]),
    "disk full at a TensorBoard flush": (_on_tmpfs(hook="batch_end", step=3),  # the graph, flushed at once
                                         ["cannot write TensorBoard events to {model_dir}/tensorboard: No space left "
                                          "on device; free some space"]),
    "disk full at a CSV write": (_on_tmpfs(hook="epoch_end", tensorboard=False),
                                 ["cannot write {model_dir}/metrics.csv: No space left on device; free some space"]),
    "disk full at a summary write": (_on_tmpfs(hook="epoch_end", tensorboard=False, csv_log=False),
                                     ["cannot write {model_dir}/summary.json: No space left on device"]),
    "disk full at the export": (_export_on_tmpfs, ["cannot export a SavedModel to", "No space left on device"]),
}


@pytest.fixture
def workspace(tmp_path, trained, immutable, tmpfs, request):
    shutil.copytree(trained, tmp_path / "run")
    disks = []

    def on_tmpfs():
        name = "".join(c if c.isalnum() else "-" for c in request.node.name[-60:])  # (TF globs paths: no [ ])
        disks.append(disk_of(tmpfs, f"{name}-{len(disks)}"))
        return disks[-1]

    ws = Workspace(tmp_path, tmp_path / "run", immutable, on_tmpfs, disks)
    yield ws
    for disk in disks:
        shutil.rmtree(disk, ignore_errors=True)


def free_disks(ws) -> None:
    for disk in ws.disks:
        (disk / "filler").unlink(missing_ok=True)


def leftovers(model_dir: Path, step: int = 2) -> list[str]:
    """Temporary or partial files under model_dir, and any checkpoint newer than ckpt-`step`."""
    found = []
    for directory, dirs, files in os.walk(model_dir):
        for name in dirs + files:
            partial = "_temp" in name or ".tmp-" in name or ".tmp." in name or "harness-write-check" in name
            other_checkpoint = name.startswith("ckpt-") and int(name[5:].split(".")[0].split("_")[0]) > step
            if partial or other_checkpoint:
                found.append(os.path.join(directory, name))
    return found


def assert_previous_checkpoint_restores(model_dir: Path, step: int = 2) -> None:
    """ckpt-`step` is the newest listed, whole and readable (its global step and progress record), and
    nothing partial or newer was left."""
    prefix = str(model_dir / "checkpoints" / f"ckpt-{step}")
    if (model_dir / "checkpoints" / "checkpoint").is_file():  # (not where a case put a directory there)
        assert tf.train.latest_checkpoint(str(model_dir / "checkpoints")) == prefix
    assert tf.train.load_checkpoint(prefix).get_tensor("global_step/.ATTRIBUTES/VARIABLE_VALUE") == step
    assert read_progress(prefix)["epochs_completed"] == step // 2
    assert leftovers(model_dir, step) == []


# The newest checkpoint each case must leave intact (2: the trained copy's; None: the case starts without one).
NEWEST = {"model_dir is a file": None, "model_dir under a file": None, "model_dir cannot be created": None,
          "model_dir read-only (empty)": None, "model_dir unreachable (gs://)": None,
          "model_dir on an unknown file system": None, "checkpoints is a file": None,
          "disk full at the export": 4,  # (training finished; only the export failed)
          "best is a file": 4}  # (the training checkpoint of the epoch end is saved before the best weights)


def run_fault(ws, case):
    """Prepares the case's fault in `ws` and runs the resumed 2-epoch run; returns the config and the error."""
    overrides = FAULTS[case][0](ws) or {}
    callbacks = overrides.pop("callbacks", [])
    config = RunConfig(**{**TINY, "epochs": 2, "model_dir": str(ws.model_dir), **overrides})
    # Earlier tests' garbage is collected here, not inside the timed run: deleting an old multi-device tf.data
    # iterator waits for its autotuning thread's sleep, which grows with its age (once 40 s in CI).
    gc.collect()
    began = time.monotonic()
    with pytest.raises((SetupError, OSError)) as e:  # train.py: `error: <message>`, exit 1
        run(config, callbacks=callbacks)
    assert time.monotonic() - began < 30
    free_disks(ws)
    return config, e.value


@pytest.mark.parametrize("case", [pytest.param(c, marks=needs_no_network) if "gs://" in c else c for c in FAULTS])
@pytest.mark.slow
def test_a_storage_fault_is_one_line_exit_1_and_the_previous_checkpoint_restores(workspace, case, caplog, capfd):
    config, error = run_fault(workspace, case)
    message = str(error)
    assert "\n" not in message, message
    for fragment in FAULTS[case][1]:
        assert fragment.format(model_dir=config.model_dir) in message, message
    assert TRACEBACK not in caplog.text + capfd.readouterr().err
    newest = NEWEST.get(case, 2)
    if newest is not None:
        assert_previous_checkpoint_restores(Path(config.model_dir), newest)
    if config.export_dir:
        assert not [p for p in Path(config.export_dir).parent.rglob("*") if ".tmp" in p.name]


@pytest.mark.slow  # (trains twice per case)
@pytest.mark.parametrize("case", ["disk full at a checkpoint", "disk full at an async checkpoint",
                                  "disk full at a TensorBoard flush", "disk full at a CSV write",
                                  "disk full at a summary write", "disk full at the export"])
def test_after_a_full_disk_the_rerun_resumes_and_logs_every_epoch_once(workspace, case):
    config, _ = run_fault(workspace, case)
    summary = run(config)  # the same command again, with space
    assert summary["global_step"] == 4 and summary["epochs_completed"] == 2
    rows = (Path(config.model_dir) / "metrics.csv").read_text().splitlines() if config.csv_log else []
    assert [row.split(",")[0] for row in rows] == (["epoch", "1", "2"] if config.csv_log else [])
    assert json.loads((Path(config.model_dir) / "summary.json").read_text())["global_step"] == 4
    if config.export_dir:
        assert (Path(config.export_dir) / "model.keras").exists()


# Damaged files in a trained model_dir: the resumed run recovers with one warning line about that file.
DAMAGED = {  # id: (damage, the file the one warning names, what it says)
    "checkpoint list garbage": (_write("checkpoints/checkpoint", b"garbage {{{\n"), "checkpoints/checkpoint",
                                "is damaged (not a checkpoint list); rebuilding the list"),
    "checkpoint list binary": (_write("checkpoints/checkpoint", b"\x00\xff\xfe\x80"), "checkpoints/checkpoint",
                               "is damaged (not text); rebuilding the list"),
    "checkpoint list empty": (_write("checkpoints/checkpoint", b""), "checkpoints/checkpoint", "is damaged"),
    "metrics.csv other header": (_write("metrics.csv", b"a,b,c\n1,2,3\n"), "metrics.csv",
                                 "cannot be continued (its header lacks epoch, loss"),
    "metrics.csv binary": (_write("metrics.csv", b"\x00\xff\xfe\x80binary\n\x81"), "metrics.csv",
                           "cannot be continued (it is not CSV text)"),
    "metrics.csv short row": (_write("metrics.csv", b"epoch,accuracy,loss,lr,val_accuracy,val_loss\n0,1\n"),
                              "metrics.csv", "cannot be continued (a row does not fit its header)"),
    "run.json binary": (_write("run.json", b"\x00\xff\xfe"), "run.json", "is damaged (not text); ignoring it"),
    "run.json not JSON": (_write("run.json", b"{garbage"), "run.json", "is damaged (not JSON"),
    "run.json a list": (_write("run.json", b"[1, 2]"), "run.json", "is damaged (not a JSON object)"),
    "run.json wrong shape": (_write("run.json", b'{"finished": 5}'), "run.json",
                             "is damaged ('finished' is not an object)"),
    "run.json wrong type": (_write("run.json", b'{"finished": {"global_step": "9", "stop_reason": "x"}}'),
                            "run.json", "is damaged ('finished.global_step' has the wrong type)"),
    "summary.json garbage": (_write("summary.json", b"\x00\xff garbage"), "summary.json", None),
}


@pytest.mark.parametrize("damage, name, warning", DAMAGED.values(), ids=DAMAGED.keys())
@pytest.mark.slow
def test_a_damaged_file_is_recovered_from_with_one_warning(workspace, damage, name, warning, caplog):
    original = (workspace.model_dir / name).read_bytes()
    damage(workspace)
    damaged = (workspace.model_dir / name).read_bytes()
    summary = run(RunConfig(**{**TINY, "epochs": 2, "model_dir": str(workspace.model_dir)}))
    assert summary["global_step"] == 4 and summary["epochs_completed"] == 2  # resumed from ckpt-2, not restarted
    about = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and name in r.getMessage()]
    if warning is None:  # never read, only rewritten: nothing to say
        assert about == []
    else:
        assert len(about) == 1 and warning in about[0] and "\n" not in about[0], about
    assert TRACEBACK not in caplog.text
    if name == "metrics.csv":  # kept for the user, and a fresh file of this run's epochs
        assert (workspace.model_dir / "metrics.csv.damaged-1").read_bytes() == damaged
        assert [r.split(",")[0] for r in (workspace.model_dir / name).read_text().splitlines()] == ["epoch", "1", "2"]
    elif name == "summary.json":
        assert json.loads((workspace.model_dir / name).read_text())["global_step"] == 4
    elif name == "checkpoints/checkpoint":
        assert tf.train.latest_checkpoint(str(workspace.model_dir / "checkpoints")).endswith("ckpt-4")
        assert "ckpt-2" in (workspace.model_dir / name).read_text()  # the rebuilt list kept the adopted checkpoint
    else:
        assert json.loads((workspace.model_dir / name).read_text())["finished"]["global_step"] == 4
    assert original != damaged


@needs_no_network
def test_download_without_network_fails_at_once_and_leaves_no_partial_files(tmp_path):
    began = time.monotonic()
    with pytest.raises(SetupError) as e:
        harness.load_source("mnist", str(tmp_path / "tfds"), download=True)
    assert time.monotonic() - began < 30
    assert str(e.value).startswith("cannot download data set 'mnist': storage.googleapis.com is unreachable")
    assert "\n" not in str(e.value)
    assert not [p for p in (tmp_path / "tfds").rglob("*") if ".tmp." in p.name or "incomplete" in p.name]


# ----- end to end, in TensorFlow processes of their own ------------------------------------------------------

def assert_one_error_line(result, code, *fragments):
    output = result.stdout + result.stderr
    assert result.returncode == code, output[-3000:]
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and all(f in errors[0] for f in fragments), output[-3000:]
    assert TRACEBACK not in output, output[-3000:]


@pytest.mark.slow
@needs_no_network
def test_train_py_download_without_network_fails_within_30_seconds(tmp_path):
    began = time.monotonic()
    result = run_script(TRAIN, *TINY_FLAGS, "--dataset=mnist", "--download_data", f"--data_dir={tmp_path}/tfds",
                        f"--model_dir={tmp_path}/run", timeout=120)
    assert time.monotonic() - began < 30
    assert_one_error_line(result, 1, "cannot download data set 'mnist'", "unreachable")
    assert not [p for p in (tmp_path / "tfds").rglob("*") if ".tmp." in p.name or "incomplete" in p.name]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@needs_no_network
def test_train_py_on_unreachable_storage_fails_fast_in_one_line(tmp_path):
    began = time.monotonic()
    result = run_script(TRAIN, *TINY_FLAGS, "--model_dir=gs://harness-no-network-test/run", timeout=120)
    assert time.monotonic() - began < 60
    assert_one_error_line(result, 1, "gs://harness-no-network-test/run", "Could not resolve host")
    assert "Checkpoint ignored" not in result.stderr  # TensorFlow's own lines about the unreadable list


@pytest.mark.slow
@pytest.mark.parametrize("flags, message", [  # where the process's exit could add a traceback or a C++ error
    (["--tensorboard=false", "--async_checkpoint"], "cannot finish writing a checkpoint in"),
    ([], "cannot write TensorBoard events to"),  # the graph does not fit
])
def test_train_py_on_a_full_disk_fails_in_one_line_and_the_rerun_resumes(tmp_path, trained, tmpfs, flags, message):
    disk = disk_of(tmpfs, f"e2e-{len(flags)}")
    shutil.copytree(trained, disk / "run")
    try:
        fill(disk, leave_bytes=64 << 10)  # room for the small files, not for a checkpoint (200 KB) or the graph
        result = run_script(TRAIN, *TINY_FLAGS, "--epochs=2", f"--model_dir={disk}/run", *flags, timeout=120)
        assert_one_error_line(result, 1, message, "No space left on device")
        # Nothing more at exit: a failed async save used to surface there as a traceback, an unflushed event
        # writer could complain when destroyed.
        assert "Exception ignored" not in result.stderr and "flush" not in result.stderr.lower(), result.stderr
        (disk / "filler").unlink()
        assert_previous_checkpoint_restores(disk / "run")
        same = {"tensorboard": "--tensorboard=false" not in flags, "async_checkpoint": "--async_checkpoint" in flags}
        again = run(RunConfig(**{**TINY, "epochs": 2, "model_dir": str(disk / "run"), **same}))  # (here: faster)
        assert again["global_step"] == 4
    finally:
        shutil.rmtree(disk, ignore_errors=True)


@pytest.mark.slow
def test_train_py_ignores_a_stale_tf_config_with_one_warning(tmp_path):
    result = run_script(TRAIN, *TINY_FLAGS, "--strategy=mirrored", f"--model_dir={tmp_path}/run",
                        env={"TF_CONFIG": "{garbage"}, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if "TF_CONFIG" in line]
    assert len(warnings) == 1 and "Ignoring the cluster environment" in warnings[0], result.stderr[-3000:]
    assert TRACEBACK not in result.stderr


@pytest.mark.slow
def test_the_launcher_names_the_task_and_its_storage_error(tmp_path):
    (tmp_path / "a_file").write_text("x")
    result = run_script(LAUNCHER, "--num_workers=2", "--", *TINY_FLAGS[:-1], f"--model_dir={tmp_path}/a_file",
                        timeout=180)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    verdicts = [line for line in output.splitlines() if line.startswith("[launcher] failed: ")]
    assert len(verdicts) == 1 and "a_file: it is a file, not a directory" in verdicts[0], output[-3000:]
    for task in ("worker:0", "worker:1"):
        assert len([line for line in output.splitlines() if line.startswith(f"[{task}] error: ")]) == 1, output
    assert TRACEBACK not in output


def test_what_a_killed_writer_left_is_removed_when_the_same_file_is_written_again(tmp_path):
    """A SIGKILL between a temp write and its rename leaves `<path>.tmp-<id>*`; writing that path again clears it."""
    from harness import storage
    from harness.model_saving import save_keras_model, write_checkpoint

    stale = [tmp_path / "summary.json.tmp-0badc0de", tmp_path / "best/epoch0003.tmp-0badc0de.index",
             tmp_path / "best/epoch0003.tmp-0badc0de.data-00000-of-00001", tmp_path / "model.tmp-0badc0de.keras"]
    for path in stale:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half")
    storage.write_text(str(tmp_path / "summary.json"), "{}\n")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    write_checkpoint(tf.train.Checkpoint(model=model), str(tmp_path / "best/epoch0003"), is_chief=True)
    save_keras_model(model, str(tmp_path / "model.keras"), is_chief=True)
    assert not [p for p in stale if p.exists()]
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [
        "epoch0003.data-00000-of-00001", "epoch0003.index", "model.keras", "summary.json"]


@pytest.mark.parametrize("error, storage_fault", [
    (tf.errors.ResourceExhaustedError(None, None, "No space left on device"), True),
    (tf.errors.UnavailableError(None, None, "gs://bucket unreachable"), True),
    (tf.errors.UnavailableError(None, None, "Collective ops is aborted by: Error reported from /job:worker/task:1: "
                                "The following tasks are unhealthy (stopped sending heartbeats):"), False),
    (tf.errors.DeadlineExceededError(None, None, "a collective waited longer than collective_timeout_s (5 s)"), False),
])
def test_a_lost_peer_during_a_write_is_not_blamed_on_storage(error, storage_fault):
    """A save that a lost peer interrupts (CI saw it) must reach the controller as the peer's error, not a disk's."""
    from harness import storage
    from harness.errors import StorageError

    expected = StorageError if storage_fault else type(error)
    with pytest.raises(expected), storage.failing_as_storage_error("write the checkpoint", "run/checkpoints/ckpt-46"):
        raise error
