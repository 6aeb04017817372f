"""The images an export calibrates on and is checked against, from a run's own data pipeline
(or another dataset's, `calibration_dataset`): training images (augmented) for calibration,
training images as deployed for int8_selective's search, the eval split then training images
for the agreement checks."""

from __future__ import annotations

import dataclasses

import numpy as np

from efficientnet_tf.data.pipeline import PipelineConfig, make_dataset
from efficientnet_tf.data.sources import EMBEDDING_ONLY_SOURCES
from efficientnet_tf.settings import SettingError
from efficientnet_tf.training.rundir import load_run

SEARCH_IMAGES = 2000  # training images int8_selective's search measures agreement on
MAX_CHECK_BYTES = 4 << 30  # check_images=0 holds every image in memory: fine for digits, not for ImageNet


@dataclasses.dataclass(frozen=True)
class CheckImages:
    """The images an exported model is compared with the float model on. Agreement is model vs
    model and needs no labels, so it uses every image there is: the eval split first, then
    training images (eval preprocessing). Top-1 against labels uses the eval images only."""

    images: np.ndarray  # float 0..255; the first `num_eval` are the eval split
    num_eval: int
    eval_labels: np.ndarray | None  # None: another dataset's images, whose labels mean nothing here


def check_images_of(source, image_size: int, seed: int | None, count: int = 0, labels: bool = True) -> CheckImages:
    """Up to `count` images (0: all) of `source`: eval split, then training split."""
    if not count:  # "all" is for small datasets: the images are held in memory
        known = None if source.num_eval is None or source.num_train is None else source.num_eval + source.num_train
        if known is None or known * image_size * image_size * 3 * 4 > MAX_CHECK_BYTES:
            what = f"{known:,} images" if known else "every image of a dataset of unknown size"
            raise SettingError("check_images", f"check_images=0 would hold {what} of {image_size}x{image_size} in "
                               f"memory (more than {MAX_CHECK_BYTES >> 30} GB); give a count, e.g. 2000")
    wanted = count or 10**9
    images, eval_labels = _take_images(source, image_size, seed, wanted, training=False)
    num_eval = len(images)
    if num_eval < wanted:
        train_images, _ = _take_images(source, image_size, seed, wanted - num_eval, training=False, split="train")
        images = np.concatenate([images, train_images])
    return CheckImages(images, num_eval, eval_labels if labels else None)


def pipeline_images(model_dir: str, count: int, training: bool):
    """Images (float 0..255) and labels from a run's own data pipeline: the training pipeline
    (random crops, no RandAugment/mixup) for calibration, the eval pipeline for agreement."""
    config, info = load_run(model_dir)
    return _take_images(config.load_source("skip"), int(info["image_size"]), config.run.seed, count, training)


def _take_images(source, image_size: int, seed: int | None, count: int, training: bool, split: str | None = None,
                 shuffle: bool | None = None):
    pipeline = PipelineConfig(image_size=image_size, global_batch_size=min(count, 64), seed=seed, drop_remainder=False)
    if shuffle and not training:
        # A buffer of `count` decoded images, not training's 10,000: the files (a folder's: every
        # path) are shuffled before decoding anyway.
        pipeline = dataclasses.replace(pipeline, shuffle_buffer=max(1, min(count, pipeline.shuffle_buffer)))
    images, labels = [], []
    for batch_images, batch_labels in make_dataset(source, pipeline, training=training, repeat=training, split=split,
                                                   shuffle=shuffle):
        images.append(batch_images.numpy())
        labels.append(batch_labels.numpy())
        if sum(len(b) for b in images) >= count:
            break
    images, labels = np.concatenate(images)[:count], np.concatenate(labels)[:count]
    if labels.ndim == 2:
        labels = labels.argmax(-1)
    return images, labels


def _calibration_source(run_config, calibration_dataset: str | None):
    """The dataset TFLite export calibrates on: the run's own, or `calibration_dataset`."""
    dataset = calibration_dataset or run_config.data.dataset
    try:
        if calibration_dataset:
            # Calibration needs no labels: any dataset, read as a plain one, except those that hold
            # identities only (glyphs), which are read as the embedding task reads them.
            task = "embedding" if calibration_dataset in EMBEDDING_ONLY_SOURCES else "classification"
            return run_config.replace(dataset=calibration_dataset, label_key="label", task=task).load_source("skip")
        return run_config.load_source("skip")
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"TFLite and ONNX export calibrate on and check against images of the run's dataset, but {dataset!r} "
            f"cannot be loaded here ({err}). Export the SavedModel only (no TFLite formats, no ONNX), or name "
            "another dataset of similar images as calibration_dataset (a classification dataset, or one that holds "
            f"identities only: {', '.join(EMBEDDING_ONLY_SOURCES)})") from None
