"""The data settings a run chooses: which images, at which sizes, with which augmentation.
The command line builds its flags from these declarations.
"""

from __future__ import annotations

import dataclasses
import os

from efficientnet_tf.settings import SettingError, setting

# Below this side a dataset counts as small-image (CIFAR 32, digits 8): it trains and evaluates
# at one size, and its random crops are mild (a 0.08-area crop of 32 px is 9 px).
SMALL_IMAGE = 64
ON_BAD_IMAGE = ("error", "skip")
MAX_MAGNITUDE = 10.0


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which dataset a run reads and the image sizes it trains and evaluates at."""

    dataset: str = setting("digits", "TFDS name (cifar10, oxford_flowers102, imagenet2012, ...), folder:PATH, "
                           "digits (offline) or synthetic; the embedding task: digits, glyphs (offline, 129 "
                           "characters as identities) or folder:PATH.")
    data_dir: str | None = setting(None, "TFDS data directory.")
    image_size: int | None = setting(None, "Evaluation and export size; default: the model's resolution, 32 for "
                                     "datasets of images under 64 px (CIFAR, digits).")
    train_image_size: int | None = setting(
        None, "Training size; default: EfficientNetV2's own training size (S: 300, evaluated at 384) up to "
        "image_size, else image_size; datasets of images under 64 px train at image_size. Progressive learning "
        "ends at it.")
    validation_fraction: float | None = setting(
        None, "Share of the training images held out (seeded) for evaluation when the dataset has no evaluation "
        "split; default 0.1 (digits: 0.2).")
    label_key: str = setting("label", "TFDS datasets: the class-label feature to classify (e.g. smallnorb: "
                             "label_category).")
    on_bad_image: str = setting("error", "folder: datasets: 'error' names unreadable files and stops; 'skip' "
                                "leaves them out and counts them.", choices=ON_BAD_IMAGE)
    eval_dataset: str | None = setting(
        None, "Training on tfrecord:GLOB: tfrecord:GLOB of the evaluation files (default: a seeded held-out share "
        "of the training records). Evaluating a trained run (eval mode): evaluate it on this dataset instead (TFDS name, folder:PATH, "
        "tfrecord:GLOB: all its records) if it has the run's classes in the same order.")
    tfrecord_image_key: str = setting("image/encoded", "tfrecord: datasets: the feature holding the encoded image.")
    tfrecord_label_key: str = setting("image/class/label", "tfrecord: datasets: the integer class feature.")
    tfrecord_label_offset: int = setting(1, "tfrecord: datasets: the number of the first class (tensorflow/tpu's "
                                         "ImageNet files count from 1).")
    class_names_file: str | None = setting(None, "tfrecord: datasets: a text file with one class name per line, in "
                                           "label order; default: the 1000 ImageNet classes.")

    def validate(self) -> None:
        for name in ("image_size", "train_image_size"):
            value = getattr(self, name)
            if value is not None and value < 32:
                raise SettingError(name, f"{name} must be >= 32, got {value}")
        if self.validation_fraction is not None and not 0 < self.validation_fraction < 1:
            raise SettingError("validation_fraction", "validation_fraction must be in (0, 1) or None (the source's "
                               f"default), got {self.validation_fraction}")
        if not isinstance(self.label_key, str) or not self.label_key.strip():
            raise SettingError("label_key", f"label_key must be a feature name such as 'label', got {self.label_key!r}")
        for name in ("tfrecord_image_key", "tfrecord_label_key"):
            if not getattr(self, name).strip():
                raise SettingError(name, f"{name} must be a feature name such as 'image/encoded', got ''")
        if self.eval_dataset is not None and not self.eval_dataset.strip():
            raise SettingError("eval_dataset", "eval_dataset must name a dataset (or be left unset), got ''")

    def class_names(self) -> list[str] | None:
        """The names in class_names_file (None when unset)."""
        if self.class_names_file is None:
            return None
        path = os.path.expanduser(self.class_names_file)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"class_names_file {self.class_names_file!r} does not exist")
        with open(path, encoding="utf8") as f:
            return [line.strip() for line in f if line.strip()]


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Batch augmentation. Magnitudes use the tensorflow/tpu scale where 10 is the strongest."""

    randaug_layers: int = setting(0, "RandAugment ops per image (0: off).")
    randaug_magnitude: float = setting(0.0, "RandAugment magnitude (tensorflow/tpu scale, 10 = strongest).")
    mixup_alpha: float = setting(0.0, "MixUp alpha (0: off).")
    cutmix_alpha: float = setting(0.0, "CutMix alpha (0: off).")

    def __post_init__(self):
        self.validate()  # also used alone (a PipelineConfig's augment): fail where it is made

    def validate(self) -> None:
        for field in dataclasses.fields(self):
            if getattr(self, field.name) < 0:
                raise SettingError(field.name, f"{field.name} must be >= 0, got {getattr(self, field.name)}")

    @property
    def mixes_labels(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    @property
    def active(self) -> bool:
        return self.mixes_labels or (self.randaug_layers > 0 and self.randaug_magnitude > 0)
