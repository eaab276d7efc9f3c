"""Builds the `tf.distribute` strategy a run asks for, with clear errors when it cannot.

TensorFlow is imported inside the builders, so that reading `STRATEGIES` (flag parsing)
stays cheap.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from harness.cluster_env import SOURCE_VARIABLES, ResolvedCluster, resolve_cluster
from harness.errors import SetupError, UsageError

if TYPE_CHECKING:
    import tensorflow as tf

log = logging.getLogger(__name__)

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker_mirrored", "tpu")
MULTI_WORKER = "multi_worker_mirrored"


def configure_cpu_devices(num_cpu_devices: int | None) -> int:
    """Splits the CPU into logical devices so that CPU-only hosts can test several replicas.

    Must run before TensorFlow initialises its devices. Ignored, with a warning, on hosts
    with GPUs. Returns the number of logical CPU devices available afterwards.
    """
    import tensorflow as tf

    if num_cpu_devices is None:
        return len(tf.config.list_logical_devices("CPU"))
    if num_cpu_devices < 1:
        raise UsageError(f"must be >= 1, got {num_cpu_devices}", argument="num_cpu_devices")
    if tf.config.list_physical_devices("GPU"):
        log.warning("--num_cpu_devices=%d ignored: this host has GPUs, which are used as replicas.",
                    num_cpu_devices)
        return len(tf.config.list_logical_devices("CPU"))
    cpu = tf.config.list_physical_devices("CPU")[0]
    configured = tf.config.get_logical_device_configuration(cpu)
    if configured is not None and len(configured) >= num_cpu_devices:
        return len(configured)
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * num_cpu_devices)
    except RuntimeError:
        have = len(tf.config.list_logical_devices("CPU"))
        if have >= num_cpu_devices:
            return have
        raise UsageError(f"cannot split the CPU into {num_cpu_devices} devices: TensorFlow is already "
                         f"initialised with {have}; call configure_cpu_devices() before using TensorFlow",
                         argument="num_cpu_devices") from None
    return num_cpu_devices


def _replica_devices(num_cpu_devices: int | None) -> list[str]:
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return [d.name for d in gpus]
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    return cpus[:num_cpu_devices] if num_cpu_devices else cpus


def check_timeouts(**timeouts: float | None) -> None:
    """Every timeout is a finite number of seconds > 0 (or unset)."""
    for name, value in timeouts.items():
        if value is not None and not 0 < value < math.inf:
            raise UsageError(f"must be a finite number of seconds > 0, got {value}", argument=name)


def resolve_job(strategy: str, environ: Mapping[str, str] | None = None, *, warn: bool = True,
                **cluster_flags) -> ResolvedCluster:
    """The job this process is part of, as `strategy` uses it (pure: no TensorFlow).

    multi_worker_mirrored needs a cluster (TF_CONFIG, Vertex AI, SLURM, Kubernetes or flags).
    A single-process strategy ignores a cluster environment, with one warning line (unless
    `warn` is False: a caller that only checks, before resolving again), unless it says this
    process is not the chief (a worker would then write every output as if it were).
    """
    environ = os.environ if environ is None else environ
    if not warn:
        with _warnings_off():
            return resolve_job(strategy, environ, **cluster_flags)
    if strategy == MULTI_WORKER:
        cluster = resolve_cluster(environ, **cluster_flags)
        if cluster.source == "none":
            raise UsageError("needs a cluster: set TF_CONFIG on every host (or run under Vertex AI, SLURM or a "
                             "Kubernetes Indexed Job with worker_hosts), or use scripts/launch_local.py",
                             argument="strategy=multi_worker_mirrored")
        return cluster
    given = [name for name, value in cluster_flags.items() if value is not None]
    if given:
        raise UsageError(f"places this task in a multi-worker job, which only strategy {MULTI_WORKER} trains; "
                         "choose that strategy, or drop this setting", argument=given[0])
    try:
        cluster = resolve_cluster(environ)
    except UsageError as e:
        log.warning("Ignoring the cluster environment: --strategy=%s trains in one process (%s).", strategy, e)
        return ResolvedCluster("none")
    if cluster.task_type is not None and not cluster.is_evaluator and not cluster.is_chief:
        raise UsageError(f"is {strategy}, which trains in one process and would write as the chief, but "
                         f"{SOURCE_VARIABLES[cluster.source]} says this process is {cluster.task_type}:"
                         f"{cluster.task_index} of a {cluster.num_workers}-task cluster; use {MULTI_WORKER}, or "
                         f"unset {SOURCE_VARIABLES[cluster.source]}", argument="strategy")
    if cluster.task_type is not None and not cluster.is_evaluator:
        log.warning("Ignoring the %s cluster: --strategy=%s trains in one process.", cluster.source, strategy)
        return ResolvedCluster("none", ignored_sources=(cluster.source, *cluster.ignored_sources))
    return cluster


@contextlib.contextmanager
def _warnings_off() -> Iterator[None]:
    """Silences this module's warnings (a check that already warned once)."""
    previous = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(previous)


def _multi_worker(cluster: ResolvedCluster, num_cpu_devices: int | None, collective_timeout_s: float | None,
                  join_timeout_s: float, heartbeat_timeout_s: float) -> tf.distribute.Strategy:
    import tensorflow as tf

    from harness import tf_compat
    from harness.cluster import rendezvous
    from harness.collective_watchdog import WATCHDOG

    options = tf.distribute.experimental.CommunicationOptions()  # no timeout: see harness.collective_watchdog
    WATCHDOG.start(collective_timeout_s)
    config = cluster.tf_config()
    if config is None:  # a cluster of one task: this process alone
        os.environ.pop("TF_CONFIG", None)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    os.environ["TF_CONFIG"] = json.dumps(config)  # TensorFlow reads it; the evaluator is not part of it
    rendezvous(config, join_timeout_s)
    tf_compat.configure_coordination_service(config["cluster"], join_timeout_s, heartbeat_timeout_s)
    if num_cpu_devices and num_cpu_devices > 1 and not tf.config.list_physical_devices("GPU"):
        return tf_compat.MultiWorkerCPUReplicasForTesting(options, num_cpu_devices)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def _check_tpu_address_reachable(tpu: str) -> None:
    parsed = urlparse(tpu)
    if parsed.scheme != "grpc":
        return
    try:
        socket.create_connection((parsed.hostname, parsed.port or 8470), timeout=5).close()
    except OSError as e:
        raise SetupError(f"cannot reach the TPU at {tpu} ({e.strerror or e}); check the address "
                         "and that the TPU is up, or use --tpu=local on a TPU VM") from None


def first_line(error: BaseException) -> str:
    """The first line of an error's message (TensorFlow's run to dozens), at most 200 characters."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def _tpu(tpu: str | None) -> tf.distribute.Strategy:
    import tensorflow as tf

    if not tpu:
        raise UsageError("needs a TPU: pass 'local' on a TPU VM, a TPU name, or grpc://host:port", argument="tpu")
    _check_tpu_address_reachable(tpu)
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        if tpu != "local":
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except Exception as e:  # TensorFlow raises many unrelated types for "no TPU here"
        raise SetupError(f"no TPU found for --tpu={tpu} ({type(e).__name__}: {first_line(e)}); run on a "
                         "Cloud TPU VM, or pick another --strategy (e.g. mirrored) on this machine") from None
    return tf.distribute.TPUStrategy(resolver)


def build_strategy(name: str, *, num_cpu_devices: int | None = None, tpu: str | None = None,
                   collective_timeout_s: float | None = 600.0, cluster_join_timeout_s: float = 300.0,
                   heartbeat_timeout_s: float = 10.0, cluster: ResolvedCluster | None = None) -> tf.distribute.Strategy:
    """Returns the strategy called `name` (one of `STRATEGIES`).

    `num_cpu_devices` splits a GPU-less host's CPU into that many replicas (mirrored, and
    multi_worker_mirrored per worker); `tpu` is 'local', a TPU name or a grpc:// address;
    `collective_timeout_s` bounds how long a training loop, a decision or a metric read waits on
    a stuck peer (one watchdog thread: `harness.collective_watchdog`); `cluster_join_timeout_s`
    bounds the wait for every task to join; a task that stops sending heartbeats for
    `heartbeat_timeout_s` fails the job on every other task instead of hanging it.
    `cluster` is this task's place in the job (by default resolved from the environment, see
    `resolve_job`).
    """
    import tensorflow as tf

    from harness import tf_compat

    if name not in STRATEGIES:
        raise UsageError(f"is unknown: {name!r}; choose one of {', '.join(STRATEGIES)}", argument="strategy")
    check_timeouts(collective_timeout_s=collective_timeout_s, cluster_join_timeout_s=cluster_join_timeout_s,
                   heartbeat_timeout_s=heartbeat_timeout_s)
    cluster = cluster or resolve_job(name)
    if name != MULTI_WORKER:
        os.environ.pop("TF_CONFIG", None)  # resolve_job checked it; TensorFlow must not read it
    if num_cpu_devices is not None:
        configure_cpu_devices(num_cpu_devices)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(_replica_devices(1)[0])
    if name == "mirrored":
        return tf_compat.MirroredStrategyWithOwnKeys(_replica_devices(num_cpu_devices))
    if name == MULTI_WORKER:
        return _multi_worker(cluster, num_cpu_devices, collective_timeout_s, cluster_join_timeout_s,
                             heartbeat_timeout_s)
    return _tpu(tpu or cluster.tpu)


def input_options(strategy: tf.distribute.Strategy) -> tf.distribute.InputOptions:
    """How `strategy` should distribute an input: on CPU replicas, not fetched "to the device" (its own memory).

    The fetch runs one tf.data iterator per device with its own autotuning thread, and in
    TensorFlow 2.21 deleting such an iterator waits for that thread's current sleep, which grows
    with the iterator's age: measured, 7.7 s (36 s under a debugger) between the last epoch and
    `Done:` of a 20-second run on 2 CPU replicas, and longer at exit. On CPUs the fetch copies
    nothing; on GPUs and TPUs it overlaps the copy with the step, so it stays.
    """
    import tensorflow as tf

    try:
        devices = strategy.extended.worker_devices
    except RuntimeError:  # the default strategy: this process's default device
        devices = [d.name for d in tf.config.list_logical_devices() if d.device_type in ("GPU", "TPU")] or ["CPU"]
    on_cpus = all("CPU" in device.upper() for device in devices)
    return tf.distribute.InputOptions(experimental_fetch_to_device=not on_cpus)
