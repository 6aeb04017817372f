"""Record what Google's reference code puts in its checkpoints, as test data for the converters.

Runs the reference model code (not part of this repository) once, outside the test suite:

    pip install tf-keras==<your tensorflow version>   # the reference code is tf.keras 2 code
    TF_USE_LEGACY_KERAS=1 python tools/reference_checkpoints.py tpu \
        --source=/path/to/tensorflow/tpu/models/official/efficientnet
    TF_USE_LEGACY_KERAS=1 python tools/reference_checkpoints.py automl \
        --source=/path/to/google/automl/efficientnetv2

For every variant it writes the checkpoint variable names and shapes the reference code creates
(tests/data/official/<source>_manifests.json.gz). For a few variants it also fills every variable
with `tests/official_fill.seeded_value`, restores that checkpoint with the reference code's own
restore path (tensorflow/tpu: `EvalCkptDriver.restore_model` with EMA; automl:
`utils.restore_tf2_ckpt`) and records the logits on `fixed_images()` after the reference's own
input normalization (tests/data/official/<source>_logits.npz). The tests synthesize the same
checkpoint from the manifest, convert it with efficientnet_tf and compare logits.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import types

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from official_fill import fixed_images, seeded_value  # noqa: E402

OUT = os.path.join(ROOT, "tests", "data", "official")

TPU_VARIANTS = [f"efficientnet-b{i}" for i in range(9)] + ["efficientnet-l2"] + [
    f"efficientnet-lite{i}" for i in range(5)]
# (variant, input normalization as the reference evaluates that family)
TPU_LOGITS = [("efficientnet-b0", "imagenet_std"), ("efficientnet-b0", "advprop"),
              ("efficientnet-b2", "imagenet_std"), ("efficientnet-lite0", "lite")]
AUTOML_VARIANTS = [f"efficientnetv2-{s}" for s in ("b0", "b1", "b2", "b3", "s", "m", "l", "xl")]
AUTOML_CLASSES = (1000, 21843)
AUTOML_LOGITS = [("efficientnetv2-b0", 21843), ("efficientnetv2-s", 1000)]


def _tpu(source: str):
    sys.path.insert(0, source)
    import tensorflow.compat.v1 as tf

    tf.disable_v2_behavior()
    import model_builder_factory
    import utils

    images = fixed_images()
    manifests, logits = {}, {}
    checkpoints = tempfile.mkdtemp()

    def build(name, features):
        builder = model_builder_factory.get_model_builder(name)
        out, _ = builder.build_model(features, name, training=False)
        return out

    for name in TPU_VARIANTS:
        with tf.Graph().as_default():
            build(name, tf.placeholder(tf.float32, (None,) + images.shape[1:]))
            # What main.py's training graph adds: the EMA shadows (evaluation reads them) and the step.
            ema = tf.train.ExponentialMovingAverage(decay=0.9999)
            ema.apply(utils.get_ema_vars())
            tf.train.get_or_create_global_step()
            variables = tf.global_variables()
            manifests[name] = {v.op.name: v.shape.as_list() for v in variables}
            print(name, len(variables), "variables", flush=True)
            if not any(n == name for n, _ in TPU_LOGITS):
                continue
            with tf.Session() as sess:
                for v in variables:
                    v.load(seeded_value(v.op.name, v.shape.as_list()), sess)
                tf.train.Saver().save(sess, os.path.join(checkpoints, name, "model.ckpt"))
        for variant, normalization in (p for p in TPU_LOGITS if p[0] == name):
            with tf.Graph().as_default():
                features = tf.constant(images)
                if normalization == "advprop":  # eval_ckpt_main.py, advprop_preprocessing=True
                    features = features * 2.0 / 255 - 1.0
                else:
                    mod = model_builder_factory.get_model_builder(name)
                    features = (features - tf.constant(mod.MEAN_RGB, shape=[1, 1, 3])) / tf.constant(
                        mod.STDDEV_RGB, shape=[1, 1, 3])
                out = build(name, features)
                with tf.Session() as sess:
                    utils.EvalCkptDriver(name).restore_model(sess, os.path.join(checkpoints, name), enable_ema=True)
                    logits[f"{variant}:{normalization}"] = sess.run(out)
    return manifests, logits, images


def _automl(source: str):
    sys.path.insert(0, source)
    # utils imports tensorflow_addons for group normalization only; the EfficientNets use batch norm.
    sys.modules.setdefault("tensorflow_addons", types.ModuleType("tensorflow_addons"))
    sys.modules.setdefault("tensorflow_addons.layers", types.ModuleType("tensorflow_addons.layers"))
    import tensorflow as tf
    import effnetv2_model
    import utils

    images = fixed_images()
    manifests, logits = {}, {}
    for name in AUTOML_VARIANTS:
        for classes in AUTOML_CLASSES:
            key = f"{name}@{classes}"
            tf.keras.backend.clear_session()  # layer names are made unique per session: start each model afresh
            net = effnetv2_model.get_model(name, model_config={"num_classes": classes}, weights=None,
                                           training=False)
            manifests[key] = {w.name.split(":")[0]: list(w.shape) for w in net.weights}
            print(key, len(net.weights), "variables", flush=True)
            if (name, classes) in AUTOML_LOGITS:
                names = sorted(manifests[key])
                prefix = os.path.join(tempfile.mkdtemp(), "model.ckpt")
                tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                                  tensors=[seeded_value(n, manifests[key][n]) for n in names])
                tf.keras.backend.clear_session()
                fresh = effnetv2_model.get_model(name, model_config={"num_classes": classes}, weights=None,
                                                 training=False)
                utils.restore_tf2_ckpt(fresh, prefix, skip_mismatch=False)
                features = (images - 128.0) / 128.0  # preprocessing.py, the non-legacy normalization
                logits[f"{key}:symmetric"] = np.asarray(fresh(features, training=False))
    return manifests, logits, images


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", choices=("tpu", "automl"))
    parser.add_argument("--source", required=True, help="directory of the reference model code")
    args = parser.parse_args()
    manifests, logits, images = (_tpu if args.reference == "tpu" else _automl)(args.source)
    os.makedirs(OUT, exist_ok=True)
    with gzip.open(os.path.join(OUT, f"{args.reference}_manifests.json.gz"), "wt") as f:
        json.dump(manifests, f, indent=0, sort_keys=True)
    np.savez_compressed(os.path.join(OUT, f"{args.reference}_logits.npz"), images=images,
                        **{k: v.astype(np.float32) for k, v in logits.items()})
    print("wrote", sorted(logits))


if __name__ == "__main__":
    main()
