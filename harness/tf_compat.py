"""Every private TensorFlow and Keras name the harness uses, each with what it works around.

Nothing else in `harness/` or `callbacks/` touches a private API (tests/test_architecture.py
checks it). Each workaround has a canary in tests/test_tf_compat.py that fails when the
upstream behaviour it relies on, or works around, changes: then revisit it here, and delete
it if upstream fixed the problem.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import keras
import tensorflow as tf
from keras.src.backend.tensorflow.core import Variable as _KerasVariable
from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
from tensorflow.python.distribute import collective_all_reduce_strategy as _collective
from tensorflow.python.distribute import multi_worker_util
from tensorflow.python.eager import context as _eager_context

from harness.errors import SetupError, UsageError

# ----- AutoGraph ------------------------------------------------------------------------------


def let_autograph_pass(*error_types: type[BaseException]) -> None:
    """Makes AutoGraph re-raise these errors unchanged when a traced function raises them.

    Without the marker AutoGraph wraps an error raised while tracing in its own type with a
    multi-line message; ours are one line meant for the user.
    """
    for error_type in error_types:
        error_type.ag_pass_through = True


let_autograph_pass(UsageError, SetupError)

# ----- Keras 3 variables and TensorFlow's async checkpoints --------------------------------------

_async_copy_lock = threading.Lock()


def _copy_keras_variable_to_cpu(self, object_map):
    self.value._copy_trackable_to_cpu(object_map)
    object_map[self] = object_map[self.value]


@contextlib.contextmanager
def async_checkpoint_copies() -> Iterator[None]:
    """Lets TensorFlow's async checkpointing copy Keras 3 variables more than once.

    An async save copies every variable to the CPU through `_copy_trackable_to_cpu`, traced
    into a `tf.function` at the save call. Keras 3.15's version creates a new `tf.Variable`
    every time, so the second async save fails ("tf.function only supports singleton
    tf.Variables"). A Keras variable saves exactly its backing variable's tensors, so its CPU
    copy can be the backing variable's, which TensorFlow creates once and reuses. The patch
    is installed only around an async write (re-entrant, thread-safe) and removed afterwards.
    """
    with _async_copy_lock:
        original = _KerasVariable.__dict__["_copy_trackable_to_cpu"]
        _KerasVariable._copy_trackable_to_cpu = _copy_keras_variable_to_cpu
        try:
            yield
        finally:
            _KerasVariable._copy_trackable_to_cpu = original


def raise_async_checkpoint_error(checkpoint: tf.train.Checkpoint) -> None:
    """Raises the error of a failed background save, which `Checkpoint.sync()` swallows.

    TensorFlow 2.21 keeps the background thread's error in `_async_error` and raises it only at
    the next save, or at process exit as an "Exception ignored in atexit callback" traceback:
    a run whose last asynchronous save failed (a full disk) would report a checkpoint that does
    not exist and exit 0. Call after `sync()`; the error is taken, so it is raised once.
    """
    helper = getattr(checkpoint, "_async_checkpointer_impl", None)
    error = getattr(helper, "_async_error", None)
    if error is not None:
        helper._async_error = None
        raise error


# ----- TensorFlow Datasets downloads ------------------------------------------------------------

_download_retries_lock = threading.Lock()


@contextlib.contextmanager
def few_download_retries(retries: int = 2) -> Iterator[None]:
    """Lets a TFDS download without network fail in seconds instead of minutes.

    TFDS 4.9 retries every file `downloader.MAX_RETRIES` (10) times with exponential backoff
    (0.2 s doubling): a machine without network gives up only after about 3.5 minutes, and
    then with a `requests` traceback. Two retries still ride out a flaky server. The module
    constant is read at each request, so it is set only around a download.
    """
    from tensorflow_datasets.core.download import downloader

    with _download_retries_lock:
        previous, downloader.MAX_RETRIES = downloader.MAX_RETRIES, retries
        try:
            yield
        finally:
            downloader.MAX_RETRIES = previous


# ----- Keras 3 optimizers under tf.distribute -------------------------------------------------


_reduced_lock = threading.Lock()
_reduced_depth: dict[int, int] = {}


def _no_reduction(grads_and_vars):
    return list(grads_and_vars)


@contextlib.contextmanager
@tf.autograph.experimental.do_not_convert
def gradients_already_reduced(optimizer: keras.optimizers.Optimizer) -> Iterator[None]:
    """While tracing `optimizer.apply` in replica context, skips the optimizer's own all-reduce.

    Keras 3's TensorFlow optimizer sums the gradients across replicas inside `apply` (its
    `_all_reduce_sum_gradients`). Gradients that the caller already reduced (to clip the
    global norm, or to decide a loss-scale skip on every replica alike) would be summed a
    second time: an N-times update on N replicas. An instance attribute shadows the method
    while any replica is inside the block (MirroredStrategy traces replicas in threads that
    meet in merge_call, so the blocks overlap: the attribute lives until the last one exits).
    """
    candidates = [optimizer, getattr(optimizer, "inner_optimizer", None)]
    targets = [o for o in candidates if o is not None and hasattr(type(o), "_all_reduce_sum_gradients")]
    with _reduced_lock:
        for target in targets:
            _reduced_depth[id(target)] = _reduced_depth.get(id(target), 0) + 1
            object.__setattr__(target, "_all_reduce_sum_gradients", _no_reduction)
    try:
        yield
    finally:
        with _reduced_lock:
            for target in targets:
                _reduced_depth[id(target)] -= 1
                if not _reduced_depth[id(target)]:
                    del _reduced_depth[id(target)]
                    object.__delattr__(target, "_all_reduce_sum_gradients")


# ----- Strategies ------------------------------------------------------------------------------


class MirroredStrategyWithOwnKeys(tf.distribute.MirroredStrategy):
    """MirroredStrategy whose collective keys never collide with an earlier one's in this process.

    Every stock MirroredStrategy numbers its collectives from the same key, and TensorFlow
    caches collectives by key: a second strategy in one process (a notebook, a test suite)
    then fails with "Shape mismatch in the collective instance".
    """

    _created = 0

    def __init__(self, devices: list[str]):
        MirroredStrategyWithOwnKeys._created += 1
        self._collective_key_base = MirroredStrategyWithOwnKeys._created * 1_000_000
        super().__init__(devices)


class _CPUReplicasExtended(_collective.CollectiveAllReduceExtended):
    def __init__(self, container_strategy, communication_options, num_cpus: int):
        self._num_cpus = num_cpus  # read by _initialize_local_devices, which the parent's __init__ calls
        super().__init__(container_strategy, cluster_resolver=None, communication_options=communication_options)

    def _initialize_local_devices(self, cluster_resolver, worker_device):
        return tuple(f"{worker_device}/device:CPU:{i}" for i in range(self._num_cpus)), "CPU"


class MultiWorkerCPUReplicasForTesting(_collective.CollectiveAllReduceStrategy):
    """MultiWorkerMirroredStrategy that uses every logical CPU of a worker as a replica.

    For testing only: it lets a CPU-only host run a multi-worker job with several replicas
    per worker (stock MultiWorkerMirroredStrategy uses one CPU per worker).
    """

    def __init__(self, communication_options: tf.distribute.experimental.CommunicationOptions, num_cpus: int):
        tf.distribute.Strategy.__init__(self, _CPUReplicasExtended(self, communication_options, num_cpus))


# ----- The coordination service ----------------------------------------------------------------


def configure_coordination_service(cluster: dict[str, list[str]], join_timeout_s: float,
                                   heartbeat_timeout_s: float) -> None:
    """Bounds how long a task waits for the others to join, and how fast a dead peer is noticed.

    MultiWorkerMirroredStrategy sets up the coordination service with TensorFlow's defaults
    (which wait an hour for a missing task) unless it is configured first.
    """
    jobs = [coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(cluster[job]))
            for job in ("chief", "worker") if job in cluster]
    _eager_context.context().configure_coordination_service(
        service_type="standalone", service_leader=multi_worker_util.coordination_leader(cluster),
        cluster_register_timeout_in_ms=int(join_timeout_s * 1000),
        heartbeat_timeout_in_ms=int(heartbeat_timeout_s * 1000), coordinated_jobs=jobs)


def publish(key: str, value: str) -> None:
    """Stores `key` in the coordination service's key-value store (every task can read it)."""
    _eager_context.context().set_config_key_value(key, value)


def read_published(key: str, timeout_s: float) -> str:
    """Waits up to `timeout_s` for another task to publish `key`; raises on timeout or a lost service."""
    return _eager_context.context().get_config_key_value(key, timeout_in_ms=int(timeout_s * 1000))


def report_error_to_cluster(message: str) -> None:
    """Aborts every task's pending and future collectives with `message` (within milliseconds).

    Without it, a task that fails but stays alive (a user's script that catches the error)
    leaves the others waiting in a collective until a timeout, and then they blame a lost peer.
    """
    try:
        _eager_context.context().report_error_to_cluster(tf.errors.INTERNAL, message)
    except tf.errors.OpError:  # the service already knows of a failure (a lost peer): the others learn of that
        pass


def abort_collectives(message: str) -> None:
    """Fails this process's pending and future collectives with DeadlineExceededError(`message`).

    What TensorFlow's own `CommunicationOptions(timeout_seconds=T)` does when T passes; that
    option holds two sleeping threads per collective for T seconds (thousands of threads per
    minute at one step per call), so `harness.collective_watchdog` calls this from one thread.
    """
    _eager_context.context().abort_collective_ops(tf.errors.DEADLINE_EXCEEDED, message)
