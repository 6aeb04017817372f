"""Images in: sources (TFDS, image folders, digits, synthetic) -> tf.data pipeline -> batch augmentation."""

from efficientnet_tf._lazy import lazy_exports

_EXPORTS = {
    "AugmentConfig": "config", "DataConfig": "config", "SMALL_IMAGE": "config",
    "Source": "sources", "get_source": "sources", "available_sources": "sources", "digits_source": "sources",
    "digits_split": "sources", "synthetic_source": "sources", "folder_source": "sources", "tfds_source": "sources",
    "held_out_mask": "sources", "check_image_files": "sources", "cache_dir": "sources",
    "peek_dataset": "sources",
    "PipelineConfig": "pipeline", "make_dataset": "pipeline", "distributed_dataset": "pipeline",
    "preprocess_train": "pipeline", "preprocess_eval": "pipeline", "per_replica_batch_size": "pipeline",
    "BatchAugmenter": "augment",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals(), fallback=("sources",))  # 0.1 names of data.py
