"""EfficientNetV2 trains at its training size and evaluates/exports at its resolution (V2 paper:
S 300/384, B0 192/224); V1 and Lite use one size; small-image datasets keep one small size."""

import json
import subprocess
import sys

import numpy as np
import pytest

from efficientnet_tf.models.configs import get_config, list_models
from efficientnet_tf.training import TrainConfig, Trainer, plan_stages, read_history

LARGE_IMAGES = None  # ImageNet, flowers, folders: images of varied size
DIGITS = 8  # native size of the digits dataset
SIZES_V2 = {"efficientnetv2-b0": (192, 224), "efficientnetv2-b1": (192, 240), "efficientnetv2-b2": (208, 260),
            "efficientnetv2-b3": (240, 300), "efficientnetv2-s": (300, 384), "efficientnetv2-m": (384, 480),
            "efficientnetv2-l": (384, 480), "efficientnetv2-xl": (384, 512)}  # the V2 paper, Table 7 / automl


@pytest.mark.parametrize("model", list_models("v2"))
def test_v2_trains_at_its_training_size_and_evaluates_at_its_resolution(model):
    assert TrainConfig.from_settings(model=model).image_sizes(LARGE_IMAGES) == SIZES_V2[model]
    assert TrainConfig.from_settings(model=model).image_sizes(224) == SIZES_V2[model]  # e.g. the synthetic source


@pytest.mark.parametrize("model", ["efficientnet-b0", "efficientnet-b3", "efficientnet-lite4"])
def test_v1_and_lite_train_and_evaluate_at_one_size(model):
    resolution = get_config(model).resolution
    assert TrainConfig.from_settings(model=model).image_sizes(LARGE_IMAGES) == (resolution, resolution)
    assert TrainConfig.from_settings(model=model, image_size=128).image_sizes(LARGE_IMAGES) == (128, 128)


@pytest.mark.parametrize("fields, native, expected", [
    (dict(train_image_size=256), LARGE_IMAGES, (256, 384)),  # training size overridden
    (dict(image_size=448), LARGE_IMAGES, (300, 448)),  # eval size overridden: V2 still trains at 300
    (dict(image_size=256), LARGE_IMAGES, (256, 256)),  # never trains above the eval size by default
    (dict(image_size=256, train_image_size=320), LARGE_IMAGES, (320, 256)),  # both explicit: taken as given
    (dict(), DIGITS, (32, 32)),  # small images: one small size, as before
    (dict(image_size=64), DIGITS, (64, 64)),
    (dict(train_image_size=48), DIGITS, (48, 32)),  # ...unless the user says otherwise
])
def test_sizes_are_overridable(fields, native, expected):
    assert TrainConfig.from_settings(model="efficientnetv2-s", **fields).image_sizes(native) == expected


def test_progressive_learning_ends_at_the_training_size():
    config = TrainConfig.from_settings(model="efficientnetv2-s", epochs=8, progressive=4, progressive_min_size=128)
    train_size, eval_size = config.image_sizes(LARGE_IMAGES)
    assert (train_size, eval_size) == (300, 384)
    assert [s.image_size for s in plan_stages(config, train_size, 0.2)] == [128, 184, 240, 300]  # Table 6
    explicit = TrainConfig.from_settings(model="efficientnetv2-s", epochs=8, progressive=4, progressive_max_size=256)
    assert plan_stages(explicit, train_size, 0.2)[-1].image_size == 256


def test_bad_train_image_size_is_one_clear_error():
    with pytest.raises(ValueError, match="train_image_size must be >= 32, got 16"):
        TrainConfig.from_settings(train_image_size=16).validate()


def _dry_run(*args):
    result = subprocess.run([sys.executable, "main.py", "--dry_run", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def test_dry_run_shows_the_resolved_sizes():
    v2 = _dry_run("--model=efficientnetv2-s", "--dataset=synthetic", "--progressive=4", "--epochs=8")
    assert (v2["resolved_train_image_size"], v2["resolved_image_size"]) == (300, 384)
    assert v2["resolved_stage_image_sizes"] == [128, 184, 240, 300]
    assert v2["train_image_size"] is None and v2["image_size"] is None  # what was given, beside what it means
    small = _dry_run("--model=efficientnetv2-b0", "--dataset=digits", "--train_image_size=48")
    assert (small["resolved_train_image_size"], small["resolved_image_size"]) == (48, 32)


def test_run_trains_at_the_training_size_and_records_both(tmp_path):
    """A real run with different sizes: training batches at one, validation and the final
    report at the other; run.json keeps `image_size` as the eval/export size (export reads it)."""
    config = TrainConfig.from_settings(model="efficientnet-lite0", dataset="digits", model_dir=str(tmp_path), epochs=1,
                                       steps_per_epoch=2, batch_size=16, train_image_size=32, image_size=48, seed=0)
    trainer = Trainer(config, verbose=False)
    assert (trainer.stages[-1].image_size, trainer.image_size) == (32, 48)
    assert trainer.model.input_shape == (None, None, None, 3)  # one model, two sizes
    train_images, _ = trainer.augmented_batch(count=4)
    assert train_images.shape == (4, 32, 32, 3)
    passes = []
    evaluate = trainer.task.evaluate  # every evaluation of the run goes through its task
    trainer.task.evaluate = lambda *args, **kwargs: passes.append(kwargs) or evaluate(*args, **kwargs)
    report = trainer.fit()
    # One pass over the eval split: the last epoch's validation is the final report (confusion included).
    assert passes == [{"confusion": True}]
    (row,) = read_history(str(tmp_path))
    assert float(row["val_accuracy"]) == round(report["top1"], 6) and float(row["val_loss"]) == round(report["loss"], 6)
    info = json.loads((tmp_path / "run.json").read_text())
    assert (info["image_size"], info["train_image_size"]) == (48, 32)
    assert "360" in info["split"] and info["config"]["data"]["train_image_size"] == 32
    assert [int(r["image_size"]) for r in read_history(str(tmp_path))] == [32]
    # The final report is the eval split at 48 px: evaluating again at 48 gives the same numbers.
    again = trainer.evaluate(image_size=48)
    assert report["images"] == again["images"] == 360
    np.testing.assert_allclose(report["loss"], again["loss"], rtol=1e-5)
    assert abs(trainer.evaluate(image_size=32)["loss"] - report["loss"]) > 1e-6  # and 32 px is another input


def test_progressive_stages_never_shrink_when_a_first_value_is_above_the_last(caplog):
    """Defaults on a 32 px dataset: first size 128 > 32; first magnitude 5 above the last."""
    config = TrainConfig.from_settings(model="efficientnet-b0", dataset="digits", epochs=3, progressive=3)
    with caplog.at_level("WARNING", logger="efficientnet_tf.training"):
        stages = plan_stages(config, 32, 0.2)
    assert [s.image_size for s in stages] == [32, 32, 32]
    assert [s.randaug_magnitude for s in stages] == [0, 0, 0]
    assert [s.dropout_rate for s in stages] == pytest.approx([0.1, 0.15, 0.2])  # a real ramp is kept
    assert "progressive_min_size=128 is above the last stage's 32" in caplog.text
    assert "progressive_min_randaug" not in caplog.text  # RandAugment is off: its magnitude means nothing
    for earlier, later in zip(stages, stages[1:]):
        assert later.image_size >= earlier.image_size and later.randaug_magnitude >= earlier.randaug_magnitude
    caplog.clear()
    with caplog.at_level("WARNING", logger="efficientnet_tf.training"):
        stages = plan_stages(config.replace(randaug_layers=2, randaug_magnitude=3), 32, 0.2)
    assert [s.randaug_magnitude for s in stages] == [3, 3, 3]
    assert "progressive_min_randaug=5 is above the last stage's 3" in caplog.text
