"""TFDS image-classification datasets: prepared (downloaded) when missing, split as TFDS has them."""

from __future__ import annotations

import logging
import os
import socket

import tensorflow as tf

from efficientnet_tf.advice import Arg, advised
from efficientnet_tf.data.sources.base import EMBEDDING_ONLY_SOURCES, Source, _to_rgb, available_sources
from efficientnet_tf.data.sources.splits import DEFAULT_VALIDATION_FRACTION, _percent, _shard_range, held_out_mask
from efficientnet_tf.settings import SettingError

log = logging.getLogger(__name__)

# TFDS names its evaluation split differently per dataset; the first present one is used.
EVAL_SPLITS = ("validation", "test")


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
