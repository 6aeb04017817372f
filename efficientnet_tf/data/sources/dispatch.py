"""A source by its dataset name: 'digits', 'synthetic', 'folder:PATH', 'tfrecord:GLOB' or a TFDS name."""

from __future__ import annotations

from efficientnet_tf.data.sources.base import Source, available_sources
from efficientnet_tf.data.sources.digits import digits_source
from efficientnet_tf.data.sources.folder import folder_source, folder_train_count
from efficientnet_tf.data.sources.synthetic import synthetic_source
from efficientnet_tf.data.sources.tfds import tfds_source
from efficientnet_tf.data.sources.tfrecord import (
    TFRECORD_IMAGE_KEY,
    TFRECORD_LABEL_KEY,
    TFRECORD_LABEL_OFFSET,
    tfrecord_files,
    tfrecord_source,
)
from efficientnet_tf.settings import SettingError


def is_tfds_name(name: str) -> bool:
    """Whether dataset `name` is a TFDS name (not digits, synthetic, folder:PATH or tfrecord:GLOB)."""
    return name not in ("digits", "synthetic") and not name.startswith(("folder:", "tfrecord:"))


def get_source(name: str, data_dir: str | None = None, *, validation_fraction: float | None = None, seed: int = 0,
               on_bad_image: str = "error", download: bool = True, label_key: str = "label",
               synthetic_image_size: int = 224, synthetic_num_classes: int = 10,
               synthetic_examples: int = 1024, eval_dataset: str | None = None,
               tfrecord_features: tuple[str, str, int] = (TFRECORD_IMAGE_KEY, TFRECORD_LABEL_KEY, TFRECORD_LABEL_OFFSET),
               class_names=None) -> Source:
    """Pick a data source by name: 'digits', 'synthetic', 'folder:PATH', 'tfrecord:GLOB' or a TFDS name.

    Args:
        name: 'digits', 'synthetic', 'folder:PATH', 'tfrecord:GLOB' (local or gs://) or a TFDS
            dataset name.
        data_dir: where TFDS datasets are (or get) prepared; None: TFDS's default.
        validation_fraction: share of the training images held out (seeded) for evaluation when
            the dataset has no evaluation split of its own. None: 0.1 (digits: 0.2).
        seed: picks the held-out images; the same seed gives the same split on every read.
        on_bad_image: folders only: 'error' (name the unreadable files) or 'skip' them.
        download: TFDS only: prepare a missing dataset (False: fail instead).
        label_key: TFDS only: the ClassLabel feature to classify (smallnorb: 'label_category').
        eval_dataset: tfrecord only: 'tfrecord:GLOB' of the evaluation files (None: a held-out
            share of the training records).
        tfrecord_features: tfrecord only: (image feature, label feature, first label's number).
        class_names: tfrecord only: the class names in label order (None: ImageNet's 1000).
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"dataset name must be a non-empty string; choose from {available_sources()}")
    if validation_fraction is not None and not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1) or None (the default), got {validation_fraction}")
    is_tfrecord = name.startswith("tfrecord:")
    if label_key != "label" and not is_tfds_name(name):
        raise ValueError(f"label_key={label_key!r} applies to TFDS datasets only, not to {name!r}")
    if eval_dataset is not None and not (is_tfrecord and eval_dataset.startswith("tfrecord:")):
        raise SettingError("eval_dataset", f"the evaluation files of a tfrecord: dataset are tfrecord:GLOB, got "
                           f"{eval_dataset!r}" if is_tfrecord else "for training, eval_dataset names the evaluation "
                           f"files (tfrecord:GLOB) of a tfrecord: dataset; {name!r} has its own evaluation split")
    if is_tfrecord:
        image_key, tf_label_key, offset = tfrecord_features
        return tfrecord_source(name[len("tfrecord:"):], eval_dataset[len("tfrecord:"):] if eval_dataset else None,
                               validation_fraction=validation_fraction, seed=seed, image_key=image_key,
                               label_key=tf_label_key, label_offset=offset, class_names=class_names)
    if name == "digits":
        return digits_source(validation_fraction, seed)
    if name == "synthetic":
        return synthetic_source(synthetic_image_size, synthetic_num_classes, synthetic_examples, seed)
    if name.startswith("folder:"):
        return folder_source(name[len("folder:"):], validation_fraction, seed, on_bad_image)
    return tfds_source(name, data_dir, download=download, validation_fraction=validation_fraction, seed=seed,
                       label_key=label_key)


def peek_dataset(name: str, data_dir: str | None = None, **source_args) -> tuple[int | None, int | None]:
    """(stored image size or None: varied, training images or None: unknown) of dataset `name`,
    without downloading or decoding images: what resolving a run's values needs before any work
    starts. `source_args` go to `get_source` (label_key, validation_fraction, seed)."""
    if name.startswith("tfrecord:"):
        tfrecord_files(name[len("tfrecord:"):])  # files missing: say so now (counting them means reading them)
        return None, None
    if name.startswith("folder:"):
        # Any size. Counted from the file names: opening a folder source checks every file.
        return None, folder_train_count(name[len("folder:"):], source_args.get("validation_fraction"))
    try:
        source = get_source(name, data_dir, download=False, **source_args)
        return source.native_size, source.num_train
    except FileNotFoundError:
        # A TFDS dataset that is not prepared here: the metadata TFDS ships has the image shape.
        import tensorflow_datasets as tfds

        features = tfds.builder(name, data_dir=data_dir).info.features
        shape = features["image"].shape if "image" in features else (None, None)
        return (shape[0] if shape[0] is not None and shape[0] == shape[1] else None), None
