"""A local multi-worker cluster on 127.0.0.1: one process per task, as on real hosts.

Picks free loopback ports, gives each process its TF_CONFIG (with an evaluator, the cluster of
every task also lists `"evaluator"`, as Kubeflow's TFJob does), prefixes every output line with
its task (`[worker:1] ...`), forwards Ctrl-C/SIGTERM to every task, and tears the whole cluster
down within a bounded time when any task fails, naming the first task that failed and its
`error:` line (or the exception line of its traceback). A failure that a rerun may fix (not a
usage error, not a preemption) can restart every task on new ports, up to `max_restarts` times:
training resumes from its last checkpoint. Tasks run in sessions of their own, and when
`launch` returns no process of theirs is left.

Exit codes, as those of scripts/train.py: 0 done, 2 usage error, 75 preempted (every task
exited 0 or 75; rerun to resume), 128 + N after a second Ctrl-C or SIGTERM N to the launcher,
else the code of the first task that failed (128 + N when it was killed by signal N).
No TensorFlow here: the launcher starts in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import TextIO

from harness.errors import UsageError
from harness.preemption import EXIT_PREEMPTED

EXIT_USAGE = 2
JOBS = ("chief", "worker", "evaluator")  # the order tasks start in
MULTI_WORKER = "multi_worker_mirrored"
_MAX_LINE = 64 * 1024  # longer output lines are shown in pieces of this many bytes
_TRACEBACK = "Traceback (most recent call last):"


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports that are free on `host` right now."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def local_cluster(num_workers: int, with_chief: bool = False, host: str = "127.0.0.1", *,
                  with_evaluator: bool = False) -> dict[str, list[str]]:
    """A cluster spec with `num_workers` workers (a chief, an evaluator) on free ports of `host`."""
    if num_workers < (0 if with_chief else 1):
        raise UsageError(f"--num_workers must be >= 1 (or >= 0 with --chief), got {num_workers}; "
                         "pass the number of training workers, e.g. --num_workers=2")
    addresses = iter(f"{host}:{p}" for p in free_ports(num_workers + with_chief + with_evaluator, host))
    sizes = {"chief": int(with_chief), "worker": num_workers, "evaluator": int(with_evaluator)}
    return {job: [next(addresses) for _ in range(sizes[job])] for job in JOBS if sizes[job]}


def tasks(cluster: dict[str, list[str]]) -> list[tuple[str, int]]:
    return [(job, i) for job in JOBS for i in range(len(cluster.get(job, [])))]


def tf_config(cluster: dict[str, list[str]], task_type: str, index: int) -> str:
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


def train_args(args: Sequence[str]) -> list[str]:
    """scripts/train.py's flags for every task: a single-process strategy would make each task train alone
    into the same model_dir, so it is refused; without --strategy, multi_worker_mirrored is added."""
    strategy = None
    for i, arg in enumerate(args):  # absl spells a flag --name=value, --name value, -name=value or -name value
        if arg in ("--strategy", "-strategy"):
            strategy = args[i + 1] if i + 1 < len(args) else ""
        elif arg.startswith(("--strategy=", "-strategy=")):
            strategy = arg.split("=", 1)[1]
    if strategy is None:
        return [f"--strategy={MULTI_WORKER}", *args]
    if strategy != MULTI_WORKER:
        raise UsageError(f"--strategy after `--` must be {MULTI_WORKER}, got {strategy!r}: with any other, "
                         "every task would train alone into the same model_dir; drop --strategy or pass "
                         f"--strategy={MULTI_WORKER}")
    return list(args)


def script_command(script: str, args: Sequence[str]) -> list[str]:
    """The command every task runs: this Python with `script` and `args`, checked before any task starts."""
    if not os.path.isfile(script):
        raise UsageError(f"--script={script} is not a file; pass the path of a Python script "
                         f"(relative to {os.getcwd()})")
    return [sys.executable, script, *args]


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def exit_status(code: int) -> int:
    """A shell's exit status for a Popen return code: 128 + N for a process killed by signal N."""
    return code if code >= 0 else 128 - code


@dataclasses.dataclass
class _Task:
    """One task's process and what its output told the launcher."""

    name: str
    process: subprocess.Popen
    threads: list[threading.Thread] = dataclasses.field(default_factory=list)
    last_error: str = ""  # its last `error: ` line, without the prefix
    last_exception: str = ""  # the exception line of its last Python traceback
    ended_at: float | None = None  # time.monotonic() when it exited: "first to fail" is by time, not by poll order


class LocalCluster:
    """Runs `command` once per task of `cluster`, each with its own TF_CONFIG, in a session of its own."""

    def __init__(self, command: Sequence[str], cluster: dict[str, list[str]], *, out: TextIO | None = None,
                 grace_s: float = 30.0, kill_after_s: float = 10.0, env: dict[str, str] | None = None):
        self.command, self.cluster, self.out = list(command), cluster, out or sys.stdout
        self.grace_s, self.kill_after_s, self.env = grace_s, kill_after_s, env
        self.interrupted: int | None = None  # the signal the launcher received, forwarded to every task
        self._killed_by: int | None = None  # a second signal: every task was killed at once
        self._tasks: list[_Task] = []
        self._lock = threading.Lock()
        self._teardown: list[tuple[float, int]] | None = None  # (when, signal) still to send once stopping
        self._news: list[str] = []  # a signal handler's lines, written later: its own write could re-enter one

    def _pump(self, task: _Task, stream) -> None:
        """Copies one of the task's streams with its prefix, line by line; bytes, not text, so that no output can
        stop the copy. stdout and stderr have a pipe each: in one shared pipe an unbuffered `print` (two writes)
        could be split by another thread's line."""
        in_traceback = False
        for raw in iter(lambda: stream.readline(_MAX_LINE), b""):
            text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if text.startswith("error: "):
                task.last_error = text[len("error: "):]
            elif text.startswith(_TRACEBACK):
                in_traceback = True
            elif in_traceback and text and not text[0].isspace():
                task.last_exception, in_traceback = text, False
            with self._lock:
                self.out.write(f"[{task.name}] {text}\n")
                self.out.flush()
        stream.close()

    @staticmethod
    def _reap(task: _Task) -> None:
        task.process.wait()
        task.ended_at = time.monotonic()

    def _task(self, name: str) -> _Task:
        return next(t for t in self._tasks if t.name == name)

    def start(self) -> None:
        """Starts every task, unless the launcher has been told to stop meanwhile."""
        for job, index in tasks(self.cluster):
            if self.interrupted:
                return
            env = {**os.environ, **(self.env or {}), "TF_CONFIG": tf_config(self.cluster, job, index),
                   "PYTHONUNBUFFERED": "1"}
            process = subprocess.Popen(self.command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       start_new_session=True)
            task = _Task(f"{job}:{index}", process)
            self._tasks.append(task)
            for target, args in ((self._pump, (task, process.stdout)), (self._pump, (task, process.stderr)),
                                 (self._reap, (task,))):
                task.threads.append(threading.Thread(target=target, args=args, daemon=True))
                task.threads[-1].start()

    def signal_all(self, sig: int) -> None:
        """Sends `sig` to the process group of every task that is still running."""
        for task in self._tasks:
            if task.process.returncode is None:
                try:
                    os.killpg(task.process.pid, sig)
                except ProcessLookupError:
                    pass

    def kill(self) -> None:
        """SIGKILLs every task's process group, also children left behind by a task that has exited."""
        for task in self._tasks:
            try:
                os.killpg(task.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):  # PermissionError: a group of zombies, on macOS
                pass

    def _say(self, message: str | None = None) -> None:
        """Writes what signal handlers had to say, then `message`."""
        lines = [self._news.pop(0) for _ in range(len(self._news))] + ([message] if message else [])
        if lines:
            with self._lock:
                self.out.write("".join(f"[launcher] {line}\n" for line in lines))
                self.out.flush()

    def _stop_within(self) -> None:
        sigterm_at = time.monotonic() + self.grace_s
        self._teardown = [(sigterm_at, signal.SIGTERM), (sigterm_at + self.kill_after_s, signal.SIGKILL)]

    def interrupt(self, signum: int) -> None:
        """The launcher got SIGTERM/SIGINT: forward it and stop every task in bounded time; a second one kills."""
        name = signal.Signals(signum).name
        if self.interrupted is None:
            self.interrupted = signum
            self.signal_all(signum)
            self._news.append(f"received {name}; forwarding it to every task (stopping them within "
                              f"{self.grace_s + self.kill_after_s:g}s; a second Ctrl-C kills them at once)")
            if self._teardown is None:
                self._stop_within()
        elif self._killed_by is None:
            self._killed_by, self._teardown = signum, []
            self.signal_all(signal.SIGKILL)
            self._news.append(f"received {name} again; killing every task")

    def _ended(self) -> list[_Task]:
        return sorted((t for t in self._tasks if t.ended_at is not None), key=lambda t: t.ended_at)

    def _first_stop(self) -> _Task | None:
        """The first task (by time) that exited with any code but 0: it stopped the job."""
        return next((t for t in self._ended() if t.process.returncode != 0), None)

    def _first_failure(self) -> _Task | None:
        return next((t for t in self._ended() if t.process.returncode not in (0, EXIT_PREEMPTED)), None)

    def wait(self, *, summarize: bool = True) -> int:
        """Waits for every task (stopping all of them in bounded time once one fails); returns the job's exit
        code and, if `summarize`, says in one line how the job ended."""
        while any(t.ended_at is None for t in self._tasks):
            stopped = self._first_stop()
            if stopped is not None and self._teardown is None:
                self._say(f"{self.describe(stopped)}; stopping the other tasks within "
                          f"{self.grace_s + self.kill_after_s:g}s")
                self._stop_within()
            while self._teardown and self._teardown[0][0] <= time.monotonic():
                self.signal_all(self._teardown.pop(0)[1])
            self._say()
            time.sleep(0.05)
        self.kill()
        for task in self._tasks:  # a pump ends when every process that held the task's output has exited
            for thread in task.threads:
                thread.join(timeout=5)
        if summarize:
            self._say(self.summary())
        return self.exit_code()

    def exit_code(self) -> int:
        """0 done; 75 when every task exited 0 or 75 and one did (or the launcher was told to stop); else the
        first failure's; 128 + N after a second signal N to the launcher."""
        if self._killed_by is not None:
            return 128 + self._killed_by
        failure = self._first_failure()
        if failure is not None:
            return exit_status(failure.process.returncode)
        preempted = self.interrupted or any(t.process.returncode == EXIT_PREEMPTED for t in self._tasks)
        return EXIT_PREEMPTED if preempted else 0

    @property
    def restartable(self) -> bool:
        """Whether rerunning every task may help: a task failed first, not with a usage error, not preempted,
        and the launcher was not told to stop."""
        stopped = self._first_stop()
        return (self.interrupted is None and stopped is not None
                and stopped.process.returncode not in (EXIT_USAGE, EXIT_PREEMPTED))

    def describe(self, task: _Task) -> str:
        """`worker:1 exited with code 1: <its error line>`, or how else it ended."""
        code = task.process.returncode
        if code == EXIT_PREEMPTED:
            return f"{task.name} was preempted (exit {EXIT_PREEMPTED})"
        if task.last_error:
            return f"{task.name} {describe_exit(code)}: {task.last_error}"
        if task.last_exception:
            return f"{task.name} {describe_exit(code)}: {task.last_exception} (a traceback; its full output is above)"
        return f"{task.name} {describe_exit(code)}"

    def summary(self) -> str:
        if self._killed_by is not None:
            return f"killed every task on a second {signal.Signals(self._killed_by).name}"
        failure = self._first_failure()
        if failure is not None:
            return f"failed: {self.describe(failure)}"
        resume = "saved; rerun the same command to resume"
        if self.interrupted is not None:
            return f"stopped on {signal.Signals(self.interrupted).name}: every task exited 0 or 75; {resume}"
        preempted = next((t for t in self._ended() if t.process.returncode == EXIT_PREEMPTED), None)
        return f"{self.describe(preempted)}: {resume}" if preempted else "all tasks finished"


def _check_options(grace_s: float, kill_after_s: float, max_restarts: int) -> None:
    for name, value, default in (("grace_s", grace_s, 30), ("kill_after_s", kill_after_s, 10)):
        if not math.isfinite(value) or value < 0:
            raise UsageError(f"--{name} must be a finite number of seconds >= 0, got {value}; "
                             f"pass e.g. --{name}={default}")
    if max_restarts < 0:
        raise UsageError(f"--max_restarts must be >= 0, got {max_restarts}; pass 0 (never restart) or more")


def launch(command: Sequence[str], *, num_workers: int, with_chief: bool = False, grace_s: float = 30.0,
           kill_after_s: float = 10.0, out: TextIO | None = None, env: dict[str, str] | None = None,
           with_evaluator: bool = False, max_restarts: int = 0) -> int:
    """Runs `command` as a local cluster and returns the job's exit code; Ctrl-C/SIGTERM reach every task.

    After a task failure that a rerun may fix, every task is stopped and started again on new ports (the
    command resumes from its last checkpoint), up to `max_restarts` times. Bad options raise UsageError
    before anything starts.
    """
    _check_options(grace_s, kill_after_s, max_restarts)
    runs: list[LocalCluster] = []
    received: list[int] = []

    def forward(signum, frame):
        del frame
        received.append(signum)
        if runs:
            runs[-1].interrupt(signum)

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)} if in_main_thread else {}
    try:
        while True:
            cluster = LocalCluster(command, local_cluster(num_workers, with_chief, with_evaluator=with_evaluator),
                                   out=out, grace_s=grace_s, kill_after_s=kill_after_s, env=env)
            runs.append(cluster)
            if received:  # told to stop between two runs
                cluster.interrupted = received[0]
            cluster.start()
            cluster.wait(summarize=False)
            if len(runs) > max_restarts or not cluster.restartable or received:
                cluster._say(cluster.summary())
                return cluster.exit_code()
            cluster._say(f"{cluster.describe(cluster._first_stop())}; restarting every task "
                         f"(restart {len(runs)} of {max_restarts})")
    finally:
        if runs:
            runs[-1].kill()  # after an exception too: no task outlives the launcher
        for s, handler in previous.items():
            signal.signal(s, handler)
