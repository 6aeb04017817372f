"""EfficientNet V1, V2 and Lite in Keras, weight-compatible with keras.applications."""

from efficientnet_tf.block_args import BlockSpec, decode_block, decode_blocks, encode_block, encode_blocks
from efficientnet_tf.builder import (
    build_efficientnet,
    build_feature_extractor,
    build_model,
    custom_config,
    round_filters,
    round_repeats,
)
from efficientnet_tf.configs import ModelConfig, get_config, list_models

__version__ = "0.1.0"

__all__ = [
    "BlockSpec",
    "ModelConfig",
    "build_efficientnet",
    "build_feature_extractor",
    "build_model",
    "custom_config",
    "decode_block",
    "decode_blocks",
    "encode_block",
    "encode_blocks",
    "get_config",
    "list_models",
    "round_filters",
    "round_repeats",
]
