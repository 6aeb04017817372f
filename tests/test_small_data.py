"""Small datasets get values that train (issue 35): a batch with enough steps per epoch, and the LR
and BN momentum that follow from it; explicit values and resumed runs keep theirs. Also: a frozen
backbone needs pretrained weights, and a folder given for evaluation is evaluated whole."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from cli import run_main

from efficientnet_tf.settings import SettingError
from efficientnet_tf.training import TrainConfig, Trainer
from efficientnet_tf.training.plan import describe, plan_run
from efficientnet_tf.training.rundir import load_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = dict(model="efficientnet-lite0", image_size=32, epochs=1, steps_per_epoch=2, dropout_rate=0.0,
             drop_connect_rate=0.0, seed=0)


def _main(*args):
    return run_main(*args)


def _dry_run(*args):
    result = _main("--dry_run", *args)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def _write_classes(root, counts, size=(20, 28)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, count in counts.items():
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(os.path.join(root, cls, f"{i}.png"))


# (training images, the batch the rule gives: 64, else the largest of 32, 16, 8 with >= 10 steps, else 8)
BATCHES = [(20, 8), (112, 8), (159, 8), (160, 16), (319, 16), (320, 32), (639, 32), (640, 64), (1437, 64),
           (1_281_167, 64)]


@pytest.mark.parametrize("num_train, batch", BATCHES)
def test_an_unset_batch_gives_small_data_enough_steps(num_train, batch):
    plan = plan_run(TrainConfig.from_settings(), None, num_train)
    steps = max(1, num_train // batch)
    assert (plan.batch_size, plan.steps_per_epoch) == (batch, steps)
    assert plan.base_lr == pytest.approx(0.016 * batch / 256)  # per 256 images, as the papers
    assert plan.bn_momentum == pytest.approx(min(0.99, 1 - 1 / max(steps / 2, 2)))
    resolved = describe(TrainConfig.from_settings(), plan)
    assert resolved["resolved_batch_size"] == batch and resolved["resolved_steps_per_epoch"] == steps


@pytest.mark.parametrize("batch", [64, 4, 100])
def test_an_explicit_batch_is_kept_on_any_data(batch):
    plan = plan_run(TrainConfig.from_settings(batch_size=batch), None, 112)
    assert (plan.batch_size, plan.steps_per_epoch) == (batch, max(1, 112 // batch))
    assert plan.base_lr == pytest.approx(0.016 * batch / 256)


def test_an_unknown_size_resolves_no_batch_rather_than_a_wrong_one():
    plan = plan_run(TrainConfig.from_settings(), None, None)
    assert (plan.batch_size, plan.steps_per_epoch, plan.base_lr, plan.bn_momentum) == (None, None, None, None)
    assert plan_run(TrainConfig.from_settings(batch_size=32), None, None).base_lr == pytest.approx(0.016 * 32 / 256)


def test_dry_run_of_a_small_folder_shows_the_values_it_trains_with(tmp_path):
    """5 classes x 24 images, 10% held out per class (round(2.4) = 2): 110 train images."""
    _write_classes(tmp_path / "photos", {name: 24 for name in "abcde"})
    resolved = _dry_run(f"--dataset=folder:{tmp_path / 'photos'}", "--epochs=20")
    assert resolved["batch_size"] is None  # not set: resolved
    assert (resolved["resolved_batch_size"], resolved["resolved_steps_per_epoch"]) == (8, 110 // 8)
    assert resolved["resolved_bn_momentum"] == pytest.approx(1 - 2 / 13)
    assert resolved["resolved_peak_learning_rate"] == pytest.approx(0.016 * 8 / 256)
    explicit = _dry_run(f"--dataset=folder:{tmp_path / 'photos'}", "--epochs=20", "--batch_size=64")
    assert (explicit["resolved_batch_size"], explicit["resolved_steps_per_epoch"]) == (64, 1)
    assert explicit["resolved_bn_momentum"] == 0.5 and explicit["resolved_peak_learning_rate"] == 0.004


def test_the_readme_digits_command_resolves_as_before():
    resolved = _dry_run("--model=efficientnet-b0", "--dataset=digits", "--epochs=15")
    assert (resolved["resolved_batch_size"], resolved["resolved_steps_per_epoch"]) == (64, 1437 // 64)
    assert resolved["resolved_peak_learning_rate"] == 0.004


def test_a_new_run_records_its_resolved_batch_and_resumes_with_it(tmp_path):
    _write_classes(tmp_path / "photos", {name: 24 for name in "abcde"})
    settings = dict(QUICK, dataset=f"folder:{tmp_path / 'photos'}", model_dir=str(tmp_path / "run"))
    trainer = Trainer(TrainConfig.from_settings(**settings), verbose=False)
    assert trainer.config.run.batch_size == 8
    trainer.fit(validate=False)
    stored, info = load_run(str(tmp_path / "run"))
    assert stored.run.batch_size == 8 and info["steps_per_epoch"] == 2
    resumed = Trainer(TrainConfig.from_settings(**dict(settings, epochs=2)), verbose=False)
    assert resumed.config.run.batch_size == 8


@pytest.mark.slow
def test_a_run_started_with_batch_64_resumes_with_64(tmp_path):
    """What every run.json written before the batch resolved says: batch_size 64. Resumed with the
    batch unset, from Python or the command line, it stays 64 (unset would resolve to 8 here)."""
    _write_classes(tmp_path / "photos", {name: 24 for name in "abcde"})
    dataset = f"folder:{tmp_path / 'photos'}"
    model_dir = str(tmp_path / "run")
    Trainer(TrainConfig.from_settings(**dict(QUICK, dataset=dataset, model_dir=model_dir, batch_size=64)),
            verbose=False).fit(validate=False)
    resumed = Trainer(TrainConfig.from_settings(**dict(QUICK, dataset=dataset, model_dir=model_dir, epochs=2)),
                      verbose=False)
    assert (resumed.config.run.batch_size, resumed.steps_per_epoch) == (64, 1)
    resolved = _dry_run(f"--model_dir={model_dir}", "--epochs=2")
    assert (resolved["batch_size"], resolved["resolved_batch_size"], resolved["resolved_steps_per_epoch"]) == (64, 64, 1)
    result = _main(f"--model_dir={model_dir}", "--epochs=2", "--batch_size=8", "--dry_run")
    assert result.returncode == 2 and "the run has --batch_size=64, this command --batch_size=8" in result.stderr


def test_a_frozen_random_backbone_is_refused_for_a_new_run(tmp_path):
    from efficientnet_tf.training import Trainer

    config = TrainConfig.from_settings(freeze_backbone=True, model_dir=str(tmp_path / "run"))
    with pytest.raises(SettingError) as raised:
        Trainer(config, verbose=False)
    assert raised.value.setting == "freeze_backbone" and "weights" in str(raised.value)
    assert not (tmp_path / "run").exists()
    TrainConfig.from_settings(freeze_backbone=True, weights="imagenet").model.check_new_run()
    # A run trained that way before this rule still loads (to evaluate or export it): only new runs are refused.
    config.validate()


def test_a_frozen_random_backbone_is_one_line_at_the_command_line(tmp_path):
    result = _main(f"--model_dir={tmp_path}", "--freeze_backbone", "--dry_run")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --freeze_backbone: freeze_backbone trains only a new head on pretrained features, and there are "
        "none (a frozen random backbone gives the head nothing to learn from): add --weights=imagenet (or an "
        "official checkpoint family, or a weights file), or leave freeze_backbone off"]
    with pytest.raises(SettingError, match=r"add weights='imagenet' \(or an official"):  # Python's words
        TrainConfig.from_settings(freeze_backbone=True).model.check_new_run()


def test_the_folder_recipe_fine_tunes_from_pretrained_weights(tmp_path):
    _write_classes(tmp_path / "photos", {name: 24 for name in "abcde"})
    resolved = _dry_run("--flagfile=flags/folder_finetune.cfg", f"--dataset=folder:{tmp_path / 'photos'}")
    assert resolved["weights"] == "imagenet" and resolved["freeze_backbone"] and resolved["finetune_epochs"] > 0
    assert resolved["batch_size"] is None and resolved["resolved_batch_size"] == 8  # small folder: small batch
    assert [stage["frozen"] for stage in resolved["resolved_stages"]] == [True, False]


def test_a_folder_given_for_evaluation_is_evaluated_whole(run_copy, tmp_path):
    """28 images of the run's 10 classes, one class with a single image: all 28 are evaluated (not
    a held-out share), and nothing says the run was trained on them."""
    counts = {str(digit): 3 for digit in range(10)}
    counts["0"] = 1
    _write_classes(tmp_path / "other", counts, size=(32, 32))
    result = _main("--mode=eval", f"--model_dir={run_copy}", f"--eval_dataset=folder:{tmp_path / 'other'}")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report["images"] == sum(counts.values()) == 28
    assert "never evaluated" not in result.stderr and "trained on" not in result.stderr


@pytest.mark.slow
def test_the_small_data_benchmark_reports_what_it_ran(tmp_path):
    """--quick: 112 training crops of 5 photos, 100 held out; the old batch of 64 against the
    resolved one, each figure recomputed from closed forms and the printed table."""
    json_path = tmp_path / "small_data.json"
    result = subprocess.run([sys.executable, "benchmarks/small_data.py", "--quick", "--json", str(json_path)],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(json_path.read_text())
    assert sum(report["folder"]["train"].values()) == 112 and sum(report["folder"]["val"].values()) == 100
    for label, batch in (("batch 64 (old default)", 64), ("unset (resolved)", 8)):
        (run,) = report["runs"][label]["seeds"]
        steps = 112 // batch
        assert (run["batch_size"], run["steps_per_epoch"], run["eval_images"]) == (batch, steps, 100)
        assert run["bn_momentum"] == pytest.approx(min(0.99, 1 - 1 / max(steps / 2, 2)))
        assert run["peak_learning_rate"] == pytest.approx(0.016 * batch / 256)
        assert round(run["top1"] * 100, 6) == int(round(run["top1"] * 100))  # k of 100 images
        assert report["runs"][label]["mean_top1"] == pytest.approx(run["top1"])
        assert f"| {label} | {batch} | {steps} | {run['bn_momentum']:.3f} |" in result.stdout


def test_a_dry_run_checks_the_folder_layout_as_training_does(tmp_path):
    """What the file listing can tell (no folder, a file, images not in class folders) stops a dry
    run as it stops training, in one line saying what was found; a good folder's count is printed."""
    from efficientnet_tf.data.sources import folder_train_count

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        (flat / f"{i}.png").write_bytes(b"not decoded by a dry run")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "empty").mkdir()
    expected = {
        "flat": "needs one sub-folder of images per class, at least 2 (e.g. cat/, dog/); found no sub-folder with "
                "images and 3 image(s) directly in it: put them in one sub-folder per class",
        "afile": "is a file, not a folder: give a folder with one sub-folder of images per class",
        "empty": "found no sub-folder with images",
        "nope": "does not exist",
    }
    for name, why in expected.items():
        with pytest.raises((ValueError, FileNotFoundError), match=re.escape(why)):
            folder_train_count(str(tmp_path / name))
    result = _main(f"--dataset=folder:{flat}", f"--model_dir={tmp_path / 'run'}", "--dry_run")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and expected["flat"] in lines[0], result.stderr[-1000:]
    for cls in ("a", "b"):
        (flat / cls).mkdir()
        for i in range(10):
            (flat / cls / f"{i}.png").write_bytes(b"x")
    assert folder_train_count(str(flat)) == 18  # 10 per class minus one held out (10%) each
    assert not (tmp_path / "run").exists()
