"""A run's stages: spans of epochs with one image size and one strength of regularization.

One stage for plain training; frozen-backbone then unfrozen for transfer; EfficientNetV2's
progressive learning (image size, dropout, RandAugment and mixup rising together) otherwise.
"""

from __future__ import annotations

import dataclasses
import logging

from efficientnet_tf.data.config import AugmentConfig
from efficientnet_tf.data.pipeline import PipelineConfig, make_dataset
from efficientnet_tf.training.config import TrainConfig

log = logging.getLogger(__name__)
# The layers a frozen-backbone stage trains: every task's head (a classifier's, an embedding's).
HEAD_LAYERS = ("predictions", "top_dropout", "avg_pool", "embedding_feature_bn", "embedding_flatten", "embedding",
               "embedding_bn", "embedding_l2")


@dataclasses.dataclass(frozen=True)
class Stage:
    """A span of epochs with fixed image size and regularization (progressive learning)."""

    index: int
    first_epoch: int
    end_epoch: int  # exclusive
    image_size: int
    dropout_rate: float
    randaug_magnitude: float
    mixup_alpha: float
    frozen: bool = False
    lr_scale: float = 1.0

    def summary(self, stages: int) -> str:
        """The console line that starts the stage (`stages`: how many the run has)."""
        return (f"stage {self.index + 1}/{stages}: epochs {self.first_epoch + 1}-{self.end_epoch}, image size "
                f"{self.image_size}, dropout {self.dropout_rate:.3f}, RandAugment magnitude {self.randaug_magnitude:.1f}, "
                f"mixup {self.mixup_alpha:.2f}" + (", backbone frozen" if self.frozen else "")
                + (f", LR x{self.lr_scale:g}" if self.lr_scale != 1 else ""))

    def set_layers(self, model) -> None:
        """The model as the stage trains it: the backbone frozen or not (frozen BN layers run in
        inference mode, Keras 3), the head's dropout at the stage's rate."""
        for layer in model.layers:
            if layer.name not in HEAD_LAYERS and layer.weights:
                layer.trainable = not self.frozen
        try:
            model.get_layer("top_dropout").rate = self.dropout_rate
        except ValueError:
            pass  # dropout 0: no layer

    def variables(self, model) -> list:
        """The model's variables the stage trains: all, or the head's when the backbone is frozen."""
        if not self.frozen:
            return model.trainable_variables
        return [v for layer in model.layers if layer.name in HEAD_LAYERS for v in layer.trainable_variables]


def stage_pipeline(config: TrainConfig, stage: Stage, training: bool, one_hot: bool = False) -> PipelineConfig:
    """The input pipeline a stage trains (or evaluates) with."""
    augment = AugmentConfig()
    if training:
        augment = AugmentConfig(config.augment.randaug_layers if stage.randaug_magnitude > 0 else 0,
                                stage.randaug_magnitude, stage.mixup_alpha, config.augment.cutmix_alpha)
    return PipelineConfig(image_size=stage.image_size, global_batch_size=config.run.batch_size, augment=augment,
                          one_hot=one_hot, seed=config.run.seed, drop_remainder=True if training else None,
                          pad_eval=not training)


def plan_stages(config: TrainConfig, train_size: int, dropout_rate: float) -> list[Stage]:
    """The run's training stages: one, frozen-then-unfrozen (transfer), or progressive learning
    (EfficientNetV2, Algorithm 1: M stages, image size and regularization rising linearly, the
    size up to `progressive_max_size`, default `train_size`)."""
    augment, epochs, network = config.augment, config.run.epochs, config.model
    if network.freeze_backbone:
        frozen_epochs = epochs - network.finetune_epochs
        stages = [Stage(0, 0, frozen_epochs, train_size, dropout_rate, augment.randaug_magnitude, augment.mixup_alpha,
                        frozen=True)]
        if network.finetune_epochs:
            stages.append(Stage(1, frozen_epochs, epochs, train_size, dropout_rate, augment.randaug_magnitude,
                                augment.mixup_alpha, lr_scale=network.finetune_lr_scale))
        return stages
    progressive = config.progressive
    count = progressive.stages
    if count <= 1:
        return [Stage(0, 0, epochs, train_size, dropout_rate, augment.randaug_magnitude, augment.mixup_alpha)]

    max_size = progressive.max_size or train_size
    max_dropout = dropout_rate if progressive.max_dropout is None else progressive.max_dropout
    max_randaug = augment.randaug_magnitude if progressive.max_randaug is None else progressive.max_randaug
    max_mixup = augment.mixup_alpha if progressive.max_mixup is None else progressive.max_mixup
    # Progressive learning only ever rises. A first-stage value above the last (the default first
    # size 128 with a 32 px dataset, magnitude 5 without RandAugment) would make it shrink, so the
    # last value caps it, with a warning naming the setting.
    ramps = [("progressive_min_size", progressive.min_size, max_size),
             ("progressive_min_dropout", progressive.min_dropout, max_dropout),
             ("progressive_min_mixup", progressive.min_mixup, max_mixup)]
    if augment.randaug_layers > 0:  # without RandAugment its magnitude means nothing: no warning
        ramps.append(("progressive_min_randaug", progressive.min_randaug, max_randaug))
    for what, low, high in ramps:
        if low > high:
            log.warning("%s=%g is above the last stage's %g: every stage uses %g (lower %s to ramp up)",
                        what, low, high, high, what)

    def ramp(low, high, i):
        low = min(low, high)
        return low + (high - low) * i / (count - 1)
    bounds = [round(epochs * i / count) for i in range(count + 1)]
    stages = []
    for i in range(count):
        size = ramp(progressive.min_size, max_size, i)
        size = max_size if i == count - 1 else int(round(size / 8) * 8)  # multiples of 8 between the ends
        stages.append(Stage(i, bounds[i], bounds[i + 1], max(32, size), ramp(progressive.min_dropout, max_dropout, i),
                            ramp(progressive.min_randaug, max_randaug, i), ramp(progressive.min_mixup, max_mixup, i)))
    return stages


def effective_bn_momentum(default: float, steps_per_epoch: int) -> float:
    """BN momentum whose moving average spans at most half an epoch.

    The moving statistics average the batch statistics of the last ~1/(1-m) steps. With
    m=0.99 that is 100 steps; when an epoch is shorter (small data, few steps), the averaged
    statistics come from weights that no longer exist, and evaluation collapses while training
    accuracy looks fine (the keras.applications CIFAR/digits failure: 94% train, 18% val).
    ImageNet-sized epochs keep the papers' value.
    """
    window = max(steps_per_epoch / 2.0, 2.0)
    return float(min(default, 1.0 - 1.0 / window))


def augmented_batch(source, pipeline: PipelineConfig, count: int = 32):
    """(images, labels) as numpy, exactly as `pipeline` trains on them: what a plot of the
    augmented images shows."""
    pipeline = dataclasses.replace(pipeline, global_batch_size=count)
    images, labels = next(iter(make_dataset(source, pipeline, training=True, repeat=True)))
    return images.numpy(), labels.numpy()
