"""Where images come from: TFDS, a folder of images, scikit-learn's digits, or synthetic.

Every source yields (uint8 RGB image of any size, int32 label) pairs plus its metadata;
`efficientnet_tf.data.pipeline` turns them into batches for a model.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gzip
import hashlib
import json
import logging
import os
import re
import socket
from importlib import resources

import numpy as np
import tensorflow as tf

from efficientnet_tf.advice import Arg, advised
from efficientnet_tf.data import image_io
from efficientnet_tf.data.config import ON_BAD_IMAGE
from efficientnet_tf.files import write_cache
from efficientnet_tf.settings import SettingError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
TFDS_EXAMPLES = ("cifar10", "cifar100", "oxford_flowers102", "cars196", "food101", "imagenet2012")
OTHER_SOURCES = ("folder:PATH", "tfrecord:GLOB", "digits", "synthetic")
# TFDS names its evaluation split differently per dataset; the first present one is used.
EVAL_SPLITS = ("validation", "test")
# Sub-folders of a folder dataset that hold the evaluation images next to train/, in order of
# preference (case does not matter).
FOLDER_EVAL_DIRS = ("val", "valid", "validation", "eval", "test")
# Held out of the training images when a dataset has no split of its own for evaluation.
DEFAULT_VALIDATION_FRACTION = 0.1
# The digits source keeps 20%: the README's digits figures were measured with it.
DIGITS_VALIDATION_FRACTION = 0.2
# Files operating systems drop into photo folders; never images, never worth an error.
IGNORED_FILES = ("thumbs.db", "desktop.ini")
CACHE_ENV = "EFFICIENTNET_TF_CACHE"
# tensorflow/tpu's ImageNet TFRecords (imagenet_to_gcs.py): JPEG bytes and a 1-based label.
TFRECORD_IMAGE_KEY = "image/encoded"
TFRECORD_LABEL_KEY = "image/class/label"
TFRECORD_LABEL_OFFSET = 1


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


def imagenet_class_names() -> list[str]:
    """The 1000 ILSVRC-2012 class names in the order of the official weights' outputs (labels
    0..999; tensorflow/tpu's TFRecords number them 1..1000)."""
    text = resources.files("efficientnet_tf.data").joinpath("imagenet_classes.txt").read_text(encoding="utf8")
    names = [line for line in text.splitlines() if line]
    assert len(names) == 1000, f"imagenet_classes.txt has {len(names)} names, expected 1000"
    return names


def imagenet21k_class_names() -> list[str]:
    """Names for the 21,843 outputs of the 'imagenet21k' weights, in order: google/automl's label
    list ("wordnet-id<TAB>names" per line), which names the first 21,842; the last output has none."""
    data = resources.files("efficientnet_tf.data").joinpath("imagenet21k_classes.txt.gz").read_bytes()
    names = [line.split("\t", 1)[-1] for line in gzip.decompress(data).decode("utf8").splitlines() if line]
    assert len(names) == 21842, f"imagenet21k_classes.txt.gz has {len(names)} names, expected 21842"
    return names + ["(unnamed class 21842)"]


# Identity datasets (data.identities) with no classification split.
EMBEDDING_ONLY_SOURCES = ("glyphs",)


def available_sources() -> str:
    return ", ".join(OTHER_SOURCES + TFDS_EXAMPLES) + " or any TFDS image-classification dataset"


def is_tfds_name(name: str) -> bool:
    """Whether dataset `name` is a TFDS name (not digits, synthetic, folder:PATH or tfrecord:GLOB)."""
    return name not in ("digits", "synthetic") and not name.startswith(("folder:", "tfrecord:"))


def get_source(name: str, data_dir: str | None = None, *, validation_fraction: float | None = None, seed: int = 0,
               on_bad_image: str = "error", download: bool = True, label_key: str = "label",
               synthetic_image_size: int = 224, synthetic_num_classes: int = 10,
               synthetic_examples: int = 1024, eval_dataset: str | None = None,
               tfrecord_features: tuple[str, str, int] = (TFRECORD_IMAGE_KEY, TFRECORD_LABEL_KEY, TFRECORD_LABEL_OFFSET),
               class_names=None) -> Source:
    """Pick a data source by name: 'digits', 'synthetic', 'folder:PATH', 'tfrecord:GLOB' or a TFDS name.

    Args:
        name: 'digits', 'synthetic', 'folder:PATH', 'tfrecord:GLOB' (local or gs://) or a TFDS
            dataset name.
        data_dir: where TFDS datasets are (or get) prepared; None: TFDS's default.
        validation_fraction: share of the training images held out (seeded) for evaluation when
            the dataset has no evaluation split of its own. None: 0.1 (digits: 0.2).
        seed: picks the held-out images; the same seed gives the same split on every read.
        on_bad_image: folders only: 'error' (name the unreadable files) or 'skip' them.
        download: TFDS only: prepare a missing dataset (False: fail instead).
        label_key: TFDS only: the ClassLabel feature to classify (smallnorb: 'label_category').
        eval_dataset: tfrecord only: 'tfrecord:GLOB' of the evaluation files (None: a held-out
            share of the training records).
        tfrecord_features: tfrecord only: (image feature, label feature, first label's number).
        class_names: tfrecord only: the class names in label order (None: ImageNet's 1000).
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"dataset name must be a non-empty string; choose from {available_sources()}")
    if validation_fraction is not None and not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1) or None (the default), got {validation_fraction}")
    is_tfrecord = name.startswith("tfrecord:")
    if label_key != "label" and not is_tfds_name(name):
        raise ValueError(f"label_key={label_key!r} applies to TFDS datasets only, not to {name!r}")
    if eval_dataset is not None and not (is_tfrecord and eval_dataset.startswith("tfrecord:")):
        raise SettingError("eval_dataset", f"the evaluation files of a tfrecord: dataset are tfrecord:GLOB, got "
                           f"{eval_dataset!r}" if is_tfrecord else "for training, eval_dataset names the evaluation "
                           f"files (tfrecord:GLOB) of a tfrecord: dataset; {name!r} has its own evaluation split")
    if is_tfrecord:
        image_key, tf_label_key, offset = tfrecord_features
        return tfrecord_source(name[len("tfrecord:"):], eval_dataset[len("tfrecord:"):] if eval_dataset else None,
                               validation_fraction=validation_fraction, seed=seed, image_key=image_key,
                               label_key=tf_label_key, label_offset=offset, class_names=class_names)
    if name == "digits":
        return digits_source(validation_fraction, seed)
    if name == "synthetic":
        return synthetic_source(synthetic_image_size, synthetic_num_classes, synthetic_examples, seed)
    if name.startswith("folder:"):
        return folder_source(name[len("folder:"):], validation_fraction, seed, on_bad_image)
    return tfds_source(name, data_dir, download=download, validation_fraction=validation_fraction, seed=seed,
                       label_key=label_key)


def peek_dataset(name: str, data_dir: str | None = None, **source_args) -> tuple[int | None, int | None]:
    """(stored image size or None: varied, training images or None: unknown) of dataset `name`,
    without downloading or decoding images: what resolving a run's values needs before any work
    starts. `source_args` go to `get_source` (label_key, validation_fraction, seed)."""
    if name.startswith("tfrecord:"):
        tfrecord_files(name[len("tfrecord:"):])  # files missing: say so now (counting them means reading them)
        return None, None
    if name.startswith("folder:"):
        # Any size. Counted from the file names: opening a folder source checks every file.
        return None, folder_train_count(name[len("folder:"):], source_args.get("validation_fraction"))
    try:
        source = get_source(name, data_dir, download=False, **source_args)
        return source.native_size, source.num_train
    except FileNotFoundError:
        # A TFDS dataset that is not prepared here: the metadata TFDS ships has the image shape.
        import tensorflow_datasets as tfds

        features = tfds.builder(name, data_dir=data_dir).info.features
        shape = features["image"].shape if "image" in features else (None, None)
        return (shape[0] if shape[0] is not None and shape[0] == shape[1] else None), None


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.4g}%"


# ---------------------------------------------------------------- digits (offline, real data)


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


# ---------------------------------------------------------------- synthetic (throughput tests)


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


# ---------------------------------------------------------------- folder of images


def _subdirs(root: str) -> list[str]:
    return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))


def _files_under(folder: str) -> list[str]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
            if not fname.startswith(".") and fname.lower() not in IGNORED_FILES:
                files.append(os.path.join(dirpath, fname))
    return files


def _split_layout(root: str) -> tuple[str | None, str | None]:
    """(train folder, eval folder) names when `root` is split into train/ and val/ (or valid/,
    validation/, eval/, test/), each holding class folders; (None, None) when the sub-folders of
    `root` are the classes themselves. A train/ folder without an eval folder gives (train, None)."""
    by_lower = {d.lower(): d for d in _subdirs(root)}
    train = by_lower.get("train")
    # A "train" folder of images (no class folders inside) is a class named train (locomotives).
    if train is None or not _subdirs(os.path.join(root, train)):
        return None, None
    evaluation = next((by_lower[n] for n in FOLDER_EVAL_DIRS
                       if n in by_lower and _subdirs(os.path.join(root, by_lower[n]))), None)
    unused = [d for d in by_lower.values() if d not in (train, evaluation)]
    if unused:
        log.warning("%s: using %s/%s; not using the folder(s) %s", root, train,
                    f" and {evaluation}/" if evaluation else "", ", ".join(f"{d}/" for d in unused))
    return train, evaluation


def folder_source(path: str, validation_fraction: float | None = None, seed: int = 0,
                  on_bad_image: str = "error", evaluate_all: bool = False) -> Source:
    """One sub-folder per class, or `train/` + `val/` (also valid/, validation/, eval/, test/)
    each with one sub-folder per class.

    Every file is checked once with the decoder training uses (in parallel; the verdicts are
    cached by path, size and modification time, see `check_image_files`): a file it cannot read
    (corrupt, TIFF, HEIC, not an image) is an error naming it, or with on_bad_image='skip' is
    left out and counted. A class folder with no usable image is not a class (warning); a class
    too small to appear in both splits is named in a warning with its count.

    Args:
        path: the folder (`~` expanded).
        validation_fraction: share of each class held out (seeded, stratified) for evaluation
            when there is no eval folder; None: 0.1.
        seed: picks the held-out images.
        on_bad_image: 'error' or 'skip'.
        evaluate_all: a folder that only evaluates a trained run: no share is held out, every
            image is in the eval split (and the train split); an eval folder still names its own.
    """
    if on_bad_image not in ON_BAD_IMAGE:
        raise SettingError("on_bad_image", f"on_bad_image must be one of {', '.join(ON_BAD_IMAGE)}, "
                           f"got {on_bad_image!r}")
    fraction = DEFAULT_VALIDATION_FRACTION if validation_fraction is None else validation_fraction
    root, train_dir, eval_dir, class_root, train_files, eval_files = _folder_layout(path)
    eval_root = os.path.join(root, eval_dir) if eval_dir else None

    train_files, eval_files = usable_image_files(root, on_bad_image, train_files, eval_files)

    empty = [c for c, files in train_files.items() if not files]
    if empty:
        log.warning("%s: class folder(s) with no usable image are not classes: %s", class_root, ", ".join(empty))
    classes = [c for c in sorted(train_files) if train_files[c]]
    orphaned = sorted(c for c, files in eval_files.items() if files and c not in classes)
    if orphaned:
        raise ValueError(f"{eval_root} has images of class(es) {orphaned} that {class_root} "
                         f"has no usable image of; every eval class must be a training class")
    if len(classes) < 2:
        raise ValueError(_too_few_classes(class_root, classes))
    label_of = {c: i for i, c in enumerate(classes)}

    if eval_dir:
        train = [(p, label_of[c]) for c in classes for p in train_files[c]]
        evaluation = [(p, label_of[c]) for c in classes for p in eval_files.get(c, [])]
        unseen = [c for c in classes if not eval_files.get(c)]
        if unseen:
            log.warning("%s: class(es) with no image in %s/, which evaluation therefore never measures: %s",
                        root, eval_dir, ", ".join(unseen))
        description = (f"train: folder {train_dir}/, {len(train):,} images; "
                       f"eval: folder {eval_dir}/, {len(evaluation):,} images")
    elif evaluate_all:
        train = evaluation = [(p, label_of[c]) for c in classes for p in train_files[c]]
        where = f"folder {train_dir}/" if train_dir else "the class folders"
        description = f"eval: every image of {where}, {len(evaluation):,} images (evaluated only)"
    else:
        everything = [(p, label_of[c]) for c in classes for p in train_files[c]]
        train, evaluation = _stratified_split(everything, fraction, seed)
        singletons = [f"{c} (1 image)" for c in classes if len(train_files[c]) == 1]
        if singletons:
            log.warning("%s: class(es) too small to appear in both training and evaluation, trained on but "
                        "never evaluated: %s", class_root, ", ".join(singletons))
        where = f"folder {train_dir}/" if train_dir else "the class folders"
        description = (f"train: {where} minus a stratified seeded {_percent(fraction)} (seed {seed}), "
                       f"{len(train):,} images; eval: the held-out {_percent(fraction)}, {len(evaluation):,} images")
    if not evaluation:
        raise ValueError(f"{eval_root} has no usable image of the training classes {classes}" if eval_root else
                         f"dataset folder {root!r} cannot be split: every class has a single usable image, "
                         f"so none is left for evaluation")
    splits = {"train": train, "eval": evaluation}

    def make(split, shuffle_files, seed_, shard):
        chosen = splits[split] if shard is None else splits[split][shard[1]::shard[0]]  # one file per example
        paths, labels = [p for p, _ in chosen], [label for _, label in chosen]
        ds = tf.data.Dataset.from_tensor_slices((tf.constant(paths, tf.string), np.array(labels, np.int32)))
        if shuffle_files:
            ds = ds.shuffle(len(paths), seed=seed_, reshuffle_each_iteration=True)
        return ds.map(_decode_file, num_parallel_calls=tf.data.AUTOTUNE, deterministic=seed_ is not None)

    return Source(f"folder:{path}", len(classes), tuple(classes), len(train), len(evaluation),
                  native_size=None, flip_ok=True, _make=make, split_description=description)


def _folder_layout(path: str):
    """(root, train_dir, eval_dir, class_root, {class: files} to train on, {class: files} of the
    eval folder) from the listing alone; what no file check can change (no folder, a file, fewer
    than two class folders with files) is a FileNotFoundError or ValueError saying what was found."""
    root = os.path.expanduser(path)
    if not os.path.isdir(root):
        what = "is a file, not a folder" if os.path.exists(root) else "does not exist"
        raise FileNotFoundError(f"dataset folder {root!r} {what}: give a folder with one sub-folder of images "
                                "per class")
    train_dir, eval_dir = _split_layout(root)
    class_root = os.path.join(root, train_dir) if train_dir else root
    train_files = {cls: _files_under(os.path.join(class_root, cls)) for cls in _subdirs(class_root)}
    eval_root = os.path.join(root, eval_dir) if eval_dir else None
    eval_files = {cls: _files_under(os.path.join(eval_root, cls)) for cls in _subdirs(eval_root)} if eval_root else {}
    classes = [cls for cls, found in train_files.items() if found]
    if len(classes) < 2:
        raise ValueError(_too_few_classes(class_root, classes))
    return root, train_dir, eval_dir, class_root, train_files, eval_files


def _too_few_classes(class_root: str, classes: list[str]) -> str:
    found = (f"{len(classes)} class folder with images ({classes[0]})" if classes
             else "no sub-folder with images")
    loose = [name for name in os.listdir(class_root) if name.lower().endswith(IMAGE_EXTENSIONS)]
    if loose:
        found += f" and {len(loose)} image(s) directly in it: put them in one sub-folder per class"
    return (f"dataset folder {class_root!r} needs one sub-folder of images per class, at least 2 (e.g. cat/, "
            f"dog/); found {found}")


def folder_train_count(path: str, validation_fraction: float | None = None) -> int:
    """The training images `folder_source` will have, from the file listing alone (no file is
    checked: with on_bad_image='skip' the unreadable ones come off later); a folder that cannot be
    a dataset is the error training would give."""
    fraction = DEFAULT_VALIDATION_FRACTION if validation_fraction is None else validation_fraction
    _, _, eval_dir, _, train_files, _ = _folder_layout(path)
    counts = [len(found) for found in train_files.values() if found]
    if eval_dir:
        return sum(counts)
    return sum(count - _held_out_count(count, fraction) for count in counts)


def usable_image_files(root: str, on_bad_image: str, *files_by_class: dict[str, list[str]]) -> list[dict]:
    """Each {class: files} without the files the training decoder cannot read: with
    on_bad_image='error' a ValueError naming them, with 'skip' a warning counting them."""
    verdicts = check_image_files([p for group in files_by_class for files in group.values() for p in files])
    bad = sorted((p, reason) for p, reason in verdicts.items() if reason is not None)
    if not bad:
        return list(files_by_class)
    listing = "\n  ".join(f"{p}: {reason}" for p, reason in bad[:20]) + ("\n  ..." if len(bad) > 20 else "")
    if on_bad_image == "error":
        raise advised(ValueError, f"{len(bad)} file(s) in {root} cannot be read as {image_io.SUPPORTED_FORMATS} "
                      "images (pass ", Arg("on_bad_image", "skip"), f" to leave them out):\n  {listing}")
    log.warning("skipping %d unreadable file(s) in %s:\n  %s", len(bad), root, listing)
    bad_paths = {p for p, _ in bad}
    return [{c: [p for p in files if p not in bad_paths] for c, files in group.items()} for group in files_by_class]


def _decode_file(path, label):
    return image_io.read_image(path), label


def _stratified_split(items, fraction, seed):
    """Per class: a seeded `fraction` (at least 1, at most all but 1) held out; one-image classes train only."""
    rng = np.random.default_rng(seed)
    train, evaluation = [], []
    labels = sorted({label for _, label in items})
    for label in labels:
        members = [it for it in items if it[1] == label]
        order = rng.permutation(len(members))
        n_eval = _held_out_count(len(members), fraction)
        evaluation += [members[i] for i in sorted(order[:n_eval])]
        train += [members[i] for i in sorted(order[n_eval:])]
    return train, evaluation


def _held_out_count(count: int, fraction: float) -> int:
    return min(max(1, int(round(count * fraction))), count - 1)


# ---------------------------------------------------------------- TFRecord files (tensorflow/tpu format)



def tfrecord_files(pattern: str) -> list[str]:
    """The files a glob names (local or gs://), sorted: the order is part of the split."""
    files = sorted(tf.io.gfile.glob(os.path.expanduser(pattern)))
    if not files:
        raise FileNotFoundError(f"no file matches {pattern!r} (dataset 'tfrecord:{pattern}')")
    return files


def tfrecord_source(pattern: str, eval_pattern: str | None = None, *, validation_fraction: float | None = None,
                    seed: int = 0, image_key: str = TFRECORD_IMAGE_KEY, label_key: str = TFRECORD_LABEL_KEY,
                    label_offset: int = TFRECORD_LABEL_OFFSET, class_names=None) -> Source:
    """TFRecord files of tf.train.Examples, as tensorflow/tpu writes ImageNet: encoded image bytes
    under `image_key`, an integer class under `label_key` (minus `label_offset`: theirs count
    from 1).

    Each input pipeline of a distributed run reads its own files (file i goes to pipeline
    i mod count); with fewer files than pipelines every pipeline reads every file and keeps its
    share, with a warning. Record counts (needed for steps per epoch and padded evaluation) and
    label ranges (checked against the classes before anything trains) come from one read of each
    file, cached by path, size and modification time under `cache_dir()`.

    Args:
        pattern: glob of the training files, local or gs:// (e.g. 'gs://bucket/train-*').
        eval_pattern: glob of the evaluation files; None: a seeded `validation_fraction` of the
            training records is held out instead (membership by position, files in name order).
        validation_fraction: that share; None: 0.1.
        seed: picks the held-out records.
        image_key, label_key, label_offset: the features and the first label's number.
        class_names: one name per class, in label order; None: the 1000 ImageNet classes.
    """
    names = tuple(imagenet_class_names() if class_names is None else class_names)
    if len(names) < 2:
        raise ValueError(f"a TFRecord dataset needs at least 2 class names, got {len(names)}")
    train_files = tfrecord_files(pattern)
    eval_files = tfrecord_files(eval_pattern) if eval_pattern else None
    stats = record_stats(train_files + (eval_files or []), label_key)
    _check_label_range(stats, pattern if not eval_files else f"{pattern} and {eval_pattern}", label_key,
                       label_offset, len(names))
    counts = {path: entry[0] for path, entry in stats.items()}
    features = {image_key: tf.io.FixedLenFeature([], tf.string), label_key: tf.io.FixedLenFeature([], tf.int64)}
    num_classes = len(names)

    def to_example(record):
        parsed = tf.io.parse_single_example(record, features)
        # The label range was checked against the classes when the files were read for their counts.
        label = tf.cast(parsed[label_key] - label_offset, tf.int32)
        return _to_rgb(image_io.decode_image(parsed[image_key])), label

    def positioned(files):
        offsets = np.concatenate([[0], np.cumsum([counts[f] for f in files])[:-1]]).astype(np.int64)
        return list(zip(files, offsets))

    def read(files_with_offsets, shuffle_files, seed_, shard, split_name):
        """(position in the split's files, serialized record) from this shard's files."""
        element_shard = None
        if shard is not None:
            if len(files_with_offsets) >= shard[0]:
                files_with_offsets = files_with_offsets[shard[1]::shard[0]]
                log.info("%s: input pipeline %d of %d reads %d file(s): %s", split_name, shard[1] + 1, shard[0],
                         len(files_with_offsets), ", ".join(os.path.basename(f) for f, _ in files_with_offsets))
            else:
                element_shard = shard
                _warn_once(f"{split_name}: {len(files_with_offsets)} file(s) for {shard[0]} input pipelines: every "
                           f"pipeline reads every file and keeps 1/{shard[0]} of the records (write at least "
                           f"{shard[0]} files to have each read only its own)")
        files = tf.constant([f for f, _ in files_with_offsets], tf.string)
        offsets = tf.constant([o for _, o in files_with_offsets], tf.int64)
        ds = tf.data.Dataset.from_tensor_slices((files, offsets))
        if shuffle_files:
            ds = ds.shuffle(len(files_with_offsets), seed=seed_, reshuffle_each_iteration=True)
        cycle = max(1, min(16, len(files_with_offsets))) if shuffle_files else 1  # unshuffled: file order
        ds = ds.interleave(lambda f, o: tf.data.TFRecordDataset(f).enumerate().map(lambda i, r: (o + i, r)),
                           cycle_length=cycle, num_parallel_calls=tf.data.AUTOTUNE,
                           deterministic=not shuffle_files or seed_ is not None)
        return _every_nth(ds, element_shard)

    train_positioned = positioned(train_files)
    num_train_records = sum(counts[f] for f in train_files)
    if eval_files:
        eval_positioned = positioned(eval_files)
        num_train, num_eval = num_train_records, sum(counts[f] for f in eval_files)
        held_out = None
        description = (f"train: {len(train_files)} TFRecord file(s) {pattern}, {num_train:,} images; eval: "
                       f"{len(eval_files)} file(s) {eval_pattern}, {num_eval:,} images")
    else:
        fraction = DEFAULT_VALIDATION_FRACTION if validation_fraction is None else validation_fraction
        held_out = held_out_mask(num_train_records, fraction, seed, f"tfrecord:{pattern}")
        num_eval = int(held_out.sum())
        num_train = num_train_records - num_eval
        description = (f"train: {len(train_files)} TFRecord file(s) {pattern} minus a seeded {_percent(fraction)} "
                       f"(seed {seed}), {num_train:,} images; eval: the held-out {_percent(fraction)}, "
                       f"{num_eval:,} images")
        in_eval = tf.constant(held_out)

    def make(split, shuffle_files, seed_, shard):
        if held_out is None:
            files = train_positioned if split == "train" else eval_positioned
            ds = read(files, shuffle_files, seed_, shard, split)
        else:
            keep_eval = split == "eval"
            ds = read(train_positioned, shuffle_files, seed_, shard, split)
            ds = ds.filter(lambda i, _: tf.equal(tf.gather(in_eval, i), keep_eval))
        return ds.map(lambda _, record: to_example(record), num_parallel_calls=tf.data.AUTOTUNE,
                      deterministic=not shuffle_files or seed_ is not None)

    def shard_sizes(split, count):
        files = eval_files if split == "eval" and held_out is None else train_files
        if len(files) < count:  # every pipeline reads all and keeps every count-th record
            total = num_train if split == "train" else num_eval
            return [len(range(i, total, count)) for i in range(count)]
        if held_out is None:
            return [sum(counts[f] for f in files[index::count]) for index in range(count)]
        member = held_out if split == "eval" else ~held_out
        starts = dict(positioned(files))
        return [sum(int(member[starts[f]:starts[f] + counts[f]].sum()) for f in files[index::count])
                for index in range(count)]

    return Source(f"tfrecord:{pattern}", num_classes, names, num_train, num_eval, native_size=None, flip_ok=True,
                  _make=make, split_description=description, _shard_sizes=shard_sizes)


_warned = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def record_stats(files: list[str], label_key: str = TFRECORD_LABEL_KEY) -> dict[str, tuple[int, int, int]]:
    """{file: (records, smallest label, largest label)}, from one read of each file (labels only,
    images not decoded), cached by path, size and modification time under `cache_dir()`. A
    record without the integer feature `label_key`, or a file that is not TFRecords, is a
    ValueError naming the file."""
    cache_path = os.path.join(cache_dir(), "record_counts.json")
    try:
        with open(cache_path, encoding="utf8") as f:
            cached = json.load(f)
    except (OSError, ValueError):
        cached = {}
    stats, changed = {}, False
    features = {label_key: tf.io.FixedLenFeature([], tf.int64)}
    for path in files:
        stat = tf.io.gfile.stat(path)
        key = f"{path}|{stat.length}|{stat.mtime_nsec}|{label_key}"
        entry = cached.get(key)
        if not (isinstance(entry, list) and len(entry) == 3):
            log.info("reading the labels of %s (once; cached under %s)", path, cache_path)
            labels = tf.data.TFRecordDataset(path).map(lambda record: tf.io.parse_single_example(record, features)[
                label_key])
            start = (tf.constant(0, tf.int64), tf.constant(np.iinfo(np.int64).max), tf.constant(np.iinfo(np.int64).min))
            try:
                count, low, high = labels.reduce(start, lambda state, label: (
                    state[0] + 1, tf.minimum(state[1], label), tf.maximum(state[2], label)))
            except tf.errors.InvalidArgumentError as err:  # the record parsed, the feature is not there
                raise SettingError("tfrecord_label_key", f"a record of {path} has no integer feature {label_key!r} "
                                   f"({type(err).__name__}): name the class feature with tfrecord_label_key") from None
            except tf.errors.OpError as err:  # DataLossError: not TFRecords, or cut short
                raise ValueError(f"{path} cannot be read as a TFRecord file ({type(err).__name__}: "
                                 f"{str(err).splitlines()[0][:200]})") from None
            entry = cached[key] = [int(count), int(low), int(high)]
            changed = True
        stats[path] = tuple(entry)
    if changed:
        try:
            if not write_cache(cache_path, json.dumps(cached), _is_record_cache):
                log.info("record-count cache not written: %s is not one (left as it is)", cache_path)
        except OSError as err:  # a read-only home must not stop training
            log.info("record-count cache not written to %s (%s)", cache_path, err)
    return stats


def _is_record_cache(text: str) -> bool:
    """Whether `text` is (or was, cut short) what record_stats caches: {"path|size|mtime|key": [...]}."""
    return text.strip() in ("", "{}") or re.match(r'\{"[^"]*\|', text) is not None


def _check_label_range(stats: dict, pattern: str, label_key: str, label_offset: int, num_classes: int) -> None:
    """SettingError when the files' labels, minus the offset, are not all classes 0..num_classes-1."""
    filled = [entry for entry in stats.values() if entry[0] > 0]
    if not filled:
        return
    low, high = min(entry[1] for entry in filled), max(entry[2] for entry in filled)
    if low - label_offset < 0 or high - label_offset >= num_classes:
        raise SettingError("tfrecord_label_offset", f"the {label_key} labels of {pattern} run from {low} to {high}; "
                           f"minus tfrecord_label_offset={label_offset} that is {low - label_offset}..{high - label_offset}"
                           f", outside the {num_classes} classes 0..{num_classes - 1}: set the label offset "
                           "(tensorflow/tpu's ImageNet files: 1) or the class names")


# ---------------------------------------------------------------- the file check and its cache


def cache_dir() -> str:
    """Where efficientnet_tf keeps what it can recompute: $EFFICIENTNET_TF_CACHE or ~/.cache/efficientnet_tf."""
    return os.path.expanduser(os.environ.get(CACHE_ENV) or os.path.join("~", ".cache", "efficientnet_tf"))


def _verdict_file(paths: list[str]) -> str:
    # One file per folder (the common parent of its images): a cache for one dataset stays as
    # small as that dataset, and is rewritten without the others' entries.
    common = os.path.commonpath(paths) if paths else ""
    return os.path.join(cache_dir(), "image_checks", hashlib.sha256(common.encode()).hexdigest()[:24] + ".json")


def _load_verdicts(cache_path: str) -> dict:
    try:
        with open(cache_path, encoding="utf8") as f:
            stored = json.load(f)
        if stored.get("decoder") != image_io.DECODER_VERSION or stored.get("tensorflow") != tf.__version__:
            return {}
        return {path: tuple(entry) for path, entry in stored["verdicts"].items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:  # damaged: check again
        log.info("ignoring the unreadable image-check cache %s (%s)", cache_path, type(err).__name__)
        return {}


def _save_verdicts(cache_path: str, verdicts: dict) -> None:
    payload = {"decoder": image_io.DECODER_VERSION, "tensorflow": tf.__version__,
               "verdicts": {path: list(entry) for path, entry in verdicts.items()}}
    try:
        if not write_cache(cache_path, json.dumps(payload), lambda text: '"verdicts"' in text):
            log.info("image-check cache not written: %s is not one (left as it is)", cache_path)
    except OSError as err:  # a read-only home must not stop training
        log.info("image-check cache not written to %s (%s)", cache_path, err)


def check_image_files(paths: list[str], workers: int | None = None) -> dict[str, str | None]:
    """{path: None if training can decode it, else the reason}, for every path.

    Decodes with `image_io.decode_image` (the decoder training uses) in a thread pool, once per
    file: verdicts are cached by (absolute path, size, mtime_ns) under `cache_dir()`, so an
    unchanged folder is not decoded again; a touched or replaced file is.
    """
    if not paths:
        return {}
    absolute = {p: os.path.abspath(p) for p in paths}
    cache_path = _verdict_file(sorted(set(absolute.values())))
    cached = _load_verdicts(cache_path)
    verdicts, stamps, todo = {}, {}, []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError as err:
            verdicts[path] = f"cannot open: {err.strerror or err}"
            continue
        stamps[path] = (stat.st_size, stat.st_mtime_ns)
        entry = cached.get(absolute[path])
        if entry is not None and tuple(entry[:2]) == stamps[path]:
            verdicts[path] = entry[2]
        else:
            todo.append(path)
    if todo:
        if len(todo) > 1000:
            log.info("checking %d image files (%d unchanged since the last check)", len(todo), len(paths) - len(todo))
        workers = workers or min(32, 2 * (os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for path, reason in zip(todo, pool.map(image_io.check_image_file, todo)):
                verdicts[path] = reason
    if todo or len(cached) != len(stamps):
        _save_verdicts(cache_path, {absolute[p]: (*stamps[p], verdicts[p]) for p in stamps})
    return verdicts


# ---------------------------------------------------------------- TFDS


def _can_download(host: str = "storage.googleapis.com", timeout: float = 3.0, port: int = 443) -> bool:
    """Quick reachability check, so an offline machine fails in seconds instead of retrying."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _class_label(features, name: str, label_key: str):
    import tensorflow_datasets as tfds

    class_labels = [k for k in features.keys() if isinstance(features[k], tfds.features.ClassLabel)]
    if "image" not in features or not class_labels:
        raise ValueError(f"TFDS dataset {name!r} is not an image-classification dataset (needs an 'image' and a "
                         f"ClassLabel feature; it has {', '.join(features.keys())})")
    if label_key not in class_labels:
        raise advised(ValueError, f"TFDS dataset {name!r} has no class label {label_key!r}; its class labels are "
                      f"{', '.join(class_labels)} (pass one as ", Arg("label_key"), ")")
    return features[label_key]


def _quiet_unprepared_notice(record: logging.LogRecord) -> bool:
    # TFDS logs this absl warning while finding out that a dataset is not prepared: the error
    # `_prepare` raises says so, with what to do, and this line printed before it said less.
    return record.msg != "Variant folder %s has no %s"


def _prepare(builder, name: str, data_dir: str | None, download: bool) -> None:
    import tensorflow_datasets as tfds

    absl_logger = logging.getLogger("absl")
    absl_logger.addFilter(_quiet_unprepared_notice)
    try:
        prepared = builder.is_prepared()
    finally:
        absl_logger.removeFilter(_quiet_unprepared_notice)
    if prepared:
        return
    where = data_dir or "~/tensorflow_datasets"
    if not download:
        raise FileNotFoundError(f"TFDS dataset {name!r} is not prepared in {where} and download is off")
    if not _can_download():
        raise advised(
            FileNotFoundError, f"TFDS dataset {name!r} is not prepared in {where} and this machine cannot download "
            f"it. Prepare it where there is internet (`tfds build {name} --data_dir=DIR`), bring DIR here and pass ",
            Arg("data_dir", "DIR", placeholder=True), ", or train offline on the dataset 'digits'"
        )
    manual_dir = os.path.join(os.path.expanduser(data_dir or "~/tensorflow_datasets"), "downloads", "manual")
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    except AssertionError as err:  # manual-download datasets (imagenet2012) say so this way
        raise FileNotFoundError(f"TFDS dataset {name!r} needs a manual download into {manual_dir}: {err}") from err


def tfds_source(name: str, data_dir: str | None = None, download: bool = True, *,
                validation_fraction: float | None = None, seed: int = 0, label_key: str = "label") -> Source:
    """A TFDS image-classification dataset: its 'train' split, evaluated on 'validation' or
    'test' (the first it has), else on a seeded held-out share of 'train'.

    The held-out split is fixed by the seed alone: membership is decided by the example's
    position in 'train' read in file order, so it is the same on every read, disjoint from what
    trains, and the counts are exact.

    Args:
        name: the TFDS name (with config/version if wanted, e.g. 'smallnorb:2.*').
        data_dir: where the dataset is (or gets) prepared.
        download: prepare it when missing (False: fail instead).
        validation_fraction: share of 'train' held out when there is no eval split; None: 0.1.
        seed: picks the held-out examples.
        label_key: the ClassLabel feature used as the class (default 'label').
    """
    import tensorflow_datasets as tfds

    if name in EMBEDDING_ONLY_SOURCES:
        raise SettingError("dataset", f"dataset {name!r} holds identities, not classes: it is for the embedding task "
                           f"(task=embedding); for classification choose from {available_sources()}")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as err:  # DatasetNotFoundError and friends
        raise SettingError("dataset", f"unknown dataset {name!r}: choose from {available_sources()} "
                         f"({err.__class__.__name__})") from None
    features = builder.info.features
    label = _class_label(features, name, label_key)
    _prepare(builder, name, data_dir, download)
    split_names = list(builder.info.splits.keys())
    if split_names and "train" not in split_names:
        raise ValueError(f"TFDS dataset {name!r} has no 'train' split (it has {', '.join(split_names)})")
    eval_split = next((s for s in EVAL_SPLITS if s in split_names), None)
    image_feature = features["image"]
    encoded = isinstance(image_feature, tfds.features.Image)
    # Images stay encoded until an example is kept: the held-out split reads all of 'train' and
    # decodes only its share.
    decoders = {"image": tfds.decode.SkipDecoding()} if encoded else None

    def read(split, shuffle_files, seed_, shard=None, size=None):
        """The split, or with `shard=(count, index)` its index-th contiguous range of examples:
        TFDS then opens only the files that hold that range."""
        read_config = tfds.ReadConfig(shuffle_seed=seed_, interleave_cycle_length=16 if shuffle_files else 1)
        if shard is not None:
            start, end = _shard_range(size, shard)
            split = f"{split}[{start}:{end}]"
        return builder.as_dataset(split=split, shuffle_files=shuffle_files, read_config=read_config,
                                  decoders=decoders)

    def to_example(example):
        image = image_feature.decode_example(example["image"]) if encoded else example["image"]
        return _to_rgb(image), tf.cast(example[label_key], tf.int32)

    num_train_split = _split_size(builder, "train", read)
    if eval_split:
        if validation_fraction is not None:
            log.info("%s has a %r split: evaluating on it, validation_fraction=%s is not used", name, eval_split,
                     validation_fraction)
        num_train, num_eval = num_train_split, _split_size(builder, eval_split, read)

        sizes = {"train": num_train, "eval": num_eval}

        def make(split, shuffle_files, seed_, shard):
            ds = read("train" if split == "train" else eval_split, shuffle_files, seed_, shard, sizes[split])
            return ds.map(to_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=seed_ is not None)

        def shard_sizes(split, count):
            return [end - start for start, end in (_shard_range(sizes[split], (count, i)) for i in range(count))]

        description = (f"train: TFDS {name} split 'train', {num_train:,} images; "
                       f"eval: split '{eval_split}', {num_eval:,} images")
    else:
        fraction = DEFAULT_VALIDATION_FRACTION if validation_fraction is None else validation_fraction
        held_out = held_out_mask(num_train_split, fraction, seed, name)
        num_eval = int(held_out.sum())
        num_train = num_train_split - num_eval
        in_eval = tf.constant(held_out)

        def make(split, shuffle_files, seed_, shard):
            # File order, whatever shuffle_files says: position decides membership. TFDS shuffles
            # examples when it prepares a dataset, and the pipeline's shuffle buffer does the rest.
            keep_eval = split == "eval"
            first = 0 if shard is None else _shard_range(num_train_split, shard)[0]
            ds = read("train", False, None, shard, num_train_split).enumerate(start=first)
            ds = ds.filter(lambda i, _: tf.equal(
                (i < num_train_split) & tf.gather(in_eval, tf.minimum(i, num_train_split - 1)), keep_eval))
            return ds.map(lambda _, example: to_example(example), num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=seed_ is not None)

        def shard_sizes(split, count):
            member = held_out if split == "eval" else ~held_out
            return [int(member[slice(*_shard_range(num_train_split, (count, i)))].sum()) for i in range(count)]

        description = (f"train: TFDS {name} split 'train' minus a seeded {_percent(fraction)} (seed {seed}), "
                       f"{num_train:,} images; eval: the held-out {_percent(fraction)} of 'train', {num_eval:,} "
                       f"images (the dataset has no validation or test split)")
    shape = image_feature.shape
    native = shape[0] if shape[0] is not None and shape[0] == shape[1] else None
    return Source(name, int(label.num_classes), tuple(label.names), num_train, num_eval, native_size=native,
                  flip_ok=name.split(":")[0] not in ("mnist", "emnist", "kmnist", "svhn_cropped"), _make=make,
                  split_description=description, _shard_sizes=shard_sizes)


def _shard_range(size: int, shard: tuple[int, int]) -> tuple[int, int]:
    """[start, end) of shard `index` of `count` contiguous, near-equal ranges of `size` examples."""
    count, index = shard
    return size * index // count, size * (index + 1) // count


def held_out_mask(count: int, fraction: float, seed: int, name: str = "the dataset") -> np.ndarray:
    """bool [count]: a seeded round(count * fraction) (at least 1) of the positions, for evaluation."""
    if count < 2:
        raise ValueError(f"{name} has {count} training example(s): too few to hold some out for evaluation")
    held = np.zeros(count, bool)
    n_eval = min(max(1, int(round(count * fraction))), count - 1)
    held[np.random.default_rng(seed).permutation(count)[:n_eval]] = True
    return held


def _split_size(builder, split: str, read) -> int:
    """Examples in a split: from the dataset's metadata, else (metadata without counts) one pass
    over the still-encoded examples."""
    try:
        count = int(builder.info.splits[split].num_examples)
        if count > 0:
            return count
    except (KeyError, TypeError, ValueError, AttributeError):
        pass
    ds = read(split, False, None)
    count = int(ds.cardinality())
    if count < 0:
        count = int(ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
    return count


def _to_rgb(image):
    channels = image.shape[-1]
    if channels == 1:
        image = tf.image.grayscale_to_rgb(image)
    elif channels == 4:
        image = image[..., :3]
    elif channels is None:
        image = tf.cond(tf.shape(image)[-1] == 1, lambda: tf.tile(image, [1, 1, 3]), lambda: image[..., :3])
    return tf.ensure_shape(tf.cast(image, tf.uint8), [None, None, 3])
