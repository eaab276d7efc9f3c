"""Input pipelines: TFDS data sets prepared once per job, and distributed batches whose
content does not depend on how replicas and input pipelines are laid out.

Every layout (one device, N mirrored replicas, W workers x L replicas) sees the same global
batch at every step: the shuffled example stream is cut into chunks of one pipeline's share
of a global batch, and pipeline `p` keeps chunks `p, p + P, p + 2P, ...` (disjoint shards).
That is what makes "same update on 1 or N replicas" and multi-worker parity testable, and
what makes a resumed run see exactly the batches it would have seen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import logging
from collections.abc import Callable, Iterator
from urllib.parse import urlparse

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from harness import digits, storage, tf_compat  # digits registers the offline `digits` TFDS builder
from harness.errors import SetupError, UsageError
from harness.run_config import DEFAULT_DATASET

log = logging.getLogger(__name__)

SYNTHETIC = "synthetic"

ExamplesFn = Callable[[], tf.data.Dataset]
DatasetFn = Callable[..., tf.data.Dataset]


@dataclasses.dataclass(frozen=True)
class DataSource:
    """A data set's unbatched `(features, label)` examples and the facts models need."""

    name: str
    train_examples: ExamplesFn
    eval_examples: ExamplesFn | None
    num_train_examples: int
    num_eval_examples: int
    input_shape: tuple[int, ...]
    num_classes: int


def per_replica_batch_size(global_batch_size: int, num_replicas: int) -> int:
    """The batch each replica gets; a global batch that does not split evenly is an error."""
    if global_batch_size < 1:
        raise UsageError(f"must be >= 1, got {global_batch_size}", argument="global_batch_size")
    if global_batch_size % num_replicas:
        lower = global_batch_size - global_batch_size % num_replicas
        raise UsageError(f"{global_batch_size} does not split evenly over {num_replicas} replicas; use a multiple "
                         f"of {num_replicas}, e.g. {lower or num_replicas} or {lower + num_replicas}",
                         argument="global_batch_size")
    return global_batch_size // num_replicas


def check_input_batch_size(data: DatasetFn | None, global_batch_size: int, argument: str) -> None:
    """An input that knows its global batch (TrainInput, EvalInput) must batch as the trainer scales the loss."""
    batch = getattr(data, "global_batch_size", None)
    if batch is not None and batch != global_batch_size:
        raise UsageError(f"batches {batch} examples per step but the trainer's global_batch_size is "
                         f"{global_batch_size}; build both with the same global batch size", argument=argument)


def _features_to_float(features: tf.Tensor) -> tf.Tensor:
    if features.dtype == tf.uint8:
        return tf.cast(features, tf.float32) / 255.0
    return tf.cast(features, tf.float32) if features.dtype.is_integer else features


def _preprocess(features, label, *weight):
    return (_features_to_float(features), tf.cast(label, tf.int32), *weight)


def _distribute(stream: tf.data.Dataset, global_batch_size: int, ctx: tf.distribute.InputContext,
                deterministic: bool = True) -> tf.data.Dataset:
    """Cuts a global example stream into this pipeline's per-replica batches (see module doc)."""
    replica_batch = ctx.get_per_replica_batch_size(global_batch_size)
    replicas_per_pipeline = ctx.num_replicas_in_sync // ctx.num_input_pipelines
    ds = stream.batch(replica_batch * replicas_per_pipeline, drop_remainder=True)
    ds = ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id).rebatch(replica_batch, drop_remainder=True)
    ds = ds.map(_preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    options.deterministic = deterministic
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


def _shuffled_pass(examples: tf.data.Dataset, seed: int, pass_index: tf.Tensor, window: int) -> tf.data.Dataset:
    """One pass over `examples`, permuted within windows of `window` examples.

    The permutation is stateless (a function of `(seed, pass_index)` only), so any pass can
    be rebuilt without replaying the ones before it. With `window` >= the data set size this
    is a full shuffle; otherwise it mixes as locally as a shuffle buffer of that size.
    """
    def permute(*window_tensors):
        n = tf.shape(tf.nest.flatten(window_tensors)[0])[0]
        keys = tf.random.stateless_uniform([n], seed=tf.stack([tf.constant(seed, tf.int64), pass_index]))
        order = tf.argsort(keys)
        return tf.nest.map_structure(lambda t: tf.gather(t, order), window_tensors)

    return examples.batch(window).map(permute).unbatch()


class TrainInput:
    """Training batches: a seeded stream, reshuffled every pass, endless, that can start anywhere.

    Called as `input(ctx, start_step)` by the trainer: the stream resumes at the example
    `start_step * global_batch_size` without replaying earlier passes over the data. With
    `micro_batches=A` (gradient accumulation) it yields micro-batches of `global_batch_size / A`
    cut from the same stream, so update `u` sees the examples it sees with A=1, and every layout
    sees the same global micro-batch at every micro-step.
    """

    def __init__(self, examples: ExamplesFn, num_examples: int, global_batch_size: int, *,
                 seed: int = 0, shuffle_window: int = 10_000):
        if num_examples < global_batch_size:
            raise UsageError(f"is {global_batch_size}, more than the {num_examples} examples of the training split; "
                             "use a smaller batch", argument="global_batch_size")
        self.examples, self.num_examples = examples, num_examples
        self.global_batch_size, self.seed, self.shuffle_window = global_batch_size, seed, shuffle_window

    @property
    def steps_per_pass(self) -> int:
        return self.num_examples // self.global_batch_size

    def describe(self) -> dict[str, int]:
        """What fixes the order of the examples (recorded with a run; a resume must not change it).
        The global batch is recorded by the trainer."""
        return {"num_examples": self.num_examples, "seed": self.seed, "shuffle_window": self.shuffle_window}

    def __call__(self, ctx: tf.distribute.InputContext, start_step: int = 0,
                 micro_batches: int = 1) -> tf.data.Dataset:
        first_pass, offset = divmod(start_step * self.global_batch_size, self.num_examples)
        examples = self.examples()
        passes = tf.data.Dataset.range(first_pass, np.iinfo(np.int64).max)
        stream = passes.flat_map(lambda p: _shuffled_pass(examples, self.seed, p, self.shuffle_window))
        return _distribute(stream.skip(offset), self.global_batch_size // micro_batches, ctx)


class EvalInput:
    """Evaluation batches covering every example exactly once, padded with zero-weight examples
    to whole global batches so every replica and worker runs the same number of steps.

    Examples are `(features, label)` or `(features, label, sample_weight)`; the batches always
    carry a weight (1.0 when the examples have none, 0.0 for padding). Padding does not count
    in any mean, nor does a real example of weight 0 in the loss's.
    """

    def __init__(self, examples: ExamplesFn, num_examples: int, global_batch_size: int):
        if num_examples < 1:
            raise UsageError("the evaluation split is empty")
        self.examples, self.num_examples, self.global_batch_size = examples, num_examples, global_batch_size
        self.steps = -(-num_examples // global_batch_size)

    def __call__(self, ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        examples = self.examples()
        if len(examples.element_spec) == 3:
            weighted = examples.map(lambda x, y, w: (x, y, tf.cast(w, tf.float32)))
        else:
            weighted = examples.map(lambda x, y: (x, y, tf.constant(1.0)))
        padding = weighted.take(1).map(lambda x, y, w: (tf.zeros_like(x), tf.zeros_like(y), tf.zeros_like(w)))
        stream = weighted.concatenate(padding.repeat(self.steps * self.global_batch_size - self.num_examples))
        return _distribute(stream, self.global_batch_size, ctx)


def accepts(dataset_fn: DatasetFn, keyword: str) -> bool:
    """True when a dataset function takes `keyword` (`start_step`, `micro_batches`: see `TrainInput`)."""
    try:
        return keyword in inspect.signature(dataset_fn).parameters
    except (TypeError, ValueError):
        return False


def training_input(dataset_fn: DatasetFn, start_step: int = 0, micro_batches: int = 1) -> DatasetFn:
    """`dataset_fn` as the trainer reads it: from update `start_step` on, one element per micro-batch.

    A function without `start_step` is skipped past the consumed batches. With `micro_batches=A` > 1
    one without `micro_batches` gets a context with A times the replicas: batching with
    `ctx.get_per_replica_batch_size(global_batch_size)` then cuts the same examples into micro-batches.
    """
    def fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        kwargs, per_pipeline = {}, ctx.num_replicas_in_sync // ctx.num_input_pipelines
        if micro_batches > 1 and accepts(dataset_fn, "micro_batches"):
            kwargs["micro_batches"] = micro_batches
        elif micro_batches > 1:
            ctx = tf.distribute.InputContext(ctx.num_input_pipelines, ctx.input_pipeline_id,
                                             ctx.num_replicas_in_sync * micro_batches)
        if accepts(dataset_fn, "start_step"):
            return dataset_fn(ctx, start_step=start_step, **kwargs)
        return dataset_fn(ctx, **kwargs).skip(start_step * micro_batches * per_pipeline)

    return fn


def _wait_for_chief(key: str, timeout_s: float) -> None:
    """Blocks a non-chief worker until the chief has published `key` through the coordination service."""
    try:
        status = tf_compat.read_published(key, timeout_s)
    except Exception as e:  # a deadline, or a lost coordination service
        raise SetupError(f"timed out after {timeout_s:.0f}s waiting for the chief to prepare the data set "
                         f"({type(e).__name__}); check the chief's log") from None
    if status != "ok":
        raise SetupError(f"the chief failed to prepare the data set: {status}")


def _builder(name: str, data_dir: str | None) -> tuple[tfds.core.DatasetBuilder, bool]:
    """The data set's builder and whether it is prepared; a data_dir that cannot be read is one line."""
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        return builder, builder.is_prepared()
    except tfds.core.registered.DatasetNotFoundError:
        raise UsageError(f"unknown data set {name!r}: use {DEFAULT_DATASET} (offline), {SYNTHETIC}, "
                         "or a TFDS catalog name (see tfds.list_builders())") from None
    except (OSError, RuntimeError, tf.errors.OpError) as e:  # TFDS wraps unreachable storage in a RuntimeError
        raise storage.failure(f"read the data set {name!r} in", data_dir or "TFDS's data directory", e) from None


def _prepare(name: str, data_dir: str | None, download: bool) -> tfds.core.DatasetBuilder:
    builder, prepared = _builder(name, data_dir)
    if prepared:
        return builder
    if not (download or isinstance(builder, digits.Digits)):
        raise SetupError(f"data set {name!r} is not prepared in {builder.data_dir_root}; prepare it with "
                         f"`tfds build {name} --data_dir={builder.data_dir_root}` on a machine with network "
                         f"access, or let TFDS download it (--download_data, download=True), or use the "
                         f"{DEFAULT_DATASET} data set")
    root = str(builder.data_dir_root)  # (an epath.Path)
    offline = isinstance(builder, digits.Digits)
    if offline:  # TFDS's own lines ("Downloading and preparing dataset Unknown size", in ANSI bold) would mislead
        log.info("Building %s (%s, offline) in %s", name, digits.SIZE, root)
    else:
        log.info("Preparing TFDS data set %s into %s", name, root)
    try:
        with tf_compat.few_download_retries(), _quiet_retries(), _quiet_stdout(offline):
            builder.download_and_prepare()
    except Exception as e:  # a download or a build fails in the library's many ways: say which, in one line
        _remove_partial_files(root, name)
        raise _preparation_error(name, root, e) from None
    return builder


@contextlib.contextmanager
def _quiet_stdout(quiet: bool) -> Iterator[None]:
    """Keeps TFDS's printed lines about a download off stdout when there is no download."""
    if not quiet:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


@contextlib.contextmanager
def _quiet_retries() -> Iterator[None]:
    """urllib3 logs each retry of each file (8 lines for mnist without network); the outcome says what matters."""
    logger = logging.getLogger("urllib3.connectionpool")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _preparation_error(name: str, root: str, error: Exception) -> Exception:
    """One line for a failed `download_and_prepare`: no network, a data_dir that cannot be written, or else."""
    import requests  # TFDS's own HTTP client

    if isinstance(error, (SetupError, UsageError)):
        return error
    if isinstance(error, requests.exceptions.RequestException):
        host = urlparse(getattr(error.request, "url", "") or "").netloc or "its download server"
        return SetupError(f"cannot download data set {name!r}: {host} is unreachable ({type(error).__name__}); run "
                          f"where the network reaches it, or prepare the data set elsewhere (`tfds build {name}`) and "
                          f"copy it into {root}")
    if isinstance(error, (OSError, tf.errors.OpError)):
        return storage.failure(f"prepare the data set {name!r} in", root, error)
    return SetupError(f"cannot prepare data set {name!r} in {root}: {type(error).__name__}: {storage.cause(error)}")


def _remove_partial_files(root: str, name: str) -> None:
    """Deletes what a failed download or build left: TFDS's `*.tmp.*` downloads and `incomplete.*` directories."""
    for pattern in (f"{root}/downloads/*.tmp.*", f"{root}/downloads/*/*.tmp.*", f"{root}/downloads/*/*/*.tmp.*",
                    f"{root}/{name}/incomplete.*", f"{root}/{name}/*/incomplete.*"):
        try:
            leftovers = tf.io.gfile.glob(pattern)
        except tf.errors.OpError:
            continue
        for path in leftovers:
            storage.remove_quietly(path)


def prepare_tfds(name: str, data_dir: str | None = None, *, download: bool = False, is_chief: bool = True,
                 num_workers: int = 1, timeout_s: float = 3600.0) -> tfds.core.DatasetBuilder:
    """Returns the prepared builder, preparing it at most once per job.

    In a multi-worker job the chief prepares first while the others wait for its word
    through the coordination service; then a worker whose data_dir is not shared with the
    chief's (a local disk) prepares its own copy.
    """
    if num_workers == 1:
        return _prepare(name, data_dir, download)
    key = f"harness/data_prepared/{name}/{data_dir}"
    if is_chief:
        try:
            builder = _prepare(name, data_dir, download)
        except Exception as e:
            tf_compat.publish(key, f"{type(e).__name__}: {e}")
            raise
        tf_compat.publish(key, "ok")
        return builder
    _wait_for_chief(key, timeout_s)
    return _prepare(name, data_dir, download)


def _split_sizes(builder: tfds.core.DatasetBuilder) -> dict[str, int]:
    """Example counts per split, from the metadata; counted when a builder has none (mocked data)."""
    if builder.info.splits:
        return {name: split.num_examples for name, split in builder.info.splits.items()}
    sizes = {}
    for name in ("train", "validation", "test"):
        try:
            sizes[name] = int(builder.as_dataset(split=name).reduce(0, lambda n, _: n + 1))
        except (ValueError, KeyError, tf.errors.OpError):
            continue
    return sizes


def tfds_source(builder: tfds.core.DatasetBuilder) -> DataSource:
    """A `DataSource` over a prepared TFDS builder with supervised keys (features, label)."""
    info = builder.info
    if not info.supervised_keys:
        raise UsageError(f"data set {info.name!r} has no supervised (features, label) keys; the harness "
                         "trains classifiers on supervised data sets such as digits or mnist")
    feature_key, label_key = info.supervised_keys
    sizes = _split_sizes(builder)
    if "train" not in sizes:
        raise UsageError(f"data set {info.name!r} has no 'train' split")
    eval_split = next((s for s in ("validation", "test") if s in sizes), None)

    def examples(split):
        read_config = tfds.ReadConfig(shuffle_seed=0, interleave_cycle_length=1)
        return lambda: builder.as_dataset(split=split, as_supervised=True, shuffle_files=False,
                                          read_config=read_config)

    return DataSource(
        name=info.name,
        train_examples=examples("train"),
        eval_examples=examples(eval_split) if eval_split else None,
        num_train_examples=sizes["train"],
        num_eval_examples=sizes.get(eval_split, 0),
        input_shape=tuple(info.features[feature_key].shape),
        num_classes=info.features[label_key].num_classes,
    )


def synthetic_source(*, input_shape: tuple[int, ...] = (8, 8, 1), num_classes: int = 10,
                     num_train_examples: int = 4096, num_eval_examples: int = 512, seed: int = 0) -> DataSource:
    """An in-memory, learnable synthetic data set (labels are a fixed linear function of the inputs)."""
    rng = np.random.default_rng(seed)
    projection = rng.normal(size=(int(np.prod(input_shape)), num_classes)).astype(np.float32)

    def make(n, split_seed):
        x = np.random.default_rng(split_seed).normal(size=(n, *input_shape)).astype(np.float32)
        y = np.argmax(x.reshape(n, -1) @ projection, axis=1).astype(np.int32)
        return lambda: tf.data.Dataset.from_tensor_slices((x, y))

    return DataSource(SYNTHETIC, make(num_train_examples, seed + 1), make(num_eval_examples, seed + 2),
                      num_train_examples, num_eval_examples, tuple(input_shape), num_classes)


def load_source(name: str = DEFAULT_DATASET, data_dir: str | None = None, *, download: bool = False,
                is_chief: bool = True, num_workers: int = 1) -> DataSource:
    """The `DataSource` for `--dataset`: `synthetic`, `digits` (built offline) or a TFDS name."""
    if name == SYNTHETIC:
        return synthetic_source()
    tfds.disable_progress_bar()
    return tfds_source(prepare_tfds(name, data_dir, download=download, is_chief=is_chief,
                                    num_workers=num_workers))
