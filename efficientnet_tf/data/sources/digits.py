"""scikit-learn's digits: the offline dataset of real images."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from efficientnet_tf.data.sources.base import Source
from efficientnet_tf.data.sources.splits import _percent

# The digits source keeps 20%: the README's digits figures were measured with it.
DIGITS_VALIDATION_FRACTION = 0.2


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits as (uint8 RGB images [N, 8, 8, 3] in 0..255, int32 labels)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # stored as 0..16
    return np.repeat(images[..., None], 3, axis=-1), digits.target.astype(np.int32)


def digits_split(validation_fraction: float = DIGITS_VALIDATION_FRACTION, seed: int = 0):
    """(images uint8 [N, 8, 8, 3], labels, train indices, eval indices): stratified, seeded."""
    from sklearn.model_selection import train_test_split

    images, labels = digits_images()
    train_idx, eval_idx = train_test_split(
        np.arange(len(labels)), test_size=validation_fraction, stratify=labels, random_state=seed
    )
    return images, labels, np.sort(train_idx), np.sort(eval_idx)


def digits_source(validation_fraction: float | None = None, seed: int = 0) -> Source:
    """scikit-learn's 1,797 real handwritten 8x8 digits as RGB 0..255: the offline dataset.

    Args:
        validation_fraction: share held out (stratified, seeded) for evaluation; None: 0.2.
        seed: picks the held-out images.
    """
    fraction = DIGITS_VALIDATION_FRACTION if validation_fraction is None else validation_fraction
    images, labels, train_idx, eval_idx = digits_split(fraction, seed)
    splits = {"train": train_idx, "eval": eval_idx}

    def make(split, shuffle_files, seed_, shard):
        idx = splits[split] if shard is None else splits[split][shard[1]::shard[0]]
        return tf.data.Dataset.from_tensor_slices((images[idx], labels[idx]))

    description = (f"train: scikit-learn digits minus a stratified seeded {_percent(fraction)} (seed {seed}), "
                   f"{len(train_idx):,} images; eval: the held-out {_percent(fraction)}, {len(eval_idx):,} images")
    return Source("digits", 10, tuple(str(i) for i in range(10)), len(train_idx), len(eval_idx),
                  native_size=8, flip_ok=False, _make=make, split_description=description)
