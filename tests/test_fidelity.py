"""Our models load keras.applications weight files and give the same outputs.

Official files cannot be downloaded here; keras' own legacy HDF5 saver writes the same format,
so each test writes a keras.applications model's (randomised) weights and loads them into ours.
"""

import os

import h5py
import numpy as np
import pytest

from efficientnet_tf import build_model
from efficientnet_tf.models import weights as weights_lib
from keras_reference import KERAS_CLASSES, keras_model, random_images, write_legacy_h5

FAST = ["efficientnet-b0", "efficientnetv2-b0"]
SLOW = [n for n in KERAS_CLASSES if n not in FAST]
SIZE = 64


def _check_same_model(name, tmp_path, include_top=True):
    reference = keras_model(name, (SIZE, SIZE, 3), include_top=include_top)
    path = write_legacy_h5(reference, str(tmp_path / "weights.h5"))
    images = random_images(4, SIZE)
    expected = reference(images, training=False).numpy()
    assert expected.std(axis=0).mean() > 0.01  # outputs depend on the image: a real comparison

    ours = build_model(name, input_shape=(SIZE, SIZE, 3), include_top=include_top, weights=path,
                       classifier_activation=None)
    assert ours.count_params() == reference.count_params()
    # 5e-4: oneDNN's multithreaded convolutions round differently under CPU contention (measured:
    # 1.9e-4 on 2 of 20480 V2-B0 features in a parallel CI run); a wrong weight differs by O(1).
    np.testing.assert_allclose(ours(images, training=False).numpy(), expected, atol=5e-4, rtol=5e-4)

    # Keras' own loaders: legacy HDF5 is loaded by weight order, or by name on request (by name on
    # B0 and V2-B0 only: our names are keras.applications' in every variant, which the loader above
    # already matched by name; each extra build of a large variant costs CI seconds).
    for by_name in (False, True) if name in FAST else (False,):
        fresh = build_model(name, input_shape=(SIZE, SIZE, 3), include_top=include_top, classifier_activation=None)
        if by_name:
            fresh.load_weights(path, by_name=True)
        else:
            fresh.load_weights(path)
        np.testing.assert_allclose(fresh(images, training=False).numpy(), expected, atol=5e-4, rtol=5e-4)


@pytest.mark.parametrize("name", FAST)
def test_loads_keras_applications_weights(name, tmp_path):
    _check_same_model(name, tmp_path)


@pytest.mark.parametrize("name", FAST)
def test_loads_keras_applications_notop_weights(name, tmp_path):
    _check_same_model(name, tmp_path, include_top=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_loads_keras_applications_weights_every_variant(name, tmp_path):
    _check_same_model(name, tmp_path)


def test_official_v1_file_convention_gives_imagenet_preprocessing(tmp_path):
    """Official V1 files keep std in Normalization's 'variance' slot; we must use it as std."""
    mean = np.array([0.485, 0.456, 0.406])
    # Powers of two, so keras' sqrt(std**2) is exactly std in float32 and only the convention
    # (slot read as std, not as variance) can make a difference.
    std = np.array([0.25, 0.5, 0.125])
    reference = keras_model("efficientnet-b0", (SIZE, SIZE, 3))
    norm = reference.get_layer("normalization")
    norm.set_weights([mean, std, np.array(0)])  # the official file's layout
    path = write_legacy_h5(reference, str(tmp_path / "official_style.h5"))
    # Correct ImageNet preprocessing, (x/255 - mean) / std: a true variance in keras' layer.
    norm.set_weights([mean, std**2, np.array(0)])
    norm.finalize_state()  # keras' Normalization caches mean/variance outside its weights
    images = random_images(4, SIZE)
    expected = reference(images, training=False).numpy()

    ours = build_model("efficientnet-b0", input_shape=(SIZE, SIZE, 3), weights=path, classifier_activation=None)
    # 5e-4: oneDNN's multithreaded convolutions round differently under CPU contention (measured:
    # 1.9e-4 on 2 of 20480 V2-B0 features in a parallel CI run); a wrong weight differs by O(1).
    np.testing.assert_allclose(ours(images, training=False).numpy(), expected, atol=5e-4, rtol=5e-4)


def test_transfer_keeps_fresh_head_and_loads_backbone(tmp_path):
    reference = keras_model("efficientnet-b0", (SIZE, SIZE, 3))
    path = write_legacy_h5(reference, str(tmp_path / "w.h5"))
    ours = build_model("efficientnet-b0", input_shape=(SIZE, SIZE, 3), num_classes=10, weights=path)
    assert ours.output_shape == (None, 10)
    np.testing.assert_array_equal(ours.get_layer("top_conv").get_weights()[0],
                                  reference.get_layer("top_conv").get_weights()[0])
    # The full file also initialises a headless backbone.
    backbone = build_model("efficientnet-b0", input_shape=(SIZE, SIZE, 3), include_top=False, weights=path)
    np.testing.assert_array_equal(backbone.get_layer("block7a_project_bn").get_weights()[2],
                                  reference.get_layer("block7a_project_bn").get_weights()[2])


def test_wrong_variant_file_fails_clearly_and_leaves_model_untouched(tmp_path):
    path = write_legacy_h5(keras_model("efficientnet-b0", (SIZE, SIZE, 3)), str(tmp_path / "b0.h5"))
    ours = build_model("efficientnet-b1", input_shape=(SIZE, SIZE, 3))
    before = [w.copy() for w in ours.get_weights()]
    with pytest.raises(ValueError, match="another variant"):
        weights_lib.load_legacy_h5(ours, path)
    for a, b in zip(before, ours.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_missing_or_unknown_weight_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        build_model("efficientnet-b0", weights=str(tmp_path / "nope.h5"))
    other = tmp_path / "w.pt"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported weights file"):
        build_model("efficientnet-b0", weights=str(other))
    not_keras = tmp_path / "plain.h5"
    with h5py.File(not_keras, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ValueError, match="not a Keras HDF5 weight file"):
        build_model("efficientnet-b0", weights=str(not_keras))


def test_imagenet_offline_error_names_the_file_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    # Port 9 on loopback refuses at once: the real download code, with no network.
    monkeypatch.setattr(weights_lib, "V1_BASE_URL", "http://127.0.0.1:9/")
    with pytest.raises(OSError) as err:
        build_model("efficientnet-b0", weights="imagenet")
    message = str(err.value)
    assert "efficientnetb0.h5" in message and "http://127.0.0.1:9/efficientnetb0.h5" in message
    assert os.path.join(str(tmp_path), "models", "efficientnetb0.h5") in message
    with pytest.raises(OSError, match="efficientnetv2-s_notop.h5"):
        monkeypatch.setattr(weights_lib, "V2_BASE_URL", "http://127.0.0.1:9/")
        build_model("efficientnetv2-s", weights="imagenet", include_top=False)


def test_imagenet_file_names_and_unavailable_variants():
    from efficientnet_tf import get_config

    name, url, md5 = weights_lib.imagenet_weights_file(get_config("efficientnet-b3"), include_top=False)
    assert name == "efficientnetb3_notop.h5"
    assert url == "https://storage.googleapis.com/keras-applications/efficientnetb3_notop.h5"
    _, url, _ = weights_lib.imagenet_weights_file(get_config("efficientnetv2-m"), include_top=True)
    assert url == "https://storage.googleapis.com/tensorflow/keras-applications/efficientnet_v2/efficientnetv2-m.h5"
    with pytest.raises(ValueError, match="no ImageNet weights.*efficientnet-lite0.*efficientnet-b0"):
        build_model("efficientnet-lite0", weights="imagenet")
