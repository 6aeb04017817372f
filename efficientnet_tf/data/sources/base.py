"""The `Source` every dataset is, the names of the sources, and what all of them share."""

from __future__ import annotations

import dataclasses

import tensorflow as tf

TFDS_EXAMPLES = ("cifar10", "cifar100", "oxford_flowers102", "cars196", "food101", "imagenet2012")
OTHER_SOURCES = ("folder:PATH", "tfrecord:GLOB", "digits", "synthetic")
# Identity datasets (data.identities) with no classification split.
EMBEDDING_ONLY_SOURCES = ("glyphs",)


@dataclasses.dataclass(frozen=True)
class Source:
    """A dataset: one tf.data of (image, label) per split, and what a model needs to know."""

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    num_train: int | None  # exactly what examples("train") yields
    num_eval: int | None  # exactly what examples("eval") yields
    # Smallest side of the stored images when all share it (CIFAR 32, digits 8), else None.
    native_size: int | None
    # Handwriting and text are not mirror-symmetric: no horizontal flips for them.
    flip_ok: bool
    # (split, shuffle_files, seed, shard) -> Dataset of that shard's examples (shard: None or
    # (count, index), one of `count` input pipelines).
    _make: object = dataclasses.field(repr=False, compare=False)
    # One line saying which data trains and which evaluates, with counts (printed, kept in run.json).
    split_description: str = ""
    # (split, count) -> examples in each of `count` shards, for sources whose shards are not an
    # even split of the examples (whole files); None: shard i holds examples i, i + count, ...
    _shard_sizes: object = dataclasses.field(default=None, repr=False, compare=False)
    # Identity-split sources (data.identities): the held-out identities the eval labels number;
    # empty: the eval split has the training classes.
    eval_class_names: tuple[str, ...] = ()

    def examples(self, split: str, shuffle_files: bool = False, seed: int | None = None,
                 shard: tuple[int, int] | None = None) -> tf.data.Dataset:
        """(uint8 image [H, W, 3], int32 label) for split 'train' or 'eval'; with `shard=(count,
        index)`, only that input pipeline's share, read from its own files where the source has
        several (TFRecords, TFDS, image folders) rather than read in full and thinned out."""
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        if shard is not None and not (shard[0] >= 1 and 0 <= shard[1] < shard[0]):
            raise ValueError(f"shard must be (count, index) with 0 <= index < count, got {shard}")
        return self._make(split, shuffle_files, seed, shard if shard and shard[0] > 1 else None)

    def shard_sizes(self, split: str, count: int) -> list[int] | None:
        """Examples in each of `count` shards of `split` (None: the source does not know its size)."""
        if self._shard_sizes is not None and count > 1:
            return self._shard_sizes(split, count)
        total = self.num_train if split == "train" else self.num_eval
        return None if total is None else [len(range(index, total, count)) for index in range(count)]


def _every_nth(ds: tf.data.Dataset, shard: tuple[int, int] | None) -> tf.data.Dataset:
    """Shard `index` of `count` by example (i, i + count, ...), as `Source.shard_sizes` counts."""
    return ds if shard is None else ds.shard(*shard)


def available_sources() -> str:
    return ", ".join(OTHER_SOURCES + TFDS_EXAMPLES) + " or any TFDS image-classification dataset"


def _to_rgb(image):
    channels = image.shape[-1]
    if channels == 1:
        image = tf.image.grayscale_to_rgb(image)
    elif channels == 4:
        image = image[..., :3]
    elif channels is None:
        image = tf.cond(tf.shape(image)[-1] == 1, lambda: tf.tile(image, [1, 1, 3]), lambda: image[..., :3])
    return tf.ensure_shape(tf.cast(image, tf.uint8), [None, None, 3])
