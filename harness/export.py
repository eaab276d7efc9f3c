"""Export at the end of training, on the chief: a SavedModel for serving and a `.keras` file."""

from __future__ import annotations

import keras
import tensorflow as tf

from harness import storage
from harness.model_saving import save_keras_model


def export_model(model: keras.Model, export_dir: str, *, is_chief: bool) -> dict[str, str]:
    """Writes `<export_dir>/saved_model` (a `serve` signature, for TF Serving or `tf.saved_model.load`)
    and `<export_dir>/model.keras` (for `keras.models.load_model`). A no-op except on the chief.

    The SavedModel is written beside the old one and swapped in, so a failed export keeps it.
    """
    if not is_chief:
        return {}
    storage.makedirs(export_dir)
    saved_model, temp = f"{export_dir}/saved_model", f"{export_dir}/saved_model.tmp"
    storage.remove_quietly(temp)
    try:
        with storage.failing_as_storage_error("export a SavedModel to", saved_model):
            model.export(temp, format="tf_saved_model", verbose=False)
            storage.remove_quietly(saved_model)
            tf.io.gfile.rename(temp, saved_model)
    finally:
        storage.remove_quietly(temp)
    return {"saved_model": saved_model, "keras": save_keras_model(model, f"{export_dir}/model.keras", is_chief=True)}
