"""The custom train steps the README documents, verbatim (tests/test_custom_steps.py checks that they match)."""

import tensorflow as tf

import harness


class ClippedTrainer(harness.Trainer):
    def train_step(self, batch):
        features, labels = batch
        with tf.GradientTape() as tape:
            logits = self.model(features, training=True)
            per_example_loss = self.loss(labels, logits)
            loss = self.compute_loss(per_example_loss)          # / global batch, + scaled regularisation
        grads = tape.gradient(loss, self.model.trainable_variables)
        grads = self.all_reduce_gradients(grads)                # the global gradient, the same on every replica
        grads, _ = tf.clip_by_global_norm(grads, 1.0)
        self.apply_gradients(grads, already_reduced=True)       # applied once, not summed again
        self.update_metrics(self.train_metrics, labels, logits, per_example_loss, None)


class PenalisedTrainer(harness.Trainer):
    def train_step(self, batch):
        features, labels = batch
        with tf.GradientTape() as tape:
            logits = self.model(features, training=True)
            per_example_loss = self.loss(labels, logits) + 1e-3 * tf.reduce_sum(tf.square(logits), axis=-1)
            loss = self.compute_loss(per_example_loss)
        grads = tape.gradient(loss, self.model.trainable_variables)
        self.apply_gradients(grads)                             # this replica's gradients: summed across replicas
        self.update_metrics(self.train_metrics, labels, logits, per_example_loss, None)
