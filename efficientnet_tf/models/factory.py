"""`build_model`: a registered name (or a config) and pretrained weights in, a model out.

The top of the models package: it resolves a weights name with `official` (the checkpoint
families), builds the architecture with `builder` and loads the file with `weights`.
`build_feature_extractor` builds on it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import keras

from efficientnet_tf.models.builder import _positive_int, _set_feature_info, build_efficientnet
from efficientnet_tf.models.configs import ModelConfig
from efficientnet_tf.models.functional import functional_model


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
        ValueError: an unknown name, a bad shape or argument (one line naming it), including
            `weights` that name no pretrained weights of the variant.
        FileNotFoundError: `weights` is a path (a directory in it, or a weight file's
            extension) where there is no file.
    """
    from efficientnet_tf.models.official import default_num_classes, resolve_weights
    from efficientnet_tf.models.weights import check_weights_file  # keeps h5py off the import path

    config, family = resolve_weights(name, weights)
    if weights is not None and family is None and weights != "imagenet":
        check_weights_file(config, os.fspath(weights))  # before the (for B7, L2: long) build
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
