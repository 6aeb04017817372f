import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from efficientnet_tf.input_pipeline import preprocess_eval
from efficientnet_tf.predict import Predictor, format_predictions, imagenet_class_names, read_image_bytes
from keras_reference import keras_model, write_legacy_h5


def test_imagenet_class_names_are_the_ilsvrc_order():
    names = imagenet_class_names()
    assert len(names) == 1000 and len(set(names)) > 995
    assert names[0].startswith("tench") and names[1].startswith("goldfish") and names[999].startswith("toilet tissue")


def test_pretrained_predictor_uses_the_weights_and_imagenet_names(tmp_path):
    reference = keras_model("efficientnet-b0", (224, 224, 3), classifier_activation="softmax")
    weights = write_legacy_h5(reference, str(tmp_path / "b0.h5"))
    picture = np.random.default_rng(3).integers(0, 256, (300, 260, 3), dtype=np.uint8)
    path = str(tmp_path / "photo.png")
    Image.fromarray(picture).save(path)
    predictor = Predictor.from_pretrained("efficientnet-b0", weights)
    (top,) = predictor([path])
    image = preprocess_eval(tf.io.decode_image(read_image_bytes(path), channels=3), 224)
    expected = reference(image[None], training=False).numpy()[0]
    order = np.argsort(-expected)[:5]
    names = imagenet_class_names()
    assert [name for name, _ in top] == [names[i] for i in order]
    np.testing.assert_allclose([p for _, p in top], expected[order], rtol=1e-4, atol=1e-6)
    text = format_predictions([path], [top])
    assert text.splitlines()[0] == path and text.splitlines()[1].startswith(f"  1. {names[order[0]]}")


def test_unreadable_images_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        read_image_bytes(str(tmp_path / "missing.jpg"))
    bad = tmp_path / "notes.png"
    bad.write_text("this is text")
    with pytest.raises(ValueError, match=r"cannot read image .*notes\.png.*JPEG, PNG"):
        read_image_bytes(str(bad))


def test_predict_from_run_gives_its_class_names(tiny_run, tmp_path):
    model_dir, _ = tiny_run
    path = str(tmp_path / "digit.png")
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(path)
    (top,) = Predictor.from_run(model_dir)([path])
    assert len(top) == 5 and {name for name, _ in top} <= {str(i) for i in range(10)}
    assert sum(p for _, p in top) <= 1.0 + 1e-6
