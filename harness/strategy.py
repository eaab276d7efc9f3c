"""Builds the `tf.distribute` strategy a run asks for, with clear errors when it cannot."""

from __future__ import annotations

import socket
from urllib.parse import urlparse

import tensorflow as tf
from absl import logging
from tensorflow.python.distribute import collective_all_reduce_strategy as _collective

from harness.cluster import load_tf_config, rendezvous
from harness.errors import SetupError, UsageError

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker_mirrored", "tpu")


def configure_cpu_devices(num_cpu_devices: int | None) -> int:
    """Splits the CPU into logical devices so that CPU-only hosts can test several replicas.

    Must run before TensorFlow initialises its devices. Ignored, with a warning, on hosts
    with GPUs. Returns the number of logical CPU devices available afterwards.
    """
    if num_cpu_devices is None:
        return len(tf.config.list_logical_devices("CPU"))
    if num_cpu_devices < 1:
        raise UsageError(f"--num_cpu_devices must be >= 1, got {num_cpu_devices}")
    if tf.config.list_physical_devices("GPU"):
        logging.warning("--num_cpu_devices=%d ignored: this host has GPUs, which are used as replicas.",
                        num_cpu_devices)
        return len(tf.config.list_logical_devices("CPU"))
    cpu = tf.config.list_physical_devices("CPU")[0]
    configured = tf.config.get_logical_device_configuration(cpu)
    if configured is not None and len(configured) >= num_cpu_devices:
        return len(configured)
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * num_cpu_devices)
    except RuntimeError:
        have = len(tf.config.list_logical_devices("CPU"))
        if have >= num_cpu_devices:
            return have
        raise UsageError(f"cannot split the CPU into {num_cpu_devices} devices: TensorFlow is already "
                         f"initialised with {have}; call configure_cpu_devices() before using TensorFlow") from None
    return num_cpu_devices


def _replica_devices(num_cpu_devices: int | None) -> list[str]:
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return [d.name for d in gpus]
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    return cpus[:num_cpu_devices] if num_cpu_devices else cpus


class _MirroredStrategy(tf.distribute.MirroredStrategy):
    """MirroredStrategy whose collective keys never collide with an earlier one's in this process.

    Every stock MirroredStrategy numbers its collectives from the same key, and TensorFlow
    caches collectives by key: a second strategy in one process (a notebook, a test suite)
    then fails with "Shape mismatch in the collective instance".
    """

    _created = 0

    def __init__(self, devices: list[str]):
        _MirroredStrategy._created += 1
        self._collective_key_base = _MirroredStrategy._created * 1_000_000
        super().__init__(devices)


class _CPUReplicasExtended(_collective.CollectiveAllReduceExtended):
    """Uses every logical CPU of a worker as a replica (stock MWMS uses one CPU per worker).

    Only for testing a multi-worker job with several replicas per worker on CPU-only hosts.
    """

    def __init__(self, container_strategy, communication_options, num_cpus: int):
        self._num_cpus = num_cpus  # read by _initialize_local_devices, which the parent's __init__ calls
        super().__init__(container_strategy, cluster_resolver=None, communication_options=communication_options)

    def _initialize_local_devices(self, cluster_resolver, worker_device):
        return tuple(f"{worker_device}/device:CPU:{i}" for i in range(self._num_cpus)), "CPU"


class _CPUReplicasMultiWorkerStrategy(_collective.CollectiveAllReduceStrategy):
    def __init__(self, communication_options: tf.distribute.experimental.CommunicationOptions, num_cpus: int):
        tf.distribute.Strategy.__init__(self, _CPUReplicasExtended(self, communication_options, num_cpus))


def _configure_coordination(config: dict, join_timeout_s: float, heartbeat_timeout_s: float) -> None:
    """Bounds how long a task waits for the others to join, and how fast a dead peer is noticed.

    MultiWorkerMirroredStrategy sets up the same coordination service with TensorFlow's
    defaults (which wait an hour for a missing task) unless it is configured first.
    """
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2  # pylint: disable=import-outside-toplevel
    from tensorflow.python.distribute import multi_worker_util  # pylint: disable=import-outside-toplevel
    from tensorflow.python.eager import context  # pylint: disable=import-outside-toplevel

    cluster = config["cluster"]
    jobs = [coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(cluster[job]))
            for job in ("chief", "worker") if job in cluster]
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=multi_worker_util.coordination_leader(cluster),
        cluster_register_timeout_in_ms=int(join_timeout_s * 1000),
        heartbeat_timeout_in_ms=int(heartbeat_timeout_s * 1000), coordinated_jobs=jobs)


def _multi_worker(num_cpu_devices: int | None, collective_timeout_s: float | None,
                  join_timeout_s: float, heartbeat_timeout_s: float) -> tf.distribute.Strategy:
    config = load_tf_config()
    for name, value in (("collective_timeout_s", collective_timeout_s), ("cluster_join_timeout_s", join_timeout_s),
                        ("heartbeat_timeout_s", heartbeat_timeout_s)):
        if value is not None and value <= 0:
            raise UsageError(f"--{name} must be > 0, got {value}")
    rendezvous(config, join_timeout_s)
    _configure_coordination(config, join_timeout_s, heartbeat_timeout_s)
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=collective_timeout_s)
    if num_cpu_devices and num_cpu_devices > 1 and not tf.config.list_physical_devices("GPU"):
        return _CPUReplicasMultiWorkerStrategy(options, num_cpu_devices)
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


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def _tpu(tpu: str | None) -> tf.distribute.Strategy:
    if not tpu:
        raise UsageError("--strategy=tpu needs --tpu: 'local' on a TPU VM, a TPU name, or grpc://host:port")
    _check_tpu_address_reachable(tpu)
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        if tpu != "local":
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except Exception as e:  # TensorFlow raises many unrelated types for "no TPU here".
        raise SetupError(f"no TPU found for --tpu={tpu} ({type(e).__name__}: {_first_line(e)}); run on a "
                         "Cloud TPU VM, or pick another --strategy (e.g. mirrored) on this machine") from None
    return tf.distribute.TPUStrategy(resolver)


def build_strategy(name: str, *, num_cpu_devices: int | None = None, tpu: str | None = None,
                   collective_timeout_s: float | None = None, cluster_join_timeout_s: float = 300.0,
                   heartbeat_timeout_s: float = 10.0) -> tf.distribute.Strategy:
    """Returns the strategy called `name` (one of `STRATEGIES`).

    `num_cpu_devices` splits a GPU-less host's CPU into that many replicas (mirrored, and
    multi_worker_mirrored per worker); `tpu` is 'local', a TPU name or a grpc:// address;
    `collective_timeout_s` bounds every multi-worker collective; `cluster_join_timeout_s`
    bounds the wait for every task to join; a task that stops sending heartbeats for
    `heartbeat_timeout_s` fails the job on every other task instead of hanging it.
    """
    if name not in STRATEGIES:
        raise UsageError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if num_cpu_devices is not None:
        configure_cpu_devices(num_cpu_devices)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(_replica_devices(1)[0])
    if name == "mirrored":
        return _MirroredStrategy(_replica_devices(num_cpu_devices))
    if name == "multi_worker_mirrored":
        return _multi_worker(num_cpu_devices, collective_timeout_s, cluster_join_timeout_s, heartbeat_timeout_s)
    return _tpu(tpu)
