"""Input at pod scale: tensorflow/tpu-format TFRecords, one share of the files per input
pipeline, step checkpoints and a resume that continues at the next batch."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from cli import run_main
import tensorflow as tf

from efficientnet_tf.data import sources as data_lib
from efficientnet_tf.data.pipeline import PipelineConfig, make_dataset
from efficientnet_tf.data.sources import get_source
from tfrecords import write_digits_records, write_tfrecords

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(data_lib.CACHE_ENV, str(tmp_path / ".cache"))


@pytest.fixture
def digits_records(tmp_path):
    """The digits split (train 1,437 / eval 360) as 8 train and 2 validation files."""
    directory = tmp_path / "records"
    train, evaluation = write_digits_records(str(directory))
    return directory, directory / "classes.txt", train, evaluation


def _source(directory, names, **kwargs):
    return get_source(f"tfrecord:{directory}/train-*", eval_dataset=f"tfrecord:{directory}/validation-*",
                      class_names=names.read_text().split(), **kwargs)


def _pairs(ds):
    return [(image.numpy().tobytes(), int(label)) for image, label in ds]


def _expected(images, labels):
    return [(image.tobytes(), int(label)) for image, label in zip(images, labels)]


def test_tpu_format_records_read_as_the_images_they_hold(digits_records):
    directory, names, train, evaluation = digits_records
    source = _source(directory, names)
    assert (source.num_train, source.num_eval, source.num_classes) == (1437, 360, 10)
    assert source.class_names == tuple(str(i) for i in range(10))
    # In file order when not shuffled: exactly the images and 0-based labels written.
    assert _pairs(source.examples("train")) == _expected(*train)
    assert _pairs(source.examples("eval")) == _expected(*evaluation)
    shuffled = _pairs(source.examples("train", shuffle_files=True, seed=3))
    assert shuffled != _expected(*train) and sorted(shuffled) == sorted(_expected(*train))
    assert shuffled == _pairs(source.examples("train", shuffle_files=True, seed=3))  # seeded: the same order


def test_records_are_counted_once_and_again_when_a_file_changes(digits_records, tmp_path, monkeypatch):
    """Counts and label ranges from one read per file, cached; a replaced file is read again."""
    directory, names, train, evaluation = digits_records
    _source(directory, names)
    bounds = np.linspace(0, 1437, 9).astype(int)
    cache = json.loads((tmp_path / ".cache" / "record_counts.json").read_text())
    assert sorted(entry[0] for entry in cache.values()) == sorted(list(np.diff(bounds)) + [180, 180])
    files = sorted(str(p) for p in directory.glob("train-*"))
    first = data_lib.record_stats(files)[files[0]]
    assert first == (bounds[1], int(train[1][:bounds[1]].min()) + 1, int(train[1][:bounds[1]].max()) + 1)
    opened = []

    class Counting(tf.data.TFRecordDataset):
        def __init__(self, filenames, *args, **kwargs):
            opened.append(filenames)
            super().__init__(filenames, *args, **kwargs)

    monkeypatch.setattr(tf.data, "TFRecordDataset", Counting)
    data_lib.record_stats(files)
    assert opened == []  # all cached
    (replacement,) = write_tfrecords(tmp_path / "other", "train", train[0][:5], train[1][:5], 1)
    os.replace(replacement, files[0])
    stats = data_lib.record_stats(files)
    assert opened == [files[0]] and stats[files[0]][0] == 5 and stats[files[1]][0] == bounds[2] - bounds[1]


def test_a_held_out_share_when_there_are_no_evaluation_files(digits_records):
    directory, names, train, _ = digits_records
    source = get_source(f"tfrecord:{directory}/train-*", class_names=names.read_text().split(),
                        validation_fraction=0.25, seed=4)
    assert (source.num_train, source.num_eval) == (1437 - 359, 359)
    held, kept = _pairs(source.examples("eval")), _pairs(source.examples("train", shuffle_files=True, seed=1))
    assert sorted(held + kept) == sorted(_expected(*train))
    assert held == _pairs(get_source(f"tfrecord:{directory}/train-*", class_names=names.read_text().split(),
                                     validation_fraction=0.25, seed=4).examples("eval"))


@pytest.mark.parametrize("count", [2, 3, 8, 12])
def test_each_input_pipeline_opens_only_its_own_files(digits_records, count):
    """The other pipelines' files are overwritten with garbage before a shard is read: reading
    one would fail. With more pipelines than files (12 > 8) every pipeline reads all files and
    keeps its share. Either way the shards partition the split with the sizes reported."""
    directory, names, train, evaluation = digits_records
    source = _source(directory, names)
    files = sorted(str(p) for p in directory.glob("train-*"))
    saved = {path: open(path, "rb").read() for path in files}
    shards = []
    try:
        for index in range(count):
            if count <= len(files):
                for k, path in enumerate(files):
                    with open(path, "wb") as f:
                        f.write(saved[path] if k % count == index else b"\x00garbage" * 64)
            shards.append(_pairs(source.examples("train", shard=(count, index))))
    finally:
        for path, content in saved.items():
            with open(path, "wb") as f:
                f.write(content)
    assert sorted(pair for shard in shards for pair in shard) == sorted(_expected(*train))
    assert [len(shard) for shard in shards] == source.shard_sizes("train", count)


def test_bad_tfrecord_inputs_are_named(digits_records, tmp_path):
    directory, names, _, _ = digits_records
    with pytest.raises(FileNotFoundError, match=r"no file matches '.*nothing-\*'"):
        get_source(f"tfrecord:{directory}/nothing-*")
    with pytest.raises(ValueError, match="the evaluation files of a tfrecord: dataset are tfrecord:GLOB, got 'digits'"):
        get_source(f"tfrecord:{directory}/train-*", eval_dataset="digits")
    with pytest.raises(ValueError, match="'digits' has its own evaluation split"):
        get_source("digits", eval_dataset=f"tfrecord:{directory}/validation-*")
    with pytest.raises(ValueError, match=r"the image/class/label labels of .*train-\* run from 1 to 10; minus "
                                         r"tfrecord_label_offset=1 that is 0..9, outside the 3 classes 0..2"):
        get_source(f"tfrecord:{directory}/train-*", class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="run from 1 to 10; minus tfrecord_label_offset=0 that is 1..10"):
        get_source(f"tfrecord:{directory}/train-*", class_names=list("abcdefghij"), tfrecord_features=(
            "image/encoded", "image/class/label", 0))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "train-00000-of-00001").write_bytes(b"not a tfrecord file" * 10)
    with pytest.raises(ValueError, match=r"train-00000-of-00001 cannot be read as a TFRecord file \(DataLossError"):
        get_source(f"tfrecord:{tmp_path}/broken/train-*", class_names=list("abcdefghij"))
    with pytest.raises(ValueError, match="has no integer feature 'label'"):
        get_source(f"tfrecord:{directory}/train-*", class_names=list("abcdefghij"), tfrecord_features=(
            "image/encoded", "label", 1))


def test_a_resumed_epoch_gets_the_batches_an_uninterrupted_one_gets():
    """skip_steps=k: the same batches as batches k, k+1, ... of the whole epoch (random crops
    and flips seeded by position), without decoding the skipped ones."""
    source = get_source("digits")
    config = PipelineConfig(image_size=32, global_batch_size=16, seed=3)
    whole = [x.numpy() for x, _ in make_dataset(source, config, training=True, epoch=2, repeat=True).take(7)]
    resumed = [x.numpy() for x, _ in make_dataset(source, config, training=True, epoch=2, repeat=True,
                                                  skip_steps=4).take(3)]
    for a, b in zip(whole[4:], resumed):
        np.testing.assert_array_equal(a, b)


def _train_command(model_dir, records, names, *extra):
    return [sys.executable, "-u", "main.py", "--mode=train", "--model=efficientnet-lite0", "--image_size=32",
            f"--dataset=tfrecord:{records}/train-*", f"--eval_dataset=tfrecord:{records}/validation-*",
            f"--class_names_file={names}", "--batch_size=16", "--epochs=2", "--steps_per_epoch=30",
            "--dropout_rate=0", "--drop_connect_rate=0", "--seed=0", f"--model_dir={model_dir}", *extra]


def _checkpoint_values(model_dir):
    """(epoch, epoch_step, optimizer steps, model weights) of the run's newest checkpoint."""
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")))
    names = reader.get_variable_to_shape_map()
    counter = [n for n in names if n.startswith("optimizer/") and n.endswith("iterations/.ATTRIBUTES/VARIABLE_VALUE")]
    weights = {n: reader.get_tensor(n) for n in sorted(names) if n.startswith("model/")}
    return (int(reader.get_tensor("epoch/.ATTRIBUTES/VARIABLE_VALUE")),
            int(reader.get_tensor("epoch_step/.ATTRIBUTES/VARIABLE_VALUE")),
            [int(reader.get_tensor(n)) for n in counter], weights)


@pytest.mark.slow
def test_killed_mid_epoch_resumes_from_the_step_checkpoint_and_ends_as_an_uninterrupted_run(digits_records,
                                                                                           tmp_path):
    """SIGKILL (no chance to save) after a step checkpoint of epoch 2; the same command resumes
    from it: no batch trained twice or skipped (optimizer steps), and the final weights equal an
    uninterrupted run's with the same seed."""
    directory, names, _, _ = digits_records
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", EFFICIENTNET_TF_CACHE=str(tmp_path / ".cache"))
    reference = run_main(*_train_command(tmp_path / "uninterrupted", directory, names)[3:])  # in this process
    assert reference.returncode == 0, reference.stderr[-3000:]

    killed_dir = tmp_path / "killed"
    command = _train_command(killed_dir, directory, names, "--checkpoint_every_steps=10")
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    checkpoints = str(killed_dir / "checkpoints")
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        newest = tf.train.latest_checkpoint(checkpoints) if os.path.isdir(checkpoints) else None
        if newest and newest.endswith("ckpt-2"):  # epoch 2's own number: a step checkpoint of epoch 2
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    epoch, step, _, _ = _checkpoint_values(killed_dir)
    assert (epoch, step) in ((1, 10), (1, 20)), (epoch, step)  # killed within epoch 2, after a step checkpoint

    resumed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"continuing epoch 2 at step {step + 1} of 30" in resumed.stdout
    *ours, our_weights = _checkpoint_values(killed_dir)
    *theirs, their_weights = _checkpoint_values(tmp_path / "uninterrupted")
    assert ours == theirs == [2, 0, [60]]  # 2 epochs x 30 steps: each batch trained on once
    assert our_weights.keys() == their_weights.keys() and len(our_weights) > 90  # Lite0: 98
    for name in our_weights:
        np.testing.assert_allclose(our_weights[name], their_weights[name], rtol=1e-6, atol=1e-6, err_msg=name)


def test_a_run_evaluates_on_tfrecords_of_its_held_out_images(run_copy, tmp_path):
    """`--mode=eval --eval_dataset=tfrecord:GLOB` on the digits run: every record evaluates,
    labelled with the run's classes; the run's own held-out images give its own top-1."""
    write_digits_records(str(tmp_path / "records"), train_files=2, eval_files=3)
    report = json.loads(open(os.path.join(run_copy, "eval_report.json")).read())
    result = run_main("--mode=eval", f"--model_dir={run_copy}", f"--eval_dataset=tfrecord:{tmp_path}/records/validation-*")
    assert result.returncode == 0, result.stderr[-3000:]
    evaluation = json.loads(result.stdout[result.stdout.index("{"):])
    assert evaluation["images"] == report["images"] == 360
    assert evaluation["top1"] == pytest.approx(report["top1"], abs=1e-6)


@pytest.mark.slow
def test_a_run_on_tfrecords_has_the_history_of_the_same_run_on_tfds(tmp_path):
    """The same examples (digits, 32 px) as a TFDS dataset (TFDS's mock, one file per split) and
    as tensorflow/tpu-format TFRecord files (one per split): the same training history."""
    from efficientnet_tf.data.sources import digits_split
    from efficientnet_tf.training import TrainConfig, Trainer
    from test_data_splits import fake_tfds

    images, labels, train_idx, eval_idx = digits_split(0.2, 0)
    images = np.kron(images, np.ones((4, 4, 1), np.uint8))  # 8 -> 32 px, as cifar10's metadata says
    splits = {"train": (images[train_idx], labels[train_idx]), "test": (images[eval_idx], labels[eval_idx])}
    write_tfrecords(tmp_path / "records", "train", *splits["train"], 1)
    write_tfrecords(tmp_path / "records", "validation", *splits["test"], 1)
    settings = dict(model="efficientnet-lite0", image_size=32, epochs=2, steps_per_epoch=5, batch_size=16, seed=0,
                    dropout_rate=0.0, drop_connect_rate=0.0)
    with fake_tfds(tmp_path / "tfds", "cifar10", {"train": len(train_idx), "test": len(eval_idx)}, examples=splits):
        on_tfds = Trainer(TrainConfig.from_settings(dataset="cifar10", data_dir=str(tmp_path / "tfds"),
                                                    model_dir=str(tmp_path / "tfds_run"), **settings), verbose=False)
        assert on_tfds.source.num_classes == 10 and on_tfds.source.name == "cifar10"
        on_tfds.fit()
    on_records = Trainer(TrainConfig.from_settings(
        dataset=f"tfrecord:{tmp_path}/records/train-*", eval_dataset=f"tfrecord:{tmp_path}/records/validation-*",
        class_names_file=write_class_names(tmp_path, on_tfds.source.class_names), model_dir=str(tmp_path / "run"),
        **settings), verbose=False)
    on_records.fit()
    from efficientnet_tf.training.rundir import read_history

    columns = ("loss", "accuracy", "val_loss", "val_accuracy")
    ours = [[float(row[c]) for c in columns] for row in read_history(str(tmp_path / "run"))]
    theirs = [[float(row[c]) for c in columns] for row in read_history(str(tmp_path / "tfds_run"))]
    assert len(ours) == 2 and ours == theirs


def write_class_names(directory, names):
    path = os.path.join(directory, "classes.txt")
    with open(path, "w") as f:
        f.write("\n".join(names) + "\n")
    return path


@pytest.mark.slow
def test_a_run_directory_in_a_bucket_works_as_a_local_one(tmp_path):
    """model_dir through TensorFlow's file system layer (ram:// here, gs:// for users): the same
    run as in a local directory gives the same history; it resumes, falls back from a damaged
    checkpoint, replots, and an export to the bucket says to export locally."""
    from efficientnet_tf import files
    from efficientnet_tf.deploy.export import export_run, load_trained_model
    from efficientnet_tf.training import TrainConfig, Trainer
    from efficientnet_tf.training.report import replot_run
    from efficientnet_tf.training.rundir import read_history

    # No step checkpoints here: TensorFlow's ram:// appends to a file written again (gs:// replaces
    # it), so a checkpoint saved twice under one number would read back damaged.
    settings = dict(model="efficientnet-lite0", dataset="digits", image_size=32, epochs=2, steps_per_epoch=3,
                    batch_size=16, seed=0, dropout_rate=0.0, drop_connect_rate=0.0)
    bucket = "ram://bucket/runs/lite0"
    local = str(tmp_path / "lite0")
    for model_dir in (local, bucket):
        Trainer(TrainConfig.from_settings(model_dir=model_dir, **settings), verbose=False).fit()
    def learned(model_dir):  # each epoch's numbers, without its speed
        return [{k: v for k, v in row.items() if k != "images_per_sec"} for row in read_history(model_dir)]

    assert learned(bucket) == learned(local) and len(learned(bucket)) == 2
    assert sorted(files.listdir(bucket)) == sorted(os.listdir(local))
    assert files.read_text(f"{bucket}/eval_report.json").startswith("{")

    resumed = Trainer(TrainConfig.from_settings(model_dir=bucket, **dict(settings, epochs=3)), verbose=False)
    resumed.fit(validate=False)
    assert resumed.state.resumed_from == f"{bucket}/checkpoints/ckpt-2" and len(read_history(bucket)) == 3
    tf.io.gfile.remove(f"{bucket}/checkpoints/ckpt-3.data-00000-of-00001")
    with tf.io.gfile.GFile(f"{bucket}/checkpoints/ckpt-3.data-00000-of-00001", "wb") as f:
        f.write(b"")  # damaged: zero length
    _, info = load_trained_model(bucket)
    assert info["checkpoint"] == f"{bucket}/checkpoints/ckpt-2"
    assert "ckpt-3.data-00000-of-00001.damaged-1" in files.listdir(f"{bucket}/checkpoints")
    assert any(path.endswith("history.png") for path in replot_run(bucket))
    with pytest.raises(ValueError, match="an export is built in a local directory"):
        export_run(bucket)
    export_run(bucket, export_dir=str(tmp_path / "export"), tflite=[])  # the SavedModel is what is checked
    assert os.path.isdir(tmp_path / "export" / "saved_model")
