"""Export at the end of training, on the chief: a SavedModel for serving and a `.keras` file."""

from __future__ import annotations

import keras
import tensorflow as tf

from harness.checkpointing import save_keras_model


def export_model(model: keras.Model, export_dir: str, *, is_chief: bool) -> dict[str, str]:
    """Writes `<export_dir>/saved_model` (a `serve` signature, for TF Serving or `tf.saved_model.load`)
    and `<export_dir>/model.keras` (for `keras.models.load_model`). A no-op except on the chief."""
    if not is_chief:
        return {}
    tf.io.gfile.makedirs(export_dir)
    saved_model = f"{export_dir}/saved_model"
    if tf.io.gfile.exists(saved_model):
        tf.io.gfile.rmtree(saved_model)
    model.export(saved_model, format="tf_saved_model", verbose=False)
    return {"saved_model": saved_model,
            "keras": save_keras_model(model, f"{export_dir}/model.keras", is_chief=True)}
