"""The one decoder of training and serving: formats, EXIF orientation (checked against PIL),
graph-only (saves into a SavedModel), and the same upright image in the folder source and in
the exported serving_bytes signature."""

import io

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from efficientnet_tf.data import image_io
from efficientnet_tf.deploy.serving import ServingModule
from efficientnet_tf.data.pipeline import preprocess_eval

ORIENTATION = 0x0112


def _picture(height=24, width=40, seed=0):
    """An image with no symmetry, so every flip and rotation gives different pixels."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _exif(orientation, endian):
    exif = Image.Exif()
    exif.endian = endian  # "<": "II" little-endian TIFF header, ">": "MM" big-endian
    exif[0x010F] = "PhoneMaker"  # entries before and after the orientation: the parser must search
    exif[ORIENTATION] = orientation
    exif[0x0131] = "firmware 1.0"
    return exif.tobytes()


def _jpeg(pixels, exif=None):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90, **({"exif": exif} if exif else {}))
    return buffer.getvalue()


def _encode(pixels, fmt):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def _pil_upright(data, exif):
    """PIL's ImageOps.exif_transpose applied to TF's plain decode of the same bytes (the two JPEG
    decoders differ by a few levels; the orientation logic is what is compared)."""
    plain = Image.fromarray(tf.io.decode_jpeg(data, channels=3).numpy())
    plain.info["exif"] = exif
    return np.asarray(ImageOps.exif_transpose(plain))


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil_exif_transpose(orientation, endian):
    exif = _exif(orientation, endian)
    data = _jpeg(_picture(), exif)
    assert data[data.index(b"Exif"):][6:8] == (b"II" if endian == "<" else b"MM")
    assert int(image_io.exif_orientation(data)) == orientation
    expected = _pil_upright(data, exif)
    decoded = image_io.decode_image(data).numpy()
    assert decoded.shape == expected.shape == ((24, 40, 3) if orientation < 5 else (40, 24, 3))
    assert np.abs(decoded.astype(int) - expected).max() == 0


def test_images_without_orientation_are_left_as_stored():
    pixels = _picture(16, 20)
    for fmt in ("PNG", "BMP", "GIF", "WEBP"):
        data = _encode(pixels, fmt)
        assert int(image_io.exif_orientation(data)) == 1
        np.testing.assert_array_equal(image_io.decode_image(data).numpy(),
                                      tf.io.decode_image(data, channels=3, expand_animations=False).numpy())
    plain_jpeg = _jpeg(pixels)
    assert int(image_io.exif_orientation(plain_jpeg)) == 1
    np.testing.assert_array_equal(image_io.decode_image(plain_jpeg).numpy(), tf.io.decode_jpeg(plain_jpeg).numpy())
    grey = np.asarray(Image.fromarray(pixels).convert("L"))
    assert image_io.decode_image(_encode(grey, "PNG")).shape == (16, 20, 3)


def test_malformed_exif_means_upright_never_an_error():
    header = b"\xff\xd8\xff\xe1\x00\x20Exif\x00\x00"
    for data in [b"", b"\xff\xd8", b"not an image", header, header + b"MM\x00*\xff\xff\xff\xff",
                 header + b"II*\x00\x08\x00\x00\x00\xff\xff", header + b"XX*\x00\x08\x00\x00\x00"]:
        assert int(image_io.exif_orientation(data)) == 1
    # An out-of-range orientation value is ignored, as PIL ignores it.
    exif = Image.Exif()
    exif[ORIENTATION] = 9
    data = _jpeg(_picture(), exif.tobytes())
    assert int(image_io.exif_orientation(data)) == 1
    assert image_io.decode_image(data).shape == (24, 40, 3)


def test_unsupported_and_corrupt_files_are_reported_not_raised():
    tiff = _encode(_picture(), "TIFF")
    assert "unknown image format" in image_io.check_image_bytes(tiff)
    with pytest.raises(tf.errors.InvalidArgumentError):
        image_io.decode_image(tiff)
    png = _encode(_picture(), "PNG")
    assert image_io.check_image_bytes(png) is None
    assert image_io.check_image_bytes(png[: len(png) // 2]) is not None
    jpeg = _jpeg(_picture())
    assert image_io.check_image_bytes(jpeg[:300]) is not None


def test_decoder_saves_into_a_saved_model(tmp_path):
    """Graph-only: it must serialise, and the loaded graph must give the same pixels."""
    module = tf.Module()
    module.decode = tf.function(image_io.decode_image, input_signature=[tf.TensorSpec([], tf.string)])
    tf.saved_model.save(module, str(tmp_path / "decoder"))
    loaded = tf.saved_model.load(str(tmp_path / "decoder"))
    data = _jpeg(_picture(), _exif(6, ">"))
    np.testing.assert_array_equal(loaded.decode(tf.constant(data)).numpy(), image_io.decode_image(data).numpy())
    assert loaded.decode(tf.constant(data)).shape == (40, 24, 3)


def test_serving_bytes_turns_photos_upright_as_training_does():
    """A sideways phone photo gives the same model input through serving_bytes as through the
    training decoder, and a different one from the same photo read without its EXIF tag."""
    size = 32
    inputs = keras.Input((size, size, 3))
    # Position-sensitive: a rotated image gives different outputs.
    dense = keras.layers.Dense(3, kernel_initializer=keras.initializers.RandomNormal(seed=1))
    outputs = dense(keras.layers.Flatten()(inputs))
    # logits=False: "probabilities" are the raw outputs, which a softmax would saturate.
    module = ServingModule(keras.Model(inputs, outputs), ["a", "b", "c"], size, top_k=3, logits=False)
    pixels = _picture(48, 64, seed=2)
    exif = _exif(8, "<")
    data = _jpeg(pixels, exif)
    served = module.serve_bytes(tf.constant([data]))["probabilities"].numpy()
    upright = preprocess_eval(tf.constant(_pil_upright(data, exif)), size)
    expected = module.serve_images(upright[None])["probabilities"].numpy()
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-3)
    sideways = preprocess_eval(tf.io.decode_jpeg(data), size)
    assert np.abs(module.serve_images(sideways[None])["probabilities"].numpy() - served).max() > 1.0
