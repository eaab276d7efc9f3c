"""A training job whose checkpoints are large (~100 MB) and frequent, so a test can kill it mid-save.

With `--resume_only` it restores the newest complete checkpoint and prints `RESUMED <step>`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras
import numpy as np
import tensorflow as tf
from absl import logging

import harness


def main(model_dir, *flags):
    logging.set_verbosity(logging.WARNING)
    strategy = harness.build_strategy("default")
    with strategy.scope():
        model = keras.Sequential([keras.Input((5000,)), keras.layers.Dense(5000), keras.layers.Dense(10)])
        optimizer = keras.optimizers.SGD(1e-4)
    trainer = harness.Trainer(strategy, model, optimizer,
                              keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None),
                              global_batch_size=8, model_dir=model_dir, checkpoint_every_n_steps=1,
                              checkpoint_max_to_keep=2)
    data = lambda ctx: tf.data.Dataset.from_tensors((np.ones([8, 5000], np.float32), np.zeros([8], np.int32))).repeat()
    epochs = int(trainer.checkpointer.candidates()[0].rsplit("-", 1)[1]) if "--resume_only" in flags else 1000
    trainer.fit(data, epochs=max(epochs, 1), steps_per_epoch=1)
    print(f"RESUMED {trainer.global_step}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
