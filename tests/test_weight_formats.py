"""Keras 3 weight files (`.weights.h5`, `.keras`) from keras.applications or from this project
load into our models, with or without the top, into any class count (the head skipped with a
warning); predicting from a file without the ImageNet head is refused."""

import logging

import numpy as np
import pytest

from efficientnet_tf import build_model
from keras_reference import keras_model, random_images

SIZE = 64


CASES = [("efficientnet-b0", "weights.h5", True), ("efficientnet-b0", "weights.h5", False),
         ("efficientnet-b0", "keras", True), ("efficientnet-b0", "keras", False), ("efficientnetv2-b0", "keras", True)]


@pytest.mark.parametrize("name, fmt, include_top", CASES)
def test_keras_applications_keras3_files_give_keras_outputs(name, fmt, include_top, tmp_path):
    reference = keras_model(name, (SIZE, SIZE, 3), include_top=include_top)
    path = str(tmp_path / f"reference.{fmt}")
    reference.save_weights(path) if fmt == "weights.h5" else reference.save(path)
    images = random_images(4, SIZE)
    expected = reference(images, training=False).numpy()
    assert expected.std(axis=0).mean() > 0.01  # outputs depend on the image: a real comparison
    ours = build_model(name, input_shape=(SIZE, SIZE, 3), include_top=include_top, weights=path,
                       classifier_activation=None)
    np.testing.assert_allclose(ours(images, training=False).numpy(), expected, atol=5e-4, rtol=5e-4)


def test_a_file_with_the_top_into_another_class_count_loads_the_backbone_and_warns(tmp_path, caplog):
    reference = keras_model("efficientnet-b0", (SIZE, SIZE, 3))
    path = str(tmp_path / "reference.keras")
    reference.save(path)
    with caplog.at_level(logging.WARNING, logger="efficientnet_tf"):
        ours = build_model("efficientnet-b0", input_shape=(SIZE, SIZE, 3), num_classes=7, weights=path)
    assert ours.output_shape == (None, 7)
    assert "the head layer(s) predictions were not in the file (or had another shape)" in caplog.text
    np.testing.assert_array_equal(ours.get_layer("top_conv").get_weights()[0],
                                  reference.get_layer("top_conv").get_weights()[0])


def test_our_own_weights_file_initialises_a_model_with_another_class_count(tmp_path, caplog):
    trained = build_model("efficientnet-lite0", num_classes=10, input_shape=(SIZE, SIZE, 3))
    trained.save_weights(str(tmp_path / "ours.weights.h5"))
    with caplog.at_level(logging.WARNING, logger="efficientnet_tf"):
        other = build_model("efficientnet-lite0", num_classes=3, input_shape=(SIZE, SIZE, 3),
                            weights=str(tmp_path / "ours.weights.h5"))
    assert "predictions" in caplog.text
    for layer in ("stem_conv", "block4a_expand_bn", "top_conv"):
        for a, b in zip(other.get_layer(layer).get_weights(), trained.get_layer(layer).get_weights()):
            np.testing.assert_array_equal(a, b)


def test_a_file_for_another_variant_fails_clearly(tmp_path):
    keras_model("efficientnet-b0", (SIZE, SIZE, 3)).save_weights(str(tmp_path / "b0.weights.h5"))
    with pytest.raises(ValueError, match="another variant"):
        build_model("efficientnet-b1", input_shape=(SIZE, SIZE, 3), weights=str(tmp_path / "b0.weights.h5"))


def test_predict_refuses_weights_without_the_imagenet_head(tmp_path):
    from efficientnet_tf.deploy.predict import Predictor

    notop = tmp_path / "b0_notop.weights.h5"
    keras_model("efficientnet-b0", (224, 224, 3), include_top=False).save_weights(str(notop))
    with pytest.raises(ValueError, match="hold no ImageNet classifier for efficientnet-b0.*random head"):
        Predictor.from_pretrained("efficientnet-b0", str(notop))
