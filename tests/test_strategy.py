"""Strategy construction on CPU, and the clear errors where a strategy cannot be built."""

import time

import pytest

from harness import ClusterInfo, SetupError, TrainInput, UsageError, build_strategy, configure_cpu_devices
from tests.conftest import NUM_CPU_DEVICES, make_trainer


@pytest.mark.parametrize("name, replicas, expected", [
    ("default", None, 1), ("one_device", None, 1), ("mirrored", 2, 2), ("mirrored", 4, 4), ("mirrored", None, 4),
])
def test_strategies_have_the_expected_replicas(name, replicas, expected):
    strategy = build_strategy(name, num_cpu_devices=replicas)
    info = ClusterInfo.from_strategy(strategy)
    assert (info.num_replicas, info.num_workers, info.worker_index, info.is_chief) == (expected, 1, 0, True)


def test_unknown_strategy_names_the_choices():
    with pytest.raises(UsageError, match="choose one of default, one_device, mirrored"):
        build_strategy("horovod")


def test_cannot_grow_cpu_split_after_tensorflow_started():
    assert configure_cpu_devices(2) == NUM_CPU_DEVICES  # already split in 4: fine
    with pytest.raises(UsageError, match="already initialised"):
        configure_cpu_devices(8)
    with pytest.raises(UsageError, match=">= 1"):
        configure_cpu_devices(0)


def test_multi_worker_without_tf_config_says_how(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(UsageError, match="needs a cluster: set TF_CONFIG.*launch_local.py"):
        build_strategy("multi_worker_mirrored")


def test_tpu_without_name_is_a_usage_error():
    with pytest.raises(UsageError, match="tpu needs a TPU"):
        build_strategy("tpu")


def test_tpu_local_without_tpu_fails_clearly():
    with pytest.raises(SetupError, match=r"no TPU found for --tpu=local .*pick another --strategy") as e:
        build_strategy("tpu", tpu="local")
    assert "\n" not in str(e.value)


def test_unreachable_tpu_address_fails_fast():
    start = time.monotonic()
    with pytest.raises(SetupError, match="cannot reach the TPU at grpc://127.0.0.1:1"):
        build_strategy("tpu", tpu="grpc://127.0.0.1:1")
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("name", ["default", "one_device"])
@pytest.mark.slow
def test_tpu_code_path_compiles_with_xla_on_cpu(digits, name):
    """What runs on a TPU is XLA-compiled: the same step compiles and trains with jit_compile on CPU."""
    trainer = make_trainer(build_strategy(name), digits, jit_compile=True)
    data = TrainInput(digits.train_examples, digits.num_train_examples, 32)
    history = trainer.fit(data, epochs=2, steps_per_epoch=20)
    assert history.history["loss"][1] < history.history["loss"][0]
    assert trainer.train_loop_traces == 1


def test_xla_on_several_logical_cpus_is_refused_clearly(digits):
    with pytest.raises(UsageError, match="jit_compile cannot run several replicas on logical CPU"):
        make_trainer(build_strategy("mirrored", num_cpu_devices=2), digits, jit_compile=True)


@pytest.mark.parametrize("name, replicas", [("default", None), ("mirrored", 2)])
def test_inputs_on_cpu_replicas_are_not_fetched_to_a_device(name, replicas):
    """Fetching to a device makes per-device tf.data iterators whose deletion waited up to a minute (harness.strategy
    .input_options): the pause between the last epoch and `Done:`; on CPUs it copies nothing."""
    from harness.strategy import input_options
    from tests.conftest import strategy as make_strategy

    assert input_options(make_strategy(name, replicas)).experimental_fetch_to_device is False
