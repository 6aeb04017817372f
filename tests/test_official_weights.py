"""Official checkpoint families: catalog, conversion of reference TF checkpoints, cache, bad input.

The reference data in tests/data/official was written by tools/reference_checkpoints.py from
Google's own model code (tensorflow/tpu for V1 and Lite, google/automl for V2): the variable names
and shapes of every variant's checkpoint, and for a few variants the logits the reference code
computed after restoring a checkpoint filled by `official_fill.seeded_value`. Here the same
checkpoint is synthesized, packed as the published archives are, converted by efficientnet_tf and
compared with those logits.
"""

from __future__ import annotations

import gzip
import json
import os
import tarfile

import numpy as np
import pytest

import efficientnet_tf as et
from efficientnet_tf.models import official
from efficientnet_tf.models.configs import get_config
from official_fill import EMA_SUFFIX, fixed_images, seeded_value, write_archive, write_checkpoint

DATA = os.path.join(os.path.dirname(__file__), "data", "official")


def _manifests(reference):
    with gzip.open(os.path.join(DATA, f"{reference}_manifests.json.gz"), "rt") as f:
        return json.load(f)


TPU = _manifests("tpu")
AUTOML = _manifests("automl")
LOGITS = {**np.load(os.path.join(DATA, "tpu_logits.npz")), **np.load(os.path.join(DATA, "automl_logits.npz"))}
# reference logits key -> the family whose published checkpoints that reference run stands for
REFERENCE_RUNS = {
    "efficientnet-b0:imagenet_std": "autoaugment",
    "efficientnet-b0:advprop": "advprop",
    "efficientnet-b2:imagenet_std": "noisy-student",
    "efficientnet-lite0:lite": "lite",
    "efficientnetv2-b0@21843:symmetric": "imagenet21k",
    "efficientnetv2-s@1000:symmetric": "imagenet21k-ft1k",
}


def _manifest(variant, family):
    if family.reference == "google/automl":
        return AUTOML[f"{variant}@{family.num_classes}"]
    return TPU[variant]


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    return tmp_path / "keras"


def _place_archive(keras_home, variant, family, manifest=None):
    """Put a synthesized archive where the download would: no network needed, the real loading code runs."""
    url = family.url(variant)
    path = keras_home / "models" / "efficientnet_tf" / url.rsplit("/", 1)[-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = url.rsplit("/", 1)[-1].split(".")[0]
    write_archive(str(path), folder, manifest if manifest is not None else _manifest(variant, family))
    return path


@pytest.mark.parametrize("key", sorted(REFERENCE_RUNS))
def test_converted_checkpoint_gives_the_reference_logits(key, keras_home):
    variant = key.split(":")[0].split("@")[0]
    family = official.FAMILIES[REFERENCE_RUNS[key]]
    archive = _place_archive(keras_home, variant, family)
    images = LOGITS["images"]
    assert np.array_equal(images, fixed_images())
    model = et.build_model(variant, weights=family.name, input_shape=(None, None, 3), classifier_activation=None)
    assert model.output_shape[-1] == family.num_classes  # the family's head by default (21,843 for 21k)
    ours = np.asarray(model(images, training=False))
    reference = LOGITS[key]
    scale = np.abs(reference).max()
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-4 * scale)
    # The images differ enough that a wrong normalization or padding would show (not only the biases).
    assert np.abs(reference[0] - reference[1]).max() > 10 * 1e-4 * scale

    # Converted once: the cache serves the next build without the archive.
    archive.unlink()
    again = et.build_model(variant, weights=family.name, input_shape=(None, None, 3), classifier_activation=None)
    np.testing.assert_array_equal(np.asarray(again(images, training=False)), ours)


def test_advprop_and_autoaugment_checkpoints_normalize_differently(keras_home):
    """Same checkpoint values, two families: AdvProp feeds x*2/255-1, AutoAugment (x/255-mean)/std."""
    outputs = {}
    for name in ("autoaugment", "advprop"):
        family = official.FAMILIES[name]
        _place_archive(keras_home, "efficientnet-b0", family)
        model = et.build_model("efficientnet-b0", weights=name, input_shape=(None, None, 3), classifier_activation=None)
        outputs[name] = np.asarray(model(LOGITS["images"]))
        std = model.get_layer("normalization")
        assert np.allclose(std.mean.numpy(), (0.5,) * 3 if name == "advprop" else (0.485, 0.456, 0.406))
    assert np.abs(outputs["advprop"] - outputs["autoaugment"]).max() > 1e-3
    assert np.abs(LOGITS["efficientnet-b0:advprop"] - LOGITS["efficientnet-b0:imagenet_std"]).max() > 1e-3


# One class count per V2 variant: its 1k and 21k checkpoints differ only in the head (checked below).
CHECKPOINT_VARIANTS = sorted({(v, f.reference, f.num_classes) for f in official.FAMILIES.values() for v in f.variants
                              if f.name != "imagenet21k-ft1k"})
HEAVY = {"efficientnet-b7", "efficientnet-b8", "efficientnet-l2", "efficientnetv2-l", "efficientnetv2-xl"}


@pytest.mark.parametrize("variant,reference,classes", [
    pytest.param(*case, marks=[pytest.mark.slow] if case[0] in HEAVY else []) for case in CHECKPOINT_VARIANTS])
def test_every_published_variant_maps_onto_the_reference_variable_names(variant, reference, classes):
    """Names and shapes: each checkpoint variable the reference code creates has exactly one weight here."""
    manifest = AUTOML[f"{variant}@{classes}"] if reference == "google/automl" else TPU[variant]
    family = next(f for f in official.FAMILIES.values() if variant in f.variants and f.num_classes == classes)
    model = official_model(variant, family)
    names = official.reference_names(model, variant)
    expected = {n: tuple(s) for n, s in manifest.items() if not n.endswith(EMA_SUFFIX) and n != "global_step"}
    ours = {name: tuple(variable.shape) for variable, name in names}
    assert sorted(ours) == sorted(expected)
    assert ours == expected
    if reference == "tensorflow/tpu":  # main.py keeps an EMA shadow of every weight and BN statistic
        assert {n for n in manifest if n.endswith(EMA_SUFFIX)} == {n + EMA_SUFFIX for n in expected}


def test_automl_1k_and_21k_checkpoints_differ_only_in_the_head():
    for variant in official.FAMILIES["imagenet21k"].variants:
        one_k, twenty_one_k = AUTOML[f"{variant}@1000"], AUTOML[f"{variant}@21843"]
        assert one_k.keys() == twenty_one_k.keys()
        differ = {n: (one_k[n], twenty_one_k[n]) for n in one_k if one_k[n] != twenty_one_k[n]}
        head = f"{variant}/head/dense"
        assert differ == {f"{head}/kernel": ([one_k[f"{head}/kernel"][0], 1000], [one_k[f"{head}/kernel"][0], 21843]),
                          f"{head}/bias": ([1000], [21843])}


def official_model(variant, family):
    from efficientnet_tf.models.builder import build_efficientnet

    config = official.family_config(get_config(variant), family)
    return build_efficientnet(config, num_classes=family.num_classes, input_shape=(None, None, 3))


def test_list_weights_names_what_exists():
    assert et.list_weights("efficientnet-b0") == ["imagenet", "baseline", "autoaugment", "advprop", "noisy-student"]
    assert et.list_weights("efficientnet-b7") == ["imagenet", "autoaugment", "randaugment", "advprop",
                                                  "noisy-student"]
    assert et.list_weights("efficientnet-b8") == ["advprop"]
    assert et.list_weights("efficientnet-l2") == ["noisy-student", "noisy-student-475"]
    assert et.list_weights("efficientnet-lite3") == ["lite"]
    assert et.list_weights("efficientnetv2-xl") == ["imagenet21k", "imagenet21k-ft1k"]
    assert et.list_weights("efficientnetv2-s") == ["imagenet", "imagenet21k", "imagenet21k-ft1k"]
    # Every variant of the catalog is a registered model, every URL one of the reference hosts.
    for family in official.FAMILIES.values():
        for variant in family.variants:
            get_config(variant)
            assert family.url(variant).startswith("https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/")


def test_unknown_pair_is_one_line_listing_what_exists():
    with pytest.raises(ValueError, match=r"no 'advprop' weights are published for efficientnet-lite0; weights for "
                                         r"it: lite; 'advprop' exists for efficientnet-b0, .*efficientnet-b8$"):
        et.build_model("efficientnet-lite0", weights="advprop")
    # A name that is not one: a bad argument value (ValueError, as keras.applications raises), said
    # before the model is built; a path where no file is stays FileNotFoundError.
    with pytest.raises(ValueError, match=r"'noisy_student' is neither a file nor pretrained weights of "
                                         r"efficientnet-b7 \('imagenet', 'autoaugment', 'randaugment', "
                                         r"'advprop', 'noisy-student'\)"):
        et.build_model("efficientnet-b7", weights="noisy_student")
    for path in ("no/such/b0.h5", "b0.weights.h5", "model.keras"):
        with pytest.raises(FileNotFoundError, match=f"weights '{path}' is no such file, and not pretrained weights"):
            et.build_model("efficientnet-b0", weights=path)


def test_offline_names_the_file_its_url_and_where_to_put_it(keras_home, monkeypatch):
    import keras

    def offline(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    expected = str(keras_home / "models" / "efficientnet_tf" / "efficientnet-b3.tar.gz")
    with pytest.raises(OSError) as error:
        et.build_model("efficientnet-b3", weights="advprop")
    message = str(error.value)
    assert "\n" not in message
    assert "https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/advprop/efficientnet-b3.tar.gz" in message
    assert message.endswith(f"put it at {expected}")


def _convert(manifest, tmp_path, variant="efficientnet-b0", family="autoaugment"):
    prefix = str(tmp_path / "model.ckpt")
    write_checkpoint(prefix, manifest)
    family = official.FAMILIES[family]
    official.convert_checkpoint(official_model(variant, family), prefix, family, scope=variant)


def test_a_checkpoint_variable_without_a_place_is_an_error_naming_it(tmp_path):
    manifest = dict(TPU["efficientnet-b0"], **{"efficientnet-b0/blocks_3/extra/kernel": [3, 3]})
    with pytest.raises(ValueError, match=r"no place for, e\.g\. 'efficientnet-b0/blocks_3/extra/kernel'"):
        _convert(manifest, tmp_path)


def test_a_missing_variable_is_an_error_naming_it_and_leaves_the_model_untouched(tmp_path):
    gone = "efficientnet-b0/blocks_15/se/conv2d_1/bias"
    manifest = {n: s for n, s in TPU["efficientnet-b0"].items() if not n.startswith(gone)}
    with pytest.raises(ValueError, match=f"no variable '{gone}' for weight 'block7a_se_expand/bias'"):
        _convert(manifest, tmp_path)
    prefix = str(tmp_path / "model.ckpt")
    model = official_model("efficientnet-b0", official.FAMILIES["autoaugment"])
    before = [w.numpy().copy() for w in model.weights]
    with pytest.raises(ValueError):
        official.convert_checkpoint(model, prefix, official.FAMILIES["autoaugment"], scope="efficientnet-b0")
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, model.weights))


def test_another_variants_checkpoint_is_named_as_such(tmp_path):
    with pytest.raises(ValueError, match=r"has no variables under 'efficientnet-b0' \(it has efficientnet-lite0\)"):
        _convert(TPU["efficientnet-lite0"], tmp_path)
    # B2 has B1's depth but not its widths.
    manifest = {n.replace("efficientnet-b2", "efficientnet-b1"): s for n, s in TPU["efficientnet-b2"].items()}
    with pytest.raises(ValueError, match=r"checkpoint variable 'efficientnet-b1/.*/ExponentialMovingAverage' has "
                                         r"shape \(.*\), but weight '.*' expects \(.*\): is it for another variant"):
        _convert(manifest, tmp_path, variant="efficientnet-b1", family="advprop")


def test_the_raw_weights_are_read_where_a_checkpoint_has_no_ema(tmp_path):
    """automl's exported checkpoints hold the (EMA) values under the plain names."""
    raw = {n: s for n, s in TPU["efficientnet-lite0"].items() if not n.endswith(EMA_SUFFIX)}
    prefix = str(tmp_path / "model.ckpt")
    write_checkpoint(prefix, raw)
    family = official.FAMILIES["lite"]
    model = official_model("efficientnet-lite0", family)
    official.convert_checkpoint(model, prefix, family, scope="efficientnet-lite0")
    for variable, name in official.reference_names(model, "efficientnet-lite0"):
        np.testing.assert_array_equal(variable.numpy(), seeded_value(name, raw[name]))


def test_a_corrupt_archive_names_the_file(keras_home):
    family = official.FAMILIES["lite"]
    path = keras_home / "models" / "efficientnet_tf" / "efficientnet-lite1.tar.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"<html>proxy login</html>")
    notes = path.parent / "my_notes.txt"  # a user's file in the cache: the failed conversions leave it alone
    notes.write_bytes(b"mine\n")
    with pytest.raises(ValueError, match=r"efficientnet-lite1\.tar\.gz is not a readable checkpoint archive .*delete "
                                         r"it and try again"):
        et.build_model("efficientnet-lite1", weights="lite")
    try:
        et.build_model("efficientnet-lite1", weights="lite")
    except ValueError as err:
        assert "\n" not in str(err)
    assert not (keras_home / "models" / "efficientnet_tf" / "efficientnet-lite1-lite.weights.h5").exists()
    with tarfile.open(path, "w:gz"):
        pass  # an empty archive: no checkpoint inside
    with pytest.raises(ValueError, match=r"expected one TF checkpoint in .*, found 0"):
        et.build_model("efficientnet-lite1", weights=family.name)
    assert notes.read_bytes() == b"mine\n"
    assert sorted(os.listdir(path.parent)) == ["efficientnet-lite1.tar.gz", "my_notes.txt"]  # nothing half-done left


def test_imagenet21k_class_names_match_the_head():
    from efficientnet_tf.data.sources import imagenet21k_class_names

    names = imagenet21k_class_names()
    assert len(names) == official.IMAGENET21K_CLASSES
    assert names[0] == "organism, being" and names[21841] == "knothole"


def test_a_run_fine_tuned_from_a_family_exports_with_that_familys_normalization(keras_home, tmp_path):
    """V2-B0 from ImageNet-21k scales inputs to [-1, 1], unlike V2-B0 built plainly: the export's
    rebuilt model must do the same, or it would not compute what the run trained."""
    from efficientnet_tf.deploy.export import load_trained_model
    from efficientnet_tf.training import TrainConfig, Trainer

    _place_archive(keras_home, "efficientnetv2-b0", official.FAMILIES["imagenet21k"])
    config = TrainConfig.from_settings(model="efficientnetv2-b0", weights="imagenet21k", dataset="digits",
                                       image_size=32, epochs=1, steps_per_epoch=2, batch_size=16, seed=0,
                                       model_dir=str(tmp_path / "run"))
    trainer = Trainer(config, verbose=False)
    trainer.fit(validate=False)
    model, _ = load_trained_model(str(tmp_path / "run"), use_ema=False)
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(model(images, training=False), trainer.model(images, training=False), atol=1e-5)
    plain = et.build_model("efficientnetv2-b0", num_classes=10, input_shape=(32, 32, 3))
    plain.set_weights(model.get_weights())
    assert np.abs(np.asarray(plain(images)) - np.asarray(tf_softmax(model(images)))).max() > 1e-3


def tf_softmax(logits):
    import keras

    return keras.ops.softmax(logits)
