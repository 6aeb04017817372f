"""Multiply-add count of a built model, counted the way the EfficientNet papers count FLOPs.

Convolutions and dense layers only: output pixels x kernel area x input channels per group x
output channels (depthwise: x channels). Element-wise ops (BN, activations, SE multiply) are
left out, as in the papers' figures.
"""

from __future__ import annotations

import math

import keras

from efficientnet_tf.models.factory import build_model
from efficientnet_tf.models.configs import get_config


def _layer_macs(layer) -> int:
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        out = layer.output.shape  # (batch, h, w, c)
        kh, kw = layer.kernel_size
        return out[1] * out[2] * kh * kw * out[3]
    if isinstance(layer, keras.layers.Conv2D):
        out = layer.output.shape
        kh, kw = layer.kernel_size
        in_channels = layer.input.shape[-1] // layer.groups
        return out[1] * out[2] * kh * kw * in_channels * out[3]
    if isinstance(layer, keras.layers.Dense):
        return math.prod(layer.input.shape[1:]) * layer.units
    return 0


def count_macs(model: keras.Model) -> int:
    """Multiply-adds of one forward pass of one image (model needs a static input size)."""
    if any(d is None for d in model.input_shape[1:3]):
        raise ValueError("count_macs needs a model with a fixed input size (got None in input_shape)")
    return int(sum(_layer_macs(layer) for layer in model.layers))


def model_summary(name: str, image_size: int | None = None) -> dict:
    """Params, multiply-adds and resolution of a registered model at its default size."""
    config = get_config(name)
    size = image_size or config.resolution
    model = build_model(config, input_shape=(size, size, 3))
    return {
        "model": config.name,
        "resolution": size,
        "params": model.count_params(),
        "trainable_params": int(sum(math.prod(w.shape) for w in model.trainable_weights)),
        "macs": count_macs(model),
    }
