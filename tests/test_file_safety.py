"""Every place that deletes, renames or replaces files touches only what the project wrote.

Each test plants a user's file where a careless path would hit it and checks that it survives,
byte for byte. (Exports: tests/test_export_destination.py.)"""

import json
import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from efficientnet_tf.settings import SettingError
from efficientnet_tf.training import TrainConfig, Trainer
from efficientnet_tf.training.checkpoints import remove_checkpoints, set_aside
from efficientnet_tf.training.rundir import RunDir

USER_BYTES = b"a user's own file, not to be lost\n"


def _plant(path, content=USER_BYTES):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def _config(model_dir):
    return TrainConfig.from_settings(model="efficientnet-lite0", dataset="digits", model_dir=str(model_dir), epochs=1,
                                     steps_per_epoch=1, batch_size=16, image_size=32)


def test_training_refuses_a_folder_of_other_files_and_a_file(tmp_path):
    mine = tmp_path / "mine"
    notes = _plant(mine / "history.csv")  # a name training itself writes
    with pytest.raises(SettingError, match=r"mine holds files but no run \(history.csv\): nothing was written; give a "
                                           r"new or empty directory, or the directory of a run to continue"):
        Trainer(_config(mine), verbose=False)
    with pytest.raises(SettingError, match="mine holds files but no run"):
        Trainer(_config(mine), verbose=False, overwrite=True)  # overwrite renames runs, not other folders
    assert notes.read_bytes() == USER_BYTES and os.listdir(mine) == ["history.csv"]
    with pytest.raises(SettingError, match="history.csv is a file, not a directory"):
        Trainer(_config(notes), verbose=False)
    assert notes.read_bytes() == USER_BYTES


def test_overwrite_renames_a_run_aside_and_never_the_current_or_home_directory(run_copy, tmp_path, monkeypatch):
    run = RunDir(run_copy)
    notes = _plant(tmp_path / "run" / "my_notes.txt")
    moved = run.set_aside()
    assert moved == f"{run_copy}.replaced-1" and not os.path.exists(run_copy)
    with open(os.path.join(moved, "my_notes.txt"), "rb") as f:
        assert f.read() == USER_BYTES
    assert not notes.exists()  # moved with the run, not copied and not deleted

    home = tmp_path / "home"
    _plant(home / ".profile")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(moved)
    for model_dir, name in ((".", "the current directory"), (str(tmp_path), "the current directory"),
                            (str(home), "the home directory")):
        with pytest.raises(SettingError, match=f"is or holds {name}: overwrite renames the run directory aside"):
            RunDir(model_dir).check_can_hold_a_run(overwrite=True)
    assert (home / ".profile").read_bytes() == USER_BYTES and os.path.exists(os.path.join(moved, "run.json"))


def _write_checkpoint(directory, number=1):
    checkpoint = tf.train.Checkpoint(v=tf.Variable(np.arange(4.0)))
    manager = tf.train.CheckpointManager(checkpoint, str(directory), max_to_keep=3)
    return manager.save(checkpoint_number=number)


def test_a_damaged_checkpoint_is_set_aside_without_the_files_that_share_its_name(tmp_path):
    prefix = _write_checkpoint(tmp_path / "checkpoints")
    own = sorted(os.listdir(tmp_path / "checkpoints"))
    planted = [_plant(tmp_path / "checkpoints" / name) for name in ("ckpt-1.notes.txt", "ckpt-1.index.bak",
                                                                      "ckpt-1.data-old")]
    moved = set_aside(prefix)
    assert sorted(os.path.basename(m) for m in moved) == ["ckpt-1.data-00000-of-00001.damaged-1",
                                                         "ckpt-1.index.damaged-1"]
    assert all(p.read_bytes() == USER_BYTES for p in planted)
    assert "checkpoint" in own and os.path.exists(tmp_path / "checkpoints" / "checkpoint")


def test_a_workers_checkpoints_are_removed_and_nothing_else(tmp_path):
    worker = tmp_path / "run" / ".worker_worker_1" / "checkpoints"
    _write_checkpoint(worker, 1)
    _write_checkpoint(worker, 2)
    planted = [_plant(worker / name) for name in ("notes.txt", "ckpt-1.index.bak", "ckpt-2.data-old")]
    remove_checkpoints(str(worker))
    assert sorted(os.listdir(worker)) == sorted(p.name for p in planted)  # the folders that hold them stay
    assert all(p.read_bytes() == USER_BYTES for p in planted)

    for p in planted:
        p.unlink()
    _write_checkpoint(worker, 3)
    remove_checkpoints(str(worker))
    assert os.listdir(tmp_path / "run") == []  # only its own files were there: its folders go too


def test_caches_leave_a_file_they_did_not_write(tmp_path, monkeypatch):
    from efficientnet_tf.data import sources

    monkeypatch.setenv("EFFICIENTNET_TF_CACHE", str(tmp_path / "cache"))
    counts = _plant(tmp_path / "cache" / "record_counts.json", b'{"my": "settings"}\n')
    records = str(tmp_path / "data.tfrecord")
    with tf.io.TFRecordWriter(records) as writer:
        for label in (0, 1, 1):
            feature = {"label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    assert sources.record_stats([records], "label") == {records: (3, 0, 1)}
    assert counts.read_bytes() == b'{"my": "settings"}\n'
    counts.unlink()
    sources.record_stats([records], "label")  # nothing in the way: cached
    assert list(json.loads(counts.read_text()).values()) == [[3, 0, 1]]

    image = tmp_path / "images" / "a.png"
    image.parent.mkdir()
    tf.io.write_file(str(image), tf.io.encode_png(np.zeros((4, 4, 3), np.uint8)))
    verdicts = _plant(pathlib.Path(sources._verdict_file([str(image)])))
    assert sources.check_image_files([str(image)]) == {str(image): None}
    assert verdicts.read_bytes() == USER_BYTES


def test_replotting_a_run_rewrites_only_its_own_figures(run_copy):
    from efficientnet_tf.training.report import replot_run

    planted = [_plant(pathlib.Path(run_copy) / name) for name in ("my_figure.png", "notes.txt")]
    written = replot_run(run_copy)
    assert written and all(os.path.dirname(path) == run_copy for path in written)
    assert all(p.read_bytes() == USER_BYTES for p in planted)


def test_tflite_files_written_into_a_folder_set_aside_the_ones_there(tmp_path):
    from efficientnet_tf.deploy.tflite import export_tflite
    from efficientnet_tf.models.factory import build_model

    model = build_model("efficientnet-lite0", num_classes=3, input_shape=(32, 32, 3), weights=None,
                        classifier_activation=None)
    mine = _plant(tmp_path / "model_float32.tflite")
    paths = export_tflite(model, str(tmp_path), ["float32"])
    assert (tmp_path / "model_float32.tflite.replaced-1").read_bytes() == USER_BYTES
    with open(paths["float32"], "rb") as f:
        assert f.read(8)[4:8] == b"TFL3"
    assert mine.read_bytes() != USER_BYTES
