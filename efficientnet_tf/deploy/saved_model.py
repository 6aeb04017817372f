"""The SavedModel of a trained model, and the plain float SavedModel the TFLite and ONNX
converters read.

The SavedModel takes float images 0..255 at the model's size (`serving_default`) or encoded
JPEG/PNG bytes (`serving_bytes`, decoded, cropped and resized in the graph exactly as the eval
pipeline does), and returns probabilities plus the top-k class ids and names.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

import keras
import tensorflow as tf

from efficientnet_tf.deploy.serving import SIGNATURE_BYTES, SIGNATURE_IMAGES, ServingModule
from efficientnet_tf.files import replace_directory
from efficientnet_tf.models.functional import functional_model

log = logging.getLogger(__name__)


def export_saved_model(model: keras.Model, export_dir: str, class_names: Sequence[str], image_size: int,
                       top_k: int = 5, crop_padding: int = 32, metadata: dict | None = None,
                       logits: bool = True) -> str:
    """Write the SavedModel (+ `labels.txt`, `export.json`) to export_dir, built aside and moved
    in whole; anything already at export_dir is renamed `<export_dir>.replaced-N`, not deleted."""
    module = ServingModule(model, class_names, image_size, top_k, crop_padding, logits=logits,
                           embedding=is_embedding_model(model))

    def build(path):
        tf.saved_model.save(module, path, signatures={SIGNATURE_IMAGES: module.serve_images,
                                                      SIGNATURE_BYTES: module.serve_bytes})
        if not module.embedding:  # an embedding model's training identities are not its outputs
            with open(os.path.join(path, "labels.txt"), "w") as f:
                f.write("\n".join(str(n) for n in class_names) + "\n")
        with open(os.path.join(path, "export.json"), "w") as f:
            json.dump(dict(metadata or {}, image_size=image_size, top_k=module.top_k,
                           outputs=["embedding"] if module.embedding else ["probabilities", "top_k_ids",
                                                                            "top_k_probabilities", "top_k_names"],
                           signatures=[SIGNATURE_IMAGES, SIGNATURE_BYTES]), f, indent=2)

    path, moved = replace_directory(build, export_dir)
    if moved:
        log.warning("%s held something: kept as %s", path, moved)
    return path


def is_embedding_model(model: keras.Model) -> bool:
    """Whether `model` ends in a recognition embedding (`build_model(embedding_dim=...)`)."""
    return any(layer.name == "embedding" for layer in model.layers)


def probability_model(model: keras.Model, normalized: bool = True) -> keras.Model:
    """Logits model -> probabilities (float32): the graph TFLite and ONNX convert. An embedding
    model is converted as it is (the L2-normalised embedding: a unit vector quantizes well), or
    with `normalized=False` up to its embedding before the normalization, which int16x8 needs
    (TFLite has no 16-bit kernel for the normalization's SQUARE op)."""
    if is_embedding_model(model):
        if normalized or "embedding_l2" not in {layer.name for layer in model.layers}:
            return model
        unnormalized = model.get_layer("embedding_l2").input
        return functional_model(model.input, unnormalized, f"{model.name}_embedding", max_layers=len(model.layers))
    outputs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(model.output)
    return functional_model(model.input, outputs, f"{model.name}_probabilities", max_layers=len(model.layers) + 1)


def export_float_saved_model(model: keras.Model, path: str, quantization: str | None = None) -> str:
    """The probability model as a plain SavedModel: what the TFLite and ONNX converters read
    (for `quantization` int16x8, an embedding model's unnormalised embedding)."""
    probability_model(model, normalized=quantization != "int16x8").export(path, format="tf_saved_model", verbose=False)
    return path


class _FloatSavedModels:
    """The float SavedModel each TFLite format converts from, written once per kind in `root`."""

    def __init__(self, model: keras.Model, root: str):
        self.model, self.root, self.paths = model, root, {}

    def __call__(self, quantization: str | None = None) -> str:
        kind = "unnormalized" if quantization == "int16x8" and is_embedding_model(self.model) else "default"
        if kind not in self.paths:
            self.paths[kind] = export_float_saved_model(self.model, os.path.join(self.root, kind), quantization)
        return self.paths[kind]
