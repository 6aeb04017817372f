"""Batch augmentation (RandAugment, MixUp, CutMix) from keras-cv, kept behind one class.

Applied to whole batches inside tf.data. Magnitudes use the tensorflow/tpu scale where 10 is
the strongest level keras-cv offers; larger values (the V2 paper's 15-25) are clipped to 10.
Augmentation always computes in float32, whatever the global Keras dtype policy.
"""

from __future__ import annotations

import logging

import tensorflow as tf

from efficientnet_tf.data.config import MAX_MAGNITUDE, AugmentConfig
from efficientnet_tf.models.scopes import dtype_policy

log = logging.getLogger(__name__)


class BatchAugmenter:
    """images [B, H, W, 3] float 0..255, labels one-hot [B, C] -> the same, augmented, float32.

    The keras-cv layers are built under a float32 policy: they (and the sub-layers RandAugment
    creates) take their compute dtype from the global policy, and under mixed precision they
    would compute in bfloat16/float16, where CutMix fails (`float32 does not match bfloat16`)
    and pixel values lose precision (bfloat16 keeps 8 bits: 254.6 becomes 254).
    """

    def __init__(self, config: AugmentConfig, seed: int | None = None):
        with dtype_policy("float32"):
            self._build(config, seed)

    def _build(self, config: AugmentConfig, seed: int | None) -> None:
        import keras_cv  # heavy import: only when augmentation is on

        self.config = config
        self.seed = seed
        self.randaug = None
        if config.randaug_layers > 0 and config.randaug_magnitude > 0:
            magnitude = min(config.randaug_magnitude, MAX_MAGNITUDE)
            if magnitude < config.randaug_magnitude:
                log.warning("RandAugment magnitude %s clipped to %s", config.randaug_magnitude, MAX_MAGNITUDE)
            self.randaug = keras_cv.layers.RandAugment(
                value_range=(0, 255),
                augmentations_per_image=config.randaug_layers,
                magnitude=magnitude / MAX_MAGNITUDE,
                seed=seed,
            )
        self.mixup = keras_cv.layers.MixUp(alpha=config.mixup_alpha, seed=seed) if config.mixup_alpha > 0 else None
        self.cutmix = keras_cv.layers.CutMix(alpha=config.cutmix_alpha, seed=seed) if config.cutmix_alpha > 0 else None

    def __call__(self, images, labels):
        images = tf.cast(images, tf.float32)
        if self.randaug is not None:
            images = tf.cast(self.randaug(images, training=True), tf.float32)
        if self.mixup is None and self.cutmix is None:
            return self._in_value_range(images), labels
        batch = {"images": images, "labels": tf.cast(labels, tf.float32)}
        if self.mixup is not None and self.cutmix is not None:
            # Like timm: each batch gets one of the two, with equal chance.
            batch = tf.cond(
                # An op seed makes the choice repeatable without any global seed (TF combines it
                # with its default graph seed when none is set).
                tf.random.uniform([], seed=self.seed) < 0.5,
                lambda: self.mixup(batch, training=True),
                lambda: self.cutmix(batch, training=True),
            )
        elif self.mixup is not None:
            batch = self.mixup(batch, training=True)
        else:
            batch = self.cutmix(batch, training=True)
        return self._in_value_range(batch["images"]), tf.cast(batch["labels"], tf.float32)

    @staticmethod
    def _in_value_range(images):
        # MixUp's blend x*l + y*(1-l) of two 255s rounds to 255.00002 in float32.
        return tf.clip_by_value(tf.cast(images, tf.float32), 0.0, 255.0)
