"""Input pipelines: per-replica batches, disjoint shards, layout independence, exact resume,
evaluation coverage, and TFDS catalog data sets (offline, through tfds.testing.mock_data)."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from harness import EvalInput, SetupError, TrainInput, UsageError, load_source, per_replica_batch_size
from tests.conftest import make_trainer, strategy

N, G = 100, 8  # examples in the toy set (ids 0..99), global batch


def ids():
    return tf.data.Dataset.range(N).map(lambda i: (tf.fill([1], tf.cast(i, tf.float32)), i % 10))


def batches(dataset, count):
    return [x[..., 0].numpy().astype(int).tolist() for x, *_ in dataset.take(count)]


def global_batches(input_fn, pipelines, replicas, steps, **kwargs):
    """Reassembles the global batch of each step from every pipeline's per-replica batches."""
    per_pipeline = replicas // pipelines
    streams = [batches(input_fn(tf.distribute.InputContext(pipelines, p, replicas), **kwargs), steps * per_pipeline)
               for p in range(pipelines)]
    return [sum((streams[p][t * per_pipeline + r] for p in range(pipelines) for r in range(per_pipeline)), [])
            for t in range(steps)]


def test_indivisible_global_batch_is_a_clear_error():
    assert per_replica_batch_size(64, 4) == 16
    with pytest.raises(UsageError, match="does not split evenly over 3 replicas; use a multiple of 3, e.g. 63 or 66"):
        per_replica_batch_size(64, 3)


@pytest.mark.parametrize("pipelines, replicas", [(1, 2), (2, 2), (2, 4), (4, 4)])
@pytest.mark.slow
def test_every_layout_sees_the_same_global_batches(pipelines, replicas):
    train = TrainInput(ids, N, G, seed=3)
    reference = global_batches(train, 1, 1, steps=30)
    assert global_batches(train, pipelines, replicas, steps=30) == reference


def test_pipelines_read_disjoint_shards():
    train = TrainInput(ids, N, G, seed=3)
    steps = N // G  # one pass
    shards = [set(sum(batches(train(tf.distribute.InputContext(2, p, 2)), steps), [])) for p in range(2)]
    assert shards[0] and shards[1] and not shards[0] & shards[1]
    assert len(shards[0]) + len(shards[1]) == steps * G


def test_each_pass_is_a_fresh_permutation_reproducible_from_the_seed():
    stream = sum(batches(TrainInput(ids, N, N, seed=5)(tf.distribute.InputContext()), 3), [])
    passes = [stream[i * N:(i + 1) * N] for i in range(3)]
    assert all(sorted(p) == list(range(N)) for p in passes)
    assert passes[0] != passes[1] != passes[2]
    again = sum(batches(TrainInput(ids, N, N, seed=5)(tf.distribute.InputContext()), 3), [])
    other_seed = sum(batches(TrainInput(ids, N, N, seed=6)(tf.distribute.InputContext()), 1), [])
    assert again == stream and other_seed != passes[0]


@pytest.mark.parametrize("start_step", [1, 12, 13, 37])  # 12.5 steps per pass: resume inside and across passes
@pytest.mark.slow
def test_resuming_mid_stream_sees_exactly_the_remaining_batches(start_step):
    train = TrainInput(ids, N, G, seed=3)
    full = global_batches(train, 2, 2, steps=start_step + 5)
    assert global_batches(train, 2, 2, steps=5, start_step=start_step) == full[start_step:]


def test_evaluation_covers_every_example_once_with_zero_weight_padding():
    evaluation = EvalInput(ids, N, 24)  # 100 examples -> 5 steps of 24, 20 padding examples
    assert evaluation.steps == 5
    seen, weights = [], []
    for p in range(2):
        ds = evaluation(tf.distribute.InputContext(2, p, 4))
        elements = list(ds)
        assert len(elements) == evaluation.steps * 2  # same number of batches on every pipeline
        for x, _, w in elements:
            seen += x[..., 0].numpy().astype(int)[w.numpy() > 0].tolist()
            weights += w.numpy().tolist()
    assert sorted(seen) == list(range(N))
    assert sum(weights) == N and len(weights) == 5 * 24


def test_unknown_data_set_names_the_choices(tmp_path):
    with pytest.raises(UsageError, match="unknown data set 'no_such_data'.*digits"):
        load_source("no_such_data", str(tmp_path))


def test_catalog_data_set_not_prepared_says_how_to_prepare(tmp_path):
    with pytest.raises(SetupError, match=r"'mnist' is not prepared .*tfds build mnist --data_dir=.*--download_data"):
        load_source("mnist", str(tmp_path))


def test_digits_is_a_real_prepared_tfds_data_set(digits, data_dir):
    builder = tfds.builder("digits", data_dir=data_dir)
    assert builder.is_prepared()
    assert (digits.num_train_examples, digits.num_eval_examples) == (1500, 297)
    assert digits.input_shape == (8, 8, 1) and digits.num_classes == 10
    labels = [int(y) for _, y in digits.train_examples()]
    assert sorted(set(labels)) == list(range(10))


def test_catalog_data_set_trains_through_mock_data():
    with tfds.testing.mock_data(num_examples=64):
        source = load_source("mnist", download=True)  # mock_data turns the download into a no-op
        assert source.input_shape == (28, 28, 1) and source.num_classes == 10
        trainer = make_trainer(strategy("mirrored", 2), source, global_batch_size=16)
        train = TrainInput(source.train_examples, 64, 16)
        history = trainer.fit(train, epochs=1, steps_per_epoch=4)
    assert np.isfinite(history.history["loss"][0])
