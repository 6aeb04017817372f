"""The exported model is the trained model: a run trained at several sizes (so on a dynamic-shape
graph) and exported at a fixed size gives the evaluation's top-1 exactly, as a SavedModel and as a
float32 TFLite file."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from efficientnet_tf.deploy import calibration, export
from efficientnet_tf.training import TrainConfig, Trainer


def _strided_sides(size):
    """The sides the five stride-2 convolutions of every EfficientNet see at input `size`."""
    sides = []
    for _ in range(5):
        sides.append(size)
        size = -(-size // 2)
    return sides


def _train_and_export(model_dir, **overrides):
    settings = dict(dataset="digits", model_dir=model_dir, epochs=2, steps_per_epoch=8, batch_size=32,
                    learning_rate=0.016, lr_schedule="cosine", warmup_epochs=0.25, label_smoothing=0.0, seed=0)
    settings.update(overrides)
    trainer = Trainer(TrainConfig.from_settings(**settings), verbose=False)
    assert trainer.model.input_shape[1:3] == (None, None), "must train and evaluate on a dynamic-shape graph"
    trainer.fit()
    with open(os.path.join(model_dir, "eval_report.json")) as f:
        evaluated = json.load(f)
    report = export.export_run(model_dir, export_dir=os.path.join(model_dir, "export"), tflite=["float32"],
                               check_images=0)
    images, labels = calibration.pipeline_images(model_dir, 10**9, training=False)
    assert len(labels) == evaluated["images"]
    loaded = tf.saved_model.load(os.path.join(model_dir, "export", "saved_model"))
    probabilities = np.concatenate([
        loaded.signatures["serving_default"](images=tf.constant(images[i:i + 64]))["probabilities"].numpy()
        for i in range(0, len(images), 64)])
    predicted = probabilities.argmax(-1)
    assert len(np.unique(predicted)) >= 3, "a model that predicts one class would hide any difference"
    return evaluated, report, predicted, labels


@pytest.mark.slow
def test_progressive_v1_run_exports_the_model_it_evaluated(tmp_path):
    # 38 -> 52 px: the strided convs see odd sides (19 at 38 px, 13 at 52 px), where padding for an
    # unknown size used to assume even sides.
    assert _strided_sides(38) == [38, 19, 10, 5, 3] and _strided_sides(52) == [52, 26, 13, 7, 4]
    evaluated, report, predicted, labels = _train_and_export(
        str(tmp_path / "lite0"), model="efficientnet-lite0", image_size=52, progressive=2,
        progressive_min_size=38)
    assert report["image_size"] == 52
    assert float(np.mean(predicted == labels)) == evaluated["top1"]
    assert report["tflite"]["float32"]["top1"] == evaluated["top1"]
    assert report["tflite"]["float32"]["eval_images"] == evaluated["images"]
    assert report["tflite"]["float32"]["images"] == 1797  # agreement: every digits image


@pytest.mark.slow
def test_v2_run_trained_smaller_than_it_evaluates_exports_what_it_evaluated(tmp_path):
    evaluated, report, predicted, labels = _train_and_export(
        str(tmp_path / "v2"), model="efficientnetv2-b0", image_size=48, train_image_size=40)
    assert report["image_size"] == 48
    assert float(np.mean(predicted == labels)) == evaluated["top1"]
    assert report["tflite"]["float32"]["top1"] == evaluated["top1"]
