"""Quantization-aware fine-tuning: the model's own layers, called as a TFLite int8 file computes them.

A full-integer TFLite file stores every tensor between two ops in 8 bits: 256 levels spread over
the range the converter measured on its calibration images (min and max over them, nudged so
that zero is a level). Convolutions and depthwise convolutions are folded with the batch norm
after them, so the rounded tensor is the batch norm's output, not the convolution's. Where that
rounding moves a model's outputs (the recognition embeddings: docs/deployment.md), training a
few epochs through it lets the weights adapt to it.

`Int8AwareModel` wraps a built Keras model without copying it: the same layer objects, so
training it trains the model, whose float graph is what export converts. Each layer whose output
TFLite keeps as a tensor is called through `Int8Rounded`, which rounds that output to 8 bits over
a range set by `calibrate` (min and max over calibration batches of the float model in inference
mode, as the converter measures), with a straight-through gradient inside the range. Batch norms
run in inference mode throughout (their statistics frozen), so the rounded values are the
folded ones the file will compute. Weights are not rounded: on the embeddings measured, rounding
the weights alone (activations in float) cost one query of 471 (docs/deployment.md). Which
tensors and which ranges were read off the converter's int8 files (tests/test_quantization_aware.py
compares them): see `rounded_layers`, `shared_ranges` and `Int8Rounded`.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from efficientnet_tf.models.layers import InputRescaling, StdNormalization

BITS = 8
# Layers whose output is a tensor of the TFLite graph. A Conv2D/DepthwiseConv2D feeding a batch
# norm alone is folded into it, and a batch norm feeding a ReLU/ReLU6 alone is fused with it (see
# `rounded_layers`); padding, reshapes and dropout change no value.
_TENSOR_LAYERS = (InputRescaling, StdNormalization, keras.layers.BatchNormalization, keras.layers.Activation,
                  keras.layers.GlobalAveragePooling2D, keras.layers.Multiply, keras.layers.Add, keras.layers.Dense,
                  keras.layers.UnitNormalization, keras.layers.Conv2D, keras.layers.DepthwiseConv2D)
_FUSED_ACTIVATIONS = ("relu", "relu6")


class Int8Rounded(keras.layers.Layer):
    """Calls `layer` and rounds its output to 2**bits levels over [low, high] (zero a level).

    Gradient: straight through inside the range, zero outside (tf.quantization's fake quant).
    A batch norm is called in inference mode whatever `training` says. `low` and `high` are
    set by `calibrate`; until then both are 0, and everything rounds to 0.
    """

    def __init__(self, layer: keras.layers.Layer, bits: int = BITS, **kwargs):
        super().__init__(name=kwargs.pop("name", f"{layer.name}_int8"), **kwargs)
        self.layer = layer
        self.bits = bits
        self.frozen_statistics = isinstance(layer, keras.layers.BatchNormalization)
        # TFLite's int8 LOGISTIC has a fixed output grid: 1/256 steps from 0 (`calibrate` keeps it).
        self.fixed_range = (0.0, 255 / 256) if _activation(layer) == "sigmoid" else None
        # float32 under a mixed policy too (fake quant takes float32 ranges; bfloat16 would move them).
        self.low = self.add_weight(shape=(), initializer="zeros", trainable=False, name="low", autocast=False)
        self.high = self.add_weight(shape=(), initializer="zeros", trainable=False, name="high", autocast=False)

    def call(self, inputs, training=None, mask=None):
        if self.frozen_statistics:
            outputs = self.layer(inputs, training=False)
        elif getattr(self.layer, "_call_has_training_arg", False):
            outputs = self.layer(inputs, training=training)
        else:
            outputs = self.layer(inputs)
        rounded = tf.quantization.fake_quant_with_min_max_vars(
            tf.cast(outputs, tf.float32), self.low, self.high, num_bits=self.bits)
        return tf.cast(rounded, outputs.dtype)


def _activation(layer: keras.layers.Layer) -> str | None:
    activation = layer.get_config().get("activation") if isinstance(
        layer, (keras.layers.Activation, keras.layers.Conv2D, keras.layers.Dense)) else None
    return activation if isinstance(activation, str) else None


def _consumers(model: keras.Model) -> dict[str, list[keras.layers.Layer]]:
    consumers: dict[str, list[keras.layers.Layer]] = {}
    for layer in model.layers:
        for node in layer._inbound_nodes:
            for tensor in node.input_tensors:
                consumers.setdefault(tensor._keras_history.operation.name, []).append(layer)
    return consumers


def shared_ranges(model: keras.Model) -> dict[str, str]:
    """{layer: Add layer} for the layers whose output only a residual Add takes: the converter
    gives that tensor the Add's output range (measured on its int8 files)."""
    consumers = _consumers(model)

    def only_consumer(name):  # through dropout (stochastic depth), which changes no value
        after = consumers.get(name, [])
        while len(after) == 1 and isinstance(after[0], keras.layers.Dropout):
            after = consumers.get(after[0].name, [])
        return after[0] if len(after) == 1 else None

    return {name: add.name for name in consumers if isinstance(add := only_consumer(name), keras.layers.Add)}


def rounded_layers(model: keras.Model) -> list[str]:
    """Names of the layers whose outputs an int8 TFLite file of `model` rounds (execution order)."""
    consumers = _consumers(model)
    names = []
    for layer in model.layers:
        if not isinstance(layer, _TENSOR_LAYERS):
            continue
        after = consumers.get(layer.name, [])
        only = after[0] if len(after) == 1 else None
        folded = (isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))
                  and isinstance(only, keras.layers.BatchNormalization))
        fused = (isinstance(layer, keras.layers.BatchNormalization) and isinstance(only, keras.layers.Activation)
                 and _activation(only) in _FUSED_ACTIVATIONS)
        if not (folded or fused):
            names.append(layer.name)
    return names


class Int8AwareModel:
    """`model` with its int8-rounded tensors (see the module's docstring).

    Attributes:
        model: the float model (trained through `rounded`).
        rounded: a functional model of the same layers with `Int8Rounded` wrappers.
        wrappers: the wrappers by the wrapped layer's name.
    """

    def __init__(self, model: keras.Model, output_layer: str | None = None):
        self.model = model
        names = rounded_layers(model)
        self.wrappers = {name: Int8Rounded(model.get_layer(name)) for name in names}

        def call(layer, *args, **kwargs):
            wrapper = self.wrappers.get(layer.name)
            return wrapper(*args, **kwargs) if wrapper is not None else layer(*args, **kwargs)

        rounded = keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)
        if output_layer is not None:  # e.g. the softmax baseline's logits before the unit norm
            output = self.wrappers.get(output_layer, rounded.get_layer(output_layer)).output
            rounded = keras.Model(rounded.inputs, output)
        self.rounded = rounded
        self._shared = {name: add for name, add in shared_ranges(model).items() if name in names and add in names}
        # The float values every wrapper rounds, as the converter's calibration sees them.
        self._probe = keras.Model(model.inputs, [model.get_layer(name).output for name in names])
        self._measure = None  # (strategy, its compiled pass): `_measure_fn`

    def _measure_fn(self, strategy: tf.distribute.Strategy):
        """A compiled pass of one global batch: each tensor's min and max over the replicas."""
        if self._measure is None or self._measure[0] is not strategy:  # once: traced again per epoch otherwise
            probe = self._probe

            def step(images, labels):
                outputs = probe(images, training=False)
                lows = tf.stack([tf.reduce_min(tf.cast(o, tf.float32)) for o in outputs])
                highs = tf.stack([tf.reduce_max(tf.cast(o, tf.float32)) for o in outputs])
                return lows[None], highs[None]

            @tf.function
            def measure(iterator):
                lows, highs = strategy.run(step, args=next(iterator))
                return (tf.reduce_min(strategy.gather(lows, axis=0), axis=0),
                        tf.reduce_max(strategy.gather(highs, axis=0), axis=0))

            self._measure = (strategy, measure)
        return self._measure[1]

    def calibrate(self, strategy: tf.distribute.Strategy, iterator, steps: int) -> None:
        """Sets every range to the min and max over `steps` global batches of `iterator`
        ((images, labels) per replica), the float model in inference mode."""
        measure = self._measure_fn(strategy)
        low = high = None
        for _ in range(steps):
            batch_low, batch_high = (value.numpy() for value in measure(iterator))
            low = batch_low if low is None else np.minimum(low, batch_low)
            high = batch_high if high is None else np.maximum(high, batch_high)
        for wrapper, lo, hi in zip(self.wrappers.values(), low, high):
            # TFLite's ranges always hold zero (a level of the grid).
            lo, hi = wrapper.fixed_range or (min(float(lo), 0.0), max(float(hi), 0.0))
            wrapper.low.assign(lo)
            wrapper.high.assign(hi)
        for name, add in self._shared.items():
            self.wrappers[name].low.assign(self.wrappers[add].low)
            self.wrappers[name].high.assign(self.wrappers[add].high)

    def ranges(self) -> dict[str, tuple[float, float]]:
        return {name: (float(w.low.numpy()), float(w.high.numpy())) for name, w in self.wrappers.items()}
