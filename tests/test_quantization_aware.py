"""Quantization-aware fine-tuning: the rounding, its grid against the converter's int8 files, the
trainer's int8-aware epochs (two replicas against one device: tests/test_recognition.py's
two-replica embedding step)."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from sklearn.datasets import load_digits

from efficientnet_tf.deploy.tflite import convert_tflite
from efficientnet_tf.models.factory import build_model
from efficientnet_tf.models.scopes import dtype_policy
from efficientnet_tf.settings import SettingError
from efficientnet_tf.training import TrainConfig, Trainer
from efficientnet_tf.training.quantization_aware import Int8AwareModel, Int8Rounded

EMBEDDING = dict(model="efficientnet-b0", dataset="digits", batch_size=16, image_size=32, epochs=1, dropout_rate=0.0,
                 drop_connect_rate=0.0, label_smoothing=0.0, seed=0, task="embedding", loss="arcface",
                 embedding_dim=16, margin_scale=16.0, margin=0.2)


def _digit_images(count: int) -> np.ndarray:
    digits = load_digits().images[:count, :, :, None] / 16.0 * 255.0
    return np.repeat(tf.image.resize(digits, (32, 32)).numpy(), 3, axis=-1).astype("float32")


def test_rounding_is_tflite_int8_arithmetic():
    low, high = -1.3, 2.1
    rounded = Int8Rounded(keras.layers.Activation("linear", name="tensor"))
    rounded.low.assign(low)
    rounded.high.assign(high)
    x = np.random.default_rng(0).uniform(-2.0, 3.0, 5000).astype("float32")
    # TFLite: scale = range / 255, zero point chosen so that 0.0 is a level, values clamped to int8.
    scale = (high - low) / 255
    zero_point = np.round(-128 - low / scale)
    expected = (np.clip(np.round(x / scale) + zero_point, -128, 127) - zero_point) * scale
    np.testing.assert_allclose(rounded(x).numpy(), expected, atol=1e-6)
    assert len(np.unique(np.round(rounded(x).numpy() / scale))) == 256


def test_rounding_under_a_mixed_policy_keeps_float32_ranges():
    with dtype_policy("mixed_bfloat16"):
        rounded = Int8Rounded(keras.layers.Activation("linear", name="tensor"))
    rounded.low.assign(-1.3)
    rounded.high.assign(2.1)
    x = np.random.default_rng(1).uniform(-2.0, 3.0, 1000).astype("float32")
    out = rounded(x)
    assert out.dtype == "bfloat16" and rounded.low.dtype == "float32"
    as_bfloat16 = tf.cast(tf.cast(x, tf.bfloat16), tf.float32).numpy()
    scale = 3.4 / 255
    zero_point = np.round(-128 + 1.3 / scale)
    # bfloat16 inputs land on exact halves of a step: rounded up, as fake quant (and not to even).
    expected = (np.clip(np.floor(as_bfloat16 / scale + 0.5) + zero_point, -128, 127) - zero_point) * scale
    np.testing.assert_array_equal(tf.cast(out, tf.float32).numpy(),
                                  tf.cast(tf.cast(expected, tf.bfloat16), tf.float32).numpy())


@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-b0"])
def test_ranges_are_those_of_the_converters_int8_file(name):
    """Every tensor the simulation rounds has the scale of a tensor of the converter's int8 file of
    the same layer, calibrated on the same images: Lite0 (ReLU6 fused with conv and BN) and B0
    (swish, SE's sigmoid, residual adds)."""
    keras.utils.set_random_seed(0)
    model = build_model(name, input_shape=(32, 32, 3), include_top=False, embedding_dim=16)
    images = _digit_images(32)
    aware = Int8AwareModel(model)
    batches = tf.data.Dataset.from_tensors((images, np.zeros(32, "int32"))).repeat()
    aware.calibrate(tf.distribute.get_strategy(), iter(batches), 1)
    interpreter = Interpreter(model_content=convert_tflite(model, "int8", representative_images=list(images)))
    scales = {}
    for tensor in interpreter.get_tensor_details():
        if len(tensor["quantization_parameters"]["scales"]) == 1:
            for part in tensor["name"].split(";"):  # a fused op's tensor names each layer it holds
                layer = re.search(r"/([A-Za-z0-9_]+?)(?:_\d+)?/", part)
                if layer:
                    scales.setdefault(layer.group(1), set()).add(float(tensor["quantization_parameters"]["scales"][0]))
    scales.setdefault("embedding_l2", set()).add(interpreter.get_output_details()[0]["quantization"][0])  # the output
    # B0 scales uint8 pixels to 0..1 (rounding them to pixels is what the uint8 input does), then normalizes.
    scales.setdefault("rescaling", set()).add(interpreter.get_input_details()[0]["quantization"][0] / 255)
    unmatched = []
    for layer, (low, high) in aware.ranges().items():
        ours = (high - low) / 255
        # A batch norm's tensor is its (folded) convolution's in the file.
        candidates = [layer, re.sub("_bn$", "_conv", layer), re.sub("_bn$", "_dwconv", layer)]
        if not any(abs(scale - ours) <= 1e-3 * ours for c in candidates for scale in scales.get(c, ())):
            unmatched.append(layer)
    assert len(aware.ranges()) > 60 and unmatched == []
    # Weights are the model's own: training the rounded model trains it.
    assert {id(v) for v in aware.rounded.trainable_variables} == {id(v) for v in model.trainable_variables}


def test_int8_aware_epochs_freeze_bn_restart_the_average_and_train(tmp_path):
    settings = dict(EMBEDDING, model_dir=str(tmp_path), steps_per_epoch=2, ema_decay=0.99)
    first = Trainer(TrainConfig.from_settings(**settings), verbose=False)
    first.fit(validate=False)
    first.ema.swap()  # the averaged weights: what the int8-aware epochs start from
    averaged = {v.path: v.numpy().copy() for v in first.model.variables}
    keras.backend.clear_session()
    trainer = Trainer(TrainConfig.from_settings(**dict(settings, epochs=2, quantization_aware_epochs=1)), verbose=False)
    trainer.fit(validate=False)
    after = {v.path: v.numpy() for v in trainer.model.variables}
    statistics = [path for path in after if "moving_" in path]
    assert len(statistics) > 60
    for path in statistics:  # batch norms ran in inference mode
        np.testing.assert_array_equal(after[path], averaged[path], err_msg=path)
    kernels = [path for path in after if path.endswith("kernel")]
    moved = sum(not np.allclose(after[path], averaged[path]) for path in kernels)
    assert moved == len(kernels)
    assert int(trainer.ema.num_updates.numpy()) == 2  # restarted: the aware epoch's 2 steps alone
    assert int(trainer.state.epoch.numpy()) == 2


def test_quantization_aware_epochs_must_leave_epochs_to_train():
    with pytest.raises(SettingError, match=r"quantization_aware_epochs \(2\) must be < epochs \(2\)"):
        TrainConfig.from_settings(epochs=2, quantization_aware_epochs=2).validate()
