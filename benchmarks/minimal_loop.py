"""Contenders (a) and (a'): a minimal hand-written loop, and the same loop with a per-epoch checkpoint.

One `tf.function` runs K steps in a `tf.range` loop (K is a tensor: no retrace when it
changes). A step is what every contender does: forward, per-example loss averaged over the
global batch, gradients, SGD update, and running sums of loss and accuracy (read once per
epoch, as one would to print them). No callbacks, no learning-rate variable. The plain loop
saves nothing: the limit with zero harness overhead. "minimal + checkpoint" does the same
work as the harness at each epoch end: a synchronous `tf.train.CheckpointManager.save`
(max_to_keep=3, as the harness's default) of a `tf.train.Checkpoint` with the model, the
optimizer, the step and the running sums; so harness / (minimal + checkpoint) is the
harness's own overhead, and (minimal + checkpoint) / minimal is the checkpoint's cost.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from benchmarks.interleave import Pacer
from benchmarks.timing import now
from benchmarks.workload import Workload


class MinimalLoop:
    name = "minimal"

    def __init__(self, workload: Workload, checkpoint_dir: str | None = None, name: str | None = None):
        self.workload, self.strategy = workload, workload.strategy
        self.name = name or ("minimal_checkpoint" if checkpoint_dir else "minimal")
        self.model, self.optimizer = workload.build()
        self.loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
        with self.strategy.scope():
            self.optimizer.build(self.model.trainable_variables)
            # loss sum, correct predictions, examples: summed per replica, added up when read.
            self.sums = tf.Variable(tf.zeros([3]), trainable=False, synchronization=tf.VariableSynchronization.ON_READ,
                                    aggregation=tf.VariableAggregation.SUM)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.manager = None
        if checkpoint_dir:
            checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, step=self.step,
                                             sums=self.sums)
            self.manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=3)
        self.loop = tf.function(self._loop)
        self.dataset = workload.distributed_dataset()
        self._k: dict[int, tf.Tensor] = {}
        self.last_epoch_logs: dict[str, float] = {}
        self.steps_done = 0

    def _step(self, batch):
        features, labels = batch
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            logits = self.model(features, training=True)
            per_example = self.loss(labels, logits)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.workload.global_batch_size)
        self.optimizer.apply(tape.gradient(loss, variables), variables)
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)
        self.sums.assign_add(tf.stack([tf.reduce_sum(per_example), tf.reduce_sum(correct),
                                       tf.cast(tf.size(labels), tf.float32)]))

    def _loop(self, iterator, num_steps):
        for _ in tf.range(num_steps):
            self.strategy.run(self._step, args=(next(iterator),))
        self.step.assign_add(num_steps)

    def _steps(self, k: int) -> tf.Tensor:
        if k not in self._k:
            self._k[k] = tf.constant(k, tf.int64)
        return self._k[k]

    def _epoch_end(self, previous):
        total = self.sums.numpy()  # the sum over replicas: one host sync per epoch
        loss, correct, count = total - previous
        self.last_epoch_logs = {"loss": loss / count, "accuracy": correct / count}
        if self.manager is not None:
            self.manager.save(checkpoint_number=self.steps_done)
        return total

    def probe(self, steps_per_execution: int, seconds: float) -> float:
        """Steps/s of K-step calls for about `seconds` (at least one call): sizes the slices and epochs."""
        k, iterator, calls = self._steps(steps_per_execution), iter(self.dataset), 0
        self.loop(iterator, k)
        start = now()
        while calls == 0 or now() - start < seconds:
            self.loop(iterator, k)
            calls += 1
        return calls * steps_per_execution / (now() - start)

    def first_step(self) -> float:
        start = now()
        self.loop(iter(self.dataset), self._steps(1))
        return now() - start

    def train(self, pacer: Pacer, steps_per_execution: int, steps_per_epoch: int, epochs: int) -> None:
        """`epochs` epochs of K-step calls, pacing every call (runs in the contender's thread)."""
        k = self._steps(steps_per_execution)
        iterator = iter(self.dataset)
        totals = self.sums.numpy()
        for _ in range(epochs):
            pacer.epoch_begin()
            for _ in range(steps_per_epoch // steps_per_execution):
                pacer.loop_begin()
                self.loop(iterator, k)
                self.steps_done += steps_per_execution
            pacer.batch_done()
            totals = self._epoch_end(totals)
        pacer.finish()
