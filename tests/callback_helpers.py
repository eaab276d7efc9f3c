"""Small pieces shared by the callback tests."""

from callbacks import Callback
from harness import EvalInput, TrainInput
from tests.conftest import make_trainer, strategy


class InjectMonitor(Callback):
    """Replaces a metric in the epoch logs with a scripted sequence (so a test controls what callbacks see)."""

    def __init__(self, name, values):
        self.name, self.values = name, list(values)

    def on_epoch_end(self, epoch, logs=None):
        logs[self.name] = self.values[epoch]


class RecordLearningRate(Callback):
    """The learning rate in effect at the start of each epoch, after any change at the previous epoch's end."""

    def __init__(self):
        self.rates = []

    def on_epoch_begin(self, epoch, logs=None):
        self.rates.append(self.context.learning_rate)


def fit(source, callbacks=(), *, epochs=3, steps_per_epoch=10, replicas=2, validation=True, model_dir=None,
        **trainer_kwargs):
    """A short run on `mirrored` with `replicas` logical CPUs; returns the trainer."""
    trainer = make_trainer(strategy("mirrored", replicas), source, model_dir=model_dir, **trainer_kwargs)
    evaluation = EvalInput(source.eval_examples, source.num_eval_examples, trainer.global_batch_size)
    trainer.fit(TrainInput(source.train_examples, source.num_train_examples, trainer.global_batch_size),
                epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=list(callbacks),
                validation_data=evaluation if validation else None,
                validation_steps=evaluation.steps if validation else None)
    return trainer
