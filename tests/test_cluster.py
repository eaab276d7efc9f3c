"""TF_CONFIG validation: each malformed config fails with one line that names the fix."""

import json

import pytest

from harness import UsageError, parse_tf_config


def cfg(cluster, task):
    return json.dumps({"cluster": cluster, "task": task})


TWO = {"worker": ["127.0.0.1:2001", "127.0.0.1:2002"]}


@pytest.mark.parametrize("raw, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    (json.dumps({"task": {"type": "worker", "index": 0}}), "no 'cluster'"),
    (json.dumps({"cluster": TWO}), "no 'task'"),
    (cfg({**TWO, "ps": ["127.0.0.1:2003"]}, {"type": "worker", "index": 0}), "'ps' job"),
    (cfg(TWO, {"type": "evaluator", "index": 0}), "task type 'evaluator' is unknown"),
    (cfg(TWO, {"type": "chief", "index": 0}), "task type 'chief' has no entry"),
    (cfg(TWO, {"type": "worker", "index": 2}), "index 2 is out of range"),
    (cfg(TWO, {"type": "worker", "index": -1}), "out of range"),
    (cfg(TWO, {"type": "worker", "index": "0"}), "not an integer"),
    (cfg({"worker": ["127.0.0.1:2001", "127.0.0.1:2001"]}, {"type": "worker", "index": 0}), "more than once"),
    (cfg({"worker": ["127.0.0.1"]}, {"type": "worker", "index": 0}), "host:port"),
    (cfg({"worker": ["127.0.0.1:99999"]}, {"type": "worker", "index": 0}), "1..65535"),
    (cfg({"worker": []}, {"type": "worker", "index": 0}), "non-empty list"),
    (cfg({"chief": ["a:1", "b:2"], "worker": ["c:3"]}, {"type": "chief", "index": 0}), "at most one chief"),
    (cfg({"master": ["a:1"], "chief": ["b:2"]}, {"type": "chief", "index": 0}), "both 'master' and 'chief'"),
])
def test_bad_tf_config_fails_with_one_clear_line(raw, message):
    with pytest.raises(UsageError, match=message) as e:
        parse_tf_config(raw)
    assert "\n" not in str(e.value)
    assert "expected e.g." in str(e.value)


def test_master_is_mapped_to_chief():
    config = parse_tf_config(cfg({"master": ["a:1"], "worker": ["b:2"]}, {"type": "master", "index": 0}))
    assert config["cluster"] == {"chief": ["a:1"], "worker": ["b:2"]}
    assert config["task"] == {"type": "chief", "index": 0}


def test_valid_config_passes_through():
    config = parse_tf_config(cfg(TWO, {"type": "worker", "index": 1}))
    assert config["cluster"] == TWO and config["task"]["index"] == 1
