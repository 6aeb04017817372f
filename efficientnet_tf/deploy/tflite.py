"""TFLite: a Keras model or its float SavedModel -> a .tflite flatbuffer (float32, float16,
dynamic, int8, int16x8), the files of an export, and a runner for them (the LiteRT interpreter)."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf

from efficientnet_tf.deploy.config import INTEGER_IO, TFLITE_QUANTIZATIONS
from efficientnet_tf.deploy.saved_model import _FloatSavedModels, export_float_saved_model
from efficientnet_tf.files import atomic_write, move_aside
from efficientnet_tf.settings import SettingError

log = logging.getLogger(__name__)

NEEDS_REPRESENTATIVE_DATA = ("int8", "int16x8", "int8_selective")


def _check_format(quantization: str, integer_io: str) -> None:
    if quantization not in TFLITE_QUANTIZATIONS:
        raise SettingError("tflite", f"unknown TFLite quantization {quantization!r}; choose from "
                           f"{', '.join(TFLITE_QUANTIZATIONS)}")
    if integer_io not in INTEGER_IO:
        raise SettingError("int8_io", f"integer_io must be one of {', '.join(INTEGER_IO)}, got {integer_io!r}")


def convert_tflite(model: keras.Model, quantization: str, representative_images: Iterable | None = None,
                   integer_io: str = "uint8") -> bytes:
    """One TFLite flatbuffer of `model` (logits out; the file outputs probabilities)."""
    _check_format(quantization, integer_io)
    with tempfile.TemporaryDirectory() as tmp:
        return convert_saved_model(export_float_saved_model(model, tmp, quantization), quantization,
                                   representative_images, integer_io)


def convert_saved_model(saved_model_dir: str, quantization: str, representative_images: Iterable | None = None,
                        integer_io: str = "uint8") -> bytes:
    """One TFLite flatbuffer from a float SavedModel (`export_float_saved_model`).

    int8: full-integer ops with `integer_io` (uint8|int8) input and output; int16x8: 16-bit
    activations, 8-bit weights, float I/O. Both calibrate on `representative_images`
    (float 0..255, one image or a batch per item).
    """
    _check_format(quantization, integer_io)
    if quantization in NEEDS_REPRESENTATIVE_DATA and representative_images is None:
        raise ValueError(f"{quantization} quantization needs representative images (from the training pipeline)")
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    if quantization != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantization in NEEDS_REPRESENTATIVE_DATA:
        images = list(representative_images)

        def representative():
            for image in images:
                image = np.asarray(image, np.float32)
                yield [image if image.ndim == 4 else image[None]]

        converter.representative_dataset = representative
    if quantization == "int8":
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8 if integer_io == "uint8" else tf.int8
        converter.inference_output_type = converter.inference_input_type
    if quantization == "int16x8":
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    return converter.convert()


class TFLiteRunner:
    """Runs a .tflite file with the LiteRT interpreter, quantizing inputs and dequantizing
    outputs as the model's I/O types require; images are float 0..255."""

    def __init__(self, model_path_or_content, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        if isinstance(model_path_or_content, (bytes, bytearray)):
            self.interpreter = Interpreter(model_content=bytes(model_path_or_content), num_threads=num_threads)
        else:
            self.interpreter = Interpreter(model_path=os.fspath(model_path_or_content), num_threads=num_threads)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self._batch = None

    def __call__(self, images) -> np.ndarray:
        images = np.asarray(images, np.float32)
        if images.shape[0] != self._batch:
            self.interpreter.resize_tensor_input(self.input["index"], list(images.shape))
            self.interpreter.allocate_tensors()
            self.input = self.interpreter.get_input_details()[0]
            self.output = self.interpreter.get_output_details()[0]
            self._batch = images.shape[0]
        dtype = self.input["dtype"]
        if dtype in (np.uint8, np.int8, np.int16):
            scale, zero_point = self.input["quantization"]
            info = np.iinfo(dtype)
            images = np.clip(np.round(images / scale + zero_point), info.min, info.max).astype(dtype)
        self.interpreter.set_tensor(self.input["index"], images)
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self.output["index"])
        if out.dtype in (np.uint8, np.int8, np.int16):
            scale, zero_point = self.output["quantization"]
            out = (out.astype(np.float32) - zero_point) * scale
        return out

    @property
    def io_types(self) -> str:
        return f"{np.dtype(self.input['dtype']).name} in / {np.dtype(self.output['dtype']).name} out"


def export_tflite(model: keras.Model, export_dir: str, quantizations: Sequence[str] = TFLITE_QUANTIZATIONS,
                  representative_images: Iterable | None = None, integer_io: str = "uint8") -> dict[str, str]:
    """Write `model_<quantization>.tflite` files into export_dir (each written to a temporary
    file, then renamed; a file already there is kept as `<name>.replaced-N`); returns
    {quantization: path}."""
    for quantization in quantizations:
        _check_format(quantization, integer_io)
    os.makedirs(export_dir, exist_ok=True)
    images = list(representative_images) if representative_images is not None else None
    paths = {}
    with tempfile.TemporaryDirectory() as tmp:
        float_models = _FloatSavedModels(model, tmp)
        for quantization in quantizations:
            content = convert_saved_model(float_models(quantization), quantization, images, integer_io)
            paths[quantization] = os.path.join(export_dir, f"model_{quantization}.tflite")
            if os.path.lexists(paths[quantization]):
                log.warning("%s existed: kept as %s", paths[quantization], move_aside(paths[quantization], "replaced"))
            atomic_write(paths[quantization], content)
    return paths
