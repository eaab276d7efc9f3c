"""Gradient accumulation: one optimizer update from the gradients of A micro-batches, under any strategy.

Why the harness does it itself: Keras 3's `gradient_accumulation_steps` decides "apply now?" in a
`tf.cond` in replica context, which breaks `merge_call` under a TensorFlow strategy (keras#20582),
and tf-keras#107 found no TF2 implementation that works distributed. Here nothing is conditional:

- The compiled K-step loop runs, per update, A-1 *accumulating* micro-steps and one *applying*
  micro-step, each a `strategy.run` of the trainer's own `train_step` on the next micro-batch of
  `global_batch_size / A` examples (so activations, and so memory, are those of a micro-batch).
  Which kind a micro-step is, is fixed when it is traced (two traced functions, no `tf.cond`).
- `Trainer.apply_gradients` in an accumulating micro-step adds this replica's gradients to its
  accumulators: `ON_READ` variables, one copy per replica, never all-reduced. In the applying
  micro-step it adds them to its own gradients, empties them, and applies the sum once: one
  all-reduce per update, not per micro-batch, so the optimizer's iteration count is the number of
  updates. An update never spans two loop calls, so the accumulators are zero at every checkpoint
  and are not part of it.
- `Trainer.compute_loss` divides every micro-batch's loss by the *full* global batch (and the
  regularisation by A), so the sum over A micro-batches and R replicas is the gradient of the global
  batch: the update equals A=1's within float tolerance. Under float16 loss scaling, an overflow in
  any micro-batch makes the summed gradient non-finite on every replica, so the loss-scale optimizer
  skips the whole update everywhere.

A custom `train_step` works unchanged as long as it applies this replica's own gradients through
`apply_gradients(grads)`; a step that never calls it, or passes `already_reduced=True` (a transform
of the global gradient, such as clipping its norm, would see one micro-batch's gradient only), is
refused when it is traced. The micro-batches come from the input (see `harness.data.training_input`),
in the order of A=1's examples.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence

import tensorflow as tf

from harness.errors import UsageError

ACCUMULATE, APPLY = "accumulate", "apply"


def check_split(global_batch_size: int, steps: int, num_replicas: int) -> None:
    """A global batch must split into `steps` micro-batches of whole per-replica batches."""
    if not isinstance(steps, int) or steps < 1:
        raise UsageError(f"must be an integer >= 1, got {steps!r}", argument="gradient_accumulation_steps")
    unit = steps * num_replicas
    if global_batch_size % unit:
        lower = global_batch_size - global_batch_size % unit
        raise UsageError(f"is {steps}, but global_batch_size {global_batch_size} does not split into {steps} "
                         f"micro-batches x {num_replicas} replica(s); use a global batch that is a multiple of {unit}, "
                         f"e.g. {lower or unit} or {lower + unit}", argument="gradient_accumulation_steps")


class GradientAccumulator:
    """Per-replica gradient sums of `variables` and the mode of the micro-step being traced."""

    def __init__(self, strategy: tf.distribute.Strategy, variables: Sequence, steps: int):
        self.steps = steps
        with strategy.scope():
            self._sums = {id(v): tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False,
                                             name=f"accumulated/{v.path.replace(':', '_')}",
                                             synchronization=tf.VariableSynchronization.ON_READ,
                                             aggregation=tf.VariableAggregation.SUM)
                          for v in variables}
        self._tracing = threading.local()  # MirroredStrategy traces each replica in its own thread

    def micro_step(self, train_step: Callable, mode: str) -> Callable:
        """`train_step` as an accumulating or applying micro-step (replica context)."""
        def step(batch):
            with self._mode(mode):
                train_step(batch)
        step.__name__ = f"{mode}_micro_step"
        return step

    @contextlib.contextmanager
    def _mode(self, mode: str) -> Iterator[None]:
        self._tracing.mode, self._tracing.applied = mode, False
        try:
            yield
            if not self._tracing.applied:
                raise UsageError("with gradient_accumulation_steps > 1, train_step must apply its gradients with "
                                 "self.apply_gradients(grads) (the trainer sums them over the micro-batches and "
                                 "applies the sum once per update)")
        finally:
            self._tracing.mode = None

    def combine(self, grads: Sequence[tf.Tensor], variables: Sequence, already_reduced: bool) -> list | None:
        """What `apply_gradients` applies: None in an accumulating micro-step (the gradients were added to the
        sums), the summed gradients of the update in the applying one."""
        mode = getattr(self._tracing, "mode", None)
        if mode is None:
            return list(grads)  # outside the training loop (a user's own call): as without accumulation
        if already_reduced:
            raise UsageError("with gradient_accumulation_steps > 1, pass this replica's own gradients to "
                             "apply_gradients (not already_reduced=True): a transform of the global gradient, such "
                             "as clipping its norm, would see one micro-batch only")
        self._tracing.applied = True
        sums = [self._sum_of(v) for v in variables]
        if mode == ACCUMULATE:
            for total, g in zip(sums, grads):
                total.assign_add(tf.cast(g, total.dtype))
            return None
        combined = [g + tf.cast(total.read_value(), g.dtype) for total, g in zip(sums, grads)]
        for total in sums:
            total.assign(tf.zeros_like(total))
        return combined

    def _sum_of(self, variable) -> tf.Variable:
        try:
            return self._sums[id(variable)]
        except KeyError:
            raise UsageError(f"apply_gradients got variable {getattr(variable, 'path', variable.name)}, which is not "
                             "a trainable variable of the model; gradient accumulation keeps sums for those "
                             "only") from None
