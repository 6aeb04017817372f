"""Errors in the caller's language: the library names arguments (`on_bad_image='skip'`), the command
line names flags (`--on_bad_image=skip`) and commands; bad paths say what they are and what to give."""

import os

import numpy as np
import pytest
from cli import run_main
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, cwd=ROOT):
    return run_main(*args, cwd=cwd)


def _one_error_line(result, listing: int = 0) -> str:
    """The error line, after checking it is all there is (but for `listing` indented lines below it)."""
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 + listing and lines[0].startswith("error: "), result.stderr[-3000:]
    assert all(line.startswith("  ") for line in lines[1:]), result.stderr[-3000:]
    return lines[0]


def _png(path, size=8):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_unreadable_images_name_the_flag_that_skips_them(tmp_path):
    for label in ("a", "b"):
        os.makedirs(tmp_path / "data" / label)
        for i in range(3):
            _png(tmp_path / "data" / label / f"{i}.png")
    (tmp_path / "data" / "a" / "scan.png").write_bytes(b"not an image")
    line = _one_error_line(_main(f"--dataset=folder:{tmp_path / 'data'}", f"--model_dir={tmp_path / 'run'}",
                                 "--model=efficientnet-lite0", "--image_size=32", "--batch_size=2", "--epochs=1"),
                           listing=1)  # the file, with what is wrong with it
    assert "(pass --on_bad_image=skip to leave them out)" in line and "on_bad_image='skip'" not in line


def test_a_model_dir_that_is_a_file_is_one_line_saying_so(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a run")
    line = _one_error_line(_main("--model=efficientnet-lite0", "--dataset=digits", f"--model_dir={path}",
                                 "--epochs=1"))
    assert line.startswith(f"error: --model_dir={path}: {path} is a file, not a directory: give the directory")
    assert "Errno" not in line


def test_an_image_that_is_a_directory_says_so_and_how_to_give_several(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("b.png", "a.png"):
        _png(folder / name)
    line = _one_error_line(_main("--mode=predict", "--model=efficientnet-b0", "--weights=imagenet",
                                 f"--image={folder}"))
    assert line == (f"error: --image={folder}: image '{folder}' is a directory, not an image file: give image "
                    f"files, one path each (it holds 2 image file(s): {folder}/a.png, {folder}/b.png). Several at "
                    f"once: one --image followed by the paths, e.g. --image {folder}/*.png (the shell lists the "
                    "files)")


def test_a_directory_that_is_not_a_saved_model_says_how_to_export_one(tmp_path):
    image = _png(tmp_path / "a.png")
    line = _one_error_line(_main("--mode=predict", f"--saved_model={tmp_path}", f"--image={image}"))
    assert line == (f"error: '{tmp_path}' is not a SavedModel directory (no saved_model.pb); export one with "
                    "`python main.py --mode=export --model_dir=RUN`")


def test_a_weights_path_that_does_not_exist_names_the_flag(tmp_path):
    line = _one_error_line(_main("--model=efficientnet-lite0", "--dataset=digits", f"--model_dir={tmp_path / 'run'}",
                                 "--image_size=32", "--epochs=1", f"--weights={tmp_path / 'nope.h5'}"))
    assert line.endswith("pass one of those, the path of a .h5 / .weights.h5 / .keras file, or no --weights "
                         "(random initialisation)")
    assert "weights=None" not in line


def test_library_errors_name_arguments_and_the_command_line_words_them_as_flags(monkeypatch, tmp_path):
    """The same error object: str() for Python, main.in_flags for the command line."""
    import keras

    import main
    from efficientnet_tf.data import sources
    from efficientnet_tf.models.configs import get_config
    from efficientnet_tf.models.weights import fetch_imagenet_weights

    monkeypatch.setattr("efficientnet_tf.data.sources.tfds._can_download", lambda *args, **kwargs: False)
    with pytest.raises(FileNotFoundError) as not_prepared:
        sources.get_source("tf_flowers", str(tmp_path / "tfds"))
    assert str(not_prepared.value).endswith("bring DIR here and pass data_dir=DIR, or train offline on the dataset "
                                            "'digits'")
    assert main.in_flags(not_prepared.value).endswith("bring DIR here and pass --data_dir=DIR, or train offline on "
                                                      "the dataset 'digits'")

    def offline(*args, **kwargs):
        raise OSError("no route to host")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(OSError) as no_weights:
        fetch_imagenet_weights(get_config("efficientnet-b0"), include_top=False)
    assert str(no_weights.value).endswith(" or pass weights='/path/to/efficientnetb0_notop.h5'.")
    assert main.in_flags(no_weights.value).endswith(" or pass --weights=/path/to/efficientnetb0_notop.h5.")
    # A message without advice is left as it is.
    assert main.in_flags(ValueError("plain")) == "plain"


def test_an_unprepared_tfds_dataset_prints_no_stray_tfds_line(tmp_path):
    """TFDS logs 'Variant folder ... has no dataset_info.json' while finding out; only our line is shown."""
    result = run_main("--dataset=tf_flowers", f"--data_dir={tmp_path}", f"--model_dir={tmp_path / 'run'}", "--dry_run",
                      isolated=True)  # what a user's shell shows, TensorFlow's own lines included
    assert "Variant folder" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 0, result.stderr[-3000:]
