"""Where images come from: TFDS, a folder of images, scikit-learn's digits, or synthetic.

Every source yields (uint8 RGB image of any size, int32 label) pairs plus its metadata;
`efficientnet_tf.data.pipeline` turns them into batches for a model.

One module per source (digits, synthetic, folder, tfrecord, tfds) above what they share (base,
splits, file_check, imagenet), and `dispatch` picks one by name. Every name is importable from
here; to replace one (a test's monkeypatch), replace it in the submodule that looks it up, e.g.
`sources.tfds._can_download`.
"""

from efficientnet_tf._lazy import lazy_exports

_EXPORTS = {  # name -> the submodule that defines it (and where a test patches it)
    "EMBEDDING_ONLY_SOURCES": "base", "OTHER_SOURCES": "base", "TFDS_EXAMPLES": "base", "Source": "base",
    "_every_nth": "base", "_to_rgb": "base", "available_sources": "base",
    "DEFAULT_VALIDATION_FRACTION": "splits", "_held_out_count": "splits", "_percent": "splits",
    "_shard_range": "splits", "_stratified_split": "splits", "held_out_mask": "splits",
    "CACHE_ENV": "file_check", "_load_verdicts": "file_check", "_save_verdicts": "file_check",
    "_verdict_file": "file_check", "cache_dir": "file_check", "check_image_files": "file_check",
    "imagenet21k_class_names": "imagenet", "imagenet_class_names": "imagenet",
    "DIGITS_VALIDATION_FRACTION": "digits", "digits_images": "digits", "digits_source": "digits",
    "digits_split": "digits",
    "synthetic_source": "synthetic",
    "FOLDER_EVAL_DIRS": "folder", "IGNORED_FILES": "folder", "IMAGE_EXTENSIONS": "folder", "_decode_file": "folder",
    "_files_under": "folder", "_folder_layout": "folder", "_split_layout": "folder", "_subdirs": "folder",
    "_too_few_classes": "folder", "folder_source": "folder", "folder_train_count": "folder",
    "usable_image_files": "folder",
    "TFRECORD_IMAGE_KEY": "tfrecord", "TFRECORD_LABEL_KEY": "tfrecord", "TFRECORD_LABEL_OFFSET": "tfrecord",
    "_check_label_range": "tfrecord", "_is_record_cache": "tfrecord", "_warn_once": "tfrecord", "_warned": "tfrecord",
    "record_stats": "tfrecord", "tfrecord_files": "tfrecord", "tfrecord_source": "tfrecord",
    "EVAL_SPLITS": "tfds", "_can_download": "tfds", "_class_label": "tfds", "_prepare": "tfds",
    "_quiet_unprepared_notice": "tfds", "_split_size": "tfds", "tfds_source": "tfds",
    "get_source": "dispatch", "is_tfds_name": "dispatch", "peek_dataset": "dispatch",
}
__all__ = sorted(name for name in _EXPORTS if not name.startswith("_"))
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
