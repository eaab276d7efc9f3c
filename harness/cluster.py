"""A running job's cluster: the join rendezvous, this task's facts, and what peers' failures mean.

Who this process is comes from `harness.cluster_env` (TF_CONFIG, Vertex AI, SLURM, Kubernetes,
flags); once the strategy is built, `ClusterInfo` holds the facts every part asks about.
MultiWorkerMirroredStrategy blocks until every task joins, and TensorFlow's errors about a
lost peer run to dozens of lines: both become one line naming the task.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import socket
import time
from typing import Any

import tensorflow as tf

from harness import tf_compat
from harness.errors import SetupError, UsageError


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


def error_report(task_name: str, error: BaseException, flags: bool = False) -> str:
    """The line a failing task reports to the others (`tf_compat.report_error_to_cluster`); with `flags`,
    a usage error names command-line flags."""
    text = error.as_flag() if flags and isinstance(error, UsageError) else str(error)
    text = (text.strip().splitlines() or [""])[0][:300]
    if not isinstance(error, (UsageError, SetupError)):
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    line = text if text.startswith(task_name) else f"{task_name} failed: {text}"
    return (_USAGE_MARK if isinstance(error, UsageError) else "") + line


def reported_error(line: str) -> UsageError | SetupError:
    """The error a peer's `error_report` line stands for."""
    return UsageError(line[len(_USAGE_MARK):]) if line.startswith(_USAGE_MARK) else SetupError(line)


_PEER_MARKS = ("unhealthy", "heartbeat", "Error reported from", "remote target", "Collective ops is aborted",
               "collective_timeout_s")


def from_the_cluster(error: BaseException) -> bool:
    """Whether `error` is about the job's peers or collectives (not the operation it interrupted, such as a save)."""
    return isinstance(error, tf.errors.OpError) and any(mark in str(error) for mark in _PEER_MARKS)


def peer_error(error: Exception) -> UsageError | SetupError | None:
    """One line saying which peer failed or was lost, and why (from TensorFlow's error), or None if it is not that.

    A peer that failed and reported it (`error_report`) is named with its own line; a peer
    that stopped sending heartbeats or closed its connection is named as lost.
    """
    text = str(error)
    reported = _REPORTED.search(text)
    if "unhealthy" in text or "heartbeat" in text:  # the coordination service reports these itself
        why, names = "stopped sending heartbeats", _TASK_NAME.findall(text[text.find("unhealthy"):])
    elif reported:
        return reported_error(reported.group(1).strip())
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


FAILURE_KEY = "harness/failure/{worker}"  # a failing task's error line, for peers that see only a broken connection


def published_failure(cluster: ClusterInfo, timeout_s: float = 1.0) -> str | None:
    """The error line another task published before it failed, if any (its report may race its broken connection)."""
    for worker in range(cluster.num_workers):
        if worker != cluster.worker_index:
            try:
                return tf_compat.read_published(FAILURE_KEY.format(worker=worker), timeout_s)
            except Exception:  # not published (a deadline), or the coordination service is gone too
                continue
    return None


def failure_to_raise(cluster: ClusterInfo, error: BaseException, flags: bool) -> BaseException:
    """The error a task raises for `error`; in a multi-worker job the others learn of it at once.

    A peer's failure becomes that peer's own line (published before it failed, if it could); this
    task's own failure is published and reported to the coordination service, which aborts the
    others' collectives. `flags`: the error names command-line flags (see `error_report`).
    """
    if cluster.num_workers == 1:
        return error
    if isinstance(error, tf.errors.OpError):
        peer = peer_error(error)
        if peer is not None:  # a peer failed (and reported why), or is lost: its own line, if it left one
            published = published_failure(cluster) if peer.args[0].startswith("lost ") else None
            return reported_error(published) if published else peer
    line = error_report(cluster.task_name, error, flags)
    with contextlib.suppress(tf.errors.OpError):  # the coordination service is gone too: peers see a lost task
        tf_compat.publish(FAILURE_KEY.format(worker=cluster.worker_index), line)
    tf_compat.report_error_to_cluster(line)
    return error
