"""ONNX: the probability model converted with tf2onnx, and a runner for it (onnxruntime, CPU)."""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from efficientnet_tf.deploy.config import ONNX_OPSET, require_onnx
from efficientnet_tf.deploy.saved_model import probability_model


class OnnxRunner:
    """Runs a .onnx file with onnxruntime (CPU); images float 0..255 in, probabilities out."""

    io_types = "float32 in / float32 out"

    def __init__(self, model_path_or_content):
        import onnxruntime

        content = model_path_or_content
        if not isinstance(content, (bytes, bytearray)):
            content = os.fspath(content)
        self.session = onnxruntime.InferenceSession(content, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.asarray(images, np.float32)})[0]


def convert_onnx(model: keras.Model, image_size: int, opset: int = ONNX_OPSET) -> bytes:
    """The probability model as ONNX (tf2onnx): input `images` (batch, size, size, 3) float 0..255."""
    require_onnx()
    import tf2onnx

    probabilities = probability_model(model)
    signature = (tf.TensorSpec((None, image_size, image_size, 3), tf.float32, name="images"),)
    function = tf.function(lambda images: probabilities(images, training=False))
    proto, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=opset)
    return proto.SerializeToString()
