"""Training and evaluation with a `strategy.run` loop: one code path for CPU, GPU, TPU and workers.

Keras' Model.fit fails under MultiWorkerMirroredStrategy (Keras 3.15), so the loop is ours:
a tf.function train step per stage (static shapes, optional XLA), EMA of the weights for
evaluation and export, a checkpoint every epoch, `history.csv`, TensorBoard logs, and resume.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from efficientnet_tf import distribute
from efficientnet_tf.augment import AugmentConfig
from efficientnet_tf.builder import build_model
from efficientnet_tf.configs import get_config
from efficientnet_tf.data import get_source
from efficientnet_tf.input_pipeline import (
    SMALL_IMAGE,
    PipelineConfig,
    distributed_dataset,
    make_dataset,
    per_replica_batch_size,
)
from efficientnet_tf.optim import OPTIMIZERS, SCHEDULES, WarmupSchedule, l2_loss, make_optimizer, scaled_learning_rate

log = logging.getLogger(__name__)
HISTORY_COLUMNS = ("epoch", "accuracy", "loss", "val_accuracy", "val_loss", "lr",
                   "stage", "image_size", "dropout_rate", "randaug_magnitude", "mixup_alpha", "images_per_sec")
HEAD_LAYERS = ("predictions", "top_dropout", "avg_pool")
PAPER_EPOCHS, PAPER_WARMUP_EPOCHS, PAPER_DECAY_EPOCHS = 350, 5.0, 2.4  # tensorflow/tpu's EfficientNet ImageNet run


class TrainingDiverged(RuntimeError):
    """Loss became NaN/inf: training stopped, the last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training run. Defaults are the papers' ImageNet recipe (RMSprop, LR 0.016 per 256, 350 epochs)."""

    model: str = "efficientnet-b0"
    dataset: str = "digits"
    data_dir: str | None = None
    model_dir: str = "runs/efficientnet-b0"
    epochs: int = 350
    batch_size: int = 64  # global; the papers use 4096 on TPU pods
    # Evaluation and export size. None: the variant's resolution (small-image datasets: 32).
    image_size: int | None = None
    # Training size. None: the variant's train_resolution (V2 trains smaller than it evaluates:
    # S 300 / 384) up to image_size, else image_size; small-image datasets (< 64 px): image_size.
    train_image_size: int | None = None
    optimizer: str = "rmsprop"
    learning_rate: float = 0.016  # per 256 images, scaled with the batch
    lr_schedule: str = "exponential"
    warmup_epochs: float | None = None  # None: the papers' 5 of 350 epochs, scaled to this run (see below)
    lr_decay_rate: float = 0.97
    lr_decay_epochs: float | None = None  # None: the papers' 2.4 of 350 epochs, scaled likewise
    weight_decay: float = 1e-5
    label_smoothing: float = 0.1
    dropout_rate: float | None = None  # None: the variant's own
    drop_connect_rate: float | None = None
    bn_momentum: float | None = None  # None: the variant's, lowered for short epochs (see below)
    ema_decay: float = 0.9999  # 0 disables EMA
    randaug_layers: int = 0
    randaug_magnitude: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mixed_precision: bool = False
    strategy: str = "auto"
    tpu: str | None = None
    weights: str | None = None  # 'imagenet' or a file: pretrained backbone
    freeze_backbone: bool = False  # train the head only, BN in inference mode
    finetune_epochs: int = 0  # after a frozen phase: this many epochs with everything unfrozen
    finetune_lr_scale: float = 0.1  # LR factor for the unfrozen phase
    progressive_stages: int = 0  # >1: EfficientNetV2 progressive learning with this many stages
    progressive_min_size: int = 128
    progressive_max_size: int | None = None  # None: the training size (V2-S: 300, Table 6)
    progressive_min_dropout: float = 0.1
    progressive_max_dropout: float | None = None  # None: dropout_rate
    progressive_min_randaug: float = 5.0
    progressive_max_randaug: float | None = None  # None: randaug_magnitude
    progressive_min_mixup: float = 0.0
    progressive_max_mixup: float | None = None  # None: mixup_alpha
    seed: int | None = 0
    keep_checkpoints: int = 3
    steps_per_epoch: int | None = None  # cap (quick runs); None: one pass over the train split
    steps_per_loop: int = 1  # train steps per tf.function call (raise on TPU)
    jit_compile: bool | None = None  # None: XLA on TPU only (measured: slower on CPU)
    sync_batch_norm: bool | None = None  # None: on when there are several replicas
    validation_fraction: float | None = None  # held out when there is no eval split; None: the source's default
    label_key: str = "label"  # TFDS: the ClassLabel feature to classify
    on_bad_image: str = "error"

    def validate(self) -> None:
        """Reject bad values before any work starts, one clear line each."""
        get_config(self.model)
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.optimizer in OPTIMIZERS, f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}"),
            (self.lr_schedule in SCHEDULES, f"unknown lr_schedule {self.lr_schedule!r}; choose from {', '.join(SCHEDULES)}"),
            (self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}"),
            (self.warmup_epochs is None or self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}"),
            (self.lr_decay_epochs is None or self.lr_decay_epochs > 0,
             f"lr_decay_epochs must be > 0, got {self.lr_decay_epochs}"),
            (0 < self.lr_decay_rate <= 1, f"lr_decay_rate must be in (0, 1], got {self.lr_decay_rate}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}"),
            (0 <= self.ema_decay < 1, f"ema_decay must be in [0, 1), got {self.ema_decay}"),
            (self.bn_momentum is None or 0 < self.bn_momentum < 1, f"bn_momentum must be in (0, 1), got {self.bn_momentum}"),
            (self.dropout_rate is None or 0 <= self.dropout_rate < 1, f"dropout_rate must be in [0, 1), got {self.dropout_rate}"),
            (self.drop_connect_rate is None or 0 <= self.drop_connect_rate < 1,
             f"drop_connect_rate must be in [0, 1), got {self.drop_connect_rate}"),
            (self.image_size is None or self.image_size >= 32, f"image_size must be >= 32, got {self.image_size}"),
            (self.train_image_size is None or self.train_image_size >= 32,
             f"train_image_size must be >= 32, got {self.train_image_size}"),
            (self.progressive_max_size is None or self.progressive_max_size >= 32,
             f"progressive_max_size must be >= 32, got {self.progressive_max_size}"),
            (self.validation_fraction is None or 0 < self.validation_fraction < 1,
             f"validation_fraction must be in (0, 1) or None (the source's default), got {self.validation_fraction}"),
            (isinstance(self.label_key, str) and bool(self.label_key.strip()),
             f"label_key must be a feature name such as 'label', got {self.label_key!r}"),
            (self.strategy in distribute.STRATEGIES, f"unknown strategy {self.strategy!r}; choose from {', '.join(distribute.STRATEGIES)}"),
            (self.progressive_stages >= 0, f"progressive_stages must be >= 0, got {self.progressive_stages}"),
            (self.progressive_stages <= self.epochs, f"progressive_stages ({self.progressive_stages}) cannot exceed epochs ({self.epochs})"),
            (self.finetune_epochs >= 0, f"finetune_epochs must be >= 0, got {self.finetune_epochs}"),
            (self.finetune_epochs < self.epochs, f"finetune_epochs ({self.finetune_epochs}) must be < epochs ({self.epochs})"),
            (self.steps_per_epoch is None or self.steps_per_epoch >= 1, f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}"),
            (self.steps_per_loop >= 1, f"steps_per_loop must be >= 1, got {self.steps_per_loop}"),
            (self.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        AugmentConfig(self.randaug_layers, self.randaug_magnitude, self.mixup_alpha, self.cutmix_alpha)

    def schedule_epochs(self) -> tuple[float, float]:
        """(warmup, decay period) in epochs. Unset, they keep the papers' schedule *shape*:
        5 warmup epochs and x0.97 every 2.4 epochs of a 350-epoch run, i.e. warm up over the
        first 1.4% of training and end at 0.97^(350/2.4) = 1.2% of the peak LR. A 15-epoch run
        given the literal 5 and 2.4 would spend a third of its steps warming up and never anneal
        (ends at 83% of peak): measured on digits, 0.78 val top-1 instead of 0.98 (README).
        Values set explicitly (recipes in flags/) are taken literally."""
        scale = self.epochs / PAPER_EPOCHS
        warmup = PAPER_WARMUP_EPOCHS * scale if self.warmup_epochs is None else self.warmup_epochs
        decay = PAPER_DECAY_EPOCHS * scale if self.lr_decay_epochs is None else self.lr_decay_epochs
        return warmup, decay

    def make_schedule(self, base_lr: float, steps_per_epoch: int) -> WarmupSchedule:
        """The run's LR schedule (see `WarmupSchedule` for its value at every step)."""
        warmup, decay = self.schedule_epochs()
        return WarmupSchedule(base_lr, steps_per_epoch, steps_per_epoch * self.epochs, self.lr_schedule, warmup,
                              self.lr_decay_rate, decay)

    def image_sizes(self, native_size: int | None) -> tuple[int, int]:
        """(training size, evaluation/export size) for a dataset whose images are `native_size`
        pixels (None: of varied size).

        Evaluation: `image_size`, else the variant's resolution. Training: `train_image_size`,
        else the variant's `train_resolution` where it has one (EfficientNetV2 trains smaller
        than it evaluates: S 300/384, B0 192/224) but never above the evaluation size (a smaller
        `image_size` trains at that size), else the evaluation size. Small-image datasets
        (CIFAR, digits: < 64 px) train and evaluate at one size, 32 unless `image_size` says
        otherwise: upsampling to 224 costs 49x for little gain from scratch, and shrinking the
        training crop of a 32 px picture only loses detail.
        """
        model_config = get_config(self.model)
        small = native_size is not None and native_size < SMALL_IMAGE
        if self.image_size:
            eval_size = self.image_size
        else:
            eval_size = 32 if small else model_config.resolution
        if self.train_image_size:
            train_size = self.train_image_size
        elif small or model_config.train_resolution is None:
            train_size = eval_size
        else:
            train_size = min(model_config.train_resolution, eval_size)
        return train_size, eval_size

    def load_source(self, on_bad_image: str | None = None, download: bool = True):
        """The run's dataset, with the same seeded train/eval split every time."""
        return get_source(self.dataset, self.data_dir, validation_fraction=self.validation_fraction,
                          seed=self.seed or 0, on_bad_image=on_bad_image or self.on_bad_image, download=download,
                          label_key=self.label_key)

    def peek_native_size(self) -> int | None:
        """The dataset's stored image size (None: varied), without downloading or reading any
        images: what a dry run needs to resolve `image_sizes`."""
        if self.dataset.startswith("folder:"):
            return None  # any size; and opening the folder source checks every file
        try:
            return self.load_source(download=False).native_size
        except FileNotFoundError:
            # A TFDS dataset that is not prepared here: the metadata TFDS ships has the image shape.
            import tensorflow_datasets as tfds

            features = tfds.builder(self.dataset, data_dir=self.data_dir).info.features
            shape = features["image"].shape if "image" in features else (None, None)
            return shape[0] if shape[0] is not None and shape[0] == shape[1] else None


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


def stage_pipeline(config: TrainConfig, stage: Stage, training: bool, one_hot: bool = False) -> PipelineConfig:
    """The input pipeline a stage trains (or evaluates) with."""
    augment = AugmentConfig(config.randaug_layers if stage.randaug_magnitude > 0 else 0, stage.randaug_magnitude,
                            stage.mixup_alpha, config.cutmix_alpha) if training else AugmentConfig()
    return PipelineConfig(image_size=stage.image_size, global_batch_size=config.batch_size, augment=augment,
                          one_hot=one_hot, seed=config.seed, drop_remainder=True if training else None,
                          pad_eval=not training)


def plan_stages(config: TrainConfig, train_size: int, dropout_rate: float) -> list[Stage]:
    """The run's training stages: one, frozen-then-unfrozen (transfer), or progressive learning
    (EfficientNetV2, Algorithm 1: M stages, image size and regularization rising linearly, the
    size up to `progressive_max_size`, default `train_size`)."""
    if config.freeze_backbone:
        frozen_epochs = config.epochs - config.finetune_epochs
        stages = [Stage(0, 0, frozen_epochs, train_size, dropout_rate, config.randaug_magnitude, config.mixup_alpha, frozen=True)]
        if config.finetune_epochs:
            stages.append(Stage(1, frozen_epochs, config.epochs, train_size, dropout_rate, config.randaug_magnitude,
                                config.mixup_alpha, lr_scale=config.finetune_lr_scale))
        return stages
    count = config.progressive_stages
    if count <= 1:
        return [Stage(0, 0, config.epochs, train_size, dropout_rate, config.randaug_magnitude, config.mixup_alpha)]

    max_size = config.progressive_max_size or train_size
    max_dropout = dropout_rate if config.progressive_max_dropout is None else config.progressive_max_dropout
    max_randaug = config.randaug_magnitude if config.progressive_max_randaug is None else config.progressive_max_randaug
    max_mixup = config.mixup_alpha if config.progressive_max_mixup is None else config.progressive_max_mixup
    # Progressive learning only ever rises. A first-stage value above the last (the default first
    # size 128 with a 32 px dataset, magnitude 5 without RandAugment) would make it shrink, so the
    # last value caps it, with a warning naming the setting.
    for what, low, high in (("progressive_min_size", config.progressive_min_size, max_size),
                            ("progressive_min_dropout", config.progressive_min_dropout, max_dropout),
                            ("progressive_min_randaug", config.progressive_min_randaug, max_randaug),
                            ("progressive_min_mixup", config.progressive_min_mixup, max_mixup)):
        if low > high:
            log.warning("%s=%g is above the last stage's %g: every stage uses %g (lower %s to ramp up)",
                        what, low, high, high, what)

    def ramp(low, high, i):
        low = min(low, high)
        return low + (high - low) * i / (count - 1)
    bounds = [round(config.epochs * i / count) for i in range(count + 1)]
    stages = []
    for i in range(count):
        size = ramp(config.progressive_min_size, max_size, i)
        size = max_size if i == count - 1 else int(round(size / 8) * 8)  # multiples of 8 between the ends
        stages.append(Stage(i, bounds[i], bounds[i + 1], max(32, size), ramp(config.progressive_min_dropout, max_dropout, i),
                            ramp(config.progressive_min_randaug, max_randaug, i), ramp(config.progressive_min_mixup, max_mixup, i)))
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


class WeightAverage(tf.Module):
    """EMA of all model variables (weights and BN statistics, as tensorflow/tpu), with the
    (1 + n) / (10 + n) warm-up of tf.train.ExponentialMovingAverage so short runs still work."""

    def __init__(self, variables, decay: float):
        super().__init__(name="ema")
        self.decay = decay
        # Floats only: int counters and RNG states are not averaged.
        model_variables = [v for v in variables if tf.as_dtype(v.dtype).is_floating]
        self._targets = lambda: model_variables  # not tracked: the checkpoint has them via the model
        self.shadows = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False, name=f"ema_{i}")
                        for i, v in enumerate(model_variables)]
        self.num_updates = tf.Variable(0, dtype=tf.int64, trainable=False, name="ema_num_updates")

    def _values(self):
        return [v.value if hasattr(v, "value") else v for v in self._targets()]

    def reset(self):
        for shadow, value in zip(self.shadows, self._values()):
            shadow.assign(value)
        self.num_updates.assign(0)

    def update(self):
        n = tf.cast(self.num_updates.assign_add(1), tf.float32)
        decay = tf.minimum(self.decay, (1.0 + n) / (10.0 + n))
        for shadow, value in zip(self.shadows, self._values()):
            shadow.assign(decay * shadow + (1.0 - decay) * tf.cast(value, shadow.dtype))

    def swap(self):
        """Exchange model and averaged values (call twice to undo)."""
        for shadow, variable in zip(self.shadows, self._targets()):
            current = tf.identity(variable.value if hasattr(variable, "value") else variable)
            variable.assign(shadow)
            shadow.assign(current)


def atomic_write(path: str, data: str | bytes) -> None:
    """Write to a temporary file beside `path`, then rename: a reader (or a crash) never sees
    half a file. Permissions follow the umask like a plain open() (mkstemp's are private)."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_")
    with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    os.chmod(tmp, 0o666 & ~current_umask())
    os.replace(tmp, path)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_history(model_dir: str) -> list[dict]:
    path = os.path.join(model_dir, "history.csv")
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_history(model_dir: str, rows: list[dict]) -> None:
    lines = [",".join(HISTORY_COLUMNS)]
    for row in rows:
        lines.append(",".join(str(row.get(c, "")) for c in HISTORY_COLUMNS))
    atomic_write(os.path.join(model_dir, "history.csv"), "\n".join(lines) + "\n")


class Trainer:
    """Builds everything for a TrainConfig; `fit()` trains (resuming), `evaluate()` reports."""

    def __init__(self, config: TrainConfig, verbose: bool = True, strategy: tf.distribute.Strategy | None = None):
        config.validate()
        self.config = config
        self.verbose = verbose
        if config.seed is not None:
            keras.utils.set_random_seed(config.seed)
        self.strategy = strategy or distribute.make_strategy(config.strategy, config.tpu)
        self.replicas = self.strategy.num_replicas_in_sync
        per_replica_batch_size(config.batch_size, self.replicas)
        self.chief = distribute.is_chief(self.strategy)
        self.policy = distribute.mixed_precision_policy(self.strategy, config.mixed_precision)
        keras.mixed_precision.set_global_policy(self.policy)
        self.device = distribute.device_kind(self.strategy)
        self.jit_compile = config.jit_compile if config.jit_compile is not None else self.device == "tpu"

        self.source = config.load_source()
        model_config = get_config(config.model)
        # image_size: evaluation and export; train_image_size: training (V2: smaller).
        self.train_image_size, self.image_size = config.image_sizes(self.source.native_size)
        self.steps_per_epoch = max(1, (self.source.num_train or config.batch_size) // config.batch_size)
        if config.steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, config.steps_per_epoch)
        self.bn_momentum = config.bn_momentum or effective_bn_momentum(model_config.bn_momentum, self.steps_per_epoch)
        self.dropout_rate = model_config.dropout_rate if config.dropout_rate is None else config.dropout_rate
        self.stages = plan_stages(config, self.train_image_size, self.dropout_rate)
        self.base_lr = scaled_learning_rate(config.learning_rate, config.batch_size)
        self.one_hot = config.label_smoothing > 0 or config.mixup_alpha > 0 or config.cutmix_alpha > 0 or (
            config.progressive_stages > 1 and (config.progressive_max_mixup or 0) > 0)
        self.sync_bn = config.sync_batch_norm if config.sync_batch_norm is not None else self.replicas > 1

        variable_size = len({s.image_size for s in self.stages} | {self.image_size}) > 1
        with self.strategy.scope():
            self.model = build_model(
                config.model,
                num_classes=self.source.num_classes,
                input_shape=(None, None, 3) if variable_size else (self.image_size, self.image_size, 3),
                weights=config.weights,
                dropout_rate=self.dropout_rate,
                drop_connect_rate=config.drop_connect_rate,
                bn_momentum=self.bn_momentum,
                classifier_activation=None,  # logits: float32 loss, softmax at export
            )
            if self.sync_bn:
                for layer in self.model.layers:
                    if isinstance(layer, keras.layers.BatchNormalization):
                        layer.synchronized = True
            self.schedule = config.make_schedule(self.base_lr, self.steps_per_epoch)
            self.lr_scale = tf.Variable(1.0, trainable=False, name="lr_scale")
            self.optimizer = make_optimizer(
                config.optimizer, lambda: self.schedule(self._optimizer_steps()) * self.lr_scale,
                weight_decay=config.weight_decay, loss_scale=self.policy == "mixed_float16")
            self.optimizer.build(self.model.trainable_variables)
            self.ema = WeightAverage(self.model.variables, config.ema_decay) if config.ema_decay > 0 else None
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        if self.ema is not None:
            self.ema.reset()
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, epoch=self.epoch,
                                              **({"ema": self.ema} if self.ema is not None else {}))
        self.checkpoint_dir = self._checkpoint_dir()
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.checkpoint_dir, max_to_keep=config.keep_checkpoints)
        self._train_fns = {}
        self._eval_fns = {}

    # ------------------------------------------------------------------ plumbing

    def _optimizer_steps(self):
        inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        return inner.iterations

    def _checkpoint_dir(self) -> str:
        base = os.path.join(self.config.model_dir, "checkpoints")
        if self.chief:
            return base
        # Other workers must save too (collective ops), but somewhere they can throw away.
        resolver = self.strategy.cluster_resolver
        return os.path.join(self.config.model_dir, f".worker_{resolver.task_type}_{resolver.task_id}", "checkpoints")

    def _print(self, *args):
        if self.verbose and self.chief:
            print(*args, flush=True)

    def _pipeline(self, stage: Stage, training: bool) -> PipelineConfig:
        return stage_pipeline(self.config, stage, training, self.one_hot)

    def _trainable_variables(self, stage: Stage):
        if not stage.frozen:
            return self.model.trainable_variables
        return [v for layer in self.model.layers if layer.name in HEAD_LAYERS for v in layer.trainable_variables]

    def _set_frozen(self, frozen: bool) -> None:
        for layer in self.model.layers:
            if layer.name not in HEAD_LAYERS and layer.weights:
                layer.trainable = not frozen  # frozen BN layers run in inference mode (Keras 3)

    def _loss(self, labels, logits):
        logits = tf.cast(logits, tf.float32)
        if self.one_hot:
            per_example = keras.losses.categorical_crossentropy(
                labels, logits, from_logits=True, label_smoothing=self.config.label_smoothing)
        else:
            per_example = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        return per_example

    @staticmethod
    def _sparse_labels(labels):
        """Class ids from sparse or (smoothed / mixed) one-hot labels."""
        return tf.argmax(labels, axis=-1, output_type=tf.int32) if labels.shape.rank == 2 else tf.cast(labels, tf.int32)

    def _correct(self, labels, logits):
        predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return tf.cast(tf.equal(predicted, self._sparse_labels(labels)), tf.float32)

    def train_step_fn(self, stage: Stage):
        """The per-replica step: forward, loss (float32), backward, update. XLA-compilable."""
        variables = self._trainable_variables(stage)
        weight_decay = self.config.weight_decay if self.config.optimizer != "adamw" else 0.0
        global_batch = self.config.batch_size

        def step(images, labels):
            with tf.GradientTape() as tape:
                logits = self.model(images, training=True)
                per_example = self._loss(labels, logits)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
                loss += l2_loss(variables, weight_decay) / self.replicas
                scaled = self.optimizer.scale_loss(loss) if hasattr(self.optimizer, "scale_loss") else loss
            grads = tape.gradient(scaled, variables)
            self.optimizer.apply(grads, variables)
            batch_loss = tf.reduce_sum(per_example) / global_batch
            return batch_loss, tf.reduce_sum(self._correct(labels, logits))

        return tf.function(step, jit_compile=self.jit_compile)

    def _train_loop_fn(self, stage: Stage):
        key = (stage.index, stage.image_size, stage.dropout_rate, stage.frozen)
        if key in self._train_fns:
            return self._train_fns[key]
        step = self.train_step_fn(stage)
        strategy = self.strategy
        ema = self.ema

        @tf.function
        def loop(iterator, steps):
            loss_sum, correct_sum = tf.constant(0.0), tf.constant(0.0)
            for _ in tf.range(steps):
                loss, correct = strategy.run(step, args=next(iterator))
                loss_sum += strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
                correct_sum += strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None)
                if ema is not None:
                    ema.update()
            return loss_sum, correct_sum

        self._train_fns[key] = loop
        return loop

    # ------------------------------------------------------------------ public

    def train_on_batch(self, images, labels, stage: Stage | None = None) -> tuple[float, float]:
        """One step on one global batch, split over the replicas: (mean loss, correct count)."""
        stage = stage or self.stages[0]
        dist = self.strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors((images, labels)))
        loss, correct = self._train_loop_fn(stage)(iter(dist), tf.constant(1))
        return float(loss), float(correct)

    def restore_for_eval(self) -> bool:
        """Load the newest checkpoint (for evaluation/export); False when there is none."""
        return self._restore() > 0

    def fit(self, validate: bool = True) -> dict | None:
        """Train all stages (resuming from the last checkpoint); with `validate`, evaluate every
        epoch and return the final eval report (also written to model_dir/eval_report.json)."""
        config = self.config
        if self.chief:
            os.makedirs(config.model_dir, exist_ok=True)
            self._write_run_info()
        start_epoch = self._restore()
        history = [r for r in read_history(config.model_dir) if int(r["epoch"]) < start_epoch]
        if self.chief:
            _write_history(config.model_dir, history)
        writer = tf.summary.create_file_writer(os.path.join(config.model_dir, "logs")) if self.chief else None
        self._print(f"{config.model} on {config.dataset}: {self.source.num_train} train / {self.source.num_eval} eval images, "
                    f"{self.source.num_classes} classes; {self.replicas} replica(s) on {self.device}, policy {self.policy}, "
                    f"batch {config.batch_size}, {self.steps_per_epoch} steps/epoch, BN momentum {self.bn_momentum:.3f}, "
                    f"XLA {'on' if self.jit_compile else 'off'}")
        split = getattr(self.source, "split_description", "")
        if split:
            self._print(f"data: {split}")
        self._print(f"image size: train {self.stages[-1].image_size}"
                    + (f" (stages {', '.join(str(s.image_size) for s in self.stages)})" if len(self.stages) > 1 else "")
                    + f", eval/export {self.image_size}")
        warmup, decay = config.schedule_epochs()
        self._print(f"LR {self.base_lr:.3g} peak ({config.learning_rate:g} per 256), {config.lr_schedule} schedule, "
                    f"warmup {warmup:.3g} epochs" + (f", x{config.lr_decay_rate:g} every {decay:.3g} epochs"
                                                     if config.lr_schedule == "exponential" else ""))
        if start_epoch:
            self._print(f"resuming from {self.resumed_from}: epoch {start_epoch + 1} of {config.epochs}")
        for stage in self.stages:
            if stage.end_epoch <= start_epoch:
                continue
            self._enter_stage(stage)
            for epoch in range(max(stage.first_epoch, start_epoch), stage.end_epoch):
                row = self._train_epoch(stage, epoch, validate)
                history.append(row)
                self.epoch.assign(epoch + 1)
                self._save_epoch(history, row, writer)
        if not validate:
            if self.chief:
                self.save_plots()
            self._cleanup_worker_dir()
            return None
        report = self.evaluate(confusion=True)
        confusion = report.pop("confusion_matrix")
        if self.chief:
            atomic_write(os.path.join(config.model_dir, "eval_report.json"), json.dumps(report, indent=2) + "\n")
            np.save(os.path.join(config.model_dir, "confusion_matrix.npy"), confusion)
            self._print(f"final eval ({'EMA weights' if self.ema else 'weights'}): top-1 {report['top1']:.4f}, "
                        f"top-5 {report['top5']:.4f}, loss {report['loss']:.4f}, {report['images_per_sec']:.1f} images/s")
            written = self.save_plots(confusion)
            if written:
                self._print(f"plots: {', '.join(os.path.basename(p) for p in written)} in {config.model_dir}")
        self._cleanup_worker_dir()
        return report

    def augmented_batch(self, count: int = 32, stage: Stage | None = None):
        """(images, labels) exactly as the training pipeline feeds them (first stage by default)."""
        return augmented_batch(self.source, self._pipeline(stage or self.stages[0], True), count)

    def save_plots(self, confusion: np.ndarray | None = None) -> list[str]:
        """History, LR schedule, progressive stages, confusion matrix and augmented images as PNGs."""
        from efficientnet_tf import plots

        try:
            return self._draw_plots(plots, confusion)
        except (OSError, ValueError, RuntimeError) as err:  # a figure must not fail a finished run
            self._print(f"warning: plots not written ({type(err).__name__}: {err})")
            return []

    def _draw_plots(self, plots, confusion):
        return plots.save_run_plots(
            self.config.model_dir, schedule=self.schedule, total_steps=self.steps_per_epoch * self.config.epochs,
            steps_per_epoch=self.steps_per_epoch, confusion=confusion, class_names=self.source.class_names,
            augmented=self.augmented_batch())

    def _write_run_info(self) -> None:
        info = {
            "model": self.config.model,
            "dataset": self.config.dataset,
            "num_classes": self.source.num_classes,
            "class_names": list(self.source.class_names),
            "image_size": self.image_size,  # evaluation and export size
            "train_image_size": self.stages[-1].image_size,  # the last training stage's size
            "split": getattr(self.source, "split_description", ""),
            "steps_per_epoch": self.steps_per_epoch,
            "base_lr": self.base_lr,
            "config": dataclasses.asdict(self.config),
        }
        atomic_write(os.path.join(self.config.model_dir, "run.json"), json.dumps(info, indent=2) + "\n")

    def _restore(self) -> int:
        """Resume from the newest readable checkpoint of the chief (every worker reads it)."""
        state = tf.train.get_checkpoint_state(os.path.join(self.config.model_dir, "checkpoints"))
        if state is None:
            return 0
        candidates = list(reversed(state.all_model_checkpoint_paths)) or [state.model_checkpoint_path]
        for path in candidates:
            try:
                self.checkpoint.restore(path).assert_existing_objects_matched()
            except (tf.errors.OpError, ValueError, AssertionError) as err:
                self._print(f"checkpoint {path} is unreadable ({type(err).__name__}); trying an older one")
                continue
            self.resumed_from = path
            return int(self.epoch.numpy())
        raise RuntimeError(f"no readable checkpoint in {os.path.join(self.config.model_dir, 'checkpoints')}; "
                           "move that directory away to start afresh")

    def _enter_stage(self, stage: Stage) -> None:
        if len(self.stages) > 1:
            self._print(f"stage {stage.index + 1}/{len(self.stages)}: epochs {stage.first_epoch + 1}-{stage.end_epoch}, "
                        f"image size {stage.image_size}, dropout {stage.dropout_rate:.3f}, "
                        f"RandAugment magnitude {stage.randaug_magnitude:.1f}, mixup {stage.mixup_alpha:.2f}"
                        + (", backbone frozen" if stage.frozen else "") + (f", LR x{stage.lr_scale:g}" if stage.lr_scale != 1 else ""))
        self._set_frozen(stage.frozen)
        self.lr_scale.assign(stage.lr_scale)
        try:
            self.model.get_layer("top_dropout").rate = stage.dropout_rate
        except ValueError:
            pass  # dropout 0: no layer

    def _train_epoch(self, stage: Stage, epoch: int, validate: bool) -> dict:
        dataset = distributed_dataset(self.strategy, self.source, self._pipeline(stage, True), training=True,
                                      epoch=epoch, repeat=True)
        iterator = iter(dataset)
        loop = self._train_loop_fn(stage)
        progress = keras.utils.Progbar(self.steps_per_epoch, stateful_metrics=["loss", "accuracy", "images/s"],
                                       verbose=1 if (self.verbose and self.chief) else 0)
        self._print(f"Epoch {epoch + 1}/{self.config.epochs}")
        done, loss_sum, correct_sum = 0, 0.0, 0.0
        start = time.perf_counter()
        while done < self.steps_per_epoch:
            steps = min(self.config.steps_per_loop, self.steps_per_epoch - done)
            loss, correct = loop(iterator, tf.constant(steps))
            loss_sum, correct_sum, done = loss_sum + float(loss), correct_sum + float(correct), done + steps
            if not math.isfinite(loss_sum):
                raise TrainingDiverged(
                    f"loss became {loss_sum} at epoch {epoch + 1}, step {done}: training stopped; the last good "
                    f"checkpoint ({self.manager.latest_checkpoint or 'none yet'}) is kept. Lower --learning_rate "
                    f"or check the data")
            seen = done * self.config.batch_size
            progress.update(done, [("loss", loss_sum / done), ("accuracy", correct_sum / seen),
                                   ("images/s", seen / (time.perf_counter() - start))])
        elapsed = time.perf_counter() - start
        # Validation at the evaluation size, like the final report: what the exported model will see.
        val = self.evaluate() if validate else {"top1": float("nan"), "loss": float("nan")}
        row = {
            "epoch": epoch,
            "accuracy": round(correct_sum / (done * self.config.batch_size), 6),
            "loss": round(loss_sum / done, 6),
            "val_accuracy": round(val["top1"], 6),
            "val_loss": round(val["loss"], 6),
            "lr": self._last_step_lr(),
            "stage": stage.index,
            "image_size": stage.image_size,
            "dropout_rate": round(stage.dropout_rate, 4),
            "randaug_magnitude": round(stage.randaug_magnitude, 3),
            "mixup_alpha": round(stage.mixup_alpha, 4),
            "images_per_sec": round(done * self.config.batch_size / elapsed, 1),
        }
        self._print(f"epoch {epoch + 1}: loss {row['loss']:.4f} accuracy {row['accuracy']:.4f} "
                    f"val_loss {row['val_loss']:.4f} val_accuracy {row['val_accuracy']:.4f} lr {row['lr']:.3g} "
                    f"({row['images_per_sec']:.0f} images/s)")
        return row

    def _last_step_lr(self) -> float:
        """The LR the epoch's last optimizer step used (the counter already points past it)."""
        last_step = tf.maximum(self._optimizer_steps() - 1, 0)
        return float(self.schedule(last_step) * self.lr_scale)

    def _save_epoch(self, history, row, writer) -> None:
        # Every worker saves (collectives); only the chief's directory is kept.
        self.manager.save(checkpoint_number=int(row["epoch"]) + 1)
        if not self.chief:
            return
        _write_history(self.config.model_dir, history)
        with writer.as_default(step=int(row["epoch"])):
            for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "image_size"):
                tf.summary.scalar(key, float(row[key]))
        writer.flush()

    def _cleanup_worker_dir(self) -> None:
        if not self.chief:
            shutil.rmtree(os.path.dirname(self.checkpoint_dir), ignore_errors=True)

    def evaluate(self, image_size: int | None = None, confusion: bool = False) -> dict:
        """Top-1/top-5/loss on the eval split at `image_size` (default: the run's evaluation size),
        with the EMA weights when the run keeps them; with `confusion`, also the confusion matrix
        (rows: true class) as a numpy array."""
        size = image_size or self.image_size
        stage = dataclasses.replace(self.stages[-1], image_size=size)
        # Full batches padded with zero-weight examples: static shapes (TPU), the same number of
        # steps on every worker (collectives), no empty replica batch, every example counted once.
        dataset = distributed_dataset(self.strategy, self.source, self._pipeline(stage, False), training=False)
        if confusion not in self._eval_fns:
            self._eval_fns[confusion] = self._make_eval_fn(confusion)
        eval_fn = self._eval_fns[confusion]
        if self.ema is not None:
            self.ema.swap()
        try:
            totals = np.zeros(4)
            matrix = np.zeros((self.source.num_classes,) * 2, dtype=np.int64) if confusion else None
            start = time.perf_counter()
            for images, labels, weights in dataset:
                results = eval_fn(images, labels, weights)
                totals += np.array([float(t) for t in results[:4]])
                if confusion:
                    matrix += results[4].numpy().astype(np.int64)
            elapsed = time.perf_counter() - start
        finally:
            if self.ema is not None:
                self.ema.swap()
        loss, top1, top5, count = totals
        count = max(count, 1.0)
        report = {"top1": top1 / count, "top5": top5 / count, "loss": loss / count, "images": int(count),
                  "images_per_sec": count / max(elapsed, 1e-9)}
        if confusion:
            report["confusion_matrix"] = matrix
        return report

    def _make_eval_fn(self, confusion: bool):
        strategy, k, num_classes = self.strategy, min(5, self.source.num_classes), self.source.num_classes

        def step(images, labels, weights):
            logits = tf.cast(self.model(images, training=False), tf.float32)
            sparse = self._sparse_labels(labels)
            per_example = keras.losses.sparse_categorical_crossentropy(sparse, logits, from_logits=True)
            top1 = self._correct(sparse, logits)
            top5 = tf.cast(tf.math.in_top_k(sparse, logits, k), tf.float32)
            results = [tf.reduce_sum(per_example * weights), tf.reduce_sum(top1 * weights),
                       tf.reduce_sum(top5 * weights), tf.reduce_sum(weights)]
            if confusion:
                predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
                results.append(tf.math.confusion_matrix(sparse, predicted, num_classes, weights=weights, dtype=tf.float32))
            return results

        @tf.function
        def run(images, labels, weights):
            results = strategy.run(step, args=(images, labels, weights))
            return [strategy.reduce(tf.distribute.ReduceOp.SUM, r, axis=None) for r in results]

        return run


def train(config: TrainConfig, verbose: bool = True) -> dict:
    return Trainer(config, verbose=verbose).fit()


def augmented_batch(source, pipeline: PipelineConfig, count: int = 32):
    pipeline = dataclasses.replace(pipeline, global_batch_size=count)
    images, labels = next(iter(make_dataset(source, pipeline, training=True, repeat=True)))
    return images.numpy(), labels.numpy()


def load_run_config(model_dir: str) -> tuple[TrainConfig, dict]:
    """The TrainConfig a run was started with (from model_dir/run.json) and the run info."""
    path = os.path.join(model_dir, "run.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {model_dir} is not a training run directory (train first)")
    with open(path) as f:
        info = json.load(f)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in info["config"].items() if k in fields})
    return dataclasses.replace(config, model_dir=model_dir), info


def replot_run(model_dir: str, with_images: bool = True) -> list[str]:
    """Redraw a run's plots from what it wrote (history.csv, run.json, confusion_matrix.npy).
    The augmented-image grid needs the dataset; when it cannot be loaded it is left out."""
    from efficientnet_tf import plots

    config, info = load_run_config(model_dir)
    steps_per_epoch = int(info.get("steps_per_epoch", 1))
    schedule = config.make_schedule(info["base_lr"], steps_per_epoch) if "base_lr" in info else None
    augmented = None
    if with_images:
        try:
            dropout = get_config(config.model).dropout_rate if config.dropout_rate is None else config.dropout_rate
            train_size = int(info.get("train_image_size", info["image_size"]))  # runs before V2 sizes: one size
            first_stage = plan_stages(config, train_size, dropout)[0]  # as the end of training draws it
            augmented = augmented_batch(config.load_source("skip"), stage_pipeline(config, first_stage, True))
        except (OSError, ValueError) as err:
            log.warning("augmented-image grid left out: dataset %s unavailable (%s)", config.dataset, err)
    return plots.save_run_plots(model_dir, schedule=schedule, total_steps=steps_per_epoch * config.epochs,
                                steps_per_epoch=steps_per_epoch, class_names=info.get("class_names"), augmented=augmented)
