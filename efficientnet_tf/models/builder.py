"""One builder turns a ModelConfig (block specs + scaling) into a functional keras.Model."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
import sys
import threading
from collections.abc import Sequence

import keras
from keras import layers

from efficientnet_tf.models import configs
from efficientnet_tf.models.block_args import BlockSpec
from efficientnet_tf.models.configs import ModelConfig
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
_recursion_lock = threading.Lock()
_recursion_users = 0
_recursion_saved_limit = 0


def _stack_depth() -> int:
    depth, frame = 0, sys._getframe()
    while frame is not None:
        depth, frame = depth + 1, frame.f_back
    return depth


@contextlib.contextmanager
def _recursion_headroom(frames: int):
    """Let `frames` more Python frames nest than the caller has now, then restore the limit.

    V2-XL and L2 have ~1,300 layers in one chain, more than Python's default limit of 1,000
    frames, and the caller's own stack (a notebook, a pytest-xdist worker) comes on top. The
    limit is raised only while the graph is ordered and put back after, so the process keeps
    the limit it had. Nested or concurrent builds share one raise; the last one out restores.
    """
    global _recursion_users, _recursion_saved_limit
    needed = _stack_depth() + frames
    with _recursion_lock:
        if _recursion_users == 0:
            _recursion_saved_limit = sys.getrecursionlimit()
        _recursion_users += 1
        if needed > sys.getrecursionlimit():
            sys.setrecursionlimit(needed)
    try:
        yield
    finally:
        with _recursion_lock:
            _recursion_users -= 1
            if _recursion_users == 0:
                sys.setrecursionlimit(_recursion_saved_limit)


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


def functional_model(inputs, outputs, name: str, max_layers: int) -> keras.Model:
    """keras.Model(inputs, outputs) for a graph of up to `max_layers` layers, from any caller.

    Works under Python's default recursion limit however deep the caller's stack is (see
    `_recursion_headroom`); use it for every functional model over a whole EfficientNet.
    """
    with _recursion_headroom(max_layers + 64):
        return keras.Model(inputs, outputs, name=name)


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


def _embedding_head(x, head: str, embedding_dim: int, dropout_rate: float, style: BlockStyle, pooling=None):
    """The embedding from the last feature map, before any normalization ('gap': average pooling,
    or max pooling with pooling='max')."""
    if head == "gap":
        pool = layers.GlobalMaxPooling2D(name="max_pool") if pooling == "max" else layers.GlobalAveragePooling2D(
            name="avg_pool")
        x = pool(x)
    else:
        # iResNet's "E" output: every position keeps its own weights (no pooling), and the final
        # BN has no learned scale, as in insightface's recognition backbones.
        x = batch_norm(x, "embedding_feature_bn", style.bn_momentum, style.bn_epsilon)
    if dropout_rate > 0:
        x = layers.Dropout(dropout_rate, name="top_dropout")(x)
    if head == "flatten":
        x = layers.Flatten(name="embedding_flatten")(x)
    x = layers.Dense(embedding_dim, kernel_initializer=DENSE_KERNEL_INITIALIZER, dtype="float32", name="embedding")(x)
    if head == "flatten":
        x = layers.BatchNormalization(momentum=style.bn_momentum, epsilon=style.bn_epsilon, scale=False,
                                      dtype="float32", name="embedding_bn")(x)
    return x



EMBEDDING_HEADS = ("gap", "flatten")


def check_embedding_head(head: str, input_shape) -> None:
    """ValueError (one line) for an unknown head, or a flatten head without a fixed input size."""
    if head not in EMBEDDING_HEADS:
        raise ValueError(f"embedding_head must be one of {', '.join(EMBEDDING_HEADS)}, got {head!r}")
    if head == "flatten" and None in tuple(input_shape)[:2]:
        raise ValueError(f"embedding_head='flatten' flattens a feature map of fixed size: it needs a fixed "
                         f"input_shape such as (112, 112, 3), got {tuple(input_shape)}")


def build_model(
    name: str | ModelConfig,
    num_classes: int | None = None,
    input_shape=None,
    include_top: bool = True,
    pooling: str | None = None,
    weights: str | None = None,
    dropout_rate: float | None = None,
    drop_connect_rate: float | None = None,
    bn_momentum: float | None = None,
    classifier_activation: str | None = "softmax",
    embedding_dim: int | None = None,
    l2_normalize_embedding: bool = True,
    embedding_head: str = "gap",
) -> keras.Model:
    """Build a registered EfficientNet, optionally with pretrained weights.

    Models take raw RGB pixels in 0..255; each variant's normalization is inside the model.

    Args:
        name: a registered name (`list_models()`), e.g. 'efficientnet-b0', 'efficientnetv2-s',
            'efficientnet-lite0', or a `ModelConfig` (see `custom_config`).
        num_classes: classifier outputs; None: those of the pretrained weights (21,843 for
            'imagenet21k'), else 1000. With pretrained weights and another count, everything
            but the classifier is loaded.
        input_shape: (height, width, 3) with sides >= 32, or (None, None, 3) for any size;
            None: the variant's resolution.
        include_top: end with the classifier; False: the backbone (see `pooling`).
        pooling: without the top: None (4D feature map), 'avg' or 'max'.
        weights: None (random), 'imagenet' (the official keras.applications file, downloaded
            once and md5-checked), an official checkpoint family such as 'advprop',
            'noisy-student' or 'imagenet21k-ft1k' (`list_weights(name)`; downloaded and converted
            once, and the model normalizes its inputs as that family was trained), or the path
            of a Keras/HDF5 weight file.
        dropout_rate: before the classifier; None: the variant's (B0 0.2 ... B7 0.5).
        drop_connect_rate: stochastic depth rate of the last block; None: the variant's (0.2).
        bn_momentum: BatchNormalization momentum; None: the variant's.
        classifier_activation: 'softmax' (default), None for logits, or any Keras activation.
        embedding_dim: with `include_top=False`: add an embedding of this size (a recognition
            backbone: the output is the L2-normalized embedding).
        l2_normalize_embedding: unit-normalize that embedding.
        embedding_head: how the embedding is made from the last feature map (docs/recognition.md):
            'gap': average pooling, dropout, Dense (B0: 0.66M parameters at 512-d);
            'flatten': BN, dropout, flatten, Dense, BN, iResNet's "E" output (B0 at 112x112:
            10.5M parameters at 512-d), which needs a fixed `input_shape`.

    Returns:
        A functional keras.Model with keras.applications' layer names and `feature_info`.

    Raises:
        ValueError: an unknown name, a bad shape or argument (one line naming it).
    """
    from efficientnet_tf.models.official import default_num_classes, resolve_weights

    config, family = resolve_weights(name, weights)
    if num_classes is None:
        num_classes = default_num_classes(family)
    if embedding_dim is not None:
        if include_top:
            raise ValueError("embedding_dim needs include_top=False (the embedding replaces the classifier)")
        embedding_dim = _positive_int(embedding_dim, "embedding_dim")
    model = build_efficientnet(
        config,
        num_classes=num_classes,
        input_shape=input_shape,
        include_top=include_top,
        pooling=pooling,
        dropout_rate=dropout_rate,
        drop_connect_rate=drop_connect_rate,
        bn_momentum=bn_momentum,
        classifier_activation=classifier_activation,
        embedding_dim=embedding_dim,
        l2_normalize_embedding=l2_normalize_embedding,
        embedding_head=embedding_head,
    )
    if weights is not None:
        from efficientnet_tf.models.weights import load_weights  # keeps h5py off the import path

        load_weights(model, config, weights)
    return model


def build_feature_extractor(
    name: str | ModelConfig,
    input_shape=None,
    weights: str | None = None,
    strides: Sequence[int] = (2, 4, 8, 16, 32),
) -> keras.Model:
    """A backbone that returns its multi-scale feature maps (for detection and segmentation).

    Args:
        name: a registered model name (see `list_models()`) or a `ModelConfig`.
        input_shape: (height, width, 3); None: the variant's resolution; (None, None, 3): any size.
        weights: None, 'imagenet' or a weight file, as for `build_model`.
        strides: output strides to return, each the last block at that resolution (as recorded
            in the backbone's `feature_info` while it was built).

    Returns:
        A keras.Model with one output per stride, in the order given; its `feature_info` lists them.
    """
    backbone = build_model(name, input_shape=input_shape, include_top=False, weights=weights)
    by_stride = {info.stride: info for info in backbone.feature_info}
    missing = [stride for stride in strides if stride not in by_stride]
    if missing:
        raise ValueError(f"no feature map at stride {missing[0]}; available: {sorted(by_stride)}")
    chosen = [by_stride[stride] for stride in strides]
    model = functional_model(backbone.input, [backbone.get_layer(info.layer).output for info in chosen],
                             f"{backbone.name}_features", max_layers=len(backbone.layers))
    _set_feature_info(model, chosen)
    return model
