"""Where images come from: TFDS, a folder of images, scikit-learn's digits, or synthetic.

Every source yields (uint8 RGB image of any size, int32 label) pairs plus its metadata;
`efficientnet_tf.input_pipeline` turns them into batches for a model.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket

import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
TFDS_EXAMPLES = ("cifar10", "cifar100", "oxford_flowers102", "cars196", "food101", "imagenet2012")
OTHER_SOURCES = ("folder:PATH", "digits", "synthetic")
# TFDS names its evaluation split differently per dataset; the first present one is used.
EVAL_SPLITS = ("validation", "test")


@dataclasses.dataclass(frozen=True)
class Source:
    """A dataset: one tf.data of (image, label) per split, and what a model needs to know."""

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    num_train: int | None
    num_eval: int | None
    # Smallest side of the stored images when all share it (CIFAR 32, digits 8), else None.
    native_size: int | None
    # Handwriting and text are not mirror-symmetric: no horizontal flips for them.
    flip_ok: bool
    _make: object = dataclasses.field(repr=False, compare=False)  # (split, shuffle_files, seed) -> Dataset

    def examples(self, split: str, shuffle_files: bool = False, seed: int | None = None) -> tf.data.Dataset:
        """(uint8 image [H, W, 3], int32 label) for split 'train' or 'eval'."""
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        return self._make(split, shuffle_files, seed)


def available_sources() -> str:
    return ", ".join(OTHER_SOURCES + TFDS_EXAMPLES) + " or any TFDS image-classification dataset"


def get_source(name: str, data_dir: str | None = None, *, validation_fraction: float = 0.2, seed: int = 0,
               on_bad_image: str = "error", download: bool = True, synthetic_image_size: int = 224,
               synthetic_num_classes: int = 10, synthetic_examples: int = 1024) -> Source:
    """Pick a data source by name: 'digits', 'synthetic', 'folder:PATH' or a TFDS name."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"dataset name must be a non-empty string; choose from {available_sources()}")
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    if name == "digits":
        return digits_source(validation_fraction, seed)
    if name == "synthetic":
        return synthetic_source(synthetic_image_size, synthetic_num_classes, synthetic_examples, seed)
    if name.startswith("folder:"):
        return folder_source(name[len("folder:"):], validation_fraction, seed, on_bad_image)
    return tfds_source(name, data_dir, download=download)


# ---------------------------------------------------------------- digits (offline, real data)


def digits_split(validation_fraction: float = 0.2, seed: int = 0):
    """(images uint8 [N, 8, 8, 3], labels, train indices, eval indices): stratified, seeded."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # stored as 0..16
    images = np.repeat(images[..., None], 3, axis=-1)
    labels = digits.target.astype(np.int32)
    train_idx, eval_idx = train_test_split(
        np.arange(len(labels)), test_size=validation_fraction, stratify=labels, random_state=seed
    )
    return images, labels, np.sort(train_idx), np.sort(eval_idx)


def digits_source(validation_fraction: float = 0.2, seed: int = 0) -> Source:
    """scikit-learn's 1,797 real handwritten 8x8 digits as RGB 0..255: the offline dataset."""
    images, labels, train_idx, eval_idx = digits_split(validation_fraction, seed)
    splits = {"train": train_idx, "eval": eval_idx}

    def make(split, shuffle_files, seed_):
        idx = splits[split]
        return tf.data.Dataset.from_tensor_slices((images[idx], labels[idx]))

    return Source("digits", 10, tuple(str(i) for i in range(10)), len(train_idx), len(eval_idx),
                  native_size=8, flip_ok=False, _make=make)


# ---------------------------------------------------------------- synthetic (throughput tests)


def synthetic_source(image_size: int = 224, num_classes: int = 10, examples: int = 1024, seed: int = 0) -> Source:
    """Random images already at the model's size: measures everything but disk and decode."""
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 256, (64, image_size, image_size, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, examples).astype(np.int32)

    def make(split, shuffle_files, seed_):
        n = examples if split == "train" else max(examples // 4, 1)
        images = tf.data.Dataset.from_tensor_slices(pool).repeat()
        return tf.data.Dataset.zip(images, tf.data.Dataset.from_tensor_slices(labels[:n]))

    return Source("synthetic", num_classes, tuple(str(i) for i in range(num_classes)), examples,
                  max(examples // 4, 1), native_size=image_size, flip_ok=True, _make=make)


# ---------------------------------------------------------------- folder of images


def _is_image(path: str) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:  # verify() misses truncated pixel data
            img.load()
        return True
    except Exception:
        return False


def _list_class_dir(root: str, classes: list[str]) -> list[tuple[str, int]]:
    files = []
    for label, cls in enumerate(classes):
        cls_dir = os.path.join(root, cls)
        for dirpath, dirnames, filenames in os.walk(cls_dir):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fname in sorted(filenames):
                if not fname.startswith("."):
                    files.append((os.path.join(dirpath, fname), label))
    return files


def _classes_in(root: str) -> list[str]:
    return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))


def folder_source(path: str, validation_fraction: float = 0.2, seed: int = 0, on_bad_image: str = "error") -> Source:
    """One sub-folder per class; `train/` + `val/` sub-folders are used when present.

    Every file is checked before training: a corrupt or non-image file is an error naming it
    (`on_bad_image='error'`) or is left out with a printed count (`'skip'`).
    """
    if on_bad_image not in ("error", "skip"):
        raise ValueError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
    root = os.path.expanduser(path)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"dataset folder {root!r} does not exist (dataset 'folder:{path}')")
    has_split_dirs = os.path.isdir(os.path.join(root, "train")) and os.path.isdir(os.path.join(root, "val"))
    class_root = os.path.join(root, "train") if has_split_dirs else root
    classes = _classes_in(class_root)
    if len(classes) < 2:
        raise ValueError(f"dataset folder {class_root!r} needs one sub-folder per class (at least 2), found {classes}")
    if has_split_dirs:
        train = _list_class_dir(class_root, classes)
        missing = [c for c in _classes_in(os.path.join(root, "val")) if c not in classes]
        if missing:
            raise ValueError(f"{os.path.join(root, 'val')} has classes {missing} that train/ lacks")
        evaluation = _list_class_dir(os.path.join(root, "val"), classes)
    else:
        everything = _list_class_dir(class_root, classes)
        train, evaluation = _stratified_split(everything, validation_fraction, seed)

    bad = [p for p, _ in train + evaluation if not _is_image(p)]
    if bad:
        listing = "\n  ".join(bad[:20]) + ("\n  ..." if len(bad) > 20 else "")
        if on_bad_image == "error":
            raise ValueError(
                f"{len(bad)} file(s) in {root} are not readable images (use on_bad_image='skip' / "
                f"--skip_bad_images to leave them out):\n  {listing}"
            )
        print(f"skipping {len(bad)} unreadable file(s) in {root}:\n  {listing}", flush=True)
        bad_set = set(bad)
        train = [t for t in train if t[0] not in bad_set]
        evaluation = [t for t in evaluation if t[0] not in bad_set]
    if not train or not evaluation:
        raise ValueError(f"dataset folder {root!r} has no usable images in train or validation")
    splits = {"train": train, "eval": evaluation}

    def make(split, shuffle_files, seed_):
        paths, labels = zip(*splits[split])
        ds = tf.data.Dataset.from_tensor_slices((list(paths), np.array(labels, np.int32)))
        if shuffle_files:
            ds = ds.shuffle(len(paths), seed=seed_, reshuffle_each_iteration=True)
        return ds.map(_decode_file, num_parallel_calls=tf.data.AUTOTUNE, deterministic=seed_ is not None)

    return Source(f"folder:{path}", len(classes), tuple(classes), len(train), len(evaluation),
                  native_size=None, flip_ok=True, _make=make)


def _decode_file(path, label):
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3]), label


def _stratified_split(items, fraction, seed):
    rng = np.random.default_rng(seed)
    train, evaluation = [], []
    labels = sorted({label for _, label in items})
    for label in labels:
        members = [it for it in items if it[1] == label]
        order = rng.permutation(len(members))
        n_eval = max(1, int(round(len(members) * fraction))) if len(members) > 1 else 0
        evaluation += [members[i] for i in sorted(order[:n_eval])]
        train += [members[i] for i in sorted(order[n_eval:])]
    return train, evaluation


# ---------------------------------------------------------------- TFDS


def _can_download(host: str = "storage.googleapis.com", timeout: float = 3.0) -> bool:
    """Quick reachability check, so an offline machine fails in seconds instead of retrying."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def tfds_source(name: str, data_dir: str | None = None, download: bool = True) -> Source:
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as err:  # DatasetNotFoundError and friends
        raise ValueError(f"unknown dataset {name!r}: choose from {available_sources()} ({err.__class__.__name__})") from None
    features = builder.info.features
    if "image" not in features or "label" not in features or not hasattr(features["label"], "num_classes"):
        raise ValueError(f"TFDS dataset {name!r} is not an image-classification dataset (needs 'image' and a class 'label')")
    if not builder.is_prepared():
        where = data_dir or "~/tensorflow_datasets"
        if not download:
            raise FileNotFoundError(f"TFDS dataset {name!r} is not prepared in {where} and download is off")
        if not _can_download():
            raise FileNotFoundError(
                f"TFDS dataset {name!r} is not prepared in {where} and this machine cannot download it. "
                f"Prepare it where there is internet (`tfds build {name} --data_dir=DIR`) and pass "
                f"--data_dir=DIR, or train offline with --dataset=digits"
            )
        manual_dir = os.path.join(os.path.expanduser(data_dir or "~/tensorflow_datasets"), "downloads", "manual")
        try:
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
        except AssertionError as err:  # manual-download datasets (imagenet2012) say so this way
            raise FileNotFoundError(f"TFDS dataset {name!r} needs a manual download into {manual_dir}: {err}") from err
    splits = builder.info.splits
    eval_split = next((s for s in EVAL_SPLITS if s in splits), None)  # None: hold out 10% of train
    label = features["label"]
    shape = features["image"].shape
    native = shape[0] if shape[0] is not None and shape[0] == shape[1] else None

    def count(split):
        try:
            return int(splits[split].num_examples)
        except Exception:
            return None

    def make(split, shuffle_files, seed_):
        if split == "train":
            tfds_split = "train" if eval_split else "train[:90%]"
        else:
            tfds_split = eval_split or "train[90%:]"
        read_config = tfds.ReadConfig(shuffle_seed=seed_, interleave_cycle_length=16 if shuffle_files else 1)
        ds = builder.as_dataset(split=tfds_split, shuffle_files=shuffle_files, as_supervised=True, read_config=read_config)
        return ds.map(_to_rgb, num_parallel_calls=tf.data.AUTOTUNE, deterministic=seed_ is not None)

    return Source(name, int(label.num_classes), tuple(label.names), count("train"),
                  count(eval_split) if eval_split else None, native_size=native,
                  flip_ok=name not in ("mnist", "emnist", "svhn_cropped"), _make=make)


def _to_rgb(image, label):
    if image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
    elif image.shape[-1] is None:
        image = tf.cond(tf.shape(image)[-1] == 1, lambda: tf.tile(image, [1, 1, 3]), lambda: image)
    return tf.ensure_shape(tf.cast(image, tf.uint8), [None, None, 3]), tf.cast(label, tf.int32)
