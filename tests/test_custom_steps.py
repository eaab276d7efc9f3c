"""The README's custom train steps make one exact update on 1 or N replicas (and, in
tests/multi_worker_job.py, on a 2-worker cluster): an already-reduced gradient is applied once."""

import inspect
import os
import re

import numpy as np
import pytest

from harness import TrainInput
from tests import custom_steps
from tests.conftest import ROOT, make_trainer, strategy

EXAMPLES = [custom_steps.ClippedTrainer, custom_steps.PenalisedTrainer]


def one_step(trainer_cls, name, replicas, digits):
    trainer = make_trainer(strategy(name, replicas), digits, trainer_cls=trainer_cls, learning_rate=0.5)
    trainer.fit(TrainInput(digits.train_examples, digits.num_train_examples, 32), epochs=1, steps_per_epoch=1)
    return trainer.model.get_weights(), trainer.history.history["loss"][0]


@pytest.mark.parametrize("trainer_cls", EXAMPLES, ids=lambda c: c.__name__)
@pytest.mark.slow
def test_one_step_is_the_same_on_one_and_two_replicas(digits, trainer_cls):
    reference, reference_loss = one_step(trainer_cls, "default", None, digits)
    initial = make_trainer(strategy("default"), digits).model.get_weights()
    assert max(np.abs(a - b).max() for a, b in zip(reference, initial)) > 1e-3  # the step moved the weights
    weights, loss = one_step(trainer_cls, "mirrored", 2, digits)
    for a, b in zip(weights, reference):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert loss == pytest.approx(reference_loss, rel=1e-6)


def code_blocks(text):
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("trainer_cls", EXAMPLES, ids=lambda c: c.__name__)
def test_the_readme_shows_the_tested_code(trainer_cls):
    source = inspect.getsource(trainer_cls)
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert any(source.strip() in block for block in code_blocks(readme)), trainer_cls.__name__
