"""Helpers that build keras.applications models and write their weights as legacy HDF5 files.

keras' legacy saver writes the same format as the official keras.applications files, so a
file written here stands in for the official download in offline tests.
"""

import h5py
import keras
import numpy as np
from keras.src.legacy.saving import legacy_h5_format

KERAS_CLASSES = {
    "efficientnet-b0": "EfficientNetB0",
    "efficientnet-b1": "EfficientNetB1",
    "efficientnet-b2": "EfficientNetB2",
    "efficientnet-b3": "EfficientNetB3",
    "efficientnet-b4": "EfficientNetB4",
    "efficientnet-b5": "EfficientNetB5",
    "efficientnet-b6": "EfficientNetB6",
    "efficientnet-b7": "EfficientNetB7",
    "efficientnetv2-b0": "EfficientNetV2B0",
    "efficientnetv2-b1": "EfficientNetV2B1",
    "efficientnetv2-b2": "EfficientNetV2B2",
    "efficientnetv2-b3": "EfficientNetV2B3",
    "efficientnetv2-s": "EfficientNetV2S",
    "efficientnetv2-m": "EfficientNetV2M",
    "efficientnetv2-l": "EfficientNetV2L",
}


def keras_model(name, input_shape, include_top=True, seed=0, classifier_activation=None):
    """keras.applications model with every weight randomised and BN statistics calibrated.

    Random moving statistics make the signal die out (outputs stop depending on the image),
    so the moving mean/variance are set from one training-mode pass over random images.
    """
    cls = getattr(keras.applications, KERAS_CLASSES[name])
    model = cls(
        weights=None,
        input_shape=input_shape,
        include_top=include_top,
        classifier_activation=classifier_activation,
    )
    return randomise_weights(model, random_images(16, input_shape[0], seed=seed + 100), seed)


def randomise_weights(model, calibration_images, seed=0):
    """Random BN scale/offset and conv/dense biases on top of the random init, and BN moving
    statistics from one training pass over `calibration_images`, so that every BN changes its
    input and outputs depend on the image. Returns the model."""
    rng = np.random.default_rng(seed)
    batch_norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in batch_norms:
        gamma, beta, mean, var = layer.get_weights()
        layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape), mean, var])
        layer.momentum = 0.0  # the next training pass sets the moving statistics
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)) and layer.use_bias:
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0, 0.1, bias.shape)])
    model(calibration_images, training=True)
    for layer in batch_norms:
        layer.momentum = 0.99
    return model


def write_legacy_h5(model, path):
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return path


def random_images(n, size, seed=1):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")
