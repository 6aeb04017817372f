"""Random images for throughput tests: no disk, no decode, no real data."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from efficientnet_tf.data.sources.base import Source, _every_nth


def synthetic_source(image_size: int = 224, num_classes: int = 10, examples: int = 1024, seed: int = 0) -> Source:
    """Random images already at the model's size: measures everything but disk and decode."""
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 256, (64, image_size, image_size, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, examples).astype(np.int32)
    num_eval = max(examples // 4, 1)

    def make(split, shuffle_files, seed_, shard):
        n = examples if split == "train" else num_eval
        images = tf.data.Dataset.from_tensor_slices(pool).repeat()
        return _every_nth(tf.data.Dataset.zip(images, tf.data.Dataset.from_tensor_slices(labels[:n])), shard)

    description = f"train: {examples:,} random images; eval: {num_eval:,} random images (synthetic, no real data)"
    return Source("synthetic", num_classes, tuple(str(i) for i in range(num_classes)), examples, num_eval,
                  native_size=image_size, flip_ok=True, _make=make, split_description=description)
