"""The building blocks: MBConv, Fused-MBConv, squeeze-excite, input normalization.

Layer names and creation order follow keras.applications exactly, because Keras loads legacy
HDF5 weight files by the order of weighted layers (and by name with ``by_name=True``).
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)

CONV_KERNEL_INITIALIZER = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal"},
}
# The reference head init scales by fan_out, tuned for 1000 classes: with 10 classes it gives
# initial logits of std ~4.6 (loss 6 instead of 2.3) and unstable early training. Scaling by
# fan_in gives unit-scale logits for any class count; for 1000 classes it differs by 1280/1000.
DENSE_KERNEL_INITIALIZER = {
    "class_name": "VarianceScaling",
    "config": {"scale": 1.0 / 3.0, "mode": "fan_in", "distribution": "uniform"},
}


@keras.saving.register_keras_serializable(package="efficientnet_tf")
class StdNormalization(layers.Layer):
    """(x - mean) / std with mean/std stored as the weights of a keras Normalization layer.

    The official keras.applications V1 files store the ImageNet *std* in the Normalization
    layer's "variance" slot, and keras only fixes that up (an extra Rescaling) when asked for
    ``weights='imagenet'``. Reading the slot as std gives the right preprocessing whichever
    way the file arrives, and still equals keras for its untrained files (mean 0, slot 1).
    """

    def __init__(self, mean=IMAGENET_MEAN_RGB, std=IMAGENET_STD_RGB, **kwargs):
        super().__init__(**kwargs)
        self.initial_mean = tuple(float(m) for m in mean)
        self.initial_std = tuple(float(s) for s in std)

    def build(self, input_shape):
        channels = (len(self.initial_mean),)
        # Same names, order, shapes and dtypes as keras.layers.Normalization.
        self.mean = self.add_weight(
            name="mean",
            shape=channels,
            initializer=keras.initializers.Constant(self.initial_mean),
            trainable=False,
        )
        self.variance = self.add_weight(
            name="variance",
            shape=channels,
            initializer=keras.initializers.Constant(self.initial_std),
            trainable=False,
        )
        self.count = self.add_weight(
            name="count", shape=(), dtype="int", initializer="zeros", trainable=False
        )

    def call(self, inputs):
        mean = keras.ops.cast(self.mean, inputs.dtype)
        std = keras.ops.cast(self.variance, inputs.dtype)
        return (inputs - mean) / keras.ops.maximum(std, keras.config.epsilon())

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(mean=list(self.initial_mean), std=list(self.initial_std))
        return config


def same_padding_amounts(size, kernel_size: int, strides: int):
    """(before, after) zero padding that makes a 'valid' conv equal TF's 'SAME' on a side of `size`.

    TF's rule: out = ceil(size / strides), total = max((out - 1) * strides + kernel - size, 0),
    with the odd pixel after. `size` may be a Python int or a scalar tensor (unknown side).
    keras.applications' `correct_pad` gives the same numbers for a known side, but assumes an
    even side when it is unknown, so its dynamic-shape models differ from its fixed-shape ones
    whenever a strided conv sees an odd side.
    """
    out = -(-size // strides)
    total = (out - 1) * strides + kernel_size - size
    total = max(total, 0) if isinstance(total, int) else keras.ops.maximum(total, 0)
    return total // 2, total - total // 2


@keras.saving.register_keras_serializable(package="efficientnet_tf")
class SamePadding2D(layers.Layer):
    """Zero padding computed from the input's runtime shape with TF 'SAME' semantics.

    Takes the place of keras.applications' fixed ZeroPadding2D before V1/Lite strided convs
    (no weights, same name), so a model built for any input size (`(None, None, 3)`) computes
    exactly what the model built at a fixed size computes, odd sides included.
    """

    def __init__(self, kernel_size: int, strides: int, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)

    def _amounts(self, shape):
        return [same_padding_amounts(side, self.kernel_size, self.strides) for side in shape[1:3]]

    def call(self, inputs):
        (top, bottom), (left, right) = self._amounts(keras.ops.shape(inputs))
        return keras.ops.pad(inputs, [[0, 0], [top, bottom], [left, right], [0, 0]])

    def compute_output_shape(self, input_shape):
        sides = [None if side is None else side + sum(same_padding_amounts(side, self.kernel_size, self.strides))
                 for side in input_shape[1:3]]
        return (input_shape[0], *sides, input_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update(kernel_size=self.kernel_size, strides=self.strides)
        return config


@keras.saving.register_keras_serializable(package="efficientnet_tf")
class InputRescaling(layers.Rescaling):
    """keras' Rescaling (the first layer of every variant) that also rejects images under `min_size`.

    A fixed `input_shape` is checked when the model is built; a model built for any size checks
    each batch, in the graph, so that a too-small image fails with a message that names the
    minimum instead of an error deep inside a convolution. The check lives in this existing
    layer rather than in a layer of its own so that checkpoints keep their layer numbering.
    """

    def __init__(self, scale, offset=0.0, min_size: int = 32, **kwargs):
        super().__init__(scale, offset=offset, **kwargs)
        self.min_size = int(min_size)

    def call(self, inputs):
        height, width = inputs.shape[1], inputs.shape[2]
        if height is None or width is None:
            message = (f"input images must be at least {self.min_size}x{self.min_size} pixels "
                       "(height, width) for EfficientNet; got height, width =")
            check = tf.debugging.assert_greater_equal(
                tf.reduce_min(tf.shape(inputs)[1:3]), self.min_size, message=message)
            with tf.control_dependencies([check]):
                inputs = tf.identity(inputs)
        elif min(height, width) < self.min_size:
            raise ValueError(f"input images must be at least {self.min_size}x{self.min_size} pixels "
                             f"(height, width) for EfficientNet; got {height}x{width}")
        return super().call(inputs)

    def get_config(self):
        config = super().get_config()
        config.update(min_size=self.min_size)
        return config


def batch_norm(x, name, momentum, epsilon):
    return layers.BatchNormalization(axis=-1, momentum=momentum, epsilon=epsilon, name=name)(x)


def conv(x, filters, kernel_size, name, strides=1, padding="same", use_bias=False, activation=None):
    return layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=use_bias,
        activation=activation,
        kernel_initializer=CONV_KERNEL_INITIALIZER,
        name=name,
    )(x)


def squeeze_excite(x, input_filters, se_ratio, activation, prefix):
    """SE whose bottleneck width comes from the block's input filters, as in the papers."""
    filters = x.shape[-1]
    reduced = max(1, int(input_filters * se_ratio))
    se = layers.GlobalAveragePooling2D(name=f"{prefix}se_squeeze")(x)
    se = layers.Reshape((1, 1, filters), name=f"{prefix}se_reshape")(se)
    se = conv(se, reduced, 1, f"{prefix}se_reduce", use_bias=True, activation=activation)
    se = conv(se, filters, 1, f"{prefix}se_expand", use_bias=True, activation="sigmoid")
    return layers.multiply([x, se], name=f"{prefix}se_excite")


def _residual(x, inputs, drop_rate, prefix):
    """Identity skip with stochastic depth: drop the whole branch per sample, rescale kept."""
    if drop_rate > 0:
        x = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"{prefix}drop")(x)
    return layers.add([x, inputs], name=f"{prefix}add")


def mbconv_block(
    inputs,
    *,
    input_filters,
    output_filters,
    kernel_size,
    strides,
    expand_ratio,
    se_ratio,
    id_skip,
    activation,
    drop_rate,
    prefix,
    bn_momentum,
    bn_epsilon,
    explicit_padding,
):
    """Inverted residual: 1x1 expand, kxk depthwise, SE, 1x1 linear project."""
    filters = int(input_filters * expand_ratio)
    x = inputs
    if expand_ratio != 1:
        x = conv(x, filters, 1, f"{prefix}expand_conv")
        x = batch_norm(x, f"{prefix}expand_bn", bn_momentum, bn_epsilon)
        x = layers.Activation(activation, name=f"{prefix}expand_activation")(x)

    padding = "same"
    if explicit_padding and strides == 2:
        x = SamePadding2D(kernel_size, strides, name=f"{prefix}dwconv_pad")(x)
        padding = "valid"
    x = layers.DepthwiseConv2D(
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=False,
        depthwise_initializer=CONV_KERNEL_INITIALIZER,
        # keras.applications calls it "dwconv" in V1 and "dwconv2" in V2.
        name=f"{prefix}dwconv" if explicit_padding else f"{prefix}dwconv2",
    )(x)
    x = batch_norm(x, f"{prefix}bn", bn_momentum, bn_epsilon)
    x = layers.Activation(activation, name=f"{prefix}activation")(x)

    if se_ratio and 0 < se_ratio <= 1:
        x = squeeze_excite(x, input_filters, se_ratio, activation, prefix)

    x = conv(x, output_filters, 1, f"{prefix}project_conv")
    x = batch_norm(x, f"{prefix}project_bn", bn_momentum, bn_epsilon)
    if id_skip and strides == 1 and input_filters == output_filters:
        x = _residual(x, inputs, drop_rate, prefix)
    return x


def fused_mbconv_block(
    inputs,
    *,
    input_filters,
    output_filters,
    kernel_size,
    strides,
    expand_ratio,
    se_ratio,
    id_skip,
    activation,
    drop_rate,
    prefix,
    bn_momentum,
    bn_epsilon,
    explicit_padding=False,
):
    """Fused-MBConv (EfficientNetV2): one kxk strided conv replaces expand + depthwise.

    With expand ratio 1 the block is a single kxk conv + BN + activation.
    """
    del explicit_padding  # V2 always uses 'same' padding
    filters = int(input_filters * expand_ratio)
    x = inputs
    if expand_ratio != 1:
        x = conv(x, filters, kernel_size, f"{prefix}expand_conv", strides=strides)
        x = batch_norm(x, f"{prefix}expand_bn", bn_momentum, bn_epsilon)
        x = layers.Activation(activation, name=f"{prefix}expand_activation")(x)

    if se_ratio and 0 < se_ratio <= 1:
        x = squeeze_excite(x, input_filters, se_ratio, activation, prefix)

    single_conv = expand_ratio == 1
    x = conv(
        x,
        output_filters,
        kernel_size if single_conv else 1,
        f"{prefix}project_conv",
        strides=strides if single_conv else 1,
    )
    x = batch_norm(x, f"{prefix}project_bn", bn_momentum, bn_epsilon)
    if single_conv:
        x = layers.Activation(activation, name=f"{prefix}project_activation")(x)
    if id_skip and strides == 1 and input_filters == output_filters:
        x = _residual(x, inputs, drop_rate, prefix)
    return x
