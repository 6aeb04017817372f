"""Images that look scaled to 0..1 get one warning per place; 0..255 images get none."""

import warnings

import numpy as np
import pytest
import tensorflow as tf

from efficientnet_tf.data.pixels import UnitRangeWarning, looks_unit_scaled, reset_warnings, warn_if_unit_scaled

RNG = np.random.default_rng(0)
UNIT_BATCH = RNG.uniform(0, 1, (4, 32, 32, 3)).astype("float32")
PIXEL_BATCH = UNIT_BATCH * 255


@pytest.fixture(autouse=True)
def _fresh_warning_state():
    reset_warnings()
    yield
    reset_warnings()


def unit_range_warnings(calls):
    """The UnitRangeWarnings raised while running `calls` (Python's own once-per-location
    filter switched off, so only the library's once-per-place rule is at work)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for call in calls:
            call()
    return [w for w in caught if issubclass(w.category, UnitRangeWarning)]


def test_unit_scaled_batch_warns_once_per_place():
    results = []
    caught = unit_range_warnings([lambda: results.append(warn_if_unit_scaled(UNIT_BATCH, "Predictor"))] * 3)
    assert results == [True, True, True]  # each batch is reported as scaled, the warning comes once
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith("Predictor:") and "0..1" in message and "0..255" in message
    assert "(4, 32, 32, 3)" in message  # names the batch it judged


def test_pixel_batch_does_not_warn():
    results = []
    caught = unit_range_warnings([lambda: results.append(warn_if_unit_scaled(PIXEL_BATCH, "Predictor"))] * 2)
    assert results == [False, False] and caught == []


def test_each_place_warns_for_itself_and_reset_rearms():
    caught = unit_range_warnings([lambda: warn_if_unit_scaled(UNIT_BATCH, "input pipeline"),
                                  lambda: warn_if_unit_scaled(UNIT_BATCH, "Predictor"),
                                  lambda: warn_if_unit_scaled(UNIT_BATCH, "Predictor")])
    assert sorted(str(w.message).split(":")[0] for w in caught) == ["Predictor", "input pipeline"]
    reset_warnings()
    assert len(unit_range_warnings([lambda: warn_if_unit_scaled(UNIT_BATCH, "Predictor")])) == 1


def test_a_pixel_batch_first_does_not_use_up_the_warning():
    caught = unit_range_warnings([lambda: warn_if_unit_scaled(PIXEL_BATCH, "Predictor"),
                                  lambda: warn_if_unit_scaled(UNIT_BATCH, "Predictor")])
    assert len(caught) == 1


@pytest.mark.parametrize("images, scaled", [
    (UNIT_BATCH, True),
    (PIXEL_BATCH, False),
    (np.ones((2, 8, 8, 3), "float64"), True),                 # max exactly 1
    (np.full((2, 8, 8, 3), 1.5, "float32"), False),           # just above 1: could be dark 0..255 pixels
    (np.zeros((1, 8, 8, 3), "uint8"), False),                 # integer images are 0..255 by type
    (np.ones((1, 8, 8, 3), "int32"), False),
    (np.zeros((0, 8, 8, 3), "float32"), False),               # nothing to judge
    (np.where(np.arange(12).reshape(1, 2, 2, 3) % 2, np.nan, 0.5), True),  # NaNs ignored
    (tf.constant(UNIT_BATCH), True),                          # eager tensors as well as arrays
    (tf.constant(PIXEL_BATCH), False),
    ([np.full((4, 6, 3), 0.5), np.full((9, 7, 3), 0.9)], True),   # a list of images of different sizes
    ([np.full((4, 6, 3), 0.5), np.full((9, 7, 3), 200.0)], False),
    ([np.full((4, 6, 3), 0.5), np.zeros((9, 7, 3), "uint8")], False),  # not all float: not judged
])
def test_looks_unit_scaled(images, scaled):
    assert looks_unit_scaled(images) is scaled


def test_images_of_different_sizes_warn_once_naming_their_shapes():
    images = [np.full((4, 6, 3), 0.5, "float32"), np.full((9, 7, 3), 0.9, "float32")]
    caught = unit_range_warnings([lambda: warn_if_unit_scaled(images, "Predictor")] * 2)
    assert len(caught) == 1
    assert "(4, 6, 3), (9, 7, 3)" in str(caught[0].message)
