"""TFRecord files in tensorflow/tpu's ImageNet format (imagenet_to_gcs.py), written from arrays:
test data for the tfrecord: source."""

import os

import numpy as np
import tensorflow as tf


def tpu_example(image, label, offset=1):
    """A tf.train.Example as tensorflow/tpu writes one (PNG here: lossless), label counted from `offset`."""
    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[tf.io.encode_png(image).numpy()])),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label) + offset])),
        "image/format": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"PNG"])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_tfrecords(directory, prefix, images, labels, num_files):
    """`prefix-0000k-of-0000n` files, the examples dealt out in order (file k: a contiguous range)."""
    os.makedirs(directory, exist_ok=True)
    bounds = np.linspace(0, len(images), num_files + 1).astype(int)
    paths = []
    for k in range(num_files):
        path = os.path.join(directory, f"{prefix}-{k:05d}-of-{num_files:05d}")
        with tf.io.TFRecordWriter(path) as writer:
            for i in range(bounds[k], bounds[k + 1]):
                writer.write(tpu_example(images[i], labels[i]))
        paths.append(path)
    return paths


def write_digits_records(directory, train_files=8, eval_files=2):
    """The digits split (train 1,437 / eval 360, seed 0) as train-* and validation-* files, and a
    classes.txt beside them. Returns (train (images, labels), eval (images, labels))."""
    from efficientnet_tf.data.sources import digits_split

    images, labels, train_idx, eval_idx = digits_split(0.2, 0)
    write_tfrecords(directory, "train", images[train_idx], labels[train_idx], train_files)
    write_tfrecords(directory, "validation", images[eval_idx], labels[eval_idx], eval_files)
    with open(os.path.join(directory, "classes.txt"), "w") as f:
        f.write("\n".join(str(i) for i in range(10)) + "\n")
    return (images[train_idx], labels[train_idx]), (images[eval_idx], labels[eval_idx])
