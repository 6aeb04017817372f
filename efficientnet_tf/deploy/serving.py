"""The serving graph: a model plus signatures for float pixels and for encoded image bytes.

The bytes signature decodes, crops and resizes in the graph exactly as the eval pipeline does,
so an exported SavedModel (and `Predictor`) needs no outside preprocessing.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

from efficientnet_tf.data.image_io import decode_image
from efficientnet_tf.data.pipeline import preprocess_eval

SIGNATURE_IMAGES = "serving_default"
SIGNATURE_BYTES = "serving_bytes"


class ServingModule(tf.Module):
    """The model with its serving signatures; `tf.saved_model.save` writes it. A classifier's
    signatures return probabilities and the top-k classes; with `embedding`, the model's
    L2-normalised embedding (key "embedding") and no classes."""

    def __init__(self, model: keras.Model, class_names: Sequence[str], image_size: int, top_k: int = 5,
                 crop_padding: int = 32, logits: bool = True, embedding: bool = False):
        super().__init__(name="efficientnet_serving")
        self.embedding = embedding
        if embedding:
            class_names = ()
        elif len(class_names) != model.output_shape[-1]:
            raise ValueError(f"{len(class_names)} class names for a model with {model.output_shape[-1]} outputs")
        self.model = model
        self.class_names = tf.constant([str(n) for n in class_names])
        self.image_size = int(image_size)
        self.top_k = min(int(top_k), len(class_names)) if not embedding else 0
        self.crop_padding = crop_padding
        self.from_logits = logits
        size = self.image_size
        self.serve_images = tf.function(
            self._serve_images, input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="images")])
        self.serve_bytes = tf.function(
            self._serve_bytes, input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])

    def _outputs(self, outputs):
        outputs = tf.cast(outputs, tf.float32)
        if self.embedding:
            return {"embedding": tf.math.l2_normalize(outputs, axis=-1)}
        probabilities = tf.nn.softmax(outputs) if self.from_logits else outputs
        top = tf.math.top_k(probabilities, k=self.top_k)
        return {"probabilities": probabilities, "top_k_ids": top.indices, "top_k_probabilities": top.values,
                "top_k_names": tf.gather(self.class_names, top.indices)}

    def _serve_images(self, images):
        return self._outputs(self.model(images, training=False))

    def _serve_bytes(self, image_bytes):
        def decode(data):
            image = decode_image(data)  # the training decoder: same formats, same EXIF orientation
            return preprocess_eval(image, self.image_size, self.crop_padding)

        images = tf.map_fn(decode, image_bytes, fn_output_signature=tf.TensorSpec(
            [self.image_size, self.image_size, 3], tf.float32))
        return self._outputs(self.model(images, training=False))
