"""Which images train and which evaluate, for every kind of dataset a user names: TFDS with and
without a validation/test split (and with a label that is not called 'label'), and folders in
the layouts and formats people have."""

import contextlib
import io
import json
import math
import os
import threading

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from efficientnet_tf.data import sources as data_lib
from efficientnet_tf.data import image_io, pixels
from efficientnet_tf.data import Source, get_source
from efficientnet_tf.data.pipeline import PipelineConfig, distributed_dataset, make_dataset

SPLIT_SHADE = {"train": 10, "validation": 20, "test": 30}  # the split an image came from, readable in its pixels


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(data_lib.CACHE_ENV, str(tmp_path / ".cache"))  # hidden: never a class folder


# ---------------------------------------------------------------- TFDS, with a fake per-split reader


def _fake_image(index, split, shape):
    """Pixels saying which split (pixel [1, 1]) and which example (pixel [0, 0]: index % 256 in
    the first channel, index // 256 in the second; grey images: in pixels [0, 0] and [0, 1])."""
    height, width, channels = (shape[0] or 8 + index % 5, shape[1] or 10, shape[2] or 3)
    image = np.full((height, width, channels), SPLIT_SHADE[split], np.uint8)
    image[0, 0, 0] = index % 256
    if channels == 1:
        image[0, 1, 0] = index // 256
    else:
        image[0, 0, 1] = index // 256
    return image


def _identity(image):
    """(split shade, index) of a decoded fake RGB image."""
    image = np.asarray(image)
    return int(image[1, 1, 0]), int(image[0, 0, 0]) + 256 * int(image[0, 0, 1])


@contextlib.contextmanager
def fake_tfds(data_dir, name, split_sizes, examples=None):
    """TFDS's mock, with real split metadata (names and counts) and a reader that gives each
    split its own examples, so that tests can see which split an example came from; or, with
    `examples` ({split: (uint8 images, labels)}), exactly those, in that order."""
    builder = tfds.builder(name, data_dir=str(data_dir))
    os.makedirs(builder.data_dir, exist_ok=True)
    template = tfds.core.ShardedFileTemplate(data_dir=builder.data_dir, dataset_name=builder.name, split="train",
                                             filetype_suffix="tfrecord")
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=split, shard_lengths=[count], num_bytes=0,
                            filename_template=template.replace(split=split))
        for split, count in split_sizes.items()]))
    builder.info.write_to_directory(builder.data_dir)
    features = builder.info.features
    shape = features["image"].shape
    labels = {key: features[key].num_classes for key in features.keys()
              if isinstance(features[key], tfds.features.ClassLabel)}

    def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False, **kwargs):
        split = str(split)
        order = np.arange(split_sizes[split.split("[")[0]])
        if "[" in split:  # a subsplit "name[start:end]", as TFDS reads it (absolute example numbers)
            split, bounds = split[:-1].split("[")
            start, end = (int(b) for b in bounds.split(":"))
            order = order[start:end]
        if examples is not None:  # one file per split: TFDS reads it in order, shuffled or not
            images, given = examples[split][0][order], examples[split][1][order]
            columns = {"image": tf.constant([tf.io.encode_png(image).numpy() for image in images])}
            columns.update({key: tf.constant(given, tf.int64) for key in labels})
        else:
            if shuffle_files:  # as TFDS does: another order, so that position cannot be relied on
                order = np.random.default_rng(read_config.shuffle_seed if read_config else None).permutation(order)
            images = [_fake_image(i, split, shape) for i in order]
            columns = {"image": tf.constant([tf.io.encode_png(image).numpy() for image in images])}
            for key, num_classes in labels.items():
                columns[key] = tf.constant([_expected_label(i, num_classes) for i in order], tf.int64)
        ds = tf.data.Dataset.from_tensor_slices(columns)
        if not (decoders and isinstance(decoders.get("image"), tfds.decode.SkipDecoding)):
            ds = ds.map(lambda ex: dict(ex, image=tf.io.decode_png(ex["image"], channels=shape[-1] or 3)))
        return ds

    with tfds.testing.mock_data(data_dir=str(data_dir), as_dataset_fn=as_dataset):
        yield builder


def _expected_label(index, num_classes):
    return (index * 7 + 3) % num_classes


def _read(source, split, shuffle_files=False, seed=None):
    return [(_identity(image), int(label)) for image, label in source.examples(split, shuffle_files, seed)]


def test_train_only_tfds_dataset_holds_out_a_seeded_disjoint_share(tmp_path):
    with fake_tfds(tmp_path, "tf_flowers", {"train": 60}) as builder:
        source = get_source("tf_flowers", data_dir=str(tmp_path))
        names = builder.info.features["label"].names
        assert source.class_names == tuple(names) and source.num_classes == 5
        assert (source.num_train, source.num_eval) == (54, 6)  # 10% by default
        assert source.split_description == (
            "train: TFDS tf_flowers split 'train' minus a seeded 10% (seed 0), 54 images; eval: the held-out 10% of "
            "'train', 6 images (the dataset has no validation or test split)")
        train, evaluation = _read(source, "train"), _read(source, "eval")
        assert len(train) == source.num_train and len(evaluation) == source.num_eval
        train_ids = {i for (shade, i), _ in train}
        eval_ids = {i for (shade, i), _ in evaluation}
        assert {shade for (shade, _), _ in train + evaluation} == {SPLIT_SHADE["train"]}
        assert not train_ids & eval_ids and train_ids | eval_ids == set(range(60))
        assert all(label == _expected_label(i, 5) for (_, i), label in train + evaluation)
        # Membership is the seed's alone: the same on every read, shuffled or not.
        assert {i for (_, i), _ in _read(source, "eval", shuffle_files=True, seed=5)} == eval_ids
        assert {i for (_, i), _ in _read(source, "train", shuffle_files=True, seed=7)} == train_ids
        again = get_source("tf_flowers", data_dir=str(tmp_path))
        assert {i for (_, i), _ in _read(again, "eval")} == eval_ids
        other = get_source("tf_flowers", data_dir=str(tmp_path), seed=1)
        assert {i for (_, i), _ in _read(other, "eval")} != eval_ids and other.num_eval == 6
        quarter = get_source("tf_flowers", data_dir=str(tmp_path), validation_fraction=0.25)
        assert (quarter.num_train, quarter.num_eval) == (45, 15) and "25%" in quarter.split_description
        assert len(_read(quarter, "eval")) == 15


@pytest.mark.parametrize("name, splits, eval_split", [
    ("imagenette", {"train": 40, "validation": 12}, "validation"),
    ("cifar10", {"train": 40, "test": 12}, "test"),
    ("oxford_flowers102", {"train": 40, "validation": 12, "test": 16}, "validation"),
])
def test_tfds_dataset_with_its_own_eval_split_uses_it(tmp_path, name, splits, eval_split):
    with fake_tfds(tmp_path, name, splits) as builder:
        source = get_source(name, data_dir=str(tmp_path))
        assert source.class_names == tuple(builder.info.features["label"].names)
        assert (source.num_train, source.num_eval) == (40, 12)
        assert source.split_description == (f"train: TFDS {name} split 'train', 40 images; "
                                            f"eval: split '{eval_split}', 12 images")
        train, evaluation = _read(source, "train"), _read(source, "eval")
        assert sorted(ident for ident, _ in train) == [(SPLIT_SHADE["train"], i) for i in range(40)]
        assert sorted(ident for ident, _ in evaluation) == [(SPLIT_SHADE[eval_split], i) for i in range(12)]
        num_classes = source.num_classes
        assert all(label == _expected_label(i, num_classes) for (_, i), label in train + evaluation)


def test_padded_eval_over_a_held_out_split_counts_each_example_once(tmp_path):
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(devices[:2])
    with fake_tfds(tmp_path, "cats_vs_dogs", {"train": 50}):
        source = get_source("cats_vs_dogs", data_dir=str(tmp_path), validation_fraction=0.3)
        assert (source.num_train, source.num_eval) == (35, 15)
        config = PipelineConfig(image_size=32, global_batch_size=4, seed=0, pad_eval=True)
        batches = list(make_dataset(source, config, training=False))
        assert all(images.shape == (4, 32, 32, 3) for images, _, _ in batches)
        weights = np.concatenate([w.numpy() for _, _, w in batches])
        labels = np.concatenate([y.numpy() for _, y, _ in batches])[weights == 1]
        assert weights.sum() == 15 and len(weights) == 16
        np.testing.assert_array_equal(labels, [label for _, label in _read(source, "eval", seed=0)])  # same order
        total = 0.0
        for _, _, w in distributed_dataset(strategy, source, config, training=False):
            total += sum(float(x.numpy().sum()) for x in strategy.experimental_local_results(w))
        assert total == 15
        train_batches = sum(1 for _ in make_dataset(source, PipelineConfig(image_size=32, global_batch_size=5),
                                                    training=True))
        assert train_batches == 35 // 5


def test_label_key_picks_the_class_label(tmp_path):
    with fake_tfds(tmp_path, "smallnorb", {"train": 20, "test": 10}) as builder:
        with pytest.raises(ValueError) as err:
            get_source("smallnorb", data_dir=str(tmp_path))
        message = str(err.value)
        assert "'label'" in message and "label_category" in message and "label_lighting" in message
        assert "label_key" in message and "--" not in message
        source = get_source("smallnorb", data_dir=str(tmp_path), label_key="label_category")
        assert source.class_names == tuple(builder.info.features["label_category"].names)
        assert (source.num_train, source.num_eval) == (20, 10)
        examples = list(source.examples("eval"))
        assert examples[0][0].shape == (96, 96, 3)  # grey made RGB
        indices = [int(image[0, 0, 0]) for image, _ in examples]  # grey fake: the index is pixel [0, 0]
        assert sorted(indices) == list(range(10))
        assert [int(label) for _, label in examples] == [_expected_label(i, 5) for i in indices]
        with pytest.raises(ValueError, match="'instances'.*label_category"):
            get_source("smallnorb", data_dir=str(tmp_path), label_key="instances")
    with pytest.raises(ValueError, match="TFDS datasets only"):
        get_source("digits", label_key="label_category")


@pytest.mark.slow
def test_training_on_a_train_only_tfds_dataset_evaluates_the_held_out_split(tmp_path):
    """End to end: per-epoch and final evaluation run over the held-out split, every example once."""
    from efficientnet_tf.training import TrainConfig, Trainer, read_history

    with fake_tfds(tmp_path / "tfds", "tf_flowers", {"train": 40}):
        config = TrainConfig.from_settings(model="efficientnet-lite0", dataset="tf_flowers", data_dir=str(tmp_path / "tfds"),
                                           model_dir=str(tmp_path / "run"), epochs=2, steps_per_epoch=2, batch_size=8, image_size=32,
                                           lr_schedule="cosine", warmup_epochs=0, seed=0, validation_fraction=0.2)
        trainer = Trainer(config, verbose=False)
        assert (trainer.source.num_train, trainer.source.num_eval) == (32, 8)
        report = trainer.fit()
    assert report["images"] == 8 and 0 <= report["top1"] <= 1
    history = read_history(config.model_dir)
    assert len(history) == 2 and all(math.isfinite(float(row["val_loss"])) for row in history)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["class_names"] == ["dandelion", "daisy", "tulips", "sunflowers", "roses"]
    assert run["split"] == trainer.source.split_description and "held-out 20%" in run["split"]


# ---------------------------------------------------------------- folders


def _save(path, pixels, fmt=None, **kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt, **kwargs)


def _write_classes(root, counts, size=(20, 28), fmt="png"):
    rng = np.random.default_rng(0)
    for cls, count in counts.items():
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for i in range(count):
            _save(os.path.join(root, cls, f"{i}.{fmt}"), rng.integers(0, 256, (*size, 3), dtype=np.uint8))


@pytest.mark.parametrize("eval_dir", ["val", "valid", "validation", "Validation", "eval", "test", "TEST"])
def test_split_folders_are_recognised_by_their_usual_names(tmp_path, eval_dir):
    _write_classes(tmp_path / "train", {"cat": 3, "dog": 2})
    _write_classes(tmp_path / eval_dir, {"cat": 1, "dog": 2})
    source = get_source(f"folder:{tmp_path}")
    assert source.class_names == ("cat", "dog")
    assert (source.num_train, source.num_eval) == (5, 3)
    assert source.split_description == f"train: folder train/, 5 images; eval: folder {eval_dir}/, 3 images"
    assert sorted(int(y) for _, y in source.examples("eval")) == [0, 1, 1]


def test_val_is_preferred_to_test_and_a_lone_train_folder_is_held_out_from(tmp_path, caplog):
    _write_classes(tmp_path / "a" / "train", {"cat": 4, "dog": 4})
    _write_classes(tmp_path / "a" / "val", {"cat": 1, "dog": 1})
    _write_classes(tmp_path / "a" / "test", {"cat": 2, "dog": 2})
    source = get_source(f"folder:{tmp_path / 'a'}")
    assert source.num_eval == 2 and "folder val/" in source.split_description
    assert "test/" in caplog.text  # says what it does not use
    _write_classes(tmp_path / "b" / "train", {"cat": 10, "dog": 10})
    source = get_source(f"folder:{tmp_path / 'b'}", validation_fraction=0.2)
    assert source.class_names == ("cat", "dog") and (source.num_train, source.num_eval) == (16, 4)
    assert source.split_description.startswith("train: folder train/ minus a stratified seeded 20% (seed 0), 16")


def test_a_class_called_train_is_still_a_class(tmp_path):
    _write_classes(tmp_path, {"bus": 4, "train": 4})  # "train" holds images, not class folders
    source = get_source(f"folder:{tmp_path}")
    assert source.class_names == ("bus", "train") and source.num_train + source.num_eval == 8


def test_empty_class_folder_is_not_a_class_and_is_named(tmp_path, caplog):
    _write_classes(tmp_path, {"cat": 4, "dog": 4})
    os.makedirs(tmp_path / "empty_cls")
    (tmp_path / "dog" / ".DS_Store").write_bytes(b"\0\1")  # hidden and OS files are not images to check
    (tmp_path / "dog" / "Thumbs.db").write_bytes(b"\0\1")
    source = get_source(f"folder:{tmp_path}")
    assert source.class_names == ("cat", "dog") and source.num_classes == 2
    assert "empty_cls" in caplog.text


def test_classes_too_small_to_split_are_warned_about_or_refused(tmp_path, caplog):
    _write_classes(tmp_path / "a", {"cat": 6, "dog": 6, "owl": 1})
    source = get_source(f"folder:{tmp_path / 'a'}")
    assert source.class_names == ("cat", "dog", "owl")
    assert "owl (1 image)" in caplog.text and "never evaluated" in caplog.text
    eval_labels = [int(y) for _, y in source.examples("eval")]
    assert len(eval_labels) == source.num_eval == 2 and 2 not in eval_labels
    _write_classes(tmp_path / "b", {"cat": 1, "dog": 1})
    with pytest.raises(ValueError, match="cannot be split"):
        get_source(f"folder:{tmp_path / 'b'}")


def test_tiff_is_named_or_skipped_never_a_crash_mid_epoch(tmp_path, caplog):
    _write_classes(tmp_path, {"cat": 4, "dog": 4})
    pixels_ = np.random.default_rng(1).integers(0, 256, (20, 28, 3), dtype=np.uint8)
    _save(str(tmp_path / "cat" / "scan.tif"), pixels_, "TIFF")
    _save(str(tmp_path / "dog" / "photo.webp"), pixels_, "WEBP")  # TF reads WebP: a good file
    with pytest.raises(ValueError) as err:
        get_source(f"folder:{tmp_path}")
    assert "scan.tif" in str(err.value) and "unknown image format" in str(err.value)
    assert "photo.webp" not in str(err.value) and "on_bad_image='skip'" in str(err.value)
    source = get_source(f"folder:{tmp_path}", on_bad_image="skip")
    assert "skipping 1 unreadable file(s)" in caplog.text and "scan.tif" in caplog.text
    assert source.num_train + source.num_eval == 9
    config = PipelineConfig(image_size=32, global_batch_size=3, seed=0)
    seen = sum(int(y.shape[0]) for _, y in make_dataset(source, config, training=True))
    seen += sum(int(y.shape[0]) for _, y in make_dataset(source, config, training=False))
    assert seen == source.num_train // 3 * 3 + source.num_eval


def test_folder_images_are_turned_upright_by_their_exif_orientation(tmp_path):
    rng = np.random.default_rng(2)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways, "rotate 90 degrees clockwise to view"
    for cls in ("cat", "dog"):
        for i in range(3):
            _save(str(tmp_path / cls / f"{i}.jpg"), rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), "JPEG",
                  exif=exif.tobytes())
    source = get_source(f"folder:{tmp_path}")
    for image, _ in source.examples("train"):
        assert image.shape == (30, 20, 3)
    path = str(tmp_path / "cat" / "0.jpg")
    from PIL import ImageOps

    plain = Image.fromarray(tf.io.decode_jpeg(tf.io.read_file(path)).numpy())
    plain.info["exif"] = exif.tobytes()
    expected = np.asarray(ImageOps.exif_transpose(plain))
    decoded = list(tf.data.Dataset.from_tensor_slices([path]).map(image_io.read_image))[0].numpy()
    np.testing.assert_array_equal(decoded, expected)


def test_file_check_decodes_each_file_once_and_rechecks_changed_files(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    _write_classes(root, {"cat": 5, "dog": 5}, fmt="jpg")
    checked, lock = [], threading.Lock()
    real_check = image_io.check_image_file

    def counting_check(path):
        with lock:
            checked.append(os.path.basename(os.path.dirname(path)) + "/" + os.path.basename(path))
        return real_check(path)

    monkeypatch.setattr(image_io, "check_image_file", counting_check)
    first = get_source(f"folder:{root}")
    assert len(checked) == 10
    checked.clear()
    again = get_source(f"folder:{root}")
    assert checked == [] and (again.num_train, again.num_eval) == (first.num_train, first.num_eval)
    stat = os.stat(root / "cat" / "0.jpg")
    os.utime(root / "cat" / "0.jpg", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched
    (root / "dog" / "1.jpg").write_bytes(b"now a broken file")  # replaced
    with pytest.raises(ValueError, match="dog/1.jpg"):
        get_source(f"folder:{root}")
    assert sorted(checked) == ["cat/0.jpg", "dog/1.jpg"]
    checked.clear()
    with pytest.raises(ValueError, match="dog/1.jpg"):  # a bad verdict is cached too
        get_source(f"folder:{root}")
    assert checked == []
    # A damaged cache is ignored: everything is checked again, nothing fails.
    (cache_file,) = (tmp_path / ".cache" / "image_checks").glob("*.json")
    cache_file.write_text('{"verdicts": {"trunc')
    assert get_source(f"folder:{root}", on_bad_image="skip").num_train + 1 == first.num_train
    assert len(checked) == 10
    assert json.loads(cache_file.read_text())["verdicts"]  # and rewritten whole


# ---------------------------------------------------------------- what the pipeline sees


def _toy_source(images, num_eval):
    images = np.asarray(images)
    labels = np.zeros(len(images), np.int32)
    return Source("toy", 2, ("a", "b"), len(images), num_eval, None, True,
                  lambda split, shuffle, seed, shard: tf.data.Dataset.from_tensor_slices((images, labels)))


def test_pipeline_warns_once_about_images_scaled_to_0_1():
    pixels.reset_warnings()
    unit = np.random.default_rng(0).random((8, 40, 40, 3)).astype(np.float32)
    config = PipelineConfig(image_size=32, global_batch_size=4, seed=0)
    with pytest.warns(pixels.UnitRangeWarning, match="input pipeline"):
        make_dataset(_toy_source(unit, 8), config, training=True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_dataset(_toy_source(unit, 8), config, training=True)  # once only
        pixels.reset_warnings()
        make_dataset(_toy_source(unit * 255, 8), config, training=True)  # 0..255 floats: fine
        make_dataset(_toy_source((unit * 255).astype(np.uint8), 8), config, training=True)


def test_padded_eval_of_a_source_that_does_not_know_its_eval_count():
    images = np.full((10, 40, 40, 3), 100, np.uint8)
    config = PipelineConfig(image_size=32, global_batch_size=4, seed=0, pad_eval=True)
    batches = list(make_dataset(_toy_source(images, None), config, training=False))
    weights = np.concatenate([w.numpy() for _, _, w in batches])
    assert weights.sum() == 10 and len(weights) == 12


# ---------------------------------------------------------------- shards of a distributed input


@pytest.mark.parametrize("splits", [{"train": 60}, {"train": 40, "test": 13}])
@pytest.mark.parametrize("count", [2, 3])
def test_tfds_shards_are_contiguous_ranges_that_partition_each_split(tmp_path, splits, count):
    """Each input pipeline reads its own range of examples (TFDS opens only the files holding
    it): the shards partition the split, held-out share included, with the sizes the source
    reports for padding."""
    name = "tf_flowers" if len(splits) == 1 else "cifar10"
    with fake_tfds(tmp_path, name, splits):
        source = get_source(name, data_dir=str(tmp_path))
        for split in ("train", "eval"):
            whole = sorted(i for (_, i), _ in _read(source, split))
            shards = [[i for (_, i), _ in ((_identity(x), y) for x, y in source.examples(split, shard=(count, k)))]
                      for k in range(count)]
            assert sorted(i for shard in shards for i in shard) == whole
            assert [len(shard) for shard in shards] == source.shard_sizes(split, count)
            if len(splits) > 1:  # the split's own examples: contiguous ranges
                assert all(sorted(shard) == list(range(min(shard), max(shard) + 1)) for shard in shards)
