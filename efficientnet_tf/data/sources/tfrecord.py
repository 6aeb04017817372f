"""TFRecord files of tf.train.Examples (tensorflow/tpu's ImageNet format), local or gs://."""

from __future__ import annotations

import json
import logging
import os
import re

import numpy as np
import tensorflow as tf

from efficientnet_tf.data import image_io
from efficientnet_tf.data.sources.base import Source, _every_nth, _to_rgb
from efficientnet_tf.data.sources.file_check import cache_dir
from efficientnet_tf.data.sources.imagenet import imagenet_class_names
from efficientnet_tf.data.sources.splits import DEFAULT_VALIDATION_FRACTION, _percent, held_out_mask
from efficientnet_tf.files import write_cache
from efficientnet_tf.settings import SettingError

log = logging.getLogger(__name__)

# tensorflow/tpu's ImageNet TFRecords (imagenet_to_gcs.py): JPEG bytes and a 1-based label.
TFRECORD_IMAGE_KEY = "image/encoded"
TFRECORD_LABEL_KEY = "image/class/label"
TFRECORD_LABEL_OFFSET = 1


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
