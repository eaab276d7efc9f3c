"""TF_CONFIG validation and the one place that answers "who am I in this job".

MultiWorkerMirroredStrategy blocks until every task in TF_CONFIG joins, and a malformed
TF_CONFIG surfaces as a hang or a protobuf error deep inside TensorFlow. We validate it
before the strategy is built and fail with one line that names the fix.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import time
from collections.abc import Mapping
from typing import Any

import tensorflow as tf
from absl import logging

from harness.errors import SetupError, UsageError

# Task types that take part in synchronous multi-worker training.
TRAINING_TASK_TYPES = ("chief", "worker")
_EXAMPLE = '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'


def _fail(problem: str) -> UsageError:
    return UsageError(f"TF_CONFIG {problem}; expected e.g. {_EXAMPLE}")


def _check_address(address: Any, task: str) -> None:
    if not isinstance(address, str) or address.count(":") < 1:
        raise _fail(f"address {address!r} of {task} is not 'host:port'")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise _fail(f"address {address!r} of {task} is not 'host:port' with a port in 1..65535")


def parse_tf_config(raw: str) -> dict[str, Any]:
    """Parses and validates a TF_CONFIG string for synchronous multi-worker training.

    Returns the normalised config: a legacy `master` task is renamed `chief` (with a
    warning), so every process maps it the same way. Raises `UsageError` on any problem.
    """
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise _fail(f"is not valid JSON ({e.msg} at position {e.pos})") from None
    if not isinstance(config, Mapping):
        raise _fail("must be a JSON object")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, Mapping) or not cluster:
        raise _fail("has no 'cluster' object listing the tasks' addresses")
    if not isinstance(task, Mapping):
        raise _fail("has no 'task' object saying which task this process is")

    cluster = {str(k): v for k, v in cluster.items()}
    task_type, task_index = task.get("type"), task.get("index", 0)
    if "master" in cluster or task_type == "master":
        if "chief" in cluster:
            raise _fail("has both 'master' and 'chief' tasks; keep only 'chief'")
        logging.warning("TF_CONFIG task type 'master' is the legacy name of 'chief'; treating it as 'chief'.")
        if "master" in cluster:
            cluster["chief"] = cluster.pop("master")
        if task_type == "master":
            task_type = "chief"

    for job, addresses in cluster.items():
        if job not in TRAINING_TASK_TYPES:
            raise _fail(f"cluster has a {job!r} job, which synchronous training does not use; "
                        f"list only {' and '.join(TRAINING_TASK_TYPES)} tasks")
        if not isinstance(addresses, list) or not addresses:
            raise _fail(f"cluster job {job!r} must be a non-empty list of 'host:port' addresses")
        for i, address in enumerate(addresses):
            _check_address(address, f"{job}:{i}")
    if len(cluster.get("chief", [])) > 1:
        raise _fail(f"lists {len(cluster['chief'])} chief tasks; a cluster has at most one chief")
    all_addresses = [a for job in cluster.values() for a in job]
    duplicates = sorted({a for a in all_addresses if all_addresses.count(a) > 1})
    if duplicates:
        raise _fail(f"lists the address {duplicates[0]} more than once; give every task its own port")

    if task_type not in TRAINING_TASK_TYPES:
        raise _fail(f"task type {task_type!r} is unknown; use 'chief' or 'worker'")
    if task_type not in cluster:
        raise _fail(f"task type {task_type!r} has no entry in 'cluster'")
    if isinstance(task_index, bool) or not isinstance(task_index, int):
        raise _fail(f"task index {task_index!r} is not an integer")
    if not 0 <= task_index < len(cluster[task_type]):
        raise _fail(f"task index {task_index} is out of range: cluster has "
                    f"{len(cluster[task_type])} {task_type} task(s), indices 0..{len(cluster[task_type]) - 1}")
    return {**config, "cluster": cluster, "task": {**task, "type": task_type, "index": task_index}}


def load_tf_config(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Reads, validates and normalises TF_CONFIG from the environment, writing it back normalised."""
    environ = os.environ if environ is None else environ
    raw = environ.get("TF_CONFIG", "")
    if not raw.strip():
        raise UsageError("multi_worker_mirrored needs TF_CONFIG describing the cluster; "
                         f"set it on every host, e.g. TF_CONFIG='{_EXAMPLE}', or use scripts/launch_local.py")
    config = parse_tf_config(raw)
    if environ is os.environ:
        os.environ["TF_CONFIG"] = json.dumps(config)
    return config


def rendezvous(config: dict[str, Any], timeout_s: float, poll_s: float = 0.2) -> None:
    """Waits until every other task of `config` is up, before TensorFlow connects to them.

    TensorFlow waits without limit for a task that never starts, and a second process
    claiming a task index already taken fails obscurely. Here each task listens on its own
    port while it probes the others' ports: a missing task fails the job after `timeout_s`
    with its name, and a duplicate task cannot listen and fails at once.
    """
    cluster, task = config["cluster"], config["task"]
    me = f"{task['type']}:{task['index']}"
    port = int(cluster[task["type"]][task["index"]].rsplit(":", 1)[1])
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("", port))
        listener.listen(64)
    except OSError as e:
        listener.close()
        raise SetupError(f"{me} cannot listen on port {port} ({e.strerror}): another process already runs this task "
                         "(the same task index in two TF_CONFIGs?) or uses the port; give every task its own "
                         "index and port") from None
    pending = {f"{job}:{i}": address for job, addresses in cluster.items() for i, address in enumerate(addresses)
               if f"{job}:{i}" != me}
    deadline = time.monotonic() + timeout_s
    try:
        while pending:
            for name, address in list(pending.items()):
                host, _, peer_port = address.rpartition(":")
                try:
                    socket.create_connection((host, int(peer_port)), timeout=1.0).close()
                    del pending[name]
                except OSError:
                    pass
            if pending and time.monotonic() > deadline:
                missing = ", ".join(f"{name} ({address})" for name, address in pending.items())
                raise SetupError(f"{missing} did not join within {timeout_s:g}s; start every task of TF_CONFIG, "
                                 "check the addresses and that the ports are open, or raise --cluster_join_timeout_s")
            if pending:
                time.sleep(poll_s)
    finally:
        listener.close()


_TASK_NAME = re.compile(r"/job:(\w+)/replica:\d+/task:(\d+)")
_REPORTED = re.compile(r"Error reported from /job:\w+/task:\d+: (.*?)(?:\n|$)")
_USAGE_MARK = "[usage] "


def error_report(task_name: str, error: BaseException) -> str:
    """The line a failing task reports to the others (`tf_compat.report_error_to_cluster`)."""
    text = (str(error).strip().splitlines() or [""])[0][:300]
    if not isinstance(error, (UsageError, SetupError)):
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    line = text if text.startswith(task_name) else f"{task_name} failed: {text}"
    return (_USAGE_MARK if isinstance(error, UsageError) else "") + line


def peer_error(error: Exception) -> UsageError | SetupError | None:
    """One line saying which peer failed or was lost, and why (from TensorFlow's error), or None if it is not that.

    A peer that failed and reported it (`error_report`) is named with its own line; a peer
    that stopped sending heartbeats or closed its connection is named as lost.
    """
    text = str(error)
    reported = _REPORTED.search(text)
    if reported:
        line = reported.group(1).strip()
        return UsageError(line[len(_USAGE_MARK):]) if line.startswith(_USAGE_MARK) else SetupError(line)
    if "unhealthy" in text or "heartbeat" in text:
        why, names = "stopped sending heartbeats", _TASK_NAME.findall(text[text.find("unhealthy"):])
    elif "remote target" in text:
        why, names = "its connection closed", _TASK_NAME.findall(text[text.find("remote target"):])[:1]
    elif isinstance(error, tf.errors.DeadlineExceededError):
        why, names = "a collective waited longer than --collective_timeout_s: a peer is stuck", []
    elif isinstance(error, tf.errors.UnavailableError):
        why, names = "a collective could not reach it", []
    else:
        return None
    lost = ", ".join(dict.fromkeys(f"{job}:{index}" for job, index in names)) or "a peer task"
    return SetupError(f"lost {lost} ({why}); every task stops. Rerun the same command on every task to resume "
                      "from the last checkpoint")


@dataclasses.dataclass(frozen=True)
class ClusterInfo:
    """Facts about this process's place in the job, identical in shape on every worker."""

    num_workers: int
    worker_index: int
    is_chief: bool
    num_replicas: int
    task_type: str | None = None
    task_index: int | None = None

    @property
    def num_replicas_per_worker(self) -> int:
        return self.num_replicas // self.num_workers

    @property
    def task_name(self) -> str:
        """This task as TensorFlow names it, e.g. `worker:1` (`chief:0` for a single process)."""
        return f"{self.task_type}:{self.task_index}" if self.task_type else f"worker:{self.worker_index}"

    @classmethod
    def from_strategy(cls, strategy: tf.distribute.Strategy) -> ClusterInfo:
        resolver = getattr(strategy, "cluster_resolver", None)
        spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
        chiefs, workers = len(spec.get("chief", [])), len(spec.get("worker", []))
        if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or not chiefs + workers:
            return cls(num_workers=1, worker_index=0, is_chief=True,
                       num_replicas=strategy.num_replicas_in_sync)
        task_type, task_index = resolver.task_type, resolver.task_id
        worker_index = task_index + (chiefs if task_type == "worker" else 0)
        return cls(num_workers=chiefs + workers, worker_index=worker_index,
                   is_chief=bool(strategy.extended.should_checkpoint),
                   num_replicas=strategy.num_replicas_in_sync,
                   task_type=task_type, task_index=task_index)
