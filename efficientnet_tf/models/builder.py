"""One builder turns a ModelConfig (block specs + scaling) into a functional keras.Model.

`build_model` (a registered name and pretrained weights) sits above it, in `factory`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import keras
from keras import layers

from efficientnet_tf._lazy import moved_names
from efficientnet_tf.models import configs
from efficientnet_tf.models.block_args import BlockSpec
from efficientnet_tf.models.configs import ModelConfig
from efficientnet_tf.models.functional import functional_model
from efficientnet_tf.models.heads import _embedding_head, check_embedding_head
from efficientnet_tf.models.layers import (
    DENSE_KERNEL_INITIALIZER,
    IMAGENET_MEAN_RGB,
    IMAGENET_STD_RGB,
    BlockStyle,
    InputRescaling,
    SamePadding2D,
    StdNormalization,
    batch_norm,
    conv,
    fused_mbconv_block,
    mbconv_block,
)

MIN_INPUT_SIZE = 32
# Keras orders a functional graph with one Python frame per layer on its longest path
# (keras/src/ops/function.py `_build_map_helper`); no block of ours has more layers than this.
_MAX_LAYERS_PER_BLOCK = 24


def round_filters(filters: float, width_coefficient: float, divisor: int = 8, guard: bool = True) -> int:
    """Scale a channel count by width and round to a multiple of `divisor`."""
    filters *= width_coefficient
    new_filters = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if guard and new_filters < 0.9 * filters:  # never round down by more than 10%
        new_filters += divisor
    return int(new_filters)


def round_repeats(repeats: int, depth_coefficient: float) -> int:
    return int(math.ceil(depth_coefficient * repeats))


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    """One concrete block after scaling: what the builder creates, in order."""

    prefix: str  # "block2a_"
    stage: int  # 0-based index into the config's block strings
    spec: BlockSpec  # repeats == 1, filters scaled, strides of this repeat
    drop_rate: float  # stochastic depth rate of this block
    output_stride: int  # total downsampling of the block's output w.r.t. the input


def block_plan(config: ModelConfig, drop_connect_rate: float | None = None) -> list[BlockPlan]:
    """Expand the stage specs into every block, with scaled widths and drop rates."""
    rate = config.drop_connect_rate if drop_connect_rate is None else drop_connect_rate
    specs = config.blocks
    last = len(specs) - 1

    def repeats_of(i, spec):
        if config.fix_head_stem and i in (0, last):
            return spec.repeats
        return round_repeats(spec.repeats, config.depth_coefficient)

    def filters(f):
        return round_filters(f, config.width_coefficient, guard=config.round_filters_guard)

    total = sum(repeats_of(i, s) for i, s in enumerate(specs))
    plan, index, stride = [], 0, 2  # the stem halves the input
    for i, spec in enumerate(specs):
        in_f, out_f = filters(spec.input_filters), filters(spec.output_filters)
        for j in range(repeats_of(i, spec)):
            first = j == 0
            block = dataclasses.replace(
                spec,
                repeats=1,
                input_filters=in_f if first else out_f,
                output_filters=out_f,
                strides=spec.strides if first else (1, 1),
            )
            stride *= block.strides[0]
            plan.append(
                BlockPlan(
                    prefix=f"block{i + 1}{_letters(j)}_",
                    stage=i,
                    spec=block,
                    drop_rate=rate * index / total,
                    output_stride=stride,
                )
            )
            index += 1
    return plan


def _letters(j: int) -> str:
    """a..z, then aa, ab, ... for very deep stages (V2-XL's 32-block stage)."""
    if j < 26:
        return chr(97 + j)
    return _letters(j // 26 - 1) + chr(97 + j % 26)


def stem_filters(config: ModelConfig) -> int:
    if config.fix_head_stem:
        return config.stem_filters
    return round_filters(config.stem_filters, config.width_coefficient, guard=config.round_filters_guard)


def head_filters(config: ModelConfig) -> int:
    if config.fix_head_stem:
        return config.head_filters
    return round_filters(config.head_filters, config.width_coefficient, guard=config.round_filters_guard)


def _preprocess(x, config: ModelConfig):
    """Raw 0..255 RGB in; the normalization the variant was trained with out."""
    kind = config.preprocessing
    if kind == configs.PREPROCESS_IMAGENET_STD:
        x = InputRescaling(1.0 / 255.0, min_size=MIN_INPUT_SIZE, name="rescaling")(x)
        return StdNormalization(name="normalization")(x)
    if kind == configs.PREPROCESS_IMAGENET_CONST:
        scale = [1.0 / (255.0 * s) for s in IMAGENET_STD_RGB]
        offset = [-m / s for m, s in zip(IMAGENET_MEAN_RGB, IMAGENET_STD_RGB)]
        return InputRescaling(scale, offset=offset, min_size=MIN_INPUT_SIZE, name="rescaling")(x)
    if kind == configs.PREPROCESS_SYMMETRIC:
        return InputRescaling(1.0 / 128.0, offset=-1.0, min_size=MIN_INPUT_SIZE, name="rescaling")(x)
    if kind == configs.PREPROCESS_LITE:
        return InputRescaling(1.0 / 128.0, offset=-127.0 / 128.0, min_size=MIN_INPUT_SIZE, name="rescaling")(x)
    raise ValueError(f"unknown preprocessing {kind!r} in config {config.name!r}")


def _positive_int(value, name: str) -> int:
    """`value` as a Python int: any integer type (numpy's included), never a bool or a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _input_shape(config: ModelConfig, input_shape):
    if input_shape is None:
        return (config.resolution, config.resolution, 3)
    shape = tuple(int(side) if isinstance(side, numbers.Integral) else side for side in input_shape)
    if len(shape) != 3 or shape[-1] != 3:
        raise ValueError(
            f"input_shape must be (height, width, 3) for RGB images, got {input_shape!r}"
        )
    for side in shape[:2]:
        if side is not None and side < MIN_INPUT_SIZE:
            raise ValueError(
                f"input_shape {input_shape!r} is too small: height and width must be at "
                f"least {MIN_INPUT_SIZE} (or None for any size)"
            )
    return shape


@dataclasses.dataclass(frozen=True)
class FeatureInfo:
    """A feature map the builder recorded: the last block at one output stride (as timm's
    `feature_info`). `layer` is the name of the layer that outputs it."""

    stride: int
    channels: int
    layer: str
    stage: int  # index into the config's block strings


def _set_feature_info(model: keras.Model, infos) -> None:
    # Plain attribute, kept out of Keras' tracking (it is metadata, not state).
    object.__setattr__(model, "feature_info", tuple(infos))


def _producer(tensor) -> str:
    """Name of the layer whose output `tensor` is."""
    return tensor._keras_history.operation.name


def build_efficientnet(
    config: ModelConfig,
    *,
    num_classes: int = 1000,
    input_shape=None,
    include_top: bool = True,
    pooling: str | None = None,
    dropout_rate: float | None = None,
    drop_connect_rate: float | None = None,
    bn_momentum: float | None = None,
    classifier_activation: str | None = "softmax",
    embedding_dim: int | None = None,
    l2_normalize_embedding: bool = True,
    embedding_head: str = "gap",
) -> keras.Model:
    """Build the functional model a `ModelConfig` describes, with random weights.

    The model takes raw RGB pixels in 0..255 (the variant's normalization is its first layers)
    and has keras.applications' layer names. While it is built, the last block at each output
    stride is recorded in `model.feature_info` (a tuple of `FeatureInfo`).

    Args:
        config: the variant: block specs, scaling, activation, BN and preprocessing.
        num_classes: classifier outputs (with `include_top`).
        input_shape: (height, width, 3), each side >= 32 or None (any size); None: the
            config's resolution.
        include_top: end with average pooling, dropout and the classifier.
        pooling: without the top: None (the last feature map), 'avg' or 'max'.
        dropout_rate: before the classifier (or embedding); None: the config's.
        drop_connect_rate: stochastic depth rate of the last block (earlier blocks scale
            linearly from 0); None: the config's.
        bn_momentum: moving-average momentum of every BatchNormalization; None: the config's.
        classifier_activation: 'softmax', None (logits) or any Keras activation.
        embedding_dim: without the top: a Dense embedding of this size (see `embedding_head`).
        l2_normalize_embedding: unit-normalize that embedding.
        embedding_head: 'gap' (average pooling, dropout, Dense) or 'flatten' (BN, dropout,
            flatten of the last feature map, Dense, BN: iResNet's "E" output; fixed input size).

    Returns:
        A keras.Model named `config.name`.
    """
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
    if embedding_head != "gap" and not embedding_dim:
        raise ValueError(f"embedding_head={embedding_head!r} makes an embedding: give embedding_dim (and "
                         "include_top=False)")
    if include_top:
        num_classes = _positive_int(num_classes, "num_classes")
    elif embedding_dim:
        check_embedding_head(embedding_head, _input_shape(config, input_shape))
        if pooling is not None and embedding_head == "flatten":
            raise ValueError(f"pooling={pooling!r} does not apply to embedding_head='flatten' (it flattens the map)")
    dropout_rate = config.dropout_rate if dropout_rate is None else dropout_rate
    style = BlockStyle(
        activation=config.activation,
        bn_momentum=config.bn_momentum if bn_momentum is None else bn_momentum,
        bn_epsilon=config.bn_epsilon,
        explicit_padding=config.keras_style_padding,
    )

    inputs = keras.Input(shape=_input_shape(config, input_shape), name="image")
    x = _preprocess(inputs, config)

    padding = "same"
    if style.explicit_padding:
        x = SamePadding2D(3, 2, name="stem_conv_pad")(x)
        padding = "valid"
    x = conv(x, stem_filters(config), 3, "stem_conv", strides=2, padding=padding)
    x = batch_norm(x, "stem_bn", style.bn_momentum, style.bn_epsilon)
    x = layers.Activation(style.activation, name="stem_activation")(x)

    plan = block_plan(config, drop_connect_rate)
    features: dict[int, FeatureInfo] = {}
    for block in plan:
        make = fused_mbconv_block if block.spec.fused else mbconv_block
        x = make(x, block.spec, style, block.prefix, block.drop_rate)
        # A later block at the same stride replaces the entry: each stride keeps its last block.
        features[block.output_stride] = FeatureInfo(block.output_stride, block.spec.output_filters, _producer(x),
                                                    block.stage)

    x = conv(x, head_filters(config), 1, "top_conv")
    x = batch_norm(x, "top_bn", style.bn_momentum, style.bn_epsilon)
    x = layers.Activation(style.activation, name="top_activation")(x)

    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if dropout_rate > 0:
            x = layers.Dropout(dropout_rate, name="top_dropout")(x)
        # float32 logits/probabilities even under a mixed-precision policy.
        x = layers.Dense(
            num_classes,
            activation=classifier_activation,
            kernel_initializer=DENSE_KERNEL_INITIALIZER,
            bias_initializer="zeros",
            dtype="float32",
            name="predictions",
        )(x)
    elif embedding_dim:
        x = _embedding_head(x, embedding_head, embedding_dim, dropout_rate, style, pooling)
        if l2_normalize_embedding:
            x = layers.UnitNormalization(axis=-1, name="embedding_l2", dtype="float32")(x)
    else:
        if pooling == "avg":
            x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        elif pooling == "max":
            x = layers.GlobalMaxPooling2D(name="max_pool")(x)
    model = functional_model(inputs, x, config.name, max_layers=_MAX_LAYERS_PER_BLOCK * (len(plan) + 2))
    _set_feature_info(model, sorted(features.values(), key=lambda info: info.stride))
    return model


# Names defined here before the split, by their new module: still importable from here for one
# release, with a FutureWarning (by name, not an import statement: `factory` imports this module).
_MOVED = {
    **dict.fromkeys(("_recursion_lock", "_recursion_users", "_recursion_saved_limit", "_stack_depth",
                     "_recursion_headroom"), "efficientnet_tf.models.functional"),
    "EMBEDDING_HEADS": "efficientnet_tf.models.heads",
    **dict.fromkeys(("build_model", "build_feature_extractor"), "efficientnet_tf.models.factory"),
}
__getattr__, __dir__ = moved_names(__name__, _MOVED, globals())
