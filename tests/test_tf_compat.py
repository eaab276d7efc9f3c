"""Canaries for harness/tf_compat.py: each upstream behaviour it works around still happens without
the workaround, and not with it. When a canary fails because upstream fixed the problem, delete the
workaround (and its canary); when it fails because the private API changed, update tf_compat.py."""

import json
import os

import pytest

from tests.conftest import run_script

pytestmark = pytest.mark.slow  # one TensorFlow subprocess: a failed collective must not touch the test process


@pytest.fixture(scope="module")
def canaries():
    result = run_script(os.path.join("tests", "tf_compat_canaries.py"), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return {c["name"]: c for c in (json.loads(line.split("CANARY ", 1)[1]) for line in result.stdout.splitlines()
                                    if line.startswith("CANARY "))}


def test_autograph_rewraps_errors_unless_marked(canaries):
    assert canaries["autograph_pass_through"] == {"name": "autograph_pass_through", "without": True,
                                                  "with_marker": True}


def test_keras_variables_break_the_second_async_save_unless_patched(canaries):
    outcome = canaries["async_checkpoint_copies"]
    assert outcome["without"] is not None and outcome["with_workaround"] is None


def test_a_failed_async_save_is_silent_at_sync_unless_raised(canaries):
    outcome = canaries["async_checkpoint_errors"]
    assert outcome["without"] is None and outcome["with_workaround"] is not None


def test_tfds_retries_each_download_ten_times_unless_told_fewer(canaries):
    assert canaries["tfds_download_retries"] == {"name": "tfds_download_retries", "default": 10, "during": 3,
                                                 "read_per_request": True}


def test_keras_optimizers_sum_gradients_across_replicas_unless_told_they_are_reduced(canaries):
    outcome = canaries["gradients_already_reduced"]
    assert (outcome["without"], outcome["with_workaround"]) == (-2.0, -1.0)  # lr 1, gradient 1 on each of 2 replicas


def test_two_stock_mirrored_strategies_collide_in_one_process_unless_keyed_apart(canaries):
    outcome = canaries["mirrored_strategy_keys"]
    assert "Shape mismatch in the collective instance" in outcome["without"] and outcome["with_workaround"] is None


def test_the_private_apis_have_the_signatures_tf_compat_calls(canaries):
    signatures = canaries["private_signatures"]["signatures"]
    assert signatures["CollectiveAllReduceExtended.__init__"][:4] == ["self", "container_strategy", "cluster_resolver",
                                                                      "communication_options"]
    assert signatures["CollectiveAllReduceExtended._initialize_local_devices"] == ["self", "cluster_resolver",
                                                                                   "worker_device"]
    assert {"service_type", "service_leader", "cluster_register_timeout_in_ms", "heartbeat_timeout_in_ms",
            "coordinated_jobs"} <= set(signatures["Context.configure_coordination_service"])
    assert signatures["Context.set_config_key_value"] == ["self", "key", "value"]
    assert signatures["Context.get_config_key_value"] == ["self", "key", "timeout_in_ms"]
    assert signatures["Context.report_error_to_cluster"] == ["self", "error_code", "error_message"]
    assert signatures["MirroredStrategy has _collective_key_base"]

