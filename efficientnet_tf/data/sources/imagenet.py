"""The ImageNet class names shipped with the package, in the order of the official weights' outputs."""

from __future__ import annotations

import gzip
from importlib import resources


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
