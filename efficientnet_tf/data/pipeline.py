"""tf.data pipelines: crop/resize per example, batch, augment per batch, distribute.

Outputs float32 images in 0..255 (the model normalizes) at a static size, and int32 labels or
one-hot float labels when mixing or label smoothing needs them.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import tensorflow as tf

from efficientnet_tf.data.augment import BatchAugmenter
from efficientnet_tf.data.config import SMALL_IMAGE, AugmentConfig
from efficientnet_tf.data.pixels import warn_if_unit_scaled
from efficientnet_tf.data.sources import Source

log = logging.getLogger(__name__)
# Training images the int8 exports calibrate on (and quantization-aware training measures its ranges on).
CALIBRATION_IMAGES = 200

@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    image_size: int
    global_batch_size: int
    augment: AugmentConfig = AugmentConfig()
    one_hot: bool = False  # forced on when augment mixes labels
    crop_padding: int = 32  # eval center crop: image_size / (image_size + crop_padding)
    random_flip: bool = True
    cache: bool = False
    shuffle_buffer: int = 10_000
    seed: int | None = None  # set: same batches every run (stateless per-example randomness)
    drop_remainder: bool | None = None  # default: True for training (static shapes), False for eval
    # Eval only: yield (image, label, weight) with zero-weight padding, so that every batch is full
    # (static shapes for TPU/XLA, no empty per-replica batch) and every worker runs the same
    # number of steps, while each real example still counts exactly once.
    pad_eval: bool = False

    def __post_init__(self):
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32, got {self.image_size}")
        if self.global_batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.global_batch_size}")


def _resize(image, size):
    image = tf.image.resize(image, [size, size], method="bicubic", antialias=True)
    return tf.clip_by_value(image, 0.0, 255.0)  # bicubic overshoots


def _small_image_crop(image, size, seed, flip):
    """Pad by 1/8 of the side and crop back (the CIFAR recipe), then resize up."""
    shape = tf.shape(image)
    pad = tf.maximum(1, tf.minimum(shape[0], shape[1]) // 8)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    image = tf.image.stateless_random_crop(padded, shape, seed=seed)
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=seed + 1)
    return _resize(tf.cast(image, tf.float32), size)


def _inception_crop(image, size, seed, flip):
    """Random area 8%-100%, aspect 3/4-4/3 (the papers' train crop), resize, flip."""
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
        seed=seed,
        min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    image = tf.slice(image, begin, crop_size)
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=seed + 1)
    return _resize(tf.cast(image, tf.float32), size)


def preprocess_train(image, size: int, seed, flip: bool = True):
    small = tf.minimum(tf.shape(image)[0], tf.shape(image)[1]) < SMALL_IMAGE
    image = tf.cond(small, lambda: _small_image_crop(image, size, seed, flip), lambda: _inception_crop(image, size, seed, flip))
    return tf.ensure_shape(image, [size, size, 3])


def preprocess_eval(image, size: int, crop_padding: int = 32):
    """Center crop of size/(size+padding) of the short side, resize; small images: resize only."""
    shape = tf.shape(image)
    side = tf.minimum(shape[0], shape[1])

    def center_crop():
        crop = tf.cast(tf.cast(side, tf.float32) * (size / (size + crop_padding)), tf.int32)
        top, left = (shape[0] - crop + 1) // 2, (shape[1] - crop + 1) // 2
        return _resize(tf.cast(tf.slice(image, [top, left, 0], [crop, crop, 3]), tf.float32), size)

    image = tf.cond(side < SMALL_IMAGE, lambda: _resize(tf.cast(image, tf.float32), size), center_crop)
    return tf.ensure_shape(image, [size, size, 3])


def per_replica_batch_size(global_batch_size: int, num_replicas: int) -> int:
    if global_batch_size % num_replicas:
        raise ValueError(
            f"batch size {global_batch_size} is not divisible by the {num_replicas} replicas; "
            f"use a multiple of {num_replicas}"
        )
    return global_batch_size // num_replicas


def make_dataset(source: Source, config: PipelineConfig, training: bool,
                 input_context: tf.distribute.InputContext | None = None, epoch: int = 0,
                 repeat: bool = False, split: str | None = None, skip_steps: int = 0,
                 shuffle: bool | None = None) -> tf.data.Dataset:
    """One input pipeline; under a strategy, one per input worker (`input_context`). `split`
    ('train' or 'eval') defaults to the one `training` reads: training images with training
    preprocessing, eval images with eval preprocessing. `shuffle`: read the examples in a seeded
    shuffled order (default: when training; a folder's split is otherwise in class order, so its
    first images are a few classes' only). `skip_steps`: start after that many
    global batches (a resumed epoch), skipped before decoding; every later batch is the one an
    uninterrupted pipeline gives (per-example augmentation is seeded by position)."""
    seed = config.seed if config.seed is not None else int(np.random.default_rng().integers(2**31))
    batch = config.global_batch_size
    split = split or ("train" if training else "eval")
    shard, replicas_per_pipeline = None, 1
    if input_context is not None:
        batch = per_replica_batch_size(config.global_batch_size, input_context.num_replicas_in_sync)
        replicas_per_pipeline = input_context.num_replicas_in_sync // input_context.num_input_pipelines
        if input_context.num_input_pipelines > 1:
            shard = (input_context.num_input_pipelines, input_context.input_pipeline_id)
    shuffle = training if shuffle is None else shuffle
    ds = source.examples(split, shuffle_files=shuffle, seed=seed + epoch, shard=shard)
    _warn_if_images_look_unit_scaled(ds)
    if config.cache:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(config.shuffle_buffer, seed=seed + epoch, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    flip = config.random_flip and source.flip_ok
    size = config.image_size

    def prepare(index, example):
        image, label = example
        if training:
            element_seed = tf.stack([tf.cast(seed + epoch, tf.int64), index])
            image = preprocess_train(image, size, element_seed, flip)
        else:
            image = preprocess_eval(image, size, config.crop_padding)
        return image, label

    ds = ds.enumerate()
    if skip_steps:
        ds = ds.skip(skip_steps * batch * replicas_per_pipeline)  # this pipeline's share of each global batch
    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=config.seed is not None)
    drop = training if config.drop_remainder is None else config.drop_remainder
    if config.pad_eval and not training:
        ds = _pad_with_zero_weights(ds, _largest_shard(source, split, shard), batch, size, input_context)
        drop = True
    ds = ds.batch(batch, drop_remainder=drop)
    one_hot = config.one_hot or (training and config.augment.mixes_labels)
    if one_hot:
        depth = source.num_classes
        ds = ds.map(lambda x, y, *weight: (x, tf.one_hot(y, depth), *weight), num_parallel_calls=tf.data.AUTOTUNE)
    if training and config.augment.active:
        augmenter = BatchAugmenter(config.augment, seed=config.seed)
        ds = ds.map(augmenter, num_parallel_calls=tf.data.AUTOTUNE, deterministic=config.seed is not None)
    options = tf.data.Options()
    options.deterministic = config.seed is not None
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def _warn_if_images_look_unit_scaled(ds: tf.data.Dataset, examples: int = 4) -> None:
    """Warn (once) when a source yields float images that look scaled to 0..1: the models take
    0..255. Integer images cannot be; float ones cost a look at the first few examples."""
    if not ds.element_spec[0].dtype.is_floating or not tf.executing_eagerly():
        return
    warn_if_unit_scaled([image.numpy() for image, *_ in ds.take(examples)], "input pipeline")


def _largest_shard(source: Source, split: str, shard: tuple[int, int] | None) -> int:
    """Examples in the largest of the split's shards (the whole split when not sharded), for
    padding every pipeline to the same number of batches: the source's counts, else (a source
    that does not know them) one pass over each shard."""
    count = shard[0] if shard else 1
    sizes = source.shard_sizes(split, count)
    if sizes is None:
        log.info("%s does not say how many %s examples it has: counting them (one pass)", source.name, split)
        sizes = []
        for index in range(count):
            ds = source.examples(split, shard=(count, index) if shard else None)
            known = int(ds.cardinality())
            sizes.append(known if known >= 0 else int(ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1)))
    return max(sizes)


def _pad_with_zero_weights(ds, shard_examples: int, batch: int, size: int, input_context) -> tf.data.Dataset:
    """Pad this pipeline's shard to the same whole number of batches on every pipeline (from the
    largest shard's `shard_examples`), and to a multiple of the replicas it feeds (each gets a
    full batch on every step)."""
    pipelines = input_context.num_input_pipelines if input_context is not None else 1
    replicas_per_pipeline = input_context.num_replicas_in_sync // pipelines if input_context is not None else 1
    step = batch * replicas_per_pipeline
    length = max(1, -(-shard_examples // step)) * step
    label_spec = ds.element_spec[1]
    padding = tf.data.Dataset.from_tensors(
        (tf.zeros([size, size, 3], tf.float32), tf.zeros(label_spec.shape, label_spec.dtype), tf.constant(0.0))).repeat()
    return ds.map(lambda x, y: (x, y, tf.constant(1.0))).concatenate(padding).take(length)


def distributed_dataset(strategy: tf.distribute.Strategy, source: Source, config: PipelineConfig,
                        training: bool, epoch: int = 0, repeat: bool = False, split: str | None = None,
                        skip_steps: int = 0):
    """Per-replica batches: each input worker builds its own shard of the pipeline."""
    per_replica_batch_size(config.global_batch_size, strategy.num_replicas_in_sync)  # fail early
    return strategy.distribute_datasets_from_function(
        lambda ctx: make_dataset(source, config, training, input_context=ctx, epoch=epoch, repeat=repeat, split=split,
                                 skip_steps=skip_steps)
    )
