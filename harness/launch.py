"""A local multi-worker cluster on 127.0.0.1: one process per task, as on real hosts.

Picks free loopback ports, gives each process its TF_CONFIG, prefixes every output line
with its task (`[worker:1] ...`), forwards Ctrl-C/SIGTERM to every task, and tears the
whole cluster down within a bounded time when any task fails, saying which one and why.
"""

from __future__ import annotations

import dataclasses
import json
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


def local_cluster(num_workers: int, with_chief: bool = False, host: str = "127.0.0.1") -> dict[str, list[str]]:
    """A cluster spec with `num_workers` workers (and a chief) on free ports of `host`."""
    if num_workers < (0 if with_chief else 1) or num_workers + with_chief < 1:
        raise UsageError(f"--num_workers must be >= 1 (or >= 0 with --chief), got {num_workers}")
    ports = free_ports(num_workers + int(with_chief), host)
    cluster = {"chief": [f"{host}:{ports.pop()}"]} if with_chief else {}
    if num_workers:
        cluster["worker"] = [f"{host}:{p}" for p in ports]
    return cluster


def tasks(cluster: dict[str, list[str]]) -> list[tuple[str, int]]:
    return [(job, i) for job in ("chief", "worker") for i in range(len(cluster.get(job, [])))]


def tf_config(cluster: dict[str, list[str]], task_type: str, index: int) -> str:
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


@dataclasses.dataclass
class _Task:
    name: str
    process: subprocess.Popen
    pump: threading.Thread
    last_error: str = ""


class LocalCluster:
    """Runs `command` once per task of `cluster`, each with its own TF_CONFIG."""

    def __init__(self, command: Sequence[str], cluster: dict[str, list[str]], *, out: TextIO | None = None,
                 grace_s: float = 30.0, kill_after_s: float = 10.0, env: dict[str, str] | None = None):
        self.command, self.cluster, self.out = list(command), cluster, out or sys.stdout
        self.grace_s, self.kill_after_s, self.env = grace_s, kill_after_s, env
        self._tasks: list[_Task] = []
        self._lock = threading.Lock()

    def _pump(self, task_name: str, stream) -> None:
        for line in iter(stream.readline, ""):
            text = line.rstrip("\n")
            if text.startswith("error: "):
                self._task(task_name).last_error = text[len("error: "):]
            with self._lock:
                self.out.write(f"[{task_name}] {text}\n")
                self.out.flush()
        stream.close()

    def _task(self, name: str) -> _Task:
        return next(t for t in self._tasks if t.name == name)

    def start(self) -> None:
        for job, index in tasks(self.cluster):
            env = {**os.environ, **(self.env or {}), "TF_CONFIG": tf_config(self.cluster, job, index),
                   "PYTHONUNBUFFERED": "1"}
            process = subprocess.Popen(self.command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True, bufsize=1, start_new_session=True)
            name = f"{job}:{index}"
            pump = threading.Thread(target=self._pump, args=(name, process.stdout), daemon=True)
            self._tasks.append(_Task(name, process, pump))
            pump.start()

    def signal_all(self, sig: int) -> None:
        for task in self._tasks:
            if task.process.poll() is None:
                try:
                    os.killpg(task.process.pid, sig)
                except ProcessLookupError:
                    pass

    def _say(self, message: str) -> None:
        with self._lock:
            self.out.write(f"[launcher] {message}\n")
            self.out.flush()

    def wait(self) -> int:
        """Waits for every task; returns 0, or the exit code of the first task that failed."""
        first_failure: _Task | None = None
        deadline: float | None = None
        killed = False
        while any(t.process.poll() is None for t in self._tasks):
            if first_failure is None:
                first_failure = next((t for t in self._tasks if t.process.poll() not in (None, 0)), None)
                if first_failure is not None:
                    reason = f": {first_failure.last_error}" if first_failure.last_error else ""
                    self._say(f"{first_failure.name} {describe_exit(first_failure.process.returncode)}{reason}; "
                              f"stopping the other tasks within {self.grace_s + self.kill_after_s:.0f}s")
                    deadline = time.monotonic() + self.grace_s
            if deadline is not None and time.monotonic() > deadline:
                if not killed:
                    self.signal_all(signal.SIGTERM)
                    killed, deadline = True, time.monotonic() + self.kill_after_s
                else:
                    self.signal_all(signal.SIGKILL)
                    deadline = time.monotonic() + 3600
            time.sleep(0.1)
        for task in self._tasks:
            task.pump.join(timeout=5)
        if first_failure is None:
            first_failure = next((t for t in self._tasks if t.process.returncode != 0), None)
        if first_failure is None:
            self._say("all tasks finished")
            return 0
        code = first_failure.process.returncode
        if first_failure.last_error:
            self._say(f"failed: {first_failure.name} {describe_exit(code)}: {first_failure.last_error}")
        else:
            self._say(f"failed: {first_failure.name} {describe_exit(code)}")
        return code if code > 0 else 128 - code


def launch(command: Sequence[str], *, num_workers: int, with_chief: bool = False, grace_s: float = 30.0,
           kill_after_s: float = 10.0, out: TextIO | None = None, env: dict[str, str] | None = None) -> int:
    """Starts a local cluster running `command` and returns its exit code; Ctrl-C/SIGTERM reach every task."""
    cluster = LocalCluster(command, local_cluster(num_workers, with_chief), out=out, grace_s=grace_s,
                           kill_after_s=kill_after_s, env=env)

    def forward(signum, frame):
        del frame
        cluster._say(f"received {signal.Signals(signum).name}; forwarding it to every task")
        cluster.signal_all(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        cluster.start()
        return cluster.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
