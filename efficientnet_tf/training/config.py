"""A training run's configuration: nested frozen dataclasses, the one source of truth.

Every value is declared once here (or in `data.config` for data and augmentation), with its
default, help and allowed values; the command line builds its flags from these declarations
and `run.json` stores the nested form. Flat names (`learning_rate`, `progressive_min_size`) are
each leaf's name on the command line and in `TrainConfig.from_settings`.

Defaults are the papers' ImageNet recipe (RMSprop, LR 0.016 per 256 images, 350 epochs;
docs/training.md).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import Any

from efficientnet_tf import settings
from efficientnet_tf.advice import Arg, advised
from efficientnet_tf.data.config import SMALL_IMAGE, AugmentConfig, DataConfig
from efficientnet_tf.models.heads import EMBEDDING_HEADS
from efficientnet_tf.models.configs import get_config
from efficientnet_tf.models.official import family_for
from efficientnet_tf.settings import SettingError, section, setting
from efficientnet_tf.training.margin import DEFAULT_MARGINS, DEFAULT_SCALE, MARGIN_LOSSES, check_margin
from efficientnet_tf.training.recipe import (OPTIMIZERS, PAPER_DECAY_EPOCHS, PAPER_DECAY_RATE, PAPER_EPOCHS,
                                             PAPER_WARMUP_EPOCHS, SCHEDULES)

TASKS = ("classification", "embedding")
STRATEGIES = ("auto", "cpu", "gpu", "mirrored", "multi_worker", "tpu")


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise SettingError(name, message)


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """Which network trains, what it starts from and which parts train."""

    name: str = setting("efficientnet-b0", "Model name such as efficientnet-b0, efficientnetv2-s or "
                        "efficientnet-lite0 (list_models() and the summary mode list them all).",
                        flag="model")
    weights: str | None = setting(None, "Pretrained initialisation: 'imagenet', an official checkpoint family "
                                  "(advprop, noisy-student, imagenet21k-ft1k, ...: list_weights(model)) or a "
                                  "weights file.")
    freeze_backbone: bool = setting(False, "Train only the new head (BN layers in inference mode).")
    finetune_epochs: int = setting(0, "With freeze_backbone: last epochs with everything unfrozen.")
    finetune_lr_scale: float = setting(0.1, "LR factor for the unfrozen fine-tuning epochs.")
    quantization_aware_epochs: int = setting(
        0, "Last epochs trained through int8 rounding of every activation, as a full-integer TFLite file computes "
        "(quantization-aware fine-tuning; BN statistics frozen, the weight average restarted from the averaged "
        "weights): for an int8 export whose outputs move (README 'Recognition embeddings').")
    quantization_aware_lr_scale: float = setting(
        0.1, "The quantization-aware epochs' LR: constant, this factor x the peak LR (a schedule's end is near 0).")
    dropout_rate: float | None = setting(None, "Dropout before the classifier; default: the variant's.")
    drop_connect_rate: float | None = setting(None, "Stochastic depth rate of the last block; default 0.2.")
    bn_momentum: float | None = setting(None, "BN moving-average momentum; default: the variant's, lowered when an "
                                        "epoch is too short for it (see README).")
    sync_batch_norm: bool | None = setting(None, "Batch statistics over all replicas; default: on with several.")

    def validate(self) -> None:
        try:
            get_config(self.name)
        except ValueError as err:
            raise SettingError("model", str(err)) from None
        try:
            family_for(get_config(self.name), self.weights)
        except ValueError as err:
            raise SettingError("weights", str(err)) from None
        for name in ("dropout_rate", "drop_connect_rate"):
            value = getattr(self, name)
            _check(value is None or 0 <= value < 1, name, f"{name} must be in [0, 1), got {value}")
        _check(self.bn_momentum is None or 0 < self.bn_momentum < 1, "bn_momentum",
               f"bn_momentum must be in (0, 1), got {self.bn_momentum}")
        _check(self.finetune_epochs >= 0, "finetune_epochs",
               f"finetune_epochs must be >= 0, got {self.finetune_epochs}")
        _check(self.quantization_aware_epochs >= 0, "quantization_aware_epochs",
               f"quantization_aware_epochs must be >= 0, got {self.quantization_aware_epochs}")
        _check(self.quantization_aware_lr_scale > 0, "quantization_aware_lr_scale",
               f"quantization_aware_lr_scale must be > 0, got {self.quantization_aware_lr_scale}")
        _check(self.finetune_lr_scale > 0, "finetune_lr_scale",
               f"finetune_lr_scale must be > 0, got {self.finetune_lr_scale}")

    def check_new_run(self) -> None:
        """Refuse what cannot train from the start (a run trained so earlier still evaluates and exports)."""
        if self.freeze_backbone and not self.weights:
            raise advised(functools.partial(SettingError, "freeze_backbone"),
                          "freeze_backbone trains only a new head on pretrained features, and there are none (a "
                          "frozen random backbone gives the head nothing to learn from): add ",
                          Arg("weights", "imagenet"), " (or an official checkpoint family, or a weights file), or "
                          "leave freeze_backbone off")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer, learning-rate schedule, loss regularization and the weight average."""

    name: str = setting("rmsprop", "Optimizer (papers: RMSprop 0.9/0.9/1e-3).", choices=OPTIMIZERS, flag="optimizer")
    learning_rate: float = setting(0.016, "Learning rate per 256 images, scaled linearly with batch_size.")
    lr_schedule: str = setting("exponential", "LR after warmup.", choices=SCHEDULES)
    warmup_epochs: float | None = setting(None, "Linear LR warmup epochs; default: the papers' 5 of 350 epochs, "
                                          "scaled to epochs (1.4% of the run).")
    lr_decay_rate: float = setting(PAPER_DECAY_RATE, "Exponential schedule: factor per decay period.")
    lr_decay_epochs: float | None = setting(None, "Exponential schedule: epochs per decay period (staircase); "
                                            "default: the papers' 2.4 of 350 epochs, scaled to epochs (ends at "
                                            "1.2% of the peak LR).")
    weight_decay: float = setting(1e-5, "L2 weight decay (not on BN or biases); decoupled for adamw.")
    label_smoothing: float = setting(0.1, "Label smoothing.")
    ema_decay: float = setting(0.9999, "EMA of weights used for eval and export; 0 turns it off.")

    def validate(self) -> None:
        _check(self.learning_rate > 0, "learning_rate", f"learning_rate must be > 0, got {self.learning_rate}")
        _check(self.warmup_epochs is None or self.warmup_epochs >= 0, "warmup_epochs",
               f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        _check(self.lr_decay_epochs is None or self.lr_decay_epochs > 0, "lr_decay_epochs",
               f"lr_decay_epochs must be > 0, got {self.lr_decay_epochs}")
        _check(0 < self.lr_decay_rate <= 1, "lr_decay_rate",
               f"lr_decay_rate must be in (0, 1], got {self.lr_decay_rate}")
        _check(self.weight_decay >= 0, "weight_decay", f"weight_decay must be >= 0, got {self.weight_decay}")
        _check(0 <= self.label_smoothing < 1, "label_smoothing",
               f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        _check(0 <= self.ema_decay < 1, "ema_decay", f"ema_decay must be in [0, 1), got {self.ema_decay}")


@dataclasses.dataclass(frozen=True)
class ProgressiveConfig:
    """EfficientNetV2 progressive learning: image size and regularization rise over the stages."""

    stages: int = setting(0, "Progressive learning stages (EfficientNetV2); 0 or 1: off.", flag="progressive")
    min_size: int = setting(128, "Progressive: first stage image size.", flag="progressive_min_size")
    max_size: int | None = setting(None, "Progressive: last stage image size (default: the training size, see "
                                   "train_image_size).", flag="progressive_max_size")
    min_dropout: float = setting(0.1, "Progressive: first stage dropout.", flag="progressive_min_dropout")
    max_dropout: float | None = setting(None, "Progressive: last stage dropout (default dropout_rate).",
                                        flag="progressive_max_dropout")
    min_randaug: float = setting(5.0, "Progressive: first stage RandAugment magnitude.", flag="progressive_min_randaug")
    max_randaug: float | None = setting(None, "Progressive: last stage magnitude (default randaug_magnitude).",
                                        flag="progressive_max_randaug")
    min_mixup: float = setting(0.0, "Progressive: first stage mixup alpha.", flag="progressive_min_mixup")
    max_mixup: float | None = setting(None, "Progressive: last stage mixup alpha (default mixup_alpha).",
                                      flag="progressive_max_mixup")

    def validate(self) -> None:
        _check(self.stages >= 0, "progressive", f"progressive must be >= 0 stages, got {self.stages}")
        _check(self.max_size is None or self.max_size >= 32, "progressive_max_size",
               f"progressive_max_size must be >= 32, got {self.max_size}")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Where the run lives, how long it trains, and on what hardware."""

    model_dir: str | None = setting(None, "Where checkpoints, history.csv, logs and plots go (default "
                                    "runs/MODEL-DATASET). Rerunning the same command resumes.")
    epochs: int = setting(350, "Training epochs (the papers' ImageNet run: 350).")
    batch_size: int | None = setting(None, "Global batch size, split over the replicas (the papers: 4096 on TPU pods); "
                                     "default: 64, or for under 640 training images the largest of 32, 16, 8 that "
                                     "gives 10 steps per epoch (8 at least).")
    seed: int | None = setting(0, "Random seed (weights, data order, augmentation).")
    keep_checkpoints: int = setting(3, "Checkpoints kept in model_dir/checkpoints.")
    steps_per_epoch: int | None = setting(None, "Cap on steps per epoch (quick runs); default: one pass over the "
                                          "training split.")
    steps_per_loop: int = setting(1, "Train steps per compiled call (raise on TPU).")
    checkpoint_every_steps: int = setting(
        0, "Also checkpoint every N steps within an epoch (preemptible machines lose at most N steps; a resumed run "
        "continues at the next batch); 0: at the end of each epoch only.")
    jit_compile: bool | None = setting(None, "XLA for the train step; default: on TPU only (measured: slower on CPU).")
    mixed_precision: bool = setting(False, "bfloat16 on TPU/CPU, float16 with loss scaling on GPU.")
    strategy: str = setting("auto", "auto: TPU if tpu is set, multi-worker if TF_CONFIG names several workers, "
                            "mirrored on several GPUs.", choices=STRATEGIES)
    tpu: str | None = setting(None, "TPU name or grpc:// address (TPUClusterResolver).")

    def validate(self) -> None:
        _check(self.epochs >= 1, "epochs", f"epochs must be >= 1, got {self.epochs}")
        _check(self.batch_size is None or self.batch_size >= 1, "batch_size",
               f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.steps_per_epoch is None or self.steps_per_epoch >= 1, "steps_per_epoch",
               f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}")
        _check(self.steps_per_loop >= 1, "steps_per_loop", f"steps_per_loop must be >= 1, got {self.steps_per_loop}")
        _check(self.checkpoint_every_steps >= 0, "checkpoint_every_steps",
               f"checkpoint_every_steps must be >= 0 (0: at epoch ends only), got {self.checkpoint_every_steps}")
        _check(self.keep_checkpoints >= 1, "keep_checkpoints",
               f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")


@dataclasses.dataclass(frozen=True)
class RecognitionConfig:
    """What the network learns: a classifier (the default) or a recognition embedding."""

    task: str = setting("classification", "classification: a classifier over the dataset's classes. embedding: a "
                        "recognition backbone (an L2-normalised embedding trained with a margin loss on some "
                        "identities, evaluated by verification and retrieval on held-out ones; docs/recognition.md).",
                        choices=TASKS)
    loss: str = setting("arcface", "Embedding task: arcface, cosface, or softmax (a plain classifier on the "
                        "embedding, the baseline).", choices=MARGIN_LOSSES)
    embedding_dim: int = setting(512, "Embedding task: the embedding's size.")
    embedding_head: str = setting("gap", "Embedding task: gap (average pooling, dropout, Dense) or flatten "
                                  "(iResNet's: BN, dropout, flatten of the last feature map, Dense, BN; one fixed "
                                  "image size).", choices=EMBEDDING_HEADS)
    margin: float | None = setting(None, "Embedding task: the margin, in [0, pi/2): arcface's angle (default 0.5), "
                                   "cosface's cosine (default 0.35).")
    margin_scale: float = setting(DEFAULT_SCALE, "Embedding task: the scale s of arcface/cosface logits.")
    held_out_identities: float | None = setting(
        None, "Embedding task: share of the identities held out (seeded) for evaluation; default: digits 7, 8, 9, "
        "glyphs and folders 0.2.")

    @property
    def embedding(self) -> bool:
        return self.task == "embedding"

    def validate(self) -> None:
        if not self.embedding:
            return
        _check(self.embedding_dim >= 1, "embedding_dim", f"embedding_dim must be >= 1, got {self.embedding_dim}")
        try:
            check_margin(self.loss, DEFAULT_MARGINS[self.loss] if self.margin is None else self.margin,
                         self.margin_scale)
        except ValueError as err:
            raise SettingError("margin_scale" if "scale" in str(err) else "margin", str(err)) from None
        _check(self.loss != "softmax" or self.margin is None, "margin",
               f"margin applies to arcface and cosface; the softmax loss has none (got margin={self.margin})")
        _check(self.held_out_identities is None or 0 < self.held_out_identities < 1, "held_out_identities",
               f"held_out_identities must be a share in (0, 1), got {self.held_out_identities}")


def default_model_dir(model: str, dataset: str, task: str = "classification") -> str:
    """runs/MODEL-DATASET (the embedding task: runs/MODEL-DATASET-embedding), with the characters
    of folder: paths and tfrecord: globs made safe for a directory name."""
    suffix = "" if task == "classification" else f"-{task}"
    return os.path.join("runs", f"{model}-{re.sub(r'[^A-Za-z0-9._-]', '_', dataset)}{suffix}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training run. Build one with `TrainConfig.from_settings(model=..., epochs=...)` (flat
    names, as on the command line) or from its sections."""

    data: DataConfig = section(DataConfig)
    model: NetworkConfig = section(NetworkConfig)
    optimizer: OptimizerConfig = section(OptimizerConfig)
    augment: AugmentConfig = section(AugmentConfig)
    progressive: ProgressiveConfig = section(ProgressiveConfig)
    run: RunConfig = section(RunConfig)
    recognition: RecognitionConfig = section(RecognitionConfig)

    @classmethod
    def from_settings(cls, **values: Any) -> TrainConfig:
        """A validated config from flat setting names (`model`, `learning_rate`, `progressive`, ...):
        an unknown name or a bad value raises `SettingError` naming it."""
        config = settings.from_settings(cls, values)
        config.validate()
        return config

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """A config from its nested dict (`dataclasses.asdict`, e.g. read from run.json)."""
        return settings.from_dict(cls, values)

    def settings(self) -> dict[str, Any]:
        """Flat {name: value} of every setting."""
        return settings.to_settings(self)

    def replace(self, **values: Any) -> TrainConfig:
        """A copy with settings replaced by flat name."""
        return settings.replace_settings(self, **values)

    @property
    def model_dir(self) -> str:
        """The run directory: `run.model_dir`, else runs/MODEL-DATASET (-embedding for that task)."""
        return self.run.model_dir or default_model_dir(self.model.name, self.data.dataset, self.recognition.task)

    def __post_init__(self):
        for field in dataclasses.fields(self):
            expected = field.default_factory
            if not isinstance(getattr(self, field.name), expected):
                raise TypeError(f"TrainConfig.{field.name} must be a {expected.__name__}, got "
                                f"{getattr(self, field.name)!r}; for flat settings use "
                                f"TrainConfig.from_settings({field.name}=...)")

    def validate(self) -> None:
        """Reject bad values before any work starts: `SettingError` naming the setting."""
        settings.check_choices(self)
        for part in (self.model, self.data, self.optimizer, self.augment, self.progressive, self.run,
                     self.recognition):
            part.validate()
        if self.recognition.embedding:
            self._validate_embedding()
        epochs = self.run.epochs
        _check(self.progressive.stages <= epochs, "progressive",
               f"progressive ({self.progressive.stages} stages) cannot exceed epochs ({epochs})")
        _check(self.model.finetune_epochs < epochs, "finetune_epochs",
               f"finetune_epochs ({self.model.finetune_epochs}) must be < epochs ({epochs})")
        _check(self.model.quantization_aware_epochs < epochs, "quantization_aware_epochs",
               f"quantization_aware_epochs ({self.model.quantization_aware_epochs}) must be < epochs ({epochs}): "
               "they fine-tune a trained network (its BN statistics frozen)")

    def _validate_embedding(self) -> None:
        from efficientnet_tf.data.identities import IDENTITY_DATASETS, NATIVE_SIZES

        dataset = self.data.dataset
        _check(dataset in NATIVE_SIZES or dataset.startswith("folder:"), "dataset",
               f"the embedding task reads identities from {' or '.join(IDENTITY_DATASETS)}, got {dataset!r}")
        mixing = {"mixup_alpha": self.augment.mixup_alpha, "cutmix_alpha": self.augment.cutmix_alpha,
                  "progressive_max_mixup": (self.progressive.max_mixup or 0) if self.progressive.stages > 1 else 0}
        for name, value in mixing.items():
            _check(value == 0, name, f"{name} mixes two images' labels; the embedding task trains on identity ids: "
                   f"set {name} to 0")
        _check(self.data.eval_dataset is None, "eval_dataset",
               "the embedding task evaluates on its own held-out identities; eval_dataset applies to classification")
        if self.recognition.embedding_head == "flatten":
            # Digits and glyphs are small images (one size); a folder's sizes vary, where V2 trains smaller.
            train_size, eval_size = self.image_sizes(NATIVE_SIZES.get(dataset))
            _check(self.progressive.stages <= 1 and train_size == eval_size, "embedding_head",
                   f"the flatten head flattens a feature map of one fixed size: train and evaluate at one "
                   f"image size (no progressive learning; here training {train_size} px, evaluation {eval_size} px: "
                   f"set train_image_size to image_size)")

    def schedule_epochs(self) -> tuple[float, float]:
        """(warmup, decay period) in epochs. Unset, they keep the papers' schedule *shape*:
        5 warmup epochs and x0.97 every 2.4 epochs of a 350-epoch run, i.e. warm up over the
        first 1.4% of training and end at 0.97^(350/2.4) = 1.2% of the peak LR. A 15-epoch run
        given the literal 5 and 2.4 would spend a third of its steps warming up and never anneal
        (ends at 83% of peak): measured on digits, 0.78 val top-1 instead of 0.98 (README).
        Values set explicitly (recipes in flags/) are taken literally."""
        scale = self.run.epochs / PAPER_EPOCHS
        optimizer = self.optimizer
        warmup = PAPER_WARMUP_EPOCHS * scale if optimizer.warmup_epochs is None else optimizer.warmup_epochs
        decay = PAPER_DECAY_EPOCHS * scale if optimizer.lr_decay_epochs is None else optimizer.lr_decay_epochs
        return warmup, decay

    def make_schedule(self, base_lr: float, steps_per_epoch: int):
        """The run's LR schedule (`training.optim.WarmupSchedule`: its value at every step)."""
        from efficientnet_tf.training.optim import WarmupSchedule

        warmup, decay = self.schedule_epochs()
        return WarmupSchedule(base_lr, steps_per_epoch, steps_per_epoch * self.run.epochs, self.optimizer.lr_schedule,
                              warmup, self.optimizer.lr_decay_rate, decay)

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
        model_config = get_config(self.model.name)
        small = native_size is not None and native_size < SMALL_IMAGE
        if self.data.image_size:
            eval_size = self.data.image_size
        else:
            eval_size = 32 if small else model_config.resolution
        if self.data.train_image_size:
            train_size = self.data.train_image_size
        elif small or model_config.train_resolution is None:
            train_size = eval_size
        else:
            train_size = min(model_config.train_resolution, eval_size)
        return train_size, eval_size

    def load_source(self, on_bad_image: str | None = None, download: bool = True, class_names=None):
        """The run's dataset (`data.sources.Source`), with the same seeded split every time
        (`class_names`: tfrecord datasets, instead of class_names_file's)."""
        from efficientnet_tf.data.identities import identity_source
        from efficientnet_tf.data.sources import get_source

        data = self.data
        if self.recognition.embedding:
            return identity_source(data.dataset, self.recognition.held_out_identities, seed=self.run.seed or 0,
                                   on_bad_image=on_bad_image or data.on_bad_image)
        return get_source(data.dataset, data.data_dir, validation_fraction=data.validation_fraction,
                          seed=self.run.seed or 0, on_bad_image=on_bad_image or data.on_bad_image,
                          download=download, label_key=data.label_key, eval_dataset=data.eval_dataset,
                          tfrecord_features=(data.tfrecord_image_key, data.tfrecord_label_key,
                                             data.tfrecord_label_offset),
                          class_names=class_names if class_names is not None else data.class_names())

    def peek_dataset(self) -> tuple[int | None, int | None]:
        """(stored image size or None: varied, training images or None: unknown here), without
        downloading or decoding images: what a dry run resolves the run's values from."""
        from efficientnet_tf.data.sources import peek_dataset

        data = self.data
        if self.recognition.embedding:
            if data.dataset.startswith("folder:"):
                return None, None  # any size, and opening it checks every file
            source = self.load_source()
            return source.native_size, source.num_train
        return peek_dataset(data.dataset, data.data_dir, validation_fraction=data.validation_fraction,
                            seed=self.run.seed or 0, label_key=data.label_key)
