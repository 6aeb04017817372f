"""Predictor against a second route to the same probabilities.

The expected probabilities are computed here without the export/serving code: the checkpoint is
restored into a freshly built Keras model with tf.train.Checkpoint, the EMA shadow values are
read from the checkpoint file by name, and each image is center-cropped with numpy. Each test
also checks that a wrong choice (raw instead of EMA weights, no crop, other weights) would
have been caught, i.e. that it moves the probabilities far beyond the tolerance.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from efficientnet_tf import build_model
from efficientnet_tf.deploy.export import export_run
from efficientnet_tf.deploy.predict import Predictor, format_predictions, imagenet_class_names, read_image_bytes
from keras_reference import keras_model, randomise_weights, write_legacy_h5

TOLERANCE = 1e-4  # same float32 graph, different op grouping; wrong weights or crops move it by > 1e-2
CROP_PADDING = 32  # the eval crop keeps size / (size + 32) of the short side


def center_crop_and_resize(image: np.ndarray, size: int) -> np.ndarray:
    """The eval preprocessing, written out: center crop of the short side (not for images under
    64 px), then TF's antialiased bicubic resize clipped to 0..255. The resize kernel is TF's on
    purpose: PIL's bicubic differs by up to 1 level, which moves a small model's probabilities
    by ~1e-2."""
    height, width = image.shape[:2]
    side = min(height, width)
    if side >= 64:
        crop = int(side * size / (size + CROP_PADDING))
        top, left = (height - crop + 1) // 2, (width - crop + 1) // 2
        image = image[top:top + crop, left:left + crop]
    resized = tf.image.resize(image.astype(np.float32), [size, size], method="bicubic", antialias=True).numpy()
    return np.clip(resized, 0.0, 255.0)


def smooth_picture(rng, height, width):
    small = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR))


def write_pictures(directory, pictures):
    paths = []
    for i, picture in enumerate(pictures):
        paths.append(os.path.join(directory, f"picture{i}.png"))
        Image.fromarray(picture).save(paths[-1])
    return paths


def assert_top_k_matches(top, expected, class_names, k=5):
    """`top` = [(name, p)] best first; `expected` = every class's probability."""
    assert len(top) == k
    ids = [class_names.index(name) for name, _ in top]
    np.testing.assert_allclose([p for _, p in top], expected[ids], atol=TOLERANCE)
    # they are the k largest (compared by value: near-ties may swap places)
    np.testing.assert_allclose(sorted((p for _, p in top), reverse=True), np.sort(expected)[::-1][:k], atol=TOLERANCE)


@pytest.fixture(scope="module")
def run_reference(tiny_run, tmp_path_factory):
    """Pictures of the tiny run and their probabilities under its EMA and its raw weights."""
    model_dir, _ = tiny_run
    with open(os.path.join(model_dir, "run.json")) as f:
        info = json.load(f)
    size = int(info["image_size"])
    checkpoint = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    model = build_model(info["model"], num_classes=int(info["num_classes"]), input_shape=(size, size, 3),
                        weights=None, classifier_activation=None)
    tf.train.Checkpoint(model=model).restore(checkpoint).expect_partial().assert_existing_objects_matched()
    # The trainer keeps one EMA shadow per float variable of the model, in model.variables order.
    reader = tf.train.load_checkpoint(checkpoint)
    averaged = [v for v in model.variables if tf.as_dtype(v.dtype).is_floating]
    shadows = [reader.get_tensor(f"ema/shadows/{i}/.ATTRIBUTES/VARIABLE_VALUE") for i in range(len(averaged))]
    assert not reader.has_tensor(f"ema/shadows/{len(averaged)}/.ATTRIBUTES/VARIABLE_VALUE")
    assert [s.shape for s in shadows] == [tuple(v.shape) for v in averaged]

    rng = np.random.default_rng(7)
    # 96x128: center-cropped (48 px of the short side at size 32); 20x24: under 64 px, resized whole
    pictures = [smooth_picture(rng, 96, 128), rng.integers(0, 256, (96, 128, 3), dtype=np.uint8),
                smooth_picture(rng, 20, 24)]
    paths = write_pictures(str(tmp_path_factory.mktemp("pictures")), pictures)

    def probabilities(images):
        return tf.nn.softmax(model(np.stack(images), training=False)).numpy()

    def uncropped(picture):
        resized = tf.image.resize(picture.astype(np.float32), [size, size], method="bicubic", antialias=True)
        return np.clip(resized.numpy(), 0.0, 255.0)

    preprocessed = [center_crop_and_resize(p, size) for p in pictures]
    raw = probabilities(preprocessed)
    for variable, shadow in zip(averaged, shadows):
        variable.assign(shadow)
    ema = probabilities(preprocessed)
    no_crop = probabilities([uncropped(pictures[0])])
    return dict(model_dir=model_dir, paths=paths, class_names=info["class_names"], ema=ema, raw=raw,
                no_crop=no_crop)


def test_imagenet_class_names_are_the_ilsvrc_order():
    names = imagenet_class_names()
    assert len(names) == 1000 and len(set(names)) > 995
    assert names[0].startswith("tench") and names[1].startswith("goldfish") and names[999].startswith("toilet tissue")


def test_reference_would_catch_raw_weights_and_a_missing_crop(run_reference):
    """The comparisons below have power: the wrong choices move the probabilities by > 100x TOLERANCE."""
    assert np.abs(run_reference["ema"] - run_reference["raw"]).max(axis=1).min() > 100 * TOLERANCE
    assert np.abs(run_reference["ema"][0] - run_reference["no_crop"][0]).max() > 100 * TOLERANCE


def test_predict_from_run_is_the_ema_model_on_the_eval_crop(run_reference):
    predictor = Predictor.from_run(run_reference["model_dir"])
    assert "EMA" in predictor.description
    results = predictor(run_reference["paths"])
    assert len(results) == len(run_reference["paths"])
    for top, expected in zip(results, run_reference["ema"]):
        assert_top_k_matches(top, expected, run_reference["class_names"])


def test_predict_from_saved_model_is_the_ema_model_on_the_eval_crop(run_reference, tmp_path):
    export = export_run(run_reference["model_dir"], export_dir=str(tmp_path / "export"), tflite=[])
    predictor = Predictor.from_saved_model(os.path.join(export["export_dir"], "saved_model"))
    for top, expected in zip(predictor(run_reference["paths"]), run_reference["ema"]):
        assert_top_k_matches(top, expected, run_reference["class_names"])


def test_pretrained_predictor_uses_the_weights_and_imagenet_names(tmp_path):
    reference = keras_model("efficientnet-b0", (224, 224, 3), classifier_activation="softmax")
    weights = write_legacy_h5(reference, str(tmp_path / "b0.h5"))
    picture = np.random.default_rng(3).integers(0, 256, (300, 260, 3), dtype=np.uint8)
    (path,) = write_pictures(str(tmp_path), [picture])
    predictor = Predictor.from_pretrained("efficientnet-b0", weights)
    (top,) = predictor([path])
    expected = reference(center_crop_and_resize(picture, 224)[None], training=False).numpy()[0]
    order = np.argsort(-expected)[:5]
    names = imagenet_class_names()
    assert [name for name, _ in top] == [names[i] for i in order]
    np.testing.assert_allclose([p for _, p in top], expected[order], rtol=1e-4, atol=1e-6)
    text = format_predictions([path], [top])
    assert text.splitlines()[0] == path and text.splitlines()[1].startswith(f"  1. {names[order[0]]}")


def test_pretrained_predictor_loads_our_own_weights_file(tmp_path):
    """A variant keras.applications lacks, from a .weights.h5 file saved by our own model."""
    rng = np.random.default_rng(5)
    calibration = rng.uniform(0, 255, (8, 224, 224, 3)).astype("float32")
    source = build_model("efficientnet-lite0", weights=None)
    randomise_weights(source, calibration, seed=5)
    weights = str(tmp_path / "lite0.weights.h5")
    source.save_weights(weights)
    picture = smooth_picture(rng, 250, 300)
    (path,) = write_pictures(str(tmp_path), [picture])
    (top,) = Predictor.from_pretrained("efficientnet-lite0", weights)([path])

    image = center_crop_and_resize(picture, 224)[None]
    expected = source(image, training=False).numpy()[0]
    names = imagenet_class_names()
    ids = [names.index(name) for name, _ in top]
    assert ids == list(np.argsort(-expected)[:5])
    np.testing.assert_allclose([p for _, p in top], expected[ids], rtol=1e-4, atol=1e-6)
    # other weights of the same architecture give other top-5 probabilities
    other = build_model("efficientnet-lite0", weights=None)
    randomise_weights(other, calibration, seed=6)
    other_probabilities = other(image, training=False).numpy()[0]
    assert np.abs(other_probabilities[ids] - expected[ids]).max() > 100 * (1e-6 + 1e-4 * expected[ids].max())


def test_unreadable_images_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        read_image_bytes(str(tmp_path / "missing.jpg"))
    bad = tmp_path / "notes.png"
    bad.write_text("this is text")
    with pytest.raises(ValueError, match=r"cannot read image .*notes\.png.*JPEG, PNG"):
        read_image_bytes(str(bad))
