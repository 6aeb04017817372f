"""Every notebook runs end to end, offline and small: the test overrides its parameters cell
(notebook 04: tests/test_recognition.py, on the run its CLI test trains)."""

import warnings

import numpy as np
import pytest

from efficientnet_tf.data.pixels import UnitRangeWarning, reset_warnings
from keras_reference import keras_model, write_legacy_h5
from notebook_runner import _execute, _load, _text

NOTEBOOKS = ("01_quickstart.ipynb", "02_transfer_learning.ipynb", "03_export_and_quantize.ipynb",
             "04_recognition.ipynb")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_colab_ready_and_clean(name):
    notebook = _load(name)
    first = notebook.cells[0].source
    assert "colab.research.google.com/assets/colab-badge.svg" in first and f"notebooks/{name}" in first
    assert "google.colab" in notebook.cells[1].source and "pip" in notebook.cells[1].source
    assert sum("parameters" in c.metadata.get("tags", []) for c in notebook.cells) == 1
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: outputs not cleared"


def _helpers(name):
    """The namespace of a notebook's helper cell (the one defining `show`), run here."""
    (cell,) = [c for c in _load(name).cells if c.cell_type == "code" and "def show(" in c.source]
    namespace = {}
    exec(compile(cell.source, f"{name} helpers", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("name, helper, call", [
    ("01_quickstart.ipynb", "serve", lambda serve, batch: serve(lambda images: images, batch)),
    ("03_export_and_quantize.ipynb", "timed", lambda timed, batch: timed(lambda images: images, batch, repeats=1)),
])
def test_notebook_helpers_warn_once_about_unit_scaled_images(name, helper, call):
    function = _helpers(name)[helper]
    unit = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    reset_warnings()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call(function, unit * 255)
            assert not [w for w in caught if issubclass(w.category, UnitRangeWarning)]
            call(function, unit)
            call(function, unit)
        unit_warnings = [w for w in caught if issubclass(w.category, UnitRangeWarning)]
        assert len(unit_warnings) == 1 and str(unit_warnings[0].message).startswith(f"{helper}:")
    finally:
        reset_warnings()


@pytest.mark.slow
def test_quickstart_runs(tmp_path):
    notebook = _execute("01_quickstart.ipynb", dict(DATASET="digits", EPOCHS=2, STEPS_PER_EPOCH=4, BATCH_SIZE=32,
                                                    MODEL="efficientnet-lite0", MODEL_DIR=str(tmp_path / "run")), tmp_path)
    text = _text(notebook)
    assert "SavedModel vs Keras: max |difference|" in text and "1. " in text
    images = sum(1 for c in notebook.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
    assert images == 5  # four run plots + the history redrawn from history.csv


@pytest.mark.slow
def test_transfer_learning_runs_from_a_local_weights_file(tmp_path):
    weights = write_legacy_h5(keras_model("efficientnet-b0", (64, 64, 3), include_top=False), str(tmp_path / "b0.h5"))
    notebook = _execute("02_transfer_learning.ipynb", dict(DATASET="digits", WEIGHTS=weights, IMAGE_SIZE=32, EPOCHS=2,
                                                           FINETUNE_EPOCHS=1, STEPS_PER_EPOCH=3,
                                                           MODEL_DIR=str(tmp_path / "run")), tmp_path)
    text = _text(notebook)
    assert "frozen=True" in text and "epoch 2: stage 1" in text


@pytest.mark.slow
def test_transfer_learning_runs_offline_as_it_is(tmp_path, monkeypatch):
    """The notebook with its own dataset and weights (only sizes made small), where neither can be
    had: it says so and trains on the digits data without pretrained weights, to the end."""
    from efficientnet_tf.data.sources import _can_download

    if _can_download():
        pytest.skip("this machine can download tf_flowers and the ImageNet weights: nothing to fall back from")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))  # no cached ImageNet weights
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tensorflow_datasets"))  # no prepared tf_flowers
    notebook = _execute("02_transfer_learning.ipynb", dict(IMAGE_SIZE=32, EPOCHS=2, FINETUNE_EPOCHS=1, STEPS_PER_EPOCH=3,
                                                           MODEL_DIR=str(tmp_path / "run")), tmp_path)
    text = _text(notebook)
    assert "tf_flowers unavailable (TFDS dataset 'tf_flowers' is not prepared" in text
    assert "ImageNet weights unavailable (could not get the ImageNet weights for efficientnet-b0" in text
    assert "frozen=False" in text and "epoch 2: stage 0" in text


@pytest.mark.slow
def test_export_and_quantize_runs(tmp_path):
    notebook = _execute("03_export_and_quantize.ipynb", dict(EPOCHS=1, STEPS_PER_EPOCH=4, FORMATS=["float32", "int8"],
                                                             CHECK_IMAGES=32, MODEL_DIR=str(tmp_path / "run")), tmp_path)
    text = _text(notebook)
    assert "uint8 in / uint8 out" in text and "TFLite int8" in text and "SavedModel" in text
    assert "int8_layer_errors.png" in text and "image/png" in str(notebook)  # the per-op error plot, shown
