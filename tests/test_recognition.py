"""Recognition embeddings: margin losses, heads, the identity split, the trainer's embedding task,
its evaluation and its export."""

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from cli import run_main
import tensorflow as tf

from efficientnet_tf import build_model
from efficientnet_tf.data.identities import identity_source
from efficientnet_tf.data.sources import get_source
from efficientnet_tf.settings import SettingError
from efficientnet_tf.training import TrainConfig, Trainer
from efficientnet_tf.training.rundir import load_run
from efficientnet_tf.training.margin import ClassCentres, margin_logits, sparse_smoothed_cross_entropy
from efficientnet_tf.training.verification import evaluate_embeddings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _numpy_margin_logits(thetas, labels, loss, m, s):
    """The papers' formulas, written from angles: ArcFace s*cos(theta_y + m) (insightface's
    s*(cos theta_y - m sin m) once theta_y + m passes pi), CosFace s*(cos theta_y - m)."""
    logits = s * np.cos(thetas)
    for i, y in enumerate(labels):
        theta = thetas[i, y]
        if loss == "arcface":
            logits[i, y] = s * (math.cos(theta + m) if theta + m < math.pi else math.cos(theta) - m * math.sin(m))
        else:
            logits[i, y] = s * (math.cos(theta) - m)
    return logits


@pytest.mark.parametrize("loss,margin", [("arcface", 0.5), ("arcface", 0.2), ("cosface", 0.35)])
def test_margin_logits_match_the_formulas_at_known_angles(loss, margin):
    # Angles from 0 to pi, including targets whose theta + m passes pi (ArcFace's fallback).
    thetas = np.array([[0.0, 1.0, 2.0, 3.0], [0.3, math.pi / 2, 2.9, math.pi - 0.1],
                       [1.2, 0.7, 3.1, 0.01]])
    labels = np.array([0, 3, 2])
    expected = _numpy_margin_logits(thetas, labels, loss, margin, 64.0)
    got = margin_logits(tf.constant(np.cos(thetas), tf.float32), tf.constant(labels), loss, margin, 64.0).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=5e-4)  # the sine floor at theta = 0


def test_class_centres_compare_unit_vectors_and_keep_the_margin_off_the_prediction():
    centres = ClassCentres(5, "cosface", margin=0.35, scale=30.0)
    centres.build((None, 8))
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(6, 8)).astype(np.float32) * 7  # any norm: cosine only
    labels = np.array([0, 1, 2, 3, 4, 0])
    training, plain = (t.numpy() for t in centres(tf.constant(embeddings), tf.constant(labels)))
    w = centres.centres.numpy()
    cosines = (embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0))
    np.testing.assert_allclose(plain, 30 * cosines, rtol=1e-5, atol=1e-5)
    expected = 30 * cosines
    expected[np.arange(6), labels] -= 30 * 0.35
    np.testing.assert_allclose(training, expected, rtol=1e-5, atol=1e-5)


def test_softmax_centres_are_a_dense_classifier_on_the_raw_embedding():
    centres = ClassCentres(4, "softmax")
    centres.build((None, 6))
    centres.bias.assign([0.5, -1.0, 0.0, 2.0])
    embeddings = np.random.default_rng(2).normal(size=(5, 6)).astype(np.float32) * 3
    training, plain = (t.numpy() for t in centres(tf.constant(embeddings), tf.constant([0, 1, 2, 3, 0])))
    expected = embeddings @ centres.centres.numpy() + np.array([0.5, -1.0, 0.0, 2.0])
    np.testing.assert_allclose(training, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(plain, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_sparse_smoothed_cross_entropy_equals_keras_one_hot(smoothing):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(7, 11)).astype(np.float32) * 5
    labels = rng.integers(0, 11, 7)
    expected = keras.losses.categorical_crossentropy(np.eye(11)[labels], logits, from_logits=True,
                                                     label_smoothing=smoothing)
    got = sparse_smoothed_cross_entropy(tf.constant(labels), tf.constant(logits), smoothing)
    np.testing.assert_allclose(got.numpy(), np.asarray(expected), rtol=1e-5)


def test_embedding_heads_have_the_documented_parameters():
    backbone = build_model("efficientnet-b0", include_top=False, input_shape=(112, 112, 3))
    channels, side, dim = 1280, 4, 512  # B0's last feature map at 112 px: 4 x 4 x 1280
    gap = build_model("efficientnet-b0", include_top=False, input_shape=(112, 112, 3), embedding_dim=dim)
    flat = build_model("efficientnet-b0", include_top=False, input_shape=(112, 112, 3), embedding_dim=dim,
                       embedding_head="flatten")
    assert gap.count_params() - backbone.count_params() == channels * dim + dim
    # BN on the map (4 per channel), Dense on the flattened map, BN without scale (3 per unit).
    assert flat.count_params() - backbone.count_params() == 4 * channels + side * side * channels * dim + dim + 3 * dim
    images = np.random.default_rng(0).uniform(0, 255, (2, 112, 112, 3)).astype(np.float32)
    for model in (gap, flat):
        assert model.output_shape == (None, dim)
        np.testing.assert_allclose(np.linalg.norm(model.predict_on_batch(images), axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match=r"embedding_head='flatten' .* fixed input_shape .*\(None, None, 3\)"):
        build_model("efficientnet-b0", include_top=False, input_shape=(None, None, 3), embedding_dim=dim,
                    embedding_head="flatten")
    with pytest.raises(ValueError, match="embedding_head must be one of gap, flatten, got 'pool'"):
        build_model("efficientnet-b0", include_top=False, embedding_dim=dim, embedding_head="pool")


def _digits_labels_of(source, split):
    return np.concatenate([labels.numpy() for _, labels in source.examples(split).batch(512)])


def test_digits_identity_split_is_disjoint_and_holds_out_7_8_9():
    from sklearn.datasets import load_digits

    digits = load_digits()
    originals = {np.round(image * (255.0 / 16.0)).astype(np.uint8).tobytes(): i for i, image in enumerate(digits.images)}
    source = identity_source("digits")
    assert source.class_names == tuple("0123456") and source.eval_class_names == ("7", "8", "9")
    seen = {}
    for split, offset in (("train", 0), ("eval", 7)):
        for images, labels in source.examples(split).batch(512):
            for image, label in zip(images.numpy(), labels.numpy()):
                index = originals[image[..., 0].tobytes()]  # which of the 1,797 digits this is
                assert digits.target[index] == label + offset  # each side's own identity index
                seen[index] = split
    # Every digit exactly once, on the side its class belongs to; identities are interleaved.
    assert len(seen) == 1797 and source.num_train + source.num_eval == 1797
    assert all((split == "eval") == (digits.target[i] >= 7) for i, split in seen.items())
    assert len(set(_digits_labels_of(source, "eval")[:12])) == 3


def test_glyph_identities_are_every_font_that_has_the_character_split_by_character():
    """glyphs: one image per font that maps the character (counted by matplotlib's own FreeType
    wrapper, not by the renderer), case visible on a common baseline, a seeded 20% of the
    characters held out, every image on exactly one side."""
    from matplotlib.ft2font import FT2Font

    from efficientnet_tf.data.glyphs import CHARACTERS, FONT_FILES, font_directory, glyph_images

    images, owners, identities = glyph_images()
    assert identities == tuple(CHARACTERS) and len(set(CHARACTERS)) == len(CHARACTERS) == 129
    fonts = [FT2Font(os.path.join(font_directory(), name)) for name in FONT_FILES]
    for identity, character in enumerate(CHARACTERS):
        having = sum(font.get_char_index(ord(character)) != 0 for font in fonts)
        # Computer Modern's map is ASCII-only, so it never claims a Greek or Cyrillic letter.
        assert (owners == identity).sum() == having == (21 if character.isascii() else 16), character
    ink = images[..., 0] > 127
    assert ink.any(axis=(1, 2)).all()  # no empty image
    assert not (ink[:, 0].any() or ink[:, -1].any() or ink[:, :, 0].any() or ink[:, :, -1].any())  # none clipped
    rows = ink.any(axis=2)
    top, bottom = rows.argmax(axis=1), 31 - rows[:, ::-1].argmax(axis=1)
    for upper, lower in ("Oo", "Ss", "Жж"):  # same shape, other case: taller, same baseline
        u, l = owners == CHARACTERS.index(upper), owners == CHARACTERS.index(lower)
        assert (top[u] < top[l]).all() and (np.abs(bottom[u] - bottom[l]) <= 1).all()
    assert (bottom[owners == CHARACTERS.index("p")] > bottom[owners == CHARACTERS.index("o")] + 2).all()  # descender

    source, same, other = identity_source("glyphs"), identity_source("glyphs", seed=0), identity_source("glyphs", seed=3)
    assert source.eval_class_names == same.eval_class_names != other.eval_class_names
    assert len(source.eval_class_names) == 26 and len(source.class_names) == 103
    assert set(source.class_names) | set(source.eval_class_names) == set(CHARACTERS)
    assert source.native_size == 32 and not source.flip_ok
    from collections import Counter

    rendered = Counter((image.tobytes(), identities[owner]) for image, owner in zip(images, owners))
    served = Counter()
    for split, names in (("train", source.class_names), ("eval", source.eval_class_names)):
        for batch, labels in source.examples(split).batch(1024):
            served.update((image.tobytes(), names[label]) for image, label in zip(batch.numpy(), labels.numpy()))
    # Every rendered image exactly once, under its own character (two fonts may draw one alike).
    assert served == rendered and source.num_train + source.num_eval == len(images)


def _identity_folder(root, counts):
    from PIL import Image

    rng = np.random.default_rng(0)
    for identity, count in counts.items():
        os.makedirs(root / identity)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(root / identity / f"{i}.png")
    return f"folder:{root}"


def test_folder_identity_split_is_seeded_and_disjoint(tmp_path):
    name = _identity_folder(tmp_path, {f"person{i:02d}": 2 + i % 3 for i in range(20)})
    a, b, other = identity_source(name, seed=0), identity_source(name, seed=0), identity_source(name, seed=5)
    assert a.eval_class_names == b.eval_class_names != other.eval_class_names
    assert len(a.eval_class_names) == 4 and len(a.class_names) == 16  # the default share 0.2 of 20
    assert not set(a.class_names) & set(a.eval_class_names)
    assert set(a.class_names) | set(a.eval_class_names) == {f"person{i:02d}" for i in range(20)}
    images = {identity: 2 + int(identity[-2:]) % 3 for identity in a.class_names + a.eval_class_names}
    assert a.num_train == sum(images[i] for i in a.class_names) and a.num_eval == sum(images[i] for i in a.eval_class_names)
    labels = _digits_labels_of(a, "eval")
    assert sorted(np.bincount(labels)) == sorted(images[i] for i in a.eval_class_names)


def test_identity_data_bad_input_is_one_line(tmp_path):
    one = _identity_folder(tmp_path / "one", {"alice": 3})
    with pytest.raises(ValueError, match=r"has 1 identity folder\(s\) with images \(alice\); .* at least 4"):
        identity_source(one)
    singles = _identity_folder(tmp_path / "singles", {f"p{i}": 1 for i in range(6)})
    with pytest.raises(ValueError, match="have a single image each: there is no positive pair"):
        identity_source(singles)
    with pytest.raises(ValueError, match="held_out_identities must be a share in \\(0, 1\\), got 0"):
        identity_source("digits", held_out_fraction=0)
    with pytest.raises(ValueError, match="reads identities from digits or glyphs or folder:PATH, got 'cifar10'"):
        identity_source("cifar10")
    # The other way round: glyphs has no classification split.
    with pytest.raises(SettingError, match="dataset 'glyphs' holds identities, not classes: it is for the embedding "
                       r"task \(task=embedding\)") as err:
        get_source("glyphs")
    assert err.value.setting == "dataset"


@pytest.mark.parametrize("settings,name,message", [
    (dict(margin=1.6), "margin", r"margin must be in \[0, pi/2\)"),
    (dict(margin=-0.1), "margin", r"margin must be in \[0, pi/2\)"),
    (dict(loss="triplet"), "loss", "unknown loss 'triplet'; choose from arcface, cosface, softmax"),
    (dict(embedding_head="flatten", progressive=2, epochs=4), "embedding_head", "one fixed size"),
    (dict(embedding_head="flatten", train_image_size=48, image_size=64), "embedding_head", "one fixed size"),
    (dict(mixup_alpha=0.2), "mixup_alpha", "trains on identity ids"),
    (dict(progressive=2, epochs=4, progressive_max_mixup=0.3), "progressive_max_mixup", "trains on identity ids"),
    (dict(embedding_head="flatten", model="efficientnetv2-b0", dataset="folder:/faces"), "embedding_head",
     "training 192 px, evaluation 224 px"),
    (dict(loss="softmax", margin=0.3), "margin", "the softmax loss has none"),
    (dict(dataset="cifar10"), "dataset", "reads identities from digits or glyphs or folder:PATH"),
])
def test_embedding_settings_bad_values(settings, name, message):
    with pytest.raises(SettingError, match=message) as err:
        TrainConfig.from_settings(task="embedding", **settings)
    assert err.value.setting == name


QUICK = dict(task="embedding", model="efficientnet-b0", dataset="digits", batch_size=16, image_size=32, epochs=1,
             dropout_rate=0.0, drop_connect_rate=0.0, label_smoothing=0.0, seed=0, ema_decay=0.0,
             embedding_dim=64, margin_scale=16.0)


def test_softmax_baseline_classifies_the_embedding_before_its_unit_normalization(tmp_path):
    """On unit vectors a classifier's logits are bounded by its weights' norms (it barely learned:
    glyphs' training accuracy 0.047 after 15 epochs); the baseline classifies the raw embedding,
    here against a model built without the normalization and numpy's matmul."""
    trainer = Trainer(TrainConfig.from_settings(**{**QUICK, "loss": "softmax"}, model_dir=str(tmp_path)), verbose=False)
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    logits, predicted = trainer.task.forward(tf.constant(images), tf.zeros([4], tf.int32), training=False)
    unnormalized = build_model("efficientnet-b0", include_top=False, embedding_dim=64, input_shape=(32, 32, 3),
                               l2_normalize_embedding=False)
    unnormalized.set_weights(trainer.model.get_weights())
    centres, bias = trainer.task.centres.get_weights()
    raw = unnormalized(images).numpy()
    np.testing.assert_allclose(logits.numpy(), raw @ centres + bias, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(predicted.numpy(), logits.numpy())
    unit = trainer.model(images).numpy()  # what the model exports and evaluates: the unit embedding
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_two_replica_embedding_step_equals_one_device_step(tmp_path):
    """The class centres are variables of the strategy: a 2-replica step (each replica half the
    batch, synchronized BN, gradients summed) updates them and the network exactly as one
    device does (ArcFace, flatten head; in its own process, see mirrored_embedding_step.py).
    Then quantization-aware fine-tuning's int8-aware step: each replica measures the activation
    ranges on its share of the calibration images and the gathered minimum and maximum are one
    device's; the rounded step then trains the weights as one device's does."""
    out = tmp_path / "step.npz"
    result = subprocess.run([sys.executable, os.path.join(REPO, "tests", "mirrored_embedding_step.py"), str(out),
                             "arcface", "flatten", str(tmp_path / "run")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    r = np.load(out)
    assert int(r["single_replicas"]) == 1 and int(r["mirrored_replicas"]) == 2
    assert float(r["single_loss"]) == pytest.approx(float(r["mirrored_loss"]), rel=1e-5)
    assert float(r["single_correct"]) == float(r["mirrored_correct"])
    np.testing.assert_allclose(r["single_centres"], r["mirrored_centres"], rtol=1e-4, atol=1e-6)
    assert not np.allclose(r["single_centres"], r["centres_before"])  # the centres trained
    weights = sorted(k for k in r.files if k.startswith("single_weight"))
    assert len(weights) > 300
    for key in weights:
        np.testing.assert_allclose(r[key], r[key.replace("single", "mirrored")], rtol=1e-4, atol=1e-5, err_msg=key)

    np.testing.assert_array_equal(r["single_int8_range_names"], r["mirrored_int8_range_names"])
    assert len(r["single_int8_range_names"]) > 100
    np.testing.assert_allclose(r["mirrored_int8_ranges"], r["single_int8_ranges"], rtol=1e-5, atol=1e-7)
    assert (r["single_int8_ranges"][:, 1] > r["single_int8_ranges"][:, 0]).all()
    # Rounding to 8 bits turns the two batchings' float noise (oneDNN on 16 images vs 2 x 8) into
    # a whole step for a value on a rounding boundary, and that spreads through the rounded graph
    # into the gradients of the layers after it: per weight, the mean difference reaches 2.4-3.3%
    # of the mean update depending on the CPU (measured on two, AVX-512 and not). What this checks is
    # that the step is one device's: a step missing one replica's gradients differs by 50%, one
    # counting them twice by 100%, a 25% error by 25%. So: summed over all weights, where that
    # noise averages out (0.6%), the difference stays under 2% of the update; per weight under 10%
    # (a half step is caught on 201 of 216 weights; the noise stays 3x below it).
    assert float(r["single_int8_loss"]) == pytest.approx(float(r["mirrored_int8_loss"]), rel=1e-3)
    changed, total_difference, total_update = 0, 0.0, 0.0
    for key in weights:
        after = key.replace("single_weight", "single_int8_weight")
        update = np.abs(r[after] - r[key])
        difference = np.abs(r[after] - r[after.replace("single", "mirrored")])
        assert difference.mean() <= 0.10 * update.mean() + 1e-6, (after, difference.mean(), update.mean())
        total_difference, total_update = total_difference + difference.sum(), total_update + update.sum()
        changed += update.mean() > 0
    assert total_difference <= 0.02 * total_update, (total_difference, total_update)
    assert changed > 200  # the int8-aware step trained (from the plain step's weights)


def _main(*args, cwd):
    return run_main(*args, cwd=cwd)


@pytest.mark.slow
def test_cli_trains_evaluates_and_exports_an_embedding_run(tmp_path):
    run = tmp_path / "run"
    # notebook 04's settings, so that its test below continues this run instead of training another.
    train = _main("--task=embedding", "--embedding_head=flatten", "--embedding_dim=128", "--image_size=32",
                  "--epochs=2", "--steps_per_epoch=3", "--batch_size=64", f"--model_dir={run}", cwd=tmp_path)
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-2000:]
    assert "3 of 10 identities held out (digits' default) 7, 8, 9" in train.stdout
    report = json.loads((run / "eval_report.json").read_text())
    assert report["identities"] == 3 and report["images"] == 533
    history = (run / "history.csv").read_text().splitlines()
    assert history[0].endswith("val_roc_auc,val_tar_at_far_1e-3,val_tar_at_far_1e-2") and len(history) == 3
    for png in ("roc.png", "similarity.png", "history.png"):
        assert (run / png).stat().st_size > 10_000

    # The report is what the metrics give on the exported (EMA) model's embeddings of the held-out
    # images, computed here outside the Trainer's distributed evaluation.
    from efficientnet_tf.deploy.calibration import pipeline_images
    from efficientnet_tf.deploy.export import load_trained_model
    from efficientnet_tf.deploy.tflite import TFLiteRunner

    model, _ = load_trained_model(str(run))
    images, labels = pipeline_images(str(run), 10**6, training=False)
    assert len(images) == 533 and set(labels) == {0, 1, 2}
    expected, expected_curves = evaluate_embeddings(model.predict(images, batch_size=64, verbose=0), labels, seed=0)
    assert report["roc_auc"] == pytest.approx(expected["roc_auc"], abs=1e-3)
    for key in ("retrieval_top1", "tar_at_far_1e-3", "tar_at_far_1e-2"):  # near-ties may flip between batchings
        assert report[key] == pytest.approx(expected[key], abs=0.02), key
    # --mode=plot redraws the ROC and similarity plots from the pair scores the run kept.
    from efficientnet_tf.training.report import replot_run
    from efficientnet_tf.training.rundir import RunDir

    stored = RunDir(str(run)).read_curves()
    for key in ("positive_scores", "negative_scores"):
        np.testing.assert_allclose(stored[key], expected_curves[key], atol=1e-3, err_msg=key)
    for png in ("roc.png", "similarity.png"):
        os.remove(run / png)
    redrawn = {os.path.basename(path) for path in replot_run(str(run), with_images=False)}
    assert {"roc.png", "similarity.png", "history.png"} <= redrawn and "confusion_matrix.png" not in redrawn
    for png in ("roc.png", "similarity.png"):
        assert (run / png).stat().st_size > 10_000

    # The class centres are in the checkpoint: a new Trainer restores them (not fresh ones).
    config, _ = load_run(str(run))
    trainer = Trainer(config, verbose=False)
    fresh = trainer.task.centres.get_weights()[0].copy()
    assert trainer.restore_for_eval()
    reader = tf.train.load_checkpoint(str(run / "checkpoints"))
    (key,) = [k for k in reader.get_variable_to_shape_map() if k.startswith("centres/") and "OPTIMIZER" not in k]
    np.testing.assert_array_equal(trainer.task.centres.get_weights()[0], reader.get_tensor(key))
    assert not np.allclose(fresh, reader.get_tensor(key))

    # One CLI export, float16 and int8. int8 of an embedding: its output is still the normalised
    # embedding, and the per-op errors name the graph's output after the layer that computes it
    # (int16x8: notebook 04's test below).
    exported = _main("--mode=export", f"--model_dir={run}", "--tflite=float16,int8", "--check_images=0", cwd=tmp_path)
    assert exported.returncode == 0, exported.stdout[-2000:] + exported.stderr[-2000:]
    export = json.loads((run / "export" / "export_report.json").read_text())
    assert export["task"] == "embedding"
    assert "int8" in export["tflite"] and not export.get("failed"), export.get("failed")
    served = TFLiteRunner(str(run / "export" / "model_int8.tflite"))(images[:64])
    # Unit length up to int8's steps on a 2-epoch embedding (seen: 0.97-1.26), where the raw
    # embedding's norms are 4-5.
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=0.5)
    layers = [entry["layer"] for entry in export["int8_layer_errors"]]
    assert layers[-1] == "embedding_l2" and "probabilities" not in layers, layers[-5:]
    assert "embedding" in layers and any(name.startswith("block7a_") for name in layers), layers
    entry = export["tflite"]["float16"]
    assert entry["images"] == 1797 and entry["eval_images"] == 533 and 0 <= entry["retrieval_top1"] <= 1
    assert -1 <= entry["min_cosine"] <= entry["mean_cosine"] and entry["mean_cosine"] > 0.999
    assert entry["neighbour_agreement"] > 0.9
    assert "cos mean" in exported.stdout and "float16" in exported.stdout and "gained" in exported.stdout
    # the change is the queries gained minus those lost (every held-out digit is a query)
    assert (entry["retrieval_gained"] - entry["retrieval_lost"]) / 533 == pytest.approx(entry["retrieval_top1_change"])
    assert 0 < entry["retrieval_change_p"] <= 1
    # The export's float reference is the evaluated model (a near-tie may flip one neighbour of a
    # 2-epoch embedding between two batchings: 1/533 each; other weights would be far off).
    assert export["tflite"]["keras_float32"]["retrieval_top1"] == pytest.approx(report["retrieval_top1"], abs=0.02)

    # The SavedModel returns the normalised embedding of the trained (EMA) model, from pixels and from bytes.
    loaded = tf.saved_model.load(str(run / "export" / "saved_model"))
    images = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    served = loaded.signatures["serving_default"](images=tf.constant(images))["embedding"].numpy()
    np.testing.assert_allclose(served, model.predict_on_batch(images), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, rtol=1e-5)
    png = tf.io.encode_png(tf.cast(images[0], tf.uint8)).numpy()
    from_bytes = loaded.signatures["serving_bytes"](image_bytes=tf.constant([png]))["embedding"].numpy()
    assert from_bytes.shape == (1, 128)
    np.testing.assert_allclose(np.linalg.norm(from_bytes, axis=1), 1.0, rtol=1e-5)

    # Notebook 04 on this finished run: evaluates it, shows the plots, exports int16x8.
    from notebook_runner import check_recognition_notebook

    check_recognition_notebook(tmp_path, run, epochs=2, steps_per_epoch=3)


def test_nearest_neighbours_leave_the_image_itself_out():
    from efficientnet_tf.training.verification import nearest_neighbours

    rng = np.random.default_rng(3)
    embeddings = rng.normal(size=(300, 8))
    embeddings[7] = embeddings[100] * 4  # same direction (exactly: a power of two), another length
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    brute = []
    for i in range(len(unit)):
        similarity = [(unit[i] @ unit[j], -j) for j in range(len(unit)) if j != i]
        brute.append(-max(similarity)[1])
    got = nearest_neighbours(embeddings)
    np.testing.assert_array_equal(got, brute)
    assert got[7] == 100 and got[100] == 7


def test_embedding_graphs_for_tflite_are_normalised_except_for_int16x8():
    from efficientnet_tf.deploy.saved_model import probability_model

    model = build_model("efficientnet-lite0", include_top=False, input_shape=(32, 32, 3), embedding_dim=16)
    images = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    normalised = probability_model(model).predict_on_batch(images)
    raw = probability_model(model, normalized=False).predict_on_batch(images)
    np.testing.assert_allclose(np.linalg.norm(normalised, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, rtol=1e-2)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), normalised, atol=1e-5)
    with pytest.raises(ValueError, match="embedding_head='flatten' makes an embedding: give embedding_dim"):
        build_model("efficientnet-lite0", include_top=False, input_shape=(32, 32, 3), embedding_head="flatten")


def test_an_exported_embedding_that_collapses_to_zero_is_measured_not_failed(tmp_path):
    """A quantized embedding can come out all zero for some images: the export report counts those
    rows, scores them as cosine 0, no neighbour and retrieval misses (numpy reference below), and
    still measures the format."""
    from efficientnet_tf.deploy.reports import embedding_report

    rng = np.random.default_rng(5)
    centres = rng.normal(size=(4, 6))
    labels = np.repeat(np.arange(4), 8)
    inputs = (centres[labels] + 0.5 * rng.normal(size=(32, 6))).astype(np.float32)
    inputs[[2, 9, 17]] = -np.abs(inputs[[2, 9, 17]]) - 0.1  # all negative: ReLU gives zero rows
    floats = keras.Input((6,))
    reference_model = keras.Model(floats, keras.layers.Dense(6, use_bias=False, kernel_initializer="identity")(floats))
    served = keras.Model(floats, keras.layers.ReLU()(reference_model(floats)))
    path = tmp_path / "collapsing.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(served).convert())
    report = embedding_report(reference_model, {"float32": str(path)}, inputs, labels, batch_size=8, num_eval=32)

    out = np.maximum(inputs, 0)
    live = out.any(axis=1)
    assert live.sum() == 29
    unit_ref = inputs / np.linalg.norm(inputs, axis=1, keepdims=True)
    unit_out = np.zeros_like(out)
    unit_out[live] = out[live] / np.linalg.norm(out[live], axis=1, keepdims=True)
    cosines = (unit_ref * unit_out).sum(axis=1)

    def neighbours(unit, alive):
        similarity = unit @ unit.T
        np.fill_diagonal(similarity, -np.inf)
        similarity[:, ~alive] = -np.inf
        return np.where(alive, similarity.argmax(axis=1), -1)

    ours, theirs = neighbours(unit_out, live), neighbours(unit_ref, np.ones(32, bool))
    entry = report["float32"]
    assert entry["zero_rows"] == 3 and entry["images"] == 32
    assert entry["mean_cosine"] == pytest.approx(cosines.mean(), abs=1e-5) and entry["min_cosine"] == pytest.approx(0, abs=1e-6)
    assert entry["neighbour_agreement"] == pytest.approx(np.mean(ours == theirs), abs=1e-9)
    hits = np.mean([ours[i] >= 0 and labels[ours[i]] == labels[i] for i in range(32)])
    float_hits = np.mean(labels[theirs] == labels)
    assert 0 < hits < 1 and entry["retrieval_top1"] == pytest.approx(hits, abs=1e-9)
    assert entry["retrieval_top1_change"] == pytest.approx(hits - float_hits, abs=1e-9)
    # query by query: right for the float model and wrong for the file (lost), and the reverse
    served_right = np.array([ours[i] >= 0 and labels[ours[i]] == labels[i] for i in range(32)])
    float_right = labels[theirs] == labels
    lost, gained = int((float_right & ~served_right).sum()), int((served_right & ~float_right).sum())
    assert lost > 0 and (entry["retrieval_lost"], entry["retrieval_gained"]) == (lost, gained)
    from scipy.stats import binomtest

    assert entry["retrieval_change_p"] == pytest.approx(binomtest(lost, lost + gained, 0.5).pvalue, rel=1e-12)
