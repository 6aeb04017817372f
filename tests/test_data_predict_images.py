"""Predictor.predict_images: decoded arrays in, the same predictions as the files they came from."""

import warnings

import keras
import numpy as np
import pytest
from PIL import Image

from efficientnet_tf.data import pixels
from efficientnet_tf.deploy.saved_model import export_saved_model
from efficientnet_tf.deploy.predict import Predictor

SIZE = 32
NAMES = ["apple", "banana", "cherry", "date"]


def _position_sensitive_model():
    """Outputs that change with every pixel's position and value (a crop or flip shows)."""
    inputs = keras.Input((SIZE, SIZE, 3))
    flat = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255.0)(inputs))
    dense = keras.layers.Dense(len(NAMES), kernel_initializer=keras.initializers.RandomNormal(stddev=0.05, seed=3))
    outputs = dense(flat)
    return keras.Model(inputs, outputs)


def _photo(height, width, seed):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _assert_same(results, expected):
    assert len(results) == len(expected)
    for got, want in zip(results, expected):
        assert [name for name, _ in got] == [name for name, _ in want]
        np.testing.assert_allclose([p for _, p in got], [p for _, p in want], rtol=1e-5, atol=1e-6)


def test_arrays_predict_as_their_png_files_do(tmp_path):
    model = _position_sensitive_model()
    predictor = Predictor.from_model(model, NAMES, SIZE, top_k=3)
    photos = [_photo(48, 64, 0), _photo(70, 50, 1), _photo(20, 20, 2)]  # crop, crop, small: resize only
    paths = []
    for i, photo in enumerate(photos):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(photo).save(paths[-1])
    from_files = predictor(paths)
    assert all(len(top) == 3 for top in from_files)
    _assert_same(predictor.predict_images(photos), from_files)  # a list of different sizes
    _assert_same(predictor.predict_images(photos[0]), from_files[:1])  # one image
    _assert_same(predictor.predict_images(np.stack([photos[0], photos[0]])), from_files[:1] * 2)  # a batch
    _assert_same(predictor.predict_images([photos[1].astype(np.float32)]), from_files[1:2])  # float 0..255
    with pytest.raises(AssertionError):  # the comparison sees a mirrored image
        _assert_same(predictor.predict_images([photos[0][:, ::-1]]), from_files[:1])
    # The exported SavedModel gives the same through its image signature.
    export_saved_model(model, str(tmp_path / "export"), NAMES, SIZE, top_k=3)
    loaded = Predictor.from_saved_model(str(tmp_path / "export"))
    assert loaded.image_size == SIZE
    _assert_same(loaded.predict_images(photos), from_files)
    _assert_same(loaded(paths), from_files)


def test_images_scaled_to_0_1_warn_once():
    predictor = Predictor.from_model(_position_sensitive_model(), NAMES, SIZE)
    pixels.reset_warnings()
    unit = _photo(40, 40, 4).astype(np.float32) / 255.0
    with pytest.warns(pixels.UnitRangeWarning, match="Predictor"):
        predictor.predict_images([unit])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predictor.predict_images([unit])  # once
        pixels.reset_warnings()
        predictor.predict_images([unit * 255.0, _photo(40, 40, 5)])


def test_wrong_inputs_are_named():
    predictor = Predictor.from_model(_position_sensitive_model(), NAMES, SIZE)
    with pytest.raises(ValueError, match=r"\[height, width, 3\].*\(40, 40\)"):
        predictor.predict_images([np.zeros((40, 40), np.uint8)])
    with pytest.raises(ValueError, match="no image"):
        predictor.predict_images([])
    with pytest.raises(TypeError, match="list of image paths"):
        predictor("photo.jpg")
