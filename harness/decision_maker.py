"""Agreement across the workers of a job: decisions, equal values, and equal settings.

On one worker nothing is communicated (but the same encode/decode runs, so one code path is
tested everywhere). On several, decisions take one small all-reduce (two when a stop's reason
travels), or ride in a training loop's gradient all-reduce (`riding_layout`, `summed`: see
`harness.controller` and `harness.riding_votes`), and settings are compared through the
coordination service at the start.
"""

from __future__ import annotations

import json

import numpy as np
import tensorflow as tf

from harness import run_record, tf_compat
from harness.cluster import ClusterInfo
from harness.collective_watchdog import WATCHDOG
from harness.compiled import compiled
from harness.decisions import Decision, Layout, Votes, decode_reason, encode_reason
from harness.errors import SetupError

SETTINGS_KEY = "harness/settings/{attempt}/{task}"


def sum_over_replicas(strategy: tf.distribute.Strategy, vector: tf.Tensor) -> tf.Tensor:
    """The sum of `vector` over every replica (cross-replica context, in a `tf.function`): one all-reduce.
    Each worker's vector counts once per local replica."""
    per_replica = strategy.run(tf.identity, args=(vector,))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)


class DecisionMaker:
    """Agrees on a `Decision` from every worker's `Votes`; free (no communication) on one worker."""

    def __init__(self, strategy: tf.distribute.Strategy, cluster: ClusterInfo, num_savers: int):
        self._strategy, self._cluster = strategy, cluster
        self.layout = Layout(cluster.num_workers, num_savers)
        self.riding_layout = Layout(cluster.num_workers, 1)  # what rides on a loop's call: no callback's save
        self._local_replicas = cluster.num_replicas_per_worker
        self._sums = {}
        self.all_reduces = 0  # how many this worker took part in (a test counts them)
        self._me = cluster.worker_index if cluster.num_workers > 1 else 0  # alone, a worker has slot 0

    def _sum(self, vector: np.ndarray) -> np.ndarray:
        """The sum of `vector` over workers (each worker's local replicas contribute one copy)."""
        if self._cluster.num_workers == 1:
            return vector
        size = vector.shape[0]
        if size not in self._sums:
            self._sums[size] = WATCHDOG.watched(compiled(self._all_reduce_sum,
                                                          input_signature=[tf.TensorSpec([size], tf.float64)]))
        self.all_reduces += 1
        return self._sums[size](tf.constant(vector)).numpy() / self._local_replicas

    def _all_reduce_sum(self, vector: tf.Tensor) -> tf.Tensor:
        return sum_over_replicas(self._strategy, vector)

    def encode(self, votes: Votes, layout: Layout | None = None) -> np.ndarray:
        """This worker's `votes` as its share of a sum in `layout` (by default the one `agree` decodes)."""
        return (layout or self.layout).encode(votes, self._me, self._cluster.is_chief)

    def summed(self, arrived: tf.Tensor) -> np.ndarray:
        """A vector a loop's call summed over every replica (`Trainer.run_train_loop`), as a sum over workers."""
        return arrived.numpy().astype(np.float64) / self._local_replicas

    def agree(self, votes: Votes) -> Decision:
        """The decision of every worker's `votes`."""
        total = self._sum(self.encode(votes))
        decision = self.layout.decode(total)
        if not decision.stop_voters:
            return decision
        mine = encode_reason((votes.stop_reason or "") if self._me == decision.stop_voters[0] else "")
        reason = votes.stop_reason if self._cluster.num_workers == 1 else decode_reason(self._sum(mine))
        return self.layout.decode(total, stop_reason=reason)

    def all_equal(self, value: int) -> bool:
        """Whether every worker holds the same integer `value` (one all-reduce)."""
        if self._cluster.num_workers == 1:
            return True
        vector = np.zeros([self._cluster.num_workers], np.float64)
        vector[self._cluster.worker_index] = float(value)
        total = self._sum(vector)
        return bool((total == total[0]).all())


def agree_settings(cluster: ClusterInfo, record: run_record.Record, attempt: str, timeout_s: float,
                   ignore: tuple[str, ...] = ()) -> None:
    """Fails every task of the job at once when this one was started with other settings than the chief.

    The chief publishes its settings; every other task compares its own with them. A task that
    differs reports its error to the cluster, which aborts the others' next collective with
    the same line, naming the task and the settings.
    """
    if cluster.num_workers == 1:
        return
    key = SETTINGS_KEY.format(attempt=attempt, task="chief")
    if cluster.is_chief:
        tf_compat.publish(key, json.dumps(record))
        return
    try:
        chief = json.loads(tf_compat.read_published(key, timeout_s))
    except (tf.errors.OpError, ValueError) as e:
        raise SetupError(f"timed out after {timeout_s:.0f}s waiting for the chief's settings ({type(e).__name__}); "
                         "check the chief's log") from None
    run_record.check_same_job(chief, record, cluster.task_name, ignore=ignore)
