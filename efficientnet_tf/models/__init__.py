"""The networks: block-args strings -> registry of configs -> layers -> one builder -> official
checkpoints and weight files -> `build_model` (factory)."""

from efficientnet_tf._lazy import lazy_exports

_EXPORTS = {
    "BlockSpec": "block_args", "decode_block": "block_args", "decode_blocks": "block_args",
    "encode_block": "block_args", "encode_blocks": "block_args",
    "ModelConfig": "configs", "custom_config": "configs", "get_config": "configs", "list_models": "configs",
    "FeatureInfo": "builder", "build_efficientnet": "builder", "build_feature_extractor": "factory",
    "build_model": "factory", "round_filters": "builder", "round_repeats": "builder",
    "load_weights": "weights", "list_weights": "official", "count_macs": "flops", "model_summary": "flops",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
