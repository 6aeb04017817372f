"""The building blocks: MBConv, Fused-MBConv, squeeze-excite, input normalization.

Layer names and creation order follow keras.applications exactly, because Keras loads legacy
HDF5 weight files by the order of weighted layers (and by name with ``by_name=True``).
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf
from keras import layers

from efficientnet_tf.models.block_args import BlockSpec

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


@dataclasses.dataclass(frozen=True)
class BlockStyle:
    """What every block of one network shares (the variant's, not the block's, choices)."""

    activation: str
    bn_momentum: float
    bn_epsilon: float
    explicit_padding: bool  # V1/Lite: SamePadding2D + 'valid' strided convs (keras.applications' layers)


def _bn_act(x, style: BlockStyle, bn_name: str, activation_name: str | None):
    x = batch_norm(x, bn_name, style.bn_momentum, style.bn_epsilon)
    return layers.Activation(style.activation, name=activation_name)(x) if activation_name else x


def _squeeze_excite_and_skip(x, inputs, spec: BlockSpec, style: BlockStyle, prefix: str, drop_rate: float,
                             project):
    """The tail both blocks share: optional SE, the projection (`project(x)`), the identity skip."""
    if spec.se_ratio and 0 < spec.se_ratio <= 1:
        x = squeeze_excite(x, spec.input_filters, spec.se_ratio, style.activation, prefix)
    x = project(x)
    if spec.id_skip and spec.stride == 1 and spec.input_filters == spec.output_filters:
        x = _residual(x, inputs, drop_rate, prefix)
    return x


def mbconv_block(inputs, spec: BlockSpec, style: BlockStyle, prefix: str, drop_rate: float = 0.0):
    """Inverted residual: 1x1 expand, kxk depthwise, SE, 1x1 linear project.

    Args:
        inputs: the block's input tensor.
        spec: the block after scaling (repeats 1, this repeat's filters and strides).
        style: what the whole network shares (activation, BN, padding style).
        prefix: layer-name prefix, e.g. "block2a_" (keras.applications' names).
        drop_rate: stochastic depth rate of the identity branch.
    """
    x = inputs
    if spec.expand_ratio != 1:
        x = conv(x, int(spec.input_filters * spec.expand_ratio), 1, f"{prefix}expand_conv")
        x = _bn_act(x, style, f"{prefix}expand_bn", f"{prefix}expand_activation")

    padding = "same"
    if style.explicit_padding and spec.stride == 2:
        x = SamePadding2D(spec.kernel_size, spec.stride, name=f"{prefix}dwconv_pad")(x)
        padding = "valid"
    x = layers.DepthwiseConv2D(
        spec.kernel_size,
        strides=spec.stride,
        padding=padding,
        use_bias=False,
        depthwise_initializer=CONV_KERNEL_INITIALIZER,
        # keras.applications calls it "dwconv" in V1 and "dwconv2" in V2.
        name=f"{prefix}dwconv" if style.explicit_padding else f"{prefix}dwconv2",
    )(x)
    x = _bn_act(x, style, f"{prefix}bn", f"{prefix}activation")

    def project(x):
        return _bn_act(conv(x, spec.output_filters, 1, f"{prefix}project_conv"), style, f"{prefix}project_bn", None)

    return _squeeze_excite_and_skip(x, inputs, spec, style, prefix, drop_rate, project)


def fused_mbconv_block(inputs, spec: BlockSpec, style: BlockStyle, prefix: str, drop_rate: float = 0.0):
    """Fused-MBConv (EfficientNetV2): one kxk strided conv replaces expand + depthwise; with
    expand ratio 1 the block is a single kxk conv + BN + activation. Always 'same' padding.

    Args: as `mbconv_block`.
    """
    x = inputs
    single_conv = spec.expand_ratio == 1
    if not single_conv:
        x = conv(x, int(spec.input_filters * spec.expand_ratio), spec.kernel_size, f"{prefix}expand_conv",
                 strides=spec.stride)
        x = _bn_act(x, style, f"{prefix}expand_bn", f"{prefix}expand_activation")

    def project(x):
        x = conv(x, spec.output_filters, spec.kernel_size if single_conv else 1, f"{prefix}project_conv",
                 strides=spec.stride if single_conv else 1)
        return _bn_act(x, style, f"{prefix}project_bn", f"{prefix}project_activation" if single_conv else None)

    return _squeeze_excite_and_skip(x, inputs, spec, style, prefix, drop_rate, project)
