import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from efficientnet_tf.data import sources as data_lib
from efficientnet_tf.data.augment import AugmentConfig
from efficientnet_tf.data import digits_split, get_source
from efficientnet_tf.data.pipeline import PipelineConfig, distributed_dataset, make_dataset, preprocess_eval


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Folder checks cache their verdicts: in a test's own directory, not in the user's home."""
    monkeypatch.setenv(data_lib.CACHE_ENV, str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def two_cpu_strategy():
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    assert len(devices) == 2, "conftest.py makes two logical CPU devices"
    return tf.distribute.MirroredStrategy(devices[:2])


def test_unknown_dataset_lists_choices():
    with pytest.raises(ValueError) as err:
        get_source("cifar11")
    assert "'cifar11'" in str(err.value) and "digits" in str(err.value) and "folder:PATH" in str(err.value)


def test_digits_split_is_stratified_deterministic_and_disjoint():
    images, labels, train, evaluation = digits_split(0.2, seed=0)
    assert len(images) == 1797 and images.shape[1:] == (8, 8, 3) and images.max() == 255
    assert not set(train) & set(evaluation)
    assert len(train) + len(evaluation) == 1797
    train_share = np.bincount(labels[train], minlength=10) / np.bincount(labels, minlength=10)
    np.testing.assert_allclose(train_share, 0.8, atol=0.02)  # every class split 80/20
    again = digits_split(0.2, seed=0)
    np.testing.assert_array_equal(again[2], train)
    other = digits_split(0.2, seed=1)
    assert not np.array_equal(other[2], train)


def test_digits_pipeline_shapes_values_and_sparse_labels():
    source = get_source("digits")
    assert source.num_classes == 10 and source.num_train == 1437 and not source.flip_ok
    assert source.split_description == ("train: scikit-learn digits minus a stratified seeded 20% (seed 0), "
                                        "1,437 images; eval: the held-out 20%, 360 images")
    config = PipelineConfig(image_size=32, global_batch_size=32, seed=0)
    images, labels = next(iter(make_dataset(source, config, training=True)))
    assert images.shape == (32, 32, 32, 3) and images.dtype == tf.float32
    assert labels.shape == (32,) and labels.dtype == tf.int32
    assert float(tf.reduce_min(images)) >= 0 and float(tf.reduce_max(images)) <= 255
    assert float(tf.reduce_max(images)) > 100  # real strokes, not a black image
    # Training drops the remainder (static shapes); eval keeps every example.
    assert sum(1 for _ in make_dataset(source, config, training=True)) == 1437 // 32
    eval_labels = np.concatenate([y for _, y in make_dataset(source, config, training=False)])
    assert len(eval_labels) == 360


def test_seed_makes_training_batches_repeatable():
    source = get_source("digits")
    config = PipelineConfig(image_size=32, global_batch_size=16, seed=3)
    a = next(iter(make_dataset(source, config, training=True)))
    b = next(iter(make_dataset(source, config, training=True)))
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    c = next(iter(make_dataset(source, config, training=True, epoch=1)))
    assert not np.array_equal(a[0].numpy(), c[0].numpy())


def test_small_images_keep_most_of_the_picture():
    """A 32px image must not be cropped to a 9px corner: the crop is pad-and-shift."""
    image = np.zeros((32, 32, 3), np.uint8)
    image[:, :16] = 255  # left half white
    source = data_lib.Source("toy", 2, ("a", "b"), 64, 64, 32, True,
                             lambda split, shuffle, seed, shard: tf.data.Dataset.from_tensors((image, 0)).repeat(64))
    config = PipelineConfig(image_size=64, global_batch_size=64, seed=0, random_flip=False)
    images, _ = next(iter(make_dataset(source, config, training=True)))
    white_share = (images.numpy().mean(axis=-1) > 127).mean(axis=(1, 2))
    assert white_share.min() > 0.3 and white_share.max() < 0.7


def test_eval_center_crop_uses_reference_padding():
    image = np.zeros((256, 256, 3), np.uint8)
    image[:16] = 255  # a border the 224/(224+32) crop removes
    out = preprocess_eval(tf.constant(image), 224).numpy()
    assert out.shape == (224, 224, 3) and out.max() < 1.0


def test_mixup_cutmix_randaug_give_one_hot_soft_labels():
    source = get_source("digits")
    config = PipelineConfig(image_size=32, global_batch_size=16, seed=0,
                            augment=AugmentConfig(randaug_layers=2, randaug_magnitude=9, mixup_alpha=0.8, cutmix_alpha=1.0))
    images, labels = next(iter(make_dataset(source, config, training=True)))
    assert labels.shape == (16, 10) and labels.dtype == tf.float32
    np.testing.assert_allclose(labels.numpy().sum(axis=1), 1.0, atol=1e-5)
    assert (labels.numpy().max(axis=1) < 1.0).any()  # some labels were mixed
    assert float(tf.reduce_min(images)) >= 0 and float(tf.reduce_max(images)) <= 255
    # eval is never augmented and stays sparse
    _, eval_labels = next(iter(make_dataset(source, config, training=False)))
    assert eval_labels.shape == (16,)


def test_negative_augmentation_knob_is_rejected():
    with pytest.raises(ValueError, match="mixup_alpha"):
        AugmentConfig(mixup_alpha=-1)


def test_tfds_path_with_mock_data_and_two_replicas(monkeypatch, two_cpu_strategy, tmp_path):
    monkeypatch.setattr("efficientnet_tf.data.sources.tfds._can_download", lambda *a, **k: True)
    with tfds.testing.mock_data(num_examples=64, data_dir=str(tmp_path)):
        source = get_source("cifar10", data_dir=str(tmp_path))
        # Class count and names come from the TFDS metadata, not from a table of ours.
        label = tfds.builder("cifar10", data_dir=str(tmp_path)).info.features["label"]
        assert source.num_classes == label.num_classes == 10
        assert source.class_names == tuple(label.names)
        assert get_source("cats_vs_dogs", data_dir=str(tmp_path)).class_names == ("cat", "dog")
        assert source.native_size == 32
        config = PipelineConfig(image_size=64, global_batch_size=8, seed=0)
        images, labels = next(iter(make_dataset(source, config, training=True)))
        assert images.shape == (8, 64, 64, 3) and labels.dtype == tf.int32
        assert 0 <= int(tf.reduce_min(labels)) and int(tf.reduce_max(labels)) < 10
        dist = distributed_dataset(two_cpu_strategy, source, config, training=True)
        images, labels = next(iter(dist))
        per_replica = two_cpu_strategy.experimental_local_results(images)
        assert [tuple(x.shape) for x in per_replica] == [(4, 64, 64, 3), (4, 64, 64, 3)]
        with pytest.raises(ValueError, match="not divisible by the 2 replicas"):
            distributed_dataset(two_cpu_strategy, source, PipelineConfig(image_size=64, global_batch_size=7), training=True)


def test_unprepared_tfds_dataset_fails_fast_offline(monkeypatch, tmp_path):
    import time

    monkeypatch.setattr("efficientnet_tf.data.sources.tfds._can_download", lambda *a, **k: False)
    start = time.time()
    with pytest.raises(FileNotFoundError) as err:
        get_source("cifar10", data_dir=str(tmp_path))
    assert time.time() - start < 30
    message = str(err.value)
    assert "tfds build cifar10" in message and "data_dir" in message and "'digits'" in message
    assert "--dataset" not in message  # the library names parameters, not command-line flags


def test_can_download_says_false_quickly_when_closed_and_true_when_listening():
    import socket
    import time

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(1)
        assert data_lib._can_download("127.0.0.1", timeout=2.0, port=listening.getsockname()[1]) is True
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        start = time.time()
        assert data_lib._can_download("127.0.0.1", timeout=2.0, port=closed.getsockname()[1]) is False
        assert time.time() - start < 2


def _write_folder(root, classes=("cat", "dog"), per_class=5, size=40):
    rng = np.random.default_rng(0)
    for cls in classes:
        os.makedirs(root / cls, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")


def test_folder_source_splits_and_decodes(tmp_path):
    _write_folder(tmp_path)
    source = get_source(f"folder:{tmp_path}", validation_fraction=0.2)
    assert source.class_names == ("cat", "dog") and source.num_train == 8 and source.num_eval == 2
    images, labels = next(iter(make_dataset(source, PipelineConfig(image_size=32, global_batch_size=8, seed=0), training=True)))
    assert images.shape == (8, 32, 32, 3) and set(labels.numpy()) == {0, 1}


def test_folder_source_uses_train_and_val_subfolders(tmp_path):
    _write_folder(tmp_path / "train", per_class=3)
    _write_folder(tmp_path / "val", per_class=2)
    source = get_source(f"folder:{tmp_path}")
    assert source.num_train == 6 and source.num_eval == 4


def test_corrupt_and_non_image_files_are_reported_by_path(tmp_path, caplog):
    _write_folder(tmp_path)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    good = (tmp_path / "dog" / "0.png").read_bytes()
    (tmp_path / "dog" / "broken.png").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(ValueError) as err:
        get_source(f"folder:{tmp_path}")
    assert "notes.txt" in str(err.value) and "broken.png" in str(err.value)
    source = get_source(f"folder:{tmp_path}", on_bad_image="skip")
    assert source.num_train + source.num_eval == 10
    assert "skipping 2 unreadable file(s)" in caplog.text


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        get_source(f"folder:{tmp_path}/nowhere")


def test_synthetic_source():
    source = get_source("synthetic", synthetic_image_size=64, synthetic_num_classes=5, synthetic_examples=32)
    images, labels = next(iter(make_dataset(source, PipelineConfig(image_size=64, global_batch_size=16, seed=0), training=True)))
    assert images.shape == (16, 64, 64, 3) and int(tf.reduce_max(labels)) < 5


def test_padded_eval_counts_every_example_once_in_full_batches():
    source = get_source("digits")
    plain = make_dataset(source, PipelineConfig(image_size=32, global_batch_size=64, seed=0), training=False)
    padded = make_dataset(source, PipelineConfig(image_size=32, global_batch_size=64, seed=0, pad_eval=True), training=False)
    labels = np.concatenate([y.numpy() for _, y in plain])
    batches = list(padded)
    assert all(x.shape[0] == 64 for x, _, _ in batches)  # static shapes, 360 -> 6 x 64
    weights = np.concatenate([w.numpy() for _, _, w in batches])
    padded_labels = np.concatenate([y.numpy() for _, y, _ in batches])
    assert weights.sum() == len(labels) == 360 and len(weights) == 384
    np.testing.assert_array_equal(padded_labels[weights == 1], labels)


def test_selective_search_images_are_eval_crops_of_training_images_in_a_seeded_shuffled_order(tmp_path):
    """int8_selective's search measures agreement on training images as the deployed model sees
    them. A folder's training split is in class order: unshuffled, its first images are one
    class's; shuffled, they are a seeded mix, each the eval crop of a training image."""
    from efficientnet_tf.deploy.calibration import _take_images

    _write_folder(tmp_path, classes=("a", "b", "c"), per_class=8)
    source = get_source(f"folder:{tmp_path}", validation_fraction=0.25)
    config = PipelineConfig(image_size=32, global_batch_size=64, seed=0, drop_remainder=False)
    every = [(image.numpy(), int(label)) for images, labels in make_dataset(source, config, training=False, split="train")
             for image, label in zip(images, labels)]
    assert len(every) == 18 and {label for _, label in every[:6]} == {0}  # class order
    images, labels = _take_images(source, 32, 0, 6, training=False, split="train", shuffle=True)
    assert len(set(labels.tolist())) >= 2
    found = [[i for i, (image, _) in enumerate(every) if np.array_equal(image, shuffled)] for shuffled in images]
    assert all(len(matches) == 1 for matches in found) and len({m[0] for m in found}) == 6
    assert [every[m[0]][1] for m in found] == labels.tolist()
    again, _ = _take_images(source, 32, 0, 6, training=False, split="train", shuffle=True)
    np.testing.assert_array_equal(again, images)
