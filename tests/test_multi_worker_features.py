"""Step-wise validation, rollback and stock Keras callbacks on a real 2-worker cluster (processes on 127.0.0.1):
every worker validates, rolls back and stops at the same step."""

import io
import json
import math
import os
import sys

import pytest

from harness.launch import launch
from tests.conftest import ROOT

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]


def test_validation_rollback_and_keras_callbacks_on_two_workers(tmp_path, data_dir):
    out = io.StringIO()
    code = launch([sys.executable, os.path.join(ROOT, "tests/multi_worker_features_job.py"), str(tmp_path), data_dir],
                  num_workers=2, out=out, env={"TF_CPP_MIN_LOG_LEVEL": "2"})
    assert code == 0, out.getvalue()[-4000:]
    results = {}
    for line in out.getvalue().splitlines():
        if "RESULT " in line:
            r = json.loads(line.split("RESULT ", 1)[1])
            results[(r.pop("phase"), r.pop("worker"))] = r
    both = {phase: (results[(phase, 0)], results[(phase, 1)]) for phase, _ in results}
    for phase, (chief, other) in both.items():
        assert chief == other, phase  # the same steps, decisions, validations and weights on both workers
    # N=7 over 60 steps: at 7, 14, ..., 56 and the epoch ends, with no deadlock.
    assert both["validation"][0]["validations"] == [7, 14, 20, 21, 28, 35, 40, 42, 49, 56, 60]
    # Early stopping on step-wise validation: both stop at the step of the fourth validation.
    assert both["val_early"][0]["step"] == 21
    assert both["val_early"][0]["stop_reason"].startswith("early stopping: val_loss did not improve for 2 validations")
    # A NaN in worker 1's data only: both roll back to ckpt-8 and finish with finite weights.
    rollback = both["rollback"][0]
    assert rollback["step"] == 30 and rollback["finite"] and math.isfinite(rollback["weights"])
    assert [(r["step"], r["restored"], r["skipped"]) for r in rollback["rollbacks"]] == [(10, 8, [8, 10])]
    # A Keras callback sets stop_training on worker 1 only (batch index 5 of epoch 2): both stop at step 16.
    assert both["keras_stop"][0]["step"] == 16
    assert both["keras_stop"][0]["stop_reason"] == "keras StopOnWorker set model.stop_training (epoch 2, step 16)"
