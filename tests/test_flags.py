"""Every recipe in flags/ parses and resolves to a valid training config."""

import glob
import json
import os
import subprocess
import sys

import pytest

RECIPES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "flags", "*.cfg")))


def _resolve(*args):
    result = subprocess.run([sys.executable, "main.py", "--dry_run", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def test_recipes_exist():
    names = {os.path.basename(p) for p in RECIPES}
    assert {"imagenet_v1.cfg", "imagenet_v2_s.cfg", "cifar10_scratch.cfg", "cifar10_transfer.cfg",
            "flowers_transfer.cfg", "digits_demo.cfg"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_recipe_resolves(path):
    config = _resolve(f"--flagfile={path}")
    assert config["epochs"] >= 1 and (config["batch_size"] or config["resolved_batch_size"]) >= 1


def test_imagenet_defaults_are_the_papers():
    config = _resolve()  # no flags at all: the papers' ImageNet hyperparameters
    assert config["optimizer"] == "rmsprop" and config["learning_rate"] == 0.016
    assert config["epochs"] == 350 and config["lr_decay_rate"] == 0.97
    assert config["resolved_warmup_epochs"] == 5 and config["resolved_lr_decay_epochs"] == 2.4
    short = _resolve("--epochs=35")  # unset warmup/decay keep the paper's shape over a shorter run
    assert short["resolved_warmup_epochs"] == pytest.approx(0.5) and short["resolved_lr_decay_epochs"] == pytest.approx(0.24)
    assert config["weight_decay"] == 1e-5 and config["label_smoothing"] == 0.1 and config["ema_decay"] == 0.9999


def test_v2_recipe_follows_table_6():
    config = _resolve(f"--flagfile={[p for p in RECIPES if p.endswith('imagenet_v2_s.cfg')][0]}")
    assert config["progressive"] == 4
    assert (config["progressive_min_size"], config["progressive_max_size"]) == (128, 300)
    assert (config["progressive_min_randaug"], config["progressive_max_randaug"]) == (5, 15)
    assert (config["progressive_min_dropout"], config["progressive_max_dropout"]) == (0.1, 0.3)
    # Trained up to 300, evaluated and exported at 384 (the dry run resolves without the data).
    assert (config["resolved_train_image_size"], config["resolved_image_size"]) == (300, 384)
    assert config["resolved_stage_image_sizes"] == [128, 184, 240, 300]


def test_transfer_recipe_freezes_then_finetunes():
    config = _resolve(f"--flagfile={[p for p in RECIPES if p.endswith('cifar10_transfer.cfg')][0]}")
    assert config["weights"] == "imagenet" and config["freeze_backbone"] and config["finetune_epochs"] > 0
    assert (config["resolved_train_image_size"], config["resolved_image_size"]) == (224, 224)


def test_data_flags_reach_the_config():
    config = _resolve("--validation_fraction=0.3", "--label_key=label_category", "--dataset=smallnorb")
    assert config["validation_fraction"] == 0.3 and config["label_key"] == "label_category"
    assert _resolve()["validation_fraction"] is None  # unset: the source's own default (0.1; digits 0.2)


def test_dry_run_resolves_every_value_the_run_uses():
    """Closed forms for the digits demo: 1,797 images, 20% held out -> 1,437 train, batch 64."""
    config = _resolve(f"--flagfile={[p for p in RECIPES if p.endswith('digits_demo.cfg')][0]}")
    steps = 1437 // 64
    assert config["resolved_steps_per_epoch"] == steps == 22
    assert config["resolved_bn_momentum"] == pytest.approx(1 - 1 / (steps / 2))  # half-epoch window
    assert config["resolved_peak_learning_rate"] == pytest.approx(0.008 * 64 / 256)
    assert config["resolved_warmup_steps"] == pytest.approx(1 * steps) and config["resolved_total_steps"] == 15 * steps
    assert 0 <= config["resolved_final_learning_rate"] < 1e-3 * config["resolved_peak_learning_rate"]  # cosine to 0
    assert config["resolved_lr_decay_epochs"] is None  # cosine: no decay period
    assert config["resolved_dropout_rate"] == 0.2 and config["resolved_stages"] == [
        {"epochs": [1, 15], "image_size": 32, "dropout_rate": 0.2, "randaug_magnitude": 0.0, "mixup_alpha": 0.0,
         "frozen": False, "lr_scale": 1.0}]
    assert (config["resolved_replicas"], config["resolved_policy"]) == (1, "float32")
