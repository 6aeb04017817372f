"""One run per model_dir: a rerun that would change what the checkpoints mean stops before
touching anything; allowed changes are recorded; the other modes use the run's own config."""

import json
import os

import pytest
from cli import run_main

from efficientnet_tf.training import Trainer
from efficientnet_tf.training.rundir import RunMismatch, load_run, read_history

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _snapshot(directory):
    """Every file's relative path, size and modification time."""
    found = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            found[os.path.relpath(path, directory)] = (os.path.getsize(path), os.stat(path).st_mtime_ns)
    return found


@pytest.mark.parametrize("change", [{"model": "efficientnet-b0"}, {"batch_size": 16}, {"image_size": 48},
                                    {"dataset": "synthetic"}, {"progressive": 2, "progressive_min_size": 32}])
def test_a_rerun_with_other_identity_settings_stops_before_touching_anything(run_copy, change):
    stored, _ = load_run(run_copy)
    before = _snapshot(run_copy)
    with pytest.raises(RunMismatch) as raised:
        Trainer(stored.replace(**change), verbose=False)
    stored_settings = stored.settings()
    assert [(name, old) for name, old, _ in raised.value.differences] == [(n, stored_settings[n]) for n in change
                                                                             if stored_settings[n] != change[n]]
    assert _snapshot(run_copy) == before


def test_allowed_changes_resume_and_are_recorded(run_copy):
    stored, info = load_run(run_copy)
    trainer = Trainer(stored.replace(epochs=3, learning_rate=0.004, keep_checkpoints=5), verbose=False)
    trainer.fit(validate=False)
    assert trainer.state.resumed_from.endswith("ckpt-2")
    assert [int(row["epoch"]) for row in read_history(run_copy)] == [0, 1, 2]
    resumes = json.loads(open(os.path.join(run_copy, "run.json")).read())["resumes"]
    assert len(resumes) == 1
    assert resumes[0]["changed"] == {"epochs": [2, 3], "learning_rate": [0.008, 0.004]}  # keep_checkpoints: not a recipe change


def test_overwrite_sets_the_old_run_aside_and_starts_afresh(run_copy):
    stored, _ = load_run(run_copy)
    old_run_json = open(os.path.join(run_copy, "run.json")).read()
    trainer = Trainer(stored.replace(model="efficientnet-b0", epochs=1, steps_per_epoch=1), verbose=False,
                      overwrite=True)
    trainer.fit(validate=False)
    assert open(os.path.join(f"{run_copy}.replaced-1", "run.json")).read() == old_run_json
    assert load_run(run_copy)[0].model.name == "efficientnet-b0"
    assert [int(row["epoch"]) for row in read_history(run_copy)] == [0]
    # The new run's checkpoint list is its own (not the old run's ckpt-2 carried over).
    assert sorted(os.listdir(os.path.join(run_copy, "checkpoints"))) == [
        "checkpoint", "ckpt-1.data-00000-of-00001", "ckpt-1.index"]
    assert [os.path.basename(p) for p in trainer.state.manager.checkpoints] == ["ckpt-1"]


def test_a_value_equal_to_what_the_run_resolved_to_is_the_same_run(run_copy):
    """The run left train_image_size unset and trained at 32: saying 32 explicitly continues it."""
    stored, info = load_run(run_copy)
    assert stored.data.train_image_size is None and info["train_image_size"] == 32
    trainer = Trainer(stored.replace(train_image_size=32), verbose=False)
    assert trainer.stages[-1].image_size == 32
    with pytest.raises(RunMismatch, match="train_image_size"):
        Trainer(stored.replace(train_image_size=48), verbose=False)


def _main(*args):
    return run_main(*args)


def test_cli_rerun_continues_the_run_with_only_the_changes_given(run_copy):
    """`--model_dir=RUN --epochs=3` extends the run with its own settings (not the flags' defaults)."""
    result = _main("--mode=train", f"--model_dir={run_copy}", "--epochs=3", "--dry_run")
    assert result.returncode == 0, result.stderr[-2000:]
    resolved = json.loads(result.stdout)
    stored, _ = load_run(run_copy)
    assert resolved["epochs"] == 3
    for name in ("model", "image_size", "batch_size", "learning_rate", "steps_per_epoch", "seed"):
        assert resolved[name] == stored.settings()[name], name


def test_cli_eval_takes_the_run_config_and_refuses_contradictions(run_copy):
    """The run is Lite0 at 32 px; --mode=eval with only --model_dir evaluates it as trained
    (the old CLI built B0 at 224 from its defaults and failed on the checkpoint)."""
    report = json.loads(open(os.path.join(run_copy, "eval_report.json")).read())
    result = _main("--mode=eval", f"--model_dir={run_copy}")
    assert result.returncode == 0, result.stderr[-2000:]
    evaluation = json.loads(result.stdout[result.stdout.index("{"):])
    assert evaluation["images"] == report["images"] and evaluation["top1"] == pytest.approx(report["top1"])

    before = _snapshot(run_copy)
    result = _main("--mode=eval", f"--model_dir={run_copy}", "--model=efficientnet-b0", "--image_size=224")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: --model_dir={run_copy} holds another run: the run has --model=efficientnet-lite0, this command "
        "--model=efficientnet-b0; the run has --image_size=32, this command --image_size=224. To go on, leave those "
        "flags out: --mode=eval takes them from the run's run.json")
    result = _main("--mode=train", f"--model_dir={run_copy}", "--model=efficientnet-b0", "--epochs=2")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: --model_dir={run_copy} holds another run: the run has --model=efficientnet-lite0, this command "
        f"--model=efficientnet-b0. To go on, use another --model_dir, or --overwrite to start over (the old run is "
        f"kept as {run_copy}.replaced-N)")
    assert _snapshot(run_copy) == before


def _write_digits_folder(root, run_info):
    """The run's own digits split as PNG files (lossless: the images are uint8): train/ and val/,
    one folder per class, named as the digits classes."""
    from PIL import Image

    from efficientnet_tf.data.sources import digits_split

    images, labels, train_idx, eval_idx = digits_split(run_info["config"]["data"]["validation_fraction"] or 0.2,
                                                       run_info["config"]["run"]["seed"] or 0)
    for split, indices in (("train", train_idx), ("val", eval_idx)):
        for i in indices:
            folder = root / split / str(labels[i])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(folder / f"{i}.png")
    return len(train_idx), len(eval_idx)


def test_eval_on_another_dataset_with_the_same_classes_is_said_explicitly(run_copy, tmp_path):
    """The run's held-out digits, written out as a folder: --eval_dataset gives the run's own
    top-1 on them; a folder of other classes, or --dataset, is refused in one line."""
    info = json.loads(open(os.path.join(run_copy, "run.json")).read())
    report = json.loads(open(os.path.join(run_copy, "eval_report.json")).read())
    _, num_eval = _write_digits_folder(tmp_path / "digits_png", info)
    result = _main("--mode=eval", f"--model_dir={run_copy}", f"--eval_dataset=folder:{tmp_path / 'digits_png'}")
    assert result.returncode == 0, result.stderr[-2000:]
    evaluation = json.loads(result.stdout[result.stdout.index("{"):])
    assert evaluation["images"] == report["images"] == num_eval
    assert evaluation["top1"] == pytest.approx(report["top1"], abs=1e-6)
    assert evaluation["dataset"] == f"folder:{tmp_path / 'digits_png'}" and evaluation["split"] == "eval"

    (tmp_path / "digits_png" / "val" / "9").rename(tmp_path / "digits_png" / "val" / "nine")
    (tmp_path / "digits_png" / "train" / "9").rename(tmp_path / "digits_png" / "train" / "nine")
    result = _main("--mode=eval", f"--model_dir={run_copy}", f"--eval_dataset=folder:{tmp_path / 'digits_png'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: folder:{tmp_path / 'digits_png'} has 10 classes (0, 1, 2, 3, 4, 5, ...), the run was trained on "
        "digits's 10 (0, 1, 2, 3, 4, 5, ...): another dataset can be evaluated only with the same classes in the same "
        "order")
    result = _main("--mode=eval", f"--model_dir={run_copy}", "--eval_dataset=no_such_dataset")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: --eval_dataset=no_such_dataset: unknown dataset 'no_such_dataset'")
    result = _main("--mode=eval", f"--model_dir={run_copy}", "--dataset=synthetic")
    assert result.returncode == 2 and result.stderr.strip().endswith("name it with --eval_dataset)")
    result = _main("--mode=train", f"--model_dir={run_copy}", "--eval_split=train")
    assert result.returncode == 1 and "--eval_split applies to --mode=eval, not --mode=train" in result.stderr


def test_the_train_split_is_evaluated_with_eval_preprocessing(run_copy, tmp_path):
    """split='train' reads the run's training images: the same count and top-1 as those images
    written out as PNG files and read back as another dataset's training split."""
    from efficientnet_tf.data.sources import get_source

    stored, info = load_run(run_copy)
    num_train, _ = _write_digits_folder(tmp_path / "digits_png", info)
    own = Trainer(stored, verbose=False)
    assert own.restore_for_eval()
    ours = own.evaluate(split="train")
    other = Trainer(stored, verbose=False, eval_source=get_source(f"folder:{tmp_path / 'digits_png'}"))
    assert other.restore_for_eval()
    theirs = other.evaluate(split="train")
    assert ours["images"] == theirs["images"] == num_train
    assert ours["top1"] == pytest.approx(theirs["top1"], abs=1e-6)
    assert ours["top1"] != pytest.approx(own.evaluate()["top1"], abs=1e-6)  # not the eval split again
    with pytest.raises(ValueError, match="cannot train it"):
        other.fit()
